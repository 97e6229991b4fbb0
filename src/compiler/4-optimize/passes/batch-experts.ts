/**
 * batch-experts: per mixture-of-LoRA site, the E `expert_down` GEMMs and the mixture's shared `lora_down`
 * become ONE GEMM, and the E `expert_up` GEMMs, the `gate_combine` and the shared `lora_up` become ONE
 * grouped GEMM over only each token's top-k experts.
 *
 *   h_cat = moe_down_batched(x, [A_sh], A_e)  = x · [A_sh ; A_0 ; ... ; A_{E-1}]^T
 *           attrs {in, rows = sharedRank + experts·rank, sharedRank, rank, experts}
 *   y     = moe_up_grouped(h_cat, gates, [B_sh], B_e)
 *         = s·h_sh·B_sh^T + Σ_{e in topk(token)} gates_e · s·h_e·B_e^T
 *           attrs {k, rank, sharedRank, experts, out, scale}
 *
 * The runtime sorts the tokens by expert (k segments per token) and runs one grouped GEMM; `gates` is the
 * dense [T, experts] output of `topk_gate`, zero outside each token's top-k, so the sum over the top-k
 * equals the dense sum over all experts that it replaces (experts whose gate is exactly zero add nothing,
 * whichever k the kernel picks among ties). The router, `topk_gate` and `load_balance` nodes are kept.
 * The output value is the one `gate_combine` wrote; the add that summed the shared experts' output into
 * the site is removed (its consumers read its other operand), since `moe_up_grouped` includes that term.
 * Mixtures whose routed experts were dropped (shared part only) are plain LoRA and left alone.
 * changes = mixture sites batched.
 */
import { GraphEditor } from '../../ir/edit.js';
import { GraphIndex } from '../../ir/graph-index.js';
import type { Node } from '../../ir/types.js';
import type { Pass } from '../pass.js';

export const batchExperts: Pass = {
  name: 'batch-experts',
  description: 'per mixture site: one GEMM over the concatenated A of shared and routed experts, one grouped GEMM over each token’s top-k experts for B',
  run(ir) {
    let changes = 0;
    const notes: string[] = [];
    for (const st of ir.stages) {
      const g = st.graph;
      const combines = g.nodes.filter((n) => n.op === 'gate_combine');
      if (!combines.length) continue;
      const ed = new GraphEditor(g);
      const ix = new GraphIndex(g);
      let batched = 0;
      for (const combine of combines) {
        const site = combine.site!;
        const name = combine.adapter!;
        const here = ix.site(site).filter((n) => n.adapter === name);
        const mine = (op: Node['op']) => here.filter((n) => n.op === op);
        const downs = mine('expert_down');
        const ups = mine('expert_up');
        const topk = mine('topk_gate')[0];
        if (!downs.length || downs.length !== ups.length || !topk) continue;
        const x = downs[0].inputs[0];
        const expertA = downs[0].inputs[1];
        const expertB = ups[0].inputs[1];
        if (downs.some((d) => d.inputs[0] !== x || d.inputs[1] !== expertA) || ups.some((u) => u.inputs[1] !== expertB)) continue;
        // Every expert output must feed only the combine; every hidden only its up projection.
        if (ups.some((u) => ix.consumers(u.outputs[0]).some((c) => c !== combine))) continue;
        if (downs.some((d) => ix.consumers(d.outputs[0]).some((c) => !ups.includes(c)))) continue;
        const gates = combine.inputs[0];
        if (gates !== topk.outputs[0]) continue;

        // The mixture's shared experts: a lora_down/lora_up pair of the same adapter at the site.
        const sharedDown = mine('lora_down').find((d) => d.inputs[0] === x);
        const sharedUps = sharedDown ? ix.consumers(sharedDown.outputs[0]) : [];
        const sharedUp = sharedUps.length === 1 && sharedUps[0].op === 'lora_up' ? sharedUps[0] : undefined;
        const sharedAdds = sharedUp ? ix.consumers(sharedUp.outputs[0]) : [];
        const sharedAdd = sharedAdds.length === 1 && sharedAdds[0].op === 'add' && sharedAdds[0].inputs.length === 2 ? sharedAdds[0] : undefined;
        const shared = !!(sharedDown && sharedUp && sharedAdd);

        const experts = downs.length;
        const rank = downs[0].attrs.rank as number;
        const inF = downs[0].attrs.in as number;
        const out = ups[0].attrs.out as number;
        const scale = ups[0].attrs.scale as number;
        const sharedRank = shared ? (sharedDown!.attrs.rank as number) : 0;
        if (shared && (sharedUp!.attrs.scale as number) !== scale) continue;
        const k = topk.attrs.k as number;
        const rows = sharedRank + experts * rank;
        const extra = { site, adapter: name, ...(combine.layer !== undefined ? { layer: combine.layer } : {}) };

        const hcat = ed.value(`${site}.${name}.hcat`, ['T', rows]);
        const down = ed.node('moe_down_batched', [x, ...(shared ? [sharedDown!.inputs[1]] : []), expertA], [hcat], { in: inF, rows, sharedRank, rank, experts }, extra);
        const up = ed.node('moe_up_grouped', [hcat, gates, ...(shared ? [sharedUp!.inputs[1]] : []), expertB], [combine.outputs[0]], { k, rank, sharedRank, experts, out, scale, segments: 'sorted' }, extra);

        // The batched down projection goes where the first replaced down projection was, the grouped up
        // projection where the combine was (after topk_gate).
        const firstDown = shared ? sharedDown! : downs[0];
        ix.replace(firstDown, [down]);
        ix.replace(combine, [up]);
        ix.remove([...downs, ...ups].filter((n) => n !== firstDown));
        if (shared) {
          const keep = sharedAdd!.inputs[0] === sharedUp!.outputs[0] ? sharedAdd!.inputs[1] : sharedAdd!.inputs[0];
          ix.rewire(sharedAdd!.outputs[0], keep);
          ix.remove([sharedUp!, sharedAdd!, ...(sharedDown !== firstDown ? [sharedDown!] : [])]);
        }
        batched++;
      }
      ix.commit();
      ed.pruneValues();
      if (batched) notes.push(`${st.name}: ${batched} mixture sites batched (one A GEMM and one top-k grouped B GEMM each)`);
      changes += batched;
    }
    return { changes, notes };
  },
};
