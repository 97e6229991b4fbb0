/** Memory accounting shared by the memory-planning pass and the emitter (which uses it when the pass is off). */
import type { IR, MemoryPlan, StageIR } from './types.js';
import { numel } from './types.js';

export function paramBytes(ir: IR, st: StageIR): { params: number; grads: number; optimizer: number } {
  let params = 0;
  let trainable = 0;
  for (const p of ir.params.values()) {
    const s = p.states[st.name];
    if (s === 'absent' || s === 'dropped' || s === 'merged') continue;
    const n = p.shape.reduce((a, b) => a * b, 1) * 4;
    params += n;
    if (s === 'trainable') trainable += n;
  }
  const slots = st.settings.optimizer.kind === 'adamw' ? 2 : st.settings.optimizer.momentum > 0 ? 1 : 0;
  return { params, grads: trainable, optimizer: slots * trainable };
}

/** No reuse: every activation of the micro-batch kept for the backward pass. */
export function naiveMemory(ir: IR, st: StageIR): MemoryPlan {
  const T = st.settings.microBatch * st.settings.maxLen;
  const buffers = [...st.graph.values.values()]
    .filter((v) => v.kind === 'activation' || v.kind === 'input')
    .map((v, i) => ({ id: `b${i}`, bytes: numel(v.shape, T) * 4, values: [v.id], live: [0, st.graph.nodes.length * 2] as [number, number] }));
  const activations = buffers.reduce((s, b) => s + b.bytes, 0);
  const pb = paramBytes(ir, st);
  return {
    microBatch: st.settings.microBatch,
    recompute: st.settings.recompute,
    buffers,
    bytes: { ...pb, activations, peak: pb.params + pb.grads + pb.optimizer + activations },
    ...(st.settings.memoryBytes !== undefined ? { budget: st.settings.memoryBytes } : {}),
    notes: ['no memory planning (every activation has its own buffer)'],
  };
}
