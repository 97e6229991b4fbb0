/**
 * fuse-optimizer: one optimizer dispatch (AdamW or SGD) per stage over every trainable tensor, instead of
 * one dispatch per tensor.
 *
 * Contract, per stage that has trainable tensors (graph values of kind `param` whose state in the stage is
 * `trainable`):
 *  - `StageIR.fusedOptimizer` becomes true and `StageIR.optimizerLayout` records the flat layout the
 *    runtime allocates the trainable tensors, their gradients and their optimizer moments in: one entry
 *    `{param, offset, size}` per tensor, in the order the graph declares them, offsets and sizes in
 *    elements (f32); each offset is a multiple of `align` (64 elements = 256 bytes, WebGPU's
 *    minStorageBufferOffsetAlignment, so every tensor can still be bound as its own view); `size` is the
 *    total length of each flat buffer, padding included. Entries never overlap and cover every tensor once.
 *  - The update rule is elementwise and the stage has one learning rate, one weight decay and one set of
 *    betas for all its tensors, so one kernel over the flat buffers computes exactly what the per-tensor
 *    dispatches compute (gradient clipping already uses the global norm over all tensors).
 *  - Stages with no trainable tensor are left alone (no layout, no dispatch).
 * The graph itself is not changed. changes = dispatches saved, n - 1 per stage with n trainable tensors.
 */
import type { IR, StageIR } from '../../ir/types.js';
import type { Pass } from '../pass.js';

/** Offsets are multiples of this many elements (256 bytes of f32). */
export const OPTIMIZER_ALIGN = 64;

/** The trainable tensors of a stage, in the order its graph declares them (the emitter uses the same order). */
export function trainableTensors(ir: IR, st: StageIR): string[] {
  return [...st.graph.values.values()].filter((v) => v.kind === 'param' && ir.params.get(v.id)?.states[st.name] === 'trainable').map((v) => v.id);
}

export const fuseOptimizer: Pass = {
  name: 'fuse-optimizer',
  description: 'one fused optimizer dispatch per stage over all trainable tensors, laid out in flat buffers',
  run(ir) {
    let changes = 0;
    const notes: string[] = [];
    for (const st of ir.stages) {
      const ids = trainableTensors(ir, st);
      if (!ids.length) continue;
      let offset = 0;
      const entries = ids.map((param) => {
        const size = ir.params.get(param)!.shape.reduce((a, b) => a * b, 1);
        const e = { param, offset, size };
        offset += Math.ceil(size / OPTIMIZER_ALIGN) * OPTIMIZER_ALIGN;
        return e;
      });
      st.fusedOptimizer = true;
      st.optimizerLayout = { align: OPTIMIZER_ALIGN, size: offset, entries };
      changes += ids.length - 1;
      const elems = entries.reduce((s, e) => s + e.size, 0);
      notes.push(`${st.name}: ${ids.length} ${st.settings.optimizer.kind} dispatches -> 1 over ${elems.toLocaleString('en-US')} parameters (${offset - elems} elements of alignment padding)`);
    }
    return { changes, notes };
  },
};
