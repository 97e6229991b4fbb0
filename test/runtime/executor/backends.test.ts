/**
 * The tfjs backends run the same reference kernels: the `wasm` backend (XNNPACK, SIMD) must give the `cpu`
 * backend's loss, gradients and weights (within f32 summation-order tolerance) on a stage with every kind
 * of adapter. This is what caught tfjs-backend-wasm 4.22's float32 OneHot writing int bit patterns (a zero
 * cross-entropy) and its missing UnsortedSegmentSum (the embedding gradient): see src/runtime/tfjs/wasm-extra.ts.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { createStageRunner } from '../../../src/runtime/executor.js';
import { initBackend, tf } from '../../../src/runtime/tfjs/index.js';
import { compileInline, relErr, syntheticBatch, TINY, worst } from './helpers.js';

const PIPELINE = `pipeline backends
model base = ${TINY}
data d = jsonl("d.jsonl")

adapter attn  = lora(r: 4, alpha: 8)                                                   at layers[*].attn.{q, k, v, o}
adapter noise = moe_lora(experts: 4, top_k: 2, r: 4, alpha: 8, shared: 1, load_balance: 0.01) at layers[*].mlp.{gate, up, down}

stage one {
  train base, attn, noise on d
  steps 3
  lr 1e-2
  schedule constant
  weight_decay 0.01
  batch 4
  micro_batch 2
  max_len 32
}
`;

async function trainOn(backend: string) {
  await initBackend(backend);
  const [plan] = compileInline(PIPELINE, [1]).plans;
  const mbs = [syntheticBatch(2, 32, 21), syntheticBatch(2, 32, 22)];
  const r = await createStageRunner(plan!, 'one', { backend });
  const g = await r.gradients(mbs);
  const losses = [(await r.step(mbs)).loss, (await r.step(mbs)).loss];
  const params = await r.parameters();
  r.dispose();
  return { g, losses, params };
}

describe('the wasm backend computes what the cpu backend computes', () => {
  afterAll(() => initBackend('cpu'));

  it('same loss, gradients and weights after two AdamW steps', async () => {
    const cpu = await trainOn('cpu');
    const wasm = await trainOn('wasm');
    expect(tf.getBackend()).toBe('wasm');
    expect(cpu.g.loss).toBeGreaterThan(1);
    expect(relErr([wasm.g.loss], [cpu.g.loss])).toBeLessThan(1e-5);
    expect(relErr([wasm.g.balance], [cpu.g.balance])).toBeLessThan(1e-4);
    expect(worst(wasm.g.grads, cpu.g.grads).err).toBeLessThan(1e-3);
    expect(relErr(wasm.losses, cpu.losses)).toBeLessThan(1e-4);
    // Adam divides by sqrt(v): where a gradient is ~0 (A of a LoRA whose B starts at 0) summation-order noise
    // becomes a step of up to lr, so the weights agree to lr·steps absolutely, not to 1e-3 relatively.
    const w = worst(wasm.params, cpu.params);
    const [a, b] = [wasm.params.get(w.key)!, cpu.params.get(w.key)!];
    expect(Math.max(...Array.from(a, (x, i) => Math.abs(x - b[i]!)))).toBeLessThan(2 * 1e-2);
  });
});
