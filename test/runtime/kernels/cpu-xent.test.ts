/**
 * The CPU table's lm_head_xent (src/runtime/kernels/cpu-xent.ts: head GEMM and softmax cross-entropy over
 * chunks of rows) against the reference kernel: the loss and the gradients of x and W, on the cpu and wasm
 * backends, with the rows' exponentials in WebAssembly (V a multiple of 4: odd and even vector counts) and in
 * JavaScript (other V, and MCPC_XENT_WASM=0), for one token, several chunks (V large), labels outside [0, V),
 * zero masks, an all-zero mask, logits in the hundreds; a NaN logit makes the loss NaN on both paths; and
 * only the gradients autodiff asks for run. dx from the dlogits the forward kept (under a tape) and recomputed
 * (MCPC_XENT_SAVE=0) alike, for an upstream gradient other than 1 too.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { cpuKernels } from '../../../src/runtime/kernels/cpu.js';
import { keptDlogits, xentDlogitsCounts } from '../../../src/runtime/kernels/cpu-xent.js';
import { reference, type KernelStep } from '../../../src/runtime/kernels/reference.js';
import { initBackend, tf, type Tensor } from '../../../src/runtime/tfjs/index.js';

function rnd(seed: number) {
  let x = seed;
  return () => ((x = (Math.imul(x, 1103515245) + 12345) | 0) >>> 8) / 2 ** 23 - 1;
}
const step: KernelStep = { node: 'loss', op: 'lm_head_xent', inputs: ['x', 'W', 'labels', 'mask'], outputs: ['loss'], attrs: {} };
const ctx = { rows: 1, seqLen: 1, positions: new Int32Array(1), segments: new Int32Array(1), cache: new Map<string, Tensor>() };
const table = cpuKernels({ kernels: [] });

function lossAndGrads(kernel: typeof reference.lm_head_xent, x: Tensor, W: Tensor, labels: Tensor, mask: Tensor): Float32Array[] {
  return tf.tidy(() => {
    const f = (a: Tensor, b: Tensor) => kernel([a, b, labels, mask], step, ctx)[0]! as tf.Scalar;
    const { value, grads } = tf.valueAndGrads(f)([x, W]);
    return [value, ...grads].map((t) => Float32Array.from(t.dataSync()));
  });
}

const relErr = (a: Float32Array, b: Float32Array) => {
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    num = Math.max(num, Math.abs(a[i]! - b[i]!));
    den = Math.max(den, Math.abs(b[i]!));
  }
  return num / Math.max(den, 1e-6);
};

afterAll(() => initBackend('cpu'));

describe('lm_head_xent on the CPU table', () => {
  for (const backend of ['cpu', 'wasm'] as const)
    for (const wasmRows of ['1', '0'])
    it(`equals the reference: loss, dx, dW (${backend}, MCPC_XENT_WASM=${wasmRows})`, async () => {
      await initBackend(backend);
      process.env.MCPC_XENT_WASM = wasmRows;
      const r = rnd(5);
      for (const [T, d, V, pattern, scale] of [
        [1, 3, 5, 'all', 2],
        [7, 4, 9, 'some', 2],
        [300, 6, 4000, 'some', 2],
        [33, 5, 11, 'invalid', 2],
        [9, 3, 6, 'none', 2],
        [1, 3, 4, 'all', 2],
        [5, 4, 8, 'some', 2],
        [17, 5, 12, 'invalid', 2],
        [64, 8, 256, 'some', 2],
        [40, 6, 20, 'some', 150],
      ] as const) {
        const x = tf.tensor2d(Float32Array.from({ length: T * d }, r), [T, d]);
        const W = tf.tensor2d(Float32Array.from({ length: V * d }, () => r() * scale), [V, d]);
        const lab = Int32Array.from({ length: T }, (_, t) => (pattern === 'invalid' && t % 4 === 1 ? (t % 8 === 1 ? -1 : V) : Math.floor(Math.abs(r()) * V) % V));
        const msk = Float32Array.from({ length: T }, (_, t) => (pattern === 'all' ? 1 : pattern === 'none' ? 0 : t % 3 === 2 ? 0 : 1));
        const labels = tf.tensor1d(lab, 'int32');
        const mask = tf.tensor1d(msk);
        const want = lossAndGrads(reference.lm_head_xent, x, W, labels, mask);
        const got = lossAndGrads(table.lm_head_xent, x, W, labels, mask);
        ['loss', 'dx', 'dW'].forEach((what, i) => expect(relErr(got[i]!, want[i]!), `${what} T=${T} V=${V} ${pattern}`).toBeLessThan(2e-5));
        tf.dispose([x, W, labels, mask]);
      }
      delete process.env.MCPC_XENT_WASM;
    });

  it('dx from the dlogits the forward kept equals the recomputed one and the reference, dy = 1 and dy = 3; nothing kept outlives it', async () => {
    for (const backend of ['wasm', 'cpu'] as const) {
      await initBackend(backend);
      const r = rnd(11);
      for (const [T, d, V, scale] of [[40, 6, 20, 3], [64, 8, 256, 1], [300, 6, 4000, 3], [5, 4, 9, 1]] as const) {
        const x = tf.tensor2d(Float32Array.from({ length: T * d }, r), [T, d]);
        const W = tf.tensor2d(Float32Array.from({ length: V * d }, () => r() * 2), [V, d]);
        const labels = tf.tensor1d(Int32Array.from({ length: T }, () => Math.floor(Math.abs(r()) * V) % V), 'int32');
        const mask = tf.tensor1d(Float32Array.from({ length: T }, (_, t) => (t % 3 === 2 ? 0 : 1)));
        const dx = (kernel: typeof reference.lm_head_xent) => tf.tidy(() => Float32Array.from(tf.grad((a: Tensor) => tf.mul(kernel([a, W, labels, mask], step, ctx)[0]!, scale) as tf.Scalar)(x).dataSync()));
        const before = { ...xentDlogitsCounts };
        const kept = dx(table.lm_head_xent);
        expect(xentDlogitsCounts.saved - before.saved, `${backend} T=${T} V=${V}: kept`).toBe(1);
        process.env.MCPC_XENT_SAVE = '0';
        const again = dx(table.lm_head_xent);
        delete process.env.MCPC_XENT_SAVE;
        expect(xentDlogitsCounts.recomputed - before.recomputed).toBe(1);
        const want = dx(reference.lm_head_xent);
        // dy = 1: the same products in the same order
        if (scale === 1) expect(Array.from(kept), `${backend} T=${T} V=${V}: kept vs recomputed`).toEqual(Array.from(again));
        expect(relErr(kept, again), `${backend} T=${T} V=${V}`).toBeLessThan(1e-5); // dy after the product, not before
        expect(relErr(kept, want), `${backend} T=${T} V=${V}: reference`).toBeLessThan(2e-5);
        tf.dispose([x, W, labels, mask]);
      }
      // a forward under a tape whose backward never comes (no gradient of x asked): swept by the next forward
      const x = tf.tensor2d([0.1, 0.2, 0.3, 0.4], [2, 2]);
      const W = tf.tensor2d([1, 2, 3, 4, 5, 6, 7, 8], [4, 2]);
      const labels = tf.tensor1d([1, 2], 'int32');
      const mask = tf.tensor1d([1, 1]);
      tf.tidy(() => tf.grad((w: Tensor) => table.lm_head_xent([x, w, labels, mask], step, ctx)[0]! as tf.Scalar)(W));
      tf.dispose(table.lm_head_xent([x, W, labels, mask], step, ctx)[0]!);
      expect(keptDlogits(), backend).toBe(0);
      tf.dispose([x, W, labels, mask]);
    }
  });

  it('a NaN logit makes the loss NaN, in WebAssembly and JavaScript rows alike', async () => {
    await initBackend('wasm');
    for (const V of [8, 9]) {
      const x = tf.tensor2d([0.1, NaN, 0.3, 0.4], [2, 2]);
      const W = tf.tensor2d(Float32Array.from({ length: V * 2 }, (_, i) => i / 10), [V, 2]);
      const labels = tf.tensor1d([1, 2], 'int32');
      const mask = tf.tensor1d([1, 1]);
      const loss = table.lm_head_xent([x, W, labels, mask], step, ctx)[0]!;
      expect(loss.dataSync()[0], `V=${V}`).toBeNaN();
      tf.dispose([x, W, labels, mask, loss]);
    }
  });

  it('rows outside the loss (mask 0) are not formed: a NaN there leaves the loss and dx finite, dx 0 on that row', async () => {
    await initBackend('wasm');
    const x = tf.tensor2d([0.1, NaN, 0.3, 0.4], [2, 2]);
    const W = tf.tensor2d(Float32Array.from({ length: 16 }, (_, i) => i / 10), [8, 2]);
    const labels = tf.tensor1d([1, 2], 'int32');
    const mask = tf.tensor1d([0, 1]);
    const [loss, dx] = tf.tidy(() => {
      const f = (a: Tensor) => table.lm_head_xent([a, W, labels, mask], step, ctx)[0]! as tf.Scalar;
      const { value, grads } = tf.valueAndGrads(f)([x]);
      return [value.dataSync()[0]!, Array.from(grads[0]!.dataSync())];
    }) as [number, number[]];
    expect(Number.isFinite(loss)).toBe(true);
    expect(dx.slice(0, 2)).toEqual([0, 0]);
    expect(dx.slice(2).every(Number.isFinite)).toBe(true);
    tf.dispose([x, W, labels, mask]);
  });

  it('runs one kernel forward and only the gradients asked for', async () => {
    await initBackend('wasm');
    const x = tf.tensor2d([0.1, -0.2, 0.3, 0.4, 0.5, -0.6], [3, 2]);
    const W = tf.tensor2d([1, 2, 3, 4, 5, 6, 7, 8], [4, 2]);
    const labels = tf.tensor1d([0, 3, 1], 'int32');
    const mask = tf.tensor1d([1, 1, 0]);
    const fwd = await tf.profile(() => table.lm_head_xent([x, W, labels, mask], step, ctx)[0]);
    expect(fwd.kernelNames).toEqual(['McpcLmHeadXent']);
    const onlyX = await tf.profile(() => tf.grad((a: Tensor) => table.lm_head_xent([a, W, labels, mask], step, ctx)[0]! as tf.Scalar)(x));
    expect(onlyX.kernelNames).toContain('McpcLmHeadXentDx');
    expect(onlyX.kernelNames).not.toContain('McpcLmHeadXentDw');
    tf.dispose([x, W, labels, mask]);
  });
});
