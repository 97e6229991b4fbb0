/**
 * batch-orthogonality: every `ortho_penalty` node of a stage (one per constraint, common site and other
 * adapter) becomes ONE `ortho_penalty_batched` node computing the weighted sum
 *
 *   P = Σ_t weight_t · norm_t(M_t)   with M_t = A_target,t · A_other,t^T  (B^T B for matrix B)
 *
 * in one dispatch. attrs.terms lists per term {target, other, targetParams, otherParams, site, constraint,
 * matrix, norm, weight, flops}; attrs.flops = Σ (2·r_t·r_o·d + r_t·r_o), the same total the separate nodes
 * had. The node's inputs are the distinct tensors the terms read. `loss_sum` reads the batched scalar once
 * with weight 1 in place of the terms (whose weights now live in attrs.terms), so the loss is unchanged.
 * Stages with fewer than two terms are left alone. changes = penalty terms batched.
 */
import { GraphEditor } from '../../ir/edit.js';
import type { Pass } from '../pass.js';

export interface OrthoTerm {
  target: string;
  other: string;
  targetParams: string[];
  otherParams: string[];
  site?: string;
  constraint: number;
  matrix: 'A' | 'B';
  norm: string;
  weight: number;
  flops: number;
}

export const batchOrthogonality: Pass = {
  name: 'batch-orthogonality',
  description: 'the orthogonality penalty of every site and constraint of a stage in one batched, pre-weighted computation',
  run(ir) {
    let changes = 0;
    const notes: string[] = [];
    for (const st of ir.stages) {
      const g = st.graph;
      const ortho = g.nodes.filter((n) => n.op === 'ortho_penalty');
      if (ortho.length < 2) continue;
      const lossSum = g.nodes.find((n) => n.op === 'loss_sum');
      if (!lossSum) continue;
      const weights = lossSum.attrs.weights as number[];
      // Every term must be read by the loss sum exactly once and by nothing else.
      const ed = new GraphEditor(g);
      const ok = ortho.every((n) => lossSum.inputs.filter((i) => i === n.outputs[0]).length === 1 && ed.consumers(n.outputs[0]).length === 1);
      if (!ok) continue;
      const terms: OrthoTerm[] = ortho.map((n) => {
        const tp = n.attrs.targetParts as number;
        return {
          target: n.attrs.target as string,
          other: n.attrs.other as string,
          targetParams: n.inputs.slice(0, tp),
          otherParams: n.inputs.slice(tp),
          ...(n.site ? { site: n.site } : {}),
          constraint: n.attrs.constraint as number,
          matrix: n.attrs.matrix as 'A' | 'B',
          norm: n.attrs.norm as string,
          weight: weights[lossSum.inputs.indexOf(n.outputs[0])],
          flops: n.attrs.flops as number,
        };
      });
      const inputs = [...new Set(ortho.flatMap((n) => n.inputs))];
      const out = ed.value('ortho.batched', []);
      const flops = terms.reduce((s, t) => s + t.flops, 0);
      const node = ed.node('ortho_penalty_batched', inputs, [out], { terms, flops, weighted: true });
      ed.replace(ortho[0], [node]);
      ed.remove(ortho.slice(1));
      // loss_sum: the merged terms become one entry of weight 1.
      const merged = new Set(ortho.map((n) => n.outputs[0]));
      const keep = lossSum.inputs.map((v, i) => ({ v, w: weights[i] })).filter((e) => !merged.has(e.v));
      lossSum.inputs = [...keep.map((e) => e.v), out];
      lossSum.attrs = { ...lossSum.attrs, weights: [...keep.map((e) => e.w), 1] };
      ed.pruneValues();
      changes += ortho.length;
      notes.push(`${st.name}: ${ortho.length} orthogonality terms in one batched penalty (${flops} FLOPs, unchanged)`);
    }
    return { changes, notes };
  },
};
