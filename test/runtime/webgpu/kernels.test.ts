/**
 * Every WGSL kernel (src/runtime/webgpu/kernels/) against its reference (src/runtime/kernels/reference.ts):
 * forward outputs and gradients on random data, awkward shapes included (sizes that are not multiples of the
 * workgroup, one token, one head, kvHeads < heads). Ours run on WebGPU (llvmpipe on a CPU), the reference on
 * the tfjs cpu backend. Needs a WebGPU adapter: see kernels-support.ts for skip-or-fail.
 */
import { afterAll, expect, it } from 'vitest';
import { reference, type KernelContext, type KernelStep } from '../../../src/runtime/kernels/reference.js';
import { initBackend, type Tensor } from '../../../src/runtime/tfjs/index.js';
import { attention, segmentTensor } from '../../../src/runtime/webgpu/kernels/attention.js';
import { rmsnorm } from '../../../src/runtime/webgpu/kernels/rmsnorm.js';
import { rope, ropeTables } from '../../../src/runtime/webgpu/kernels/rope.js';
import { swiglu } from '../../../src/runtime/webgpu/kernels/swiglu.js';
import { compare, describeGpu, randn } from './kernels-support.js';

const step = (op: KernelStep['op'], attrs: Record<string, unknown>, inputs: string[] = [], outputs: string[] = ['y']): KernelStep => ({ node: 'n', op, inputs, outputs, attrs });
/**
 * A batch context of `rows` rows of S tokens: each row packs examples of random lengths (positions restart,
 * segments 1, 2, ...) and ends with `pad` padding tokens (segment 0, position 0).
 */
function batchCtx(rows: number, S: number, seed: number, pad = 2): KernelContext {
  let x = seed;
  const next = () => ((x = (x * 1103515245 + 12345) >>> 0), x / 2 ** 32);
  const positions = new Int32Array(rows * S);
  const segments = new Int32Array(rows * S);
  for (let r = 0; r < rows; r++) {
    let seg = 1;
    let pos = 0;
    const real = Math.max(1, S - pad);
    for (let t = 0; t < S; t++) {
      if (t >= real) continue;
      if (pos > 0 && next() < 0.15) {
        seg++;
        pos = 0;
      }
      segments[r * S + t] = seg;
      positions[r * S + t] = pos++;
    }
  }
  return { rows, seqLen: S, positions, segments, cache: new Map() };
}
const noCtx = { rows: 1, seqLen: 1, positions: new Int32Array(1), segments: new Int32Array(1), cache: new Map<string, Tensor>() };

describeGpu('WGSL kernels match the reference', () => {
  afterAll(() => initBackend('cpu'));

  it.each([
    [1, 7, true],
    [5, 130, true],
    [33, 64, false],
    [300, 24, true],
  ])('rmsnorm T=%i D=%i weight=%s', async (T, D, withW) => {
    const args = [randn(1, [T, D], 2), ...(withW ? [randn(2, [D])] : [])];
    const s = step('rmsnorm', { eps: 1e-6 });
    const c = await compare(
      (xs) => [rmsnorm(xs[0]!, xs[1], 1e-6)],
      (xs) => reference.rmsnorm(xs, s, noCtx),
      args,
    );
    expect(c.worst, c.what).toBeLessThan(2e-5);
  });

  it.each([[1], [37], [1000]])('swiglu n=%i', async (n) => {
    const c = await compare((xs) => [swiglu(xs[0]!, xs[1]!)], (xs) => reference.swiglu(xs, step('swiglu', {}), noCtx), [randn(3, [n], 4), randn(4, [n])]);
    expect(c.worst, c.what).toBeLessThan(2e-5);
  });

  it.each([
    // rows, S, heads, kvHeads, headDim
    [1, 1, 1, 1, 2],
    [2, 9, 4, 2, 6],
    [1, 40, 3, 1, 16],
  ])('rope rows=%i S=%i heads=%i kvHeads=%i d=%i', async (rows, S, H, KV, d) => {
    const ctx = batchCtx(rows, S, 5);
    const T = rows * S;
    const attrs = { theta: 10000, headDim: d, heads: H, kvHeads: KV };
    const c = await compare(
      (xs) => {
        const [cos, sin] = ropeTables(ctx.positions, d, 10000);
        return [rope(xs[0]!, cos, sin, H, d), rope(xs[1]!, cos, sin, KV, d)];
      },
      (xs) => reference.rope(xs, step('rope', attrs, [], ['q', 'k']), { ...ctx, cache: new Map() }),
      [randn(6, [T, H * d]), randn(7, [T, KV * d])],
    );
    expect(c.worst, c.what).toBeLessThan(2e-5);
  });

  it.each([
    // rows, S, heads, kvHeads, headDim, causal
    [1, 1, 1, 1, 8, true],
    [2, 9, 4, 2, 6, true],
    [1, 70, 2, 1, 16, true],
    [2, 5, 3, 3, 10, false],
    [2, 5, 4, 2, 10, false],
    [2, 5, 3, 3, 10, true],
    [1, 9, 1, 1, 2, true],
    [1, 67, 2, 1, 72, true],
  ])('attention rows=%i S=%i heads=%i kvHeads=%i d=%i causal=%s', async (rows, S, H, KV, d, causal) => {
    const ctx = batchCtx(rows, S, 11);
    const T = rows * S;
    const a = { rows, seqLen: S, heads: H, kvHeads: KV, headDim: d, causal };
    const c = await compare(
      (xs) => [attention(xs[0]!, xs[1]!, xs[2]!, segmentTensor(ctx.segments), a)],
      (xs) => reference.attention(xs, step('attention', { heads: H, kvHeads: KV, headDim: d, causal }), { ...ctx, cache: new Map() }),
      [randn(8, [T, H * d], 1.5), randn(9, [T, KV * d], 1.5), randn(10, [T, KV * d])],
    );
    expect(c.worst, c.what).toBeLessThan(1e-4);
  });
});
