/**
 * The CPU table's lora_merge (src/runtime/kernels/cpu-lora-merge.ts: W + s·B·A one kernel, dA and dB one each)
 * against the reference kernel (tf.matMul, tf.mul, tf.add and their gradients) on the cpu and wasm backends:
 * W', dW, dA and dB bit for bit on wasm (the same products in the same order: both run mcpc's GEMM there; the
 * scale and the sum in SIMD, the same f32 operations), to
 * f32 rounding on cpu (tfjs-cpu's own matMul sums in another order), awkward shapes, and the one kernel it
 * records forward.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { cpuKernels } from '../../../src/runtime/kernels/cpu.js';
import { reference, type KernelStep } from '../../../src/runtime/kernels/reference.js';
import { initBackend, tf, type Tensor } from '../../../src/runtime/tfjs/index.js';
import { heapGemmCalls } from '../../../src/runtime/tfjs/gemm-heap.js';

const step = (scale: number): KernelStep => ({ node: 'm', op: 'lora_merge', inputs: ['W', 'A', 'B'], outputs: ['Wm'], attrs: { scale } });
const ctx = { rows: 1, seqLen: 1, positions: new Int32Array(1), segments: new Int32Array(1), cache: new Map<string, Tensor>() };
const table = cpuKernels({ kernels: [] });

/** W' and the gradients of sum(W' · c) with respect to W, A and B, through `kernel`. */
function valueAndGrads(kernel: typeof reference.lora_merge, st: KernelStep, W: Tensor, A: Tensor, B: Tensor, c: Tensor): Float32Array[] {
  return tf.tidy(() => {
    const y = kernel([W, A, B], st, ctx)[0]!;
    const g = tf.grads((w: Tensor, a: Tensor, b: Tensor) => tf.sum(tf.mul(kernel([w, a, b], st, ctx)[0]!, c)) as tf.Scalar)([W, A, B]);
    return [y, ...g].map((t) => Float32Array.from(t.dataSync()));
  });
}

afterAll(() => initBackend('cpu'));

describe('lora_merge on the CPU table', () => {
  for (const backend of ['cpu', 'wasm'] as const)
    it(`equals the reference: W', dW, dA, dB (${backend}${backend === 'wasm' ? ', bit for bit' : ''})`, async () => {
      await initBackend(backend);
      for (const [O, I, R, s] of [
        [7, 5, 3, 2],
        [176, 64, 32, 0.5],
        [64, 176, 16, 2],
        [1, 1, 1, 1.5],
        [33, 9, 1, 1],
      ] as const) {
        const t = (n: number, shape: [number, number], k: number) => tf.tensor2d(Float32Array.from({ length: n }, (_, i) => Math.sin(i * k + 1)), shape);
        const [W, A, B, c] = [t(O * I, [O, I], 0.7), t(R * I, [R, I], 1.3), t(O * R, [O, R], 0.9), t(O * I, [O, I], 2.1)];
        const calls = { ...heapGemmCalls };
        const ours = valueAndGrads(table.lora_merge, step(s), W!, A!, B!, c!);
        // on wasm the scale and the sum run in WebAssembly on the heap (gemm-ld.wat): the forward twice (value, grads), s·g per gradient
        if (backend === 'wasm') expect([heapGemmCalls.addScaled - calls.addScaled, heapGemmCalls.scale - calls.scale]).toEqual([2, 2]);
        const ref = valueAndGrads(reference.lora_merge, step(s), W!, A!, B!, c!);
        ours.forEach((v, i) => {
          const what = `${['Wm', 'dW', 'dA', 'dB'][i]} ${O}x${I} r${R}`;
          if (backend === 'wasm') expect(Array.from(v), what).toEqual(Array.from(ref[i]!));
          else v.forEach((x, j) => expect(Math.abs(x - ref[i]![j]!), what).toBeLessThanOrEqual(1e-5 * (1 + Math.abs(ref[i]![j]!))));
        });
        tf.dispose([W!, A!, B!, c!]);
      }
      const x = [tf.ones([4, 3]), tf.ones([2, 3]), tf.ones([4, 2])];
      const prof = await tf.profile(() => table.lora_merge(x, step(2), ctx)[0]!);
      expect(prof.kernelNames).toEqual(['McpcLoraMerge']);
      tf.dispose(x);
    });
});
