/**
 * fold-frozen-lora: in a stage that does not train the base, a plain LoRA that is frozen at stage entry
 * (StageIR.adapters.frozen; never an inactive one) contributes the constant s·B·A to its site. The pass
 * folds it into a stage copy of the base weight, W_stage = W + s·B·A, computed once at stage entry, so the
 * adapter costs no matmul in the training step.
 *
 * Contract, per stage and per such adapter, at every site where it is applied:
 *  - its `lora_down` and `lora_up` nodes leave the graph, and so does the `add` that summed its output into
 *    the site (that add's consumers read the add's other operand instead);
 *  - the site's `linear` reads the stage copy `<site>.weight.folded` (a `const` value of the base weight's
 *    shape) instead of the base weight param; `attrs.foldedFrom` names the base weight and `attrs.folded`
 *    the adapters folded into it, in fold order;
 *  - one entry transition `{op: 'fold', adapter, sites, note}` tells the runtime to build the copies; the
 *    A/B tensors themselves stay unchanged (exports read them), their state in the stage becomes
 *    `folded`, and constraint terms (`ortho_penalty`) keep reading A (or B) as constants;
 *  - the adapter moves from `adapters.frozen` to `adapters.folded`.
 * Not folded (the result would change): adapters in stages that train the base (W changes every step),
 * mixtures (`moe_lora`: routing is input dependent) and adapters with dropout > 0 (dropout on the adapter
 * input still applies during training, so s·B·A·dropout(x) is not a constant times x).
 * changes = sites folded.
 */
import { GraphEditor } from '../../ir/edit.js';
import { GraphIndex } from '../../ir/graph-index.js';
import { loraTermOf, removeLoraTerm } from '../../ir/lora.js';
import type { Transition } from '../../ir/types.js';
import type { Pass } from '../pass.js';

export const foldFrozenLora: Pass = {
  name: 'fold-frozen-lora',
  description: 'fold each frozen plain LoRA into a stage copy of its base weight at stage entry (W + s·B·A): no adapter matmul in the step',
  run(ir) {
    let changes = 0;
    const notes: string[] = [];
    for (const st of ir.stages) {
      if (st.trainBase || !st.adapters.frozen.length) continue;
      const g = st.graph;
      const ed = new GraphEditor(g);
      const ix = new GraphIndex(g);
      const readByConstraint = new Set(g.nodes.filter((n) => n.op === 'ortho_penalty' || n.op === 'ortho_penalty_batched').flatMap((n) => n.inputs));
      for (const name of [...st.adapters.frozen]) {
        const decl = ir.pipeline.adapters.find((a) => a.name === name);
        if (!decl || decl.type !== 'lora') continue;
        if (decl.lora.dropout > 0) {
          notes.push(`${st.name}: ${name} is frozen but has dropout ${decl.lora.dropout}; not folded`);
          continue;
        }
        const downs = g.nodes.filter((n) => n.op === 'lora_down' && n.adapter === name);
        const sites: string[] = [];
        let constant = false;
        let scale: number | undefined;
        for (const down of downs) {
          const site = down.site!;
          // The down projection's output must feed only the up projection, and that only one add.
          const term = loraTermOf(ix, down);
          if (!term) continue;
          const { up, linear } = term;
          scale ??= up.attrs.scale as number;
          removeLoraTerm(ix, term);
          // The base GEMM reads the stage copy of its weight.
          const w = linear.inputs[1];
          const base = (linear.attrs.foldedFrom as string | undefined) ?? w;
          const folded = `${site}.weight.folded`;
          if (!g.values.has(folded)) ed.value(folded, [...g.values.get(base)!.shape], 'const');
          linear.inputs[1] = folded;
          linear.attrs = { ...linear.attrs, foldedFrom: base, folded: [...((linear.attrs.folded as string[] | undefined) ?? []), name] };
          for (const p of [down.inputs[1], up.inputs[1]]) {
            const prm = ir.params.get(p);
            if (prm) prm.states[st.name] = 'folded';
            if (readByConstraint.has(p)) constant = true;
          }
          sites.push(site);
        }
        if (!sites.length) continue;
        changes += sites.length;
        const t: Transition = {
          op: 'fold',
          adapter: name,
          sites,
          note: `W_stage = W + ${scale}·B·A at ${sites.length} site${sites.length === 1 ? '' : 's'}, computed once at stage entry into a stage copy of each base weight; A and B stay unchanged for exports${constant ? ' and as constants of the orthogonality terms' : ''}`,
        };
        st.entry.push(t);
        if (downs.length === sites.length) {
          st.adapters.frozen = st.adapters.frozen.filter((a) => a !== name);
          st.adapters.folded = [...st.adapters.folded, name];
        }
        notes.push(`${st.name}: ${name} folded into the base weight at ${sites.length} sites (${2 * sites.length} adapter GEMMs and ${sites.length} adds removed)`);
      }
      ix.commit();
      ed.pruneValues();
    }
    return { changes, notes };
  },
};
