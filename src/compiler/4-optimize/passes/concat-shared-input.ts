/**
 * concat-shared-input: the GEMMs of DIFFERENT linear sites that read the same input x become ONE
 * `concat_linear`. In a decoder layer q, k and v read the same normed hidden state, and so do the MLP's gate
 * and up; after concat-base-adapter each of those sites is one `concat_linear` (base + adapter
 * down-projections) or a plain `linear`, so a layer still runs 3 + 2 GEMMs on 2 inputs. This pass makes them
 *
 *   [y_q | h_q | y_k | h_k | y_v | h_v] = x · [W_q | A_q | W_k | A_k | W_v | A_v]^T
 *
 * with all the members' parts in graph order (each part keeps its kind, params, bias, activation, adapter,
 * the id of the node it came from and its `site`), and their outputs in the same order: every output is still
 * the product the replaced node computed, so no consumer changes. attrs as concat-base-adapter's
 * (../../ir/concat.ts): in, totalOut, parts. The node keeps `layer`, and `site` only when all members share it.
 *
 * Members: `concat_linear`, `linear`, `lora_down`, `moe_down_batched` and `router` nodes whose inputs after x are
 * all parameters or constants, grouped by (x, layer, whether their outputs need a gradient). Left alone:
 *  - a `lora_down` / `moe_down_batched` of an adapter with LoRA dropout > 0 (it reads dropout(x) in training,
 *    one mask per adapter and site) and a `router` with router_noise > 0 (its logits get noise in training):
 *    they keep their own node, as in concat-base-adapter (the runtime refuses a concat_linear holding them);
 *  - `moe_down_routed` (route-expert-down): its output is not a slice of x·Wᵀ (each token's top-k only);
 *  - a node that reads a weight another member of the group already reads (kept apart: one input per part);
 *  - nodes whose outputs need no gradient grouped with nodes whose outputs do: merging them would put the
 *    frozen product on the gradient's path (the backward of its consumers would run for nothing). Within a
 *    group the backward is unchanged: dW only for trainable weights, dx one GEMM over all parts (the runtimes'
 *    concat_linear gradients are lazy per input), and the cost model's per-part FLOPs give the same estimate.
 * The merged node takes the place of the first member in graph order (every member reads only x and
 * weights, so that is early enough; later members' outputs are produced a little earlier than before).
 * A group of one node is left alone. changes = GEMMs removed (members merged − merged nodes).
 */
import { gradValues } from '../../ir/cost.js';
import { GraphEditor } from '../../ir/edit.js';
import { GraphIndex } from '../../ir/graph-index.js';
import { concatPartOf, concatParts, readsWeightsOnly, trainingAltersInput, type ConcatPart } from '../../ir/concat.js';
import type { Node } from '../../ir/types.js';
import type { Pass } from '../pass.js';

const memberOps = new Set<Node['op']>(['concat_linear', 'linear', 'lora_down', 'moe_down_batched', 'router']);

/** A member's parts and the inputs they add after x. */
function partsOf(n: Node): { parts: ConcatPart[]; inputs: string[] } {
  if (n.op === 'concat_linear') {
    const parts = concatParts(n).map((p) => (p.site || !n.site ? p : { ...p, site: n.site }));
    return { parts, inputs: n.inputs.slice(1) };
  }
  const c = concatPartOf(n);
  return { parts: [c.part], inputs: c.inputs };
}

export const concatSharedInput: Pass = {
  name: 'concat-shared-input',
  description: 'one GEMM per shared input: the concat_linear / linear nodes of different sites that read the same x (q, k, v; gate, up) merged into one',
  run(ir) {
    let changes = 0;
    const notes: string[] = [];
    const altered = trainingAltersInput(ir);
    for (const st of ir.stages) {
      const g = st.graph;
      const need = gradValues(ir, st);
      const ed = new GraphEditor(g);
      const ix = new GraphIndex(g);
      const groups = new Map<string, Node[]>();
      for (const n of g.nodes) {
        if (!memberOps.has(n.op) || !readsWeightsOnly(n, g) || altered(n)) continue;
        if (n.op === 'concat_linear' ? !concatParts(n).length || concatParts(n).some((p) => altered({ op: p.kind, adapter: p.adapter })) : n.inputs.length < 2) continue;
        const grad = n.inputs.some((i) => need.has(i));
        const key = JSON.stringify([n.inputs[0], n.layer ?? null, grad]);
        const list = groups.get(key);
        if (list) list.push(n);
        else groups.set(key, [n]);
      }
      let merged = 0;
      let removed = 0;
      for (const candidates of groups.values()) {
        if (candidates.length < 2) continue;
        // One input per weight: a node reading a weight an earlier member reads stays apart.
        const seen = new Set<string>();
        const members: Node[] = [];
        for (const n of candidates) {
          const ws = n.inputs.slice(1);
          if (ws.some((w) => seen.has(w)) || new Set(ws).size !== ws.length) continue;
          ws.forEach((w) => seen.add(w));
          members.push(n);
        }
        if (members.length < 2) continue;
        const x = members[0].inputs[0];
        const inputs = [x];
        const parts: ConcatPart[] = [];
        for (const n of members) {
          const m = partsOf(n);
          parts.push(...m.parts);
          inputs.push(...m.inputs);
        }
        const sites = new Set(members.map((n) => n.site));
        const site = sites.size === 1 ? members[0].site : undefined;
        const layer = members[0].layer;
        const inF = members.map((n) => n.attrs.in).find((v) => typeof v === 'number') ?? g.values.get(x)?.shape[1];
        const node = ed.node(
          'concat_linear',
          inputs,
          members.flatMap((n) => n.outputs),
          { in: inF, parts, totalOut: parts.reduce((s, p) => s + p.out, 0) },
          { ...(site ? { site } : {}), ...(layer !== undefined ? { layer } : {}) },
        );
        // Members are in graph order (the groups were filled walking the node list): the first is the earliest.
        ix.replace(members[0], [node]);
        ix.remove(members.slice(1));
        merged++;
        removed += members.length - 1;
      }
      ix.commit();
      if (merged) notes.push(`${st.name}: ${merged} shared inputs read by one GEMM each (${merged + removed} GEMMs became ${merged})`);
      changes += removed;
    }
    return { changes, notes };
  },
};
