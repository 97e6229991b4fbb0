/**
 * route-expert-down: at a mixture site batched by batch-experts, the routed experts' A projections are
 * computed for each token's top-k experts only.
 *
 *   h = moe_down_routed(x, gates, A_e)       h[t, e·r:(e+1)·r] = x_t·A_eᵀ where gates[t, e] ≠ 0, else 0
 *       attrs {in, rank, experts, k}
 *
 * replaces `moe_down_batched(x, A_e)` (h_cat = x·[A_0 ; … ; A_{E−1}]ᵀ, every token times every expert's A) where
 * `gates` is the output of the site's `topk_gate` that the site's `moe_up_grouped` reads. Exact: moe_up_grouped
 * multiplies h_e by gates_e, which is 0 off each token's top-k, so the forward is unchanged; and its dh_e is 0
 * there, so dx = Σ_routed dh_e·A_e and dA_e = dh_e[routed]ᵀ·x[routed] are the dense gradients. The gates are a
 * mask here and get no gradient from this op (their gradient comes from moe_up_grouped, as before).
 * The node moves to just after the topk_gate (router → topk_gate → moe_down_routed → moe_up_grouped): it now
 * reads the gates. It reads x like the op it replaces, including the dropout(x) of an adapter with LoRA dropout
 * (the executor masks its input 0, as for the other A projections); it does not join the base GEMM in
 * concat-base-adapter (not one of its part ops: its output is not a slice of x·Wᵀ), while the router still does
 * (a router with router_noise > 0 stays a plain `router` node there; this pass reads only the gates either way).
 *
 * A separate pass rather than part of batch-experts, so that -O1 plans can be compared with and without it
 * (the tests do) and batch-experts' contract (one dense A GEMM per site) stays as documented.
 *
 * Left alone: mixtures with shared experts (sharedRank > 0: their shared rows are needed for every token, so the
 * dense GEMM stays; splitting it in two is not done), and sites whose topk_gate keeps every expert (k ≥ E,
 * nothing to skip). changes = sites routed.
 */
import { GraphIndex } from '../../ir/graph-index.js';
import { GraphEditor } from '../../ir/edit.js';
import type { Node } from '../../ir/types.js';
import type { Pass } from '../pass.js';

export const routeExpertDown: Pass = {
  name: 'route-expert-down',
  description: 'per routed-only mixture site: the experts’ A projections for each token’s top-k experts only (moe_down_routed)',
  run(ir) {
    let changes = 0;
    const notes: string[] = [];
    for (const st of ir.stages) {
      const g = st.graph;
      const downs = g.nodes.filter((n) => n.op === 'moe_down_batched' && (n.attrs.sharedRank as number) === 0 && n.inputs.length === 2);
      if (!downs.length) continue;
      const ed = new GraphEditor(g);
      const ix = new GraphIndex(g);
      const after = new Map<Node, Node>();
      const gone = new Set<Node>();
      let routed = 0;
      let skipped = 0;
      for (const down of downs) {
        const hcat = down.outputs[0];
        const ups = ix.consumers(hcat);
        // h_cat must feed only moe_up_grouped nodes of the same routing, whose gates come from one topk_gate.
        if (!ups.length || ups.some((u) => u.op !== 'moe_up_grouped' || (u.attrs.sharedRank as number) !== 0 || u.inputs[0] !== hcat)) continue;
        const gates = ups[0].inputs[1];
        if (ups.some((u) => u.inputs[1] !== gates)) continue;
        const topk = down.site ? ix.site(down.site).find((n) => n.op === 'topk_gate' && n.outputs[0] === gates) : undefined;
        if (!topk) continue;
        const experts = down.attrs.experts as number;
        const k = topk.attrs.k as number;
        if (!(k < experts)) {
          skipped++;
          continue;
        }
        const node = ed.node('moe_down_routed', [down.inputs[0], gates, down.inputs[1]], [hcat], { in: down.attrs.in, rank: down.attrs.rank, experts, k }, {
          ...(down.site ? { site: down.site } : {}),
          ...(down.adapter ? { adapter: down.adapter } : {}),
          ...(down.layer !== undefined ? { layer: down.layer } : {}),
        });
        // After the topk_gate (it now reads the gates); every up projection comes after it already.
        gone.add(down);
        after.set(topk, node);
        routed++;
      }
      if (routed) g.nodes = g.nodes.flatMap((n) => (gone.has(n) ? [] : after.has(n) ? [n, after.get(n)!] : [n]));
      if (routed) notes.push(`${st.name}: ${routed} mixture sites compute the experts' A for each token's top-k only`);
      if (skipped) notes.push(`${st.name}: ${skipped} mixture sites keep every expert (top_k = experts), left dense`);
      changes += routed;
    }
    return { changes, notes };
  },
};
