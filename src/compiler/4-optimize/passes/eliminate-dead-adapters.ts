/**
 * eliminate-dead-adapters: an adapter that has never been trained and is not trained in this stage still
 * has B = 0, so its contribution is exactly zero: its ops leave the stage graph and its tensors are not
 * loaded for the stage. (Dropped and merged adapters never enter a stage graph: lowering leaves them out.)
 * Contract: removes only terms whose value is identically zero; rewires the sums that read them. Not dead,
 * though B = 0: an adapter the stage's exit transitions read (a merge or fold needs its tensors; a freeze or
 * unfreeze keeps them for later stages; `drop X.experts where load ...` needs the loads its router measured in
 * the stage), an adapter a constraint of the stage reads (its A or B enters the penalty, B = 0 or not) and a
 * mixture whose router adds a load-balancing term to the loss.
 */
import { GraphEditor } from '../../ir/edit.js';
import type { Node } from '../../ir/types.js';
import type { Pass } from '../pass.js';

export const eliminateDeadAdapters: Pass = {
  name: 'eliminate-dead-adapters',
  description: 'remove adapters whose output is zero in a stage (never trained, B = 0) from its graph',
  run(ir) {
    let changes = 0;
    const notes: string[] = [];
    for (const st of ir.stages) {
      const exitReads = new Set(st.exit.filter((t) => t.op !== 'drop' || t.condition).map((t) => t.adapter));
      const routerLoss = new Set(ir.pipeline.adapters.filter((a) => a.type === 'moe_lora' && a.loadBalance > 0).map((a) => a.name));
      const constraintReads = new Set(st.constraints.flatMap((c) => [c.target, ...c.others]));
      const dead = new Set(st.adapters.inactive.filter((a) => !exitReads.has(a) && !routerLoss.has(a) && !constraintReads.has(a)));
      if (!dead.size) continue;
      const ed = new GraphEditor(st.graph);
      const doomed = st.graph.nodes.filter((n) => n.adapter && dead.has(n.adapter));
      const sites = new Set(doomed.map((n) => `${n.adapter}@${n.site}`));
      changes += sites.size;
      // Outputs of the doomed subgraph that feed the site sum: unhook them from their add.
      const doomedOut = new Set(doomed.flatMap((n) => n.outputs));
      const removeAdds: Node[] = [];
      for (const add of st.graph.nodes.filter((n) => n.op === 'add' && n.inputs.some((i) => doomedOut.has(i)))) {
        const keep = add.inputs.find((i) => !doomedOut.has(i))!;
        ed.rewire(add.outputs[0], keep);
        removeAdds.push(add);
      }
      ed.remove([...doomed, ...removeAdds]);
      for (const p of st.graph.values.values()) if (p.kind === 'param' && ir.params.get(p.id) && dead.has(ir.params.get(p.id)!.owner)) ir.params.get(p.id)!.states[st.name] = 'absent';
      ed.pruneValues();
      for (const a of dead) notes.push(`${st.name}: ${a} is untrained (B = 0) and left out`);
    }
    return { changes, notes };
  },
};
