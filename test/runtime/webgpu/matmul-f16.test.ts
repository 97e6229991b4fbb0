/**
 * The f16 training path's BatchMatMul replacement (src/runtime/webgpu/matmul-f16.ts): which products it takes,
 * how it flattens a batch of A against a shared B, transposes, shapes and gradients. llvmpipe has no
 * subgroup matrices, so here the replacement routes through the f32 WGSL GEMM (the same plumbing) or through the
 * f16 GEMM's emulated spelling with its operands rounded to f16 (the f16 path's arithmetic: the loss curve test);
 * the tensor cores themselves are checked against an f32 product on a GPU by bench/gpu.ts and in gemm.test.ts.
 */
import { afterEach, beforeAll, expect, it } from 'vitest';
import { initBackend, tf } from '../../../src/runtime/tfjs/index.js';
import { gemmKernel } from '../../../src/runtime/webgpu/gemm.js';
import { f16MatmulCount, useF16Matmul, useF16MatmulEmulated } from '../../../src/runtime/webgpu/matmul-f16.js';
import { createStageRunner } from '../../../src/runtime/executor.js';
import { compileInline, syntheticBatch, TINY } from '../executor/helpers.js';
import { compare, describeGpu, randn } from './kernels-support.js';

describeGpu('f16 matmul path (BatchMatMul replacement)', () => {
  beforeAll(async () => {
    await initBackend('webgpu');
  });
  afterEach(() => useF16Matmul(false));
  const cases: { name: string; a: number[]; b: number[]; tA: boolean; tB: boolean; taken: boolean }[] = [
    { name: 'A·B', a: [40, 70], b: [70, 33], tA: false, tB: false, taken: true },
    { name: 'A·Bᵀ', a: [40, 70], b: [33, 70], tA: false, tB: true, taken: true },
    { name: 'Aᵀ·B', a: [70, 40], b: [70, 33], tA: true, tB: false, taken: true },
    { name: 'Aᵀ·Bᵀ', a: [70, 40], b: [33, 70], tA: true, tB: true, taken: true },
    { name: 'batch of A, shared B (a linear layer)', a: [3, 20, 70], b: [70, 33], tA: false, tB: false, taken: true },
    { name: 'batch of A, shared Bᵀ', a: [3, 20, 70], b: [33, 70], tA: false, tB: true, taken: true },
    { name: 'batched B (attention-like) keeps tfjs', a: [3, 20, 40], b: [3, 40, 33], tA: false, tB: false, taken: false },
    { name: 'tiny product keeps tfjs', a: [4, 5], b: [5, 6], tA: false, tB: false, taken: false },
  ];
  for (const c of cases) {
    it(`${c.name}: forward and gradients equal tfjs's, ${c.taken ? 'through the replacement' : 'left to tfjs'}`, async () => {
      useF16Matmul(true, gemmKernel);
      const { worst, what, gpu } = await compare(([a, b]) => [tf.matMul(a!, b!, c.tA, c.tB)], ([a, b]) => [tf.matMul(a!, b!, c.tA, c.tB)], [randn(1, c.a), randn(2, c.b, 1, c.b.length === c.a.length)]);
      expect(worst, what).toBeLessThan(1e-4);
      expect(gpu.outs[0]!.length).toBe(c.a.slice(0, -2).reduce((x, y) => x * y, 1) * (c.tA ? c.a.at(-1)! : c.a.at(-2)!) * (c.tB ? c.b.at(-2)! : c.b.at(-1)!));
      // Forward and the gradient products (each a matMul) go through the replacement when it takes them (tfjs
      // cannot differentiate a broadcast B, so there B is held constant).
      if (c.taken) expect(f16MatmulCount()).toBeGreaterThanOrEqual(c.b.length === c.a.length ? 3 : 2);
      else expect(f16MatmulCount()).toBe(0);
    });
  }

  it('switching off puts tfjs\'s kernel back', async () => {
    useF16Matmul(true, gemmKernel);
    useF16Matmul(false);
    const before = f16MatmulCount();
    const y = tf.matMul(tf.ones([40, 70]), tf.ones([70, 33]));
    expect((await y.data())[0]).toBe(70);
    expect(f16MatmulCount()).toBe(before);
    tf.dispose(y);
  });

  it('a training stage on webgpu takes its linear products through the replacement and trains to the same losses', async () => {
    const plan = compileInline(
      `pipeline f16
model base = ${TINY.replace('hidden: 32, ffn: 64', 'hidden: 64, ffn: 96')}
data d = jsonl("d.jsonl")
adapter know = lora(r: 8, alpha: 16) at layers[*].mlp.{gate, up, down}
stage one {
  train know on d
  steps 3
  lr 1e-2
  batch 2
  micro_batch 2
  max_len 40
}
`,
      [1],
    ).plans[0]!;
    const mb = syntheticBatch(2, 40, 5);
    const losses = async (replace: boolean) => {
      if (replace) useF16Matmul(true, gemmKernel);
      const runner = await createStageRunner(plan, 'one', { backend: 'webgpu', seed: 3, matmul: 'keep' });
      const out: number[] = [];
      for (let i = 0; i < 3; i++) out.push((await runner.step([mb])).loss);
      runner.dispose();
      const taken = f16MatmulCount();
      useF16Matmul(false);
      return { out, taken };
    };
    const plain = await losses(false);
    const replaced = await losses(true);
    expect(replaced.taken).toBeGreaterThan(0);
    for (let i = 0; i < 3; i++) expect(Math.abs(replaced.out[i]! - plain.out[i]!) / plain.out[i]!).toBeLessThan(1e-4);
    expect(plain.out[2]).toBeLessThan(plain.out[0]!);
  });

  it("the f16 path's loss curve (operands rounded to f16, f32 sums and master weights) stays within 0.5% of the f32 path's on a MedCare-like stage one", async () => {
    // Issue 5's quality check, which bench/gpu.ts makes on a GPU, here on any adapter: every linear product of
    // the stage (forward and backward) that the f16 path takes goes through the f16 GEMM in its emulated
    // spelling, whose cast rounds each operand to f16 as the tensor-core path stores it; the f32 side runs the
    // plan's own WGSL products. Slow the first time on llvmpipe (~40 s: a shader per product shape), then cached.
    const steps = 8;
    const plan = compileInline(
      `pipeline f16curve
model base = ${TINY.replace('hidden: 32', 'hidden: 64').replace('kv_heads: 1', 'kv_heads: 2')}
data d = jsonl("d.jsonl")
adapter attn      = lora(r: 8, alpha: 16)                          at layers[*].attn.{q, k, v, o}
adapter knowledge = lora(r: 8, alpha: 16, experts: 2)              at layers[*].mlp.{gate, up, down}
adapter noise     = moe_lora(experts: 4, top_k: 2, r: 8, alpha: 16) at layers[*].mlp.{gate, up, down}
stage aggregate {
  train attn, knowledge, noise on d
  steps ${steps}
  lr 1e-2
  batch 2
  micro_batch 2
  max_len 48
}
`,
      [1],
    ).plans[0]!;
    const batches = [1, 2, 3, 4].map((k) => syntheticBatch(2, 48, 20 + k));
    const curve = async (f16: boolean) => {
      if (f16) useF16MatmulEmulated(true);
      try {
        const runner = await createStageRunner(plan, 'aggregate', { backend: 'webgpu', seed: 5, matmul: 'keep' });
        const losses: number[] = [];
        for (let i = 0; i < steps; i++) losses.push((await runner.step([batches[i % 4]!])).loss);
        runner.dispose();
        return { losses, products: f16MatmulCount() };
      } finally {
        useF16MatmulEmulated(false);
      }
    };
    const f32 = await curve(false);
    const f16 = await curve(true);
    expect(f16.products).toBeGreaterThan(steps * 10);
    const rel = f32.losses.map((l, i) => Math.abs(f16.losses[i]! - l) / Math.abs(l));
    const worst = Math.max(...rel);
    expect(worst, `f32 ${f32.losses.map((l) => l.toFixed(5)).join(' ')} / f16 ${f16.losses.map((l) => l.toFixed(5)).join(' ')}`).toBeLessThan(5e-3); // measured 2.8e-4 here; bench/gpu.ts allows 2% on a GPU
    // The rounding took effect (the curves are not the same computation), and both train.
    expect(worst).toBeGreaterThan(1e-7);
    for (const c of [f32.losses, f16.losses]) expect(Math.min(...c.slice(steps / 2))).toBeLessThan(c[0]!);
  }, 300_000);
});

