/**
 * concat-base-adapter: at a linear site, the base GEMM and the adapter GEMMs that read the same input x
 * (`lora_down`, `moe_down_batched`, `router`) become ONE GEMM over the concatenated weights,
 *
 *   [y_base | h_1 | ... | h_cat | logits_r] = x · [W | A_1 | ... | A_cat | W_r]^T
 *
 * with one output per part, each the value the replaced node wrote (so no consumer changes). attrs:
 *   in, totalOut = Σ part.out, parts: [{kind, out, params, node, adapter?, bias?, activation?, attrs}]
 * where `kind` is the replaced op, `params` the weight tensors of the part and `attrs` the replaced node's
 * other attrs. Inputs: x, then per part in order its params and its bias; outputs: one per part, in order.
 * Epilogues stay per part: the base bias is added to the base part only; a router part adds its bias b_r and
 * applies its activation (softmax or sigmoid), so its output is the router's probabilities as before.
 * Each output is x times its own weight slice, exactly the product the replaced node computed: the rewrite
 * does not change the result (the backward splits dY by part the same way).
 * Not concatenated: the `lora_down` / `moe_down_batched` of an adapter with dropout > 0. During training
 * its A reads dropout(x), not x (PEFT: the base path sees x, the adapter branch a dropped copy), so it keeps
 * its own node on the site's input and the runtime masks that input (src/runtime/dropout.ts); a router
 * still reads x and may join the base GEMM, unless its mixture has router_noise > 0: during training its
 * logits get noise added before the activation (src/runtime/dropout.ts), so it stays a plain `router`
 * node to which the runtime passes the noise.
 * Sites with a single GEMM on x are left alone. changes = sites concatenated.
 */
import { GraphEditor } from '../../ir/edit.js';
import { GraphIndex } from '../../ir/graph-index.js';
import type { Node } from '../../ir/types.js';
import type { Pass } from '../pass.js';

const partOps = new Set<Node['op']>(['lora_down', 'moe_down_batched', 'router']);

export interface ConcatPart {
  kind: 'linear' | 'lora_down' | 'moe_down_batched' | 'router';
  out: number;
  /** Weight tensors of the part (biases excluded), in the node's input order. */
  params: string[];
  /** Id of the node the part replaced. */
  node: string;
  adapter?: string;
  bias?: string;
  activation?: string;
  attrs: Record<string, unknown>;
}

/** Output width of a part. */
function partOut(n: Node): number {
  switch (n.op) {
    case 'linear':
      return n.attrs.out as number;
    case 'lora_down':
      return n.attrs.rank as number;
    case 'moe_down_batched':
      return n.attrs.rows as number;
    default:
      return n.attrs.experts as number;
  }
}

export const concatBaseAdapter: Pass = {
  name: 'concat-base-adapter',
  description: 'one GEMM x·[W | A_1 | A_cat | W_r]^T per site for the base weight and the adapter projections that read the same input',
  run(ir) {
    let changes = 0;
    const notes: string[] = [];
    // An adapter projection that reads dropout(x) during training cannot share the base GEMM on x.
    const dropout = new Map(ir.pipeline.adapters.map((a) => [a.name, a.lora.dropout]));
    // A router whose logits get noise during training keeps its own node (the runtime adds the noise there).
    const noise = new Map(ir.pipeline.adapters.map((a) => [a.name, a.routerNoise]));
    const dropped = (n: Node) => n.adapter !== undefined && (n.op === 'router' ? (noise.get(n.adapter) ?? 0) > 0 : (dropout.get(n.adapter) ?? 0) > 0);
    for (const st of ir.stages) {
      const g = st.graph;
      const ed = new GraphEditor(g);
      const ix = new GraphIndex(g);
      let sites = 0;
      let gemmsRemoved = 0;
      for (const linear of g.nodes.filter((n) => n.op === 'linear' && n.site)) {
        const x = linear.inputs[0];
        const site = linear.site!;
        const weightsOnly = (n: Node) => n.inputs.slice(1).every((i) => g.values.get(i)?.kind === 'param' || g.values.get(i)?.kind === 'const');
        const others = ix.site(site).filter((n) => n !== linear && partOps.has(n.op) && n.inputs[0] === x && weightsOnly(n) && !dropped(n));
        if (!others.length || !weightsOnly(linear)) continue;
        const members = [linear, ...others];
        const inputs: string[] = [x];
        const parts: ConcatPart[] = members.map((n) => {
          const { in: _in, ...attrs } = n.attrs;
          void _in;
          let params = n.inputs.slice(1);
          let bias: string | undefined;
          if (n.op === 'linear' && params.length > 1) bias = params[1];
          if (n.op === 'router') bias = params[1];
          if (bias) params = params.filter((p) => p !== bias);
          inputs.push(...params, ...(bias ? [bias] : []));
          return {
            kind: n.op as ConcatPart['kind'],
            out: partOut(n),
            params,
            node: n.id,
            ...(n.adapter ? { adapter: n.adapter } : {}),
            ...(bias ? { bias } : {}),
            ...(n.op === 'router' ? { activation: n.attrs.activation as string } : {}),
            attrs,
          };
        });
        const totalOut = parts.reduce((s, p) => s + p.out, 0);
        const node = ed.node('concat_linear', inputs, members.flatMap((n) => n.outputs), { in: linear.attrs.in, parts, totalOut }, { site, ...(linear.layer !== undefined ? { layer: linear.layer } : {}) });
        // Every member reads only x and parameters: the first member's position is early enough.
        const order = new Map(ix.site(site).map((n, i) => [n, i]));
        const first = members.reduce((a, b) => (order.get(b)! < order.get(a)! ? b : a));
        ix.replace(first, [node]);
        ix.remove(members.filter((n) => n !== first));
        sites++;
        gemmsRemoved += others.length;
      }
      ix.commit();
      if (sites) notes.push(`${st.name}: ${sites} sites concatenated (${gemmsRemoved + sites} GEMMs on a shared input became ${sites})`);
      changes += sites;
    }
    return { changes, notes };
  },
};
