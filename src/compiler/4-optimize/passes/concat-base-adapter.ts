/**
 * concat-base-adapter: at a linear site, the base GEMM and the adapter GEMMs that read the same input x
 * (`lora_down`, `moe_down_batched`, `router`) become ONE GEMM over the concatenated weights,
 *
 *   [y_base | h_1 | ... | h_cat | logits_r] = x · [W | A_1 | ... | A_cat | W_r]^T
 *
 * with one output per part, each the value the replaced node wrote (so no consumer changes). attrs:
 *   in, totalOut = Σ part.out, parts: [{kind, out, params, node, site?, adapter?, bias?, activation?, attrs}]
 * (../../ir/concat.ts) where `kind` is the replaced op, `params` the weight tensors of the part and `attrs` the replaced node's
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
import { concatPartOf, readsWeightsOnly, trainingAltersInput, type ConcatPart } from '../../ir/concat.js';
import type { Node } from '../../ir/types.js';
import type { Pass } from '../pass.js';

const partOps = new Set<Node['op']>(['lora_down', 'moe_down_batched', 'router']);

export const concatBaseAdapter: Pass = {
  name: 'concat-base-adapter',
  description: 'one GEMM x·[W | A_1 | A_cat | W_r]^T per site for the base weight and the adapter projections that read the same input',
  run(ir) {
    let changes = 0;
    const notes: string[] = [];
    // An adapter projection that reads dropout(x) during training cannot share the base GEMM on x.
    // A router whose logits get noise during training keeps its own node (the runtime adds the noise there).
    const dropped = trainingAltersInput(ir);
    for (const st of ir.stages) {
      const g = st.graph;
      const ed = new GraphEditor(g);
      const ix = new GraphIndex(g);
      let sites = 0;
      let gemmsRemoved = 0;
      for (const linear of g.nodes.filter((n) => n.op === 'linear' && n.site)) {
        const x = linear.inputs[0];
        const site = linear.site!;
        const weightsOnly = (n: Node) => readsWeightsOnly(n, g);
        const others = ix.site(site).filter((n) => n !== linear && partOps.has(n.op) && n.inputs[0] === x && weightsOnly(n) && !dropped(n));
        if (!others.length || !weightsOnly(linear)) continue;
        const members = [linear, ...others];
        const inputs: string[] = [x];
        const parts: ConcatPart[] = members.map((n) => {
          const c = concatPartOf(n);
          inputs.push(...c.inputs);
          return c.part;
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
