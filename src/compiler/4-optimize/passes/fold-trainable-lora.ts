/**
 * fold-trainable-lora: a plain LoRA that the step still trains (or that stays frozen in a stage that trains
 * the base, where fold-frozen-lora cannot fold it once) is merged into its base weight EVERY STEP,
 *
 *   W' = lora_merge(W, A, B) = W + s·B·A        (one [out, r]·[r, in] product per step, not per token)
 *   y  = x·W'ᵀ (+ b)                             instead of x·Wᵀ (+ b) + s·(x·Aᵀ)·Bᵀ
 *
 * where the compiler's cost model says that is less arithmetic for the stage's micro-batch of T tokens.
 * Autodiff then reaches A and B through the merge: the base GEMM's backward computes dW' = dYᵀ·x (T·in·out
 * multiply-adds, one well-shaped product) and the merge turns it into dA = s·Bᵀ·dW', dB = s·dW'·Aᵀ (per step);
 * dX = dY·W' covers the adapter's path. Per token that replaces the adapter's four thin products forward and
 * backward (x·Aᵀ, h·Bᵀ, dY·B with dB, dh·A with dA: 6·r·(in+out) FLOPs) by the one dW' product
 * (2·in·out), so it pays where in·out < 3·r·(in + out): small hidden sizes against the rank (the demo's
 * 64-wide model with r 16-32), never a 7B projection (in·out is 45M there against r·(in+out) ~ 0.24M).
 * The sum is the same to rounding (f32 reassociation); the trained A and B are the same tensors (exports and
 * checkpoints do not change), and W' exists only inside the step.
 *
 * Contract, per stage and per site folded:
 *  - the adapter's `lora_down` and `lora_up` nodes leave the graph, and so does the `add` that summed its
 *    output into the site (its consumers read the other operand);
 *  - a `lora_merge(W, A, B)` node (attrs in, out, rank, scale, adapter) at the head of the graph writes the
 *    value `<site>.weight.step[.k]` [out, in], which the site's `linear` reads instead of W (W is the base
 *    param, or the stage copy fold-frozen-lora made; a second adapter at the site merges into the first's
 *    result); concat-base-adapter and concat-shared-input treat it as a weight;
 *  - nothing else: the trainable set, A and B, constraints reading A or B, are unchanged.
 * Not folded: adapters with dropout > 0 (the adapter's x is dropout(x), not the base's x), mixtures
 * (input-dependent routing), a LoRA whose down projection does not read the linear's own input, and sites
 * where the cost model says the merged form costs as much or more. changes = sites folded.
 */
import { backwardFlops, forwardFlops, gradValues, stageTokens } from '../../ir/cost.js';
import { GraphEditor } from '../../ir/edit.js';
import { GraphIndex } from '../../ir/graph-index.js';
import { loraTermOf, removeLoraTerm } from '../../ir/lora.js';
import type { Node } from '../../ir/types.js';
import type { Pass } from '../pass.js';

export const foldTrainableLora: Pass = {
  name: 'fold-trainable-lora',
  description: 'merge each plain LoRA into its base weight every step (W + s·B·A) where the cost model says one base GEMM and its dW cost less than the adapter products',
  run(ir) {
    let changes = 0;
    const notes: string[] = [];
    for (const st of ir.stages) {
      const g = st.graph;
      const T = stageTokens(st);
      const need = gradValues(ir, st);
      const ed = new GraphEditor(g);
      const ix = new GraphIndex(g);
      const merges: Node[] = [];
      const perAdapter = new Map<string, number>();
      let skippedByCost = 0;
      for (const down of g.nodes.filter((n) => n.op === 'lora_down' && n.adapter && n.site)) {
        const name = down.adapter!;
        const decl = ir.pipeline.adapters.find((a) => a.name === name);
        if (!decl || decl.type !== 'lora' || decl.lora.dropout > 0) continue;
        const site = down.site!;
        const term = loraTermOf(ix, down);
        if (!term || term.linear.inputs[0] !== down.inputs[0]) continue;
        const { up, linear } = term;
        const [A, B] = [down.inputs[1], up.inputs[1]];
        const W = linear.inputs[1];
        const inF = linear.attrs.in as number;
        const outF = linear.attrs.out as number;
        const rank = down.attrs.rank as number;
        // The adapter's own cost (its products forward and backward, and the add) against the merged form's:
        // the merge (per step) and its backward, and dW' in the base GEMM's backward unless W trains anyway.
        const adapterCost = forwardFlops(down, g, T) + forwardFlops(up, g, T) + backwardFlops(down, g, T, need) + backwardFlops(up, g, T, need) + T * outF;
        const mergeFlops = 2 * outF * rank * inF + outF * inF;
        const trainsAdapter = need.has(A) || need.has(B);
        const mergedCost = mergeFlops + (trainsAdapter ? 2 * mergeFlops : 0) + (trainsAdapter && !need.has(W) ? 2 * T * inF * outF : 0);
        if (mergedCost >= adapterCost) {
          skippedByCost++;
          continue;
        }
        // Take the adapter's term out of the sum; the linear reads the merged weight.
        removeLoraTerm(ix, term);
        let id = `${site}.weight.step`;
        for (let k = 2; g.values.has(id); k++) id = `${site}.weight.step.${k}`;
        ed.value(id, [outF, inF]);
        const extra = { site, adapter: name, ...(linear.layer !== undefined ? { layer: linear.layer } : {}) };
        merges.push(ed.node('lora_merge', [W, A, B], [id], { in: inF, out: outF, rank, scale: up.attrs.scale as number }, extra));
        linear.inputs[1] = id;
        perAdapter.set(name, (perAdapter.get(name) ?? 0) + 1);
        changes++;
      }
      ix.commit();
      // Merges read only parameters (or an earlier merge): at the head of the graph every GEMM, including one
      // a concat pass later moves to an earlier site's position, comes after them.
      g.nodes.unshift(...merges);
      ed.pruneValues();
      for (const [name, n] of perAdapter) notes.push(`${st.name}: ${name} merged into the base weight every step at ${n} site${n === 1 ? '' : 's'} (${2 * n} adapter GEMMs and ${n} adds removed; the base GEMMs' dW' gives dA and dB)`);
      if (skippedByCost) notes.push(`${st.name}: ${skippedByCost} LoRA site${skippedByCost === 1 ? '' : 's'} left unmerged: the merged form costs more at ${T} tokens a micro-batch`);
    }
    return { changes, notes };
  },
};
