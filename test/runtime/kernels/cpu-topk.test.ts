/**
 * The CPU table's topk_gate (src/runtime/kernels/cpu-topk.ts) against the reference kernel: gates and the
 * gradient of p, renormalised or not, k = 1, k = E and k past E, one expert, ties (to the lower index), on
 * the cpu and wasm backends (k = 2 there by topk.wat); a row holding NaN; one kernel forward.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { cpuKernels } from '../../../src/runtime/kernels/cpu.js';
import { topTwoCalls } from '../../../src/runtime/kernels/cpu-topk.js';
import { reference, type KernelStep } from '../../../src/runtime/kernels/reference.js';
import { initBackend, tf, type Tensor } from '../../../src/runtime/tfjs/index.js';

const ctx = { rows: 1, seqLen: 1, positions: new Int32Array(1), segments: new Int32Array(1), cache: new Map<string, Tensor>() };
const table = cpuKernels({ kernels: [] });
const stepOf = (k: number, renormalize: boolean): KernelStep => ({ node: 'g', op: 'topk_gate', inputs: ['p'], outputs: ['g'], attrs: { k, renormalize } });

function gatesAndGrad(kernel: typeof reference.topk_gate, st: KernelStep, p: Tensor, R: Tensor): Float32Array[] {
  return tf.tidy(() => {
    const f = (a: Tensor) => tf.sum(tf.mul(kernel([a], st, ctx)[0]!, R)) as tf.Scalar;
    const g = kernel([p], st, ctx)[0]!;
    return [g, tf.grad(f)(p)].map((t) => Float32Array.from(t.dataSync()));
  });
}

afterAll(() => initBackend('cpu'));

describe('topk_gate on the CPU table', () => {
  for (const backend of ['cpu', 'wasm'] as const)
    it(`equals the reference: gates and dp (${backend})`, async () => {
      await initBackend(backend);
      const before = topTwoCalls.n;
      let x = 3;
      const rnd = () => ((x = (Math.imul(x, 1103515245) + 12345) | 0) >>> 8) / 2 ** 23;
      for (const [T, E, k] of [
        [1, 1, 1],
        [9, 8, 2],
        [33, 8, 1],
        [7, 5, 5],
        [6, 4, 9],
        [12, 3, 2],
      ] as const)
        for (const renormalize of [true, false]) {
          // Softmax-like positive rows, with ties in some rows (to the lower index, as tf.topk).
          const data = Float32Array.from({ length: T * E }, (_, i) => (Math.floor(i / E) % 3 === 1 ? 0.25 + 0.25 * ((i % E) % 2) : rnd() + 0.01));
          const p = tf.tensor2d(data, [T, E]);
          const R = tf.tensor2d(Float32Array.from({ length: T * E }, () => rnd() - 0.5), [T, E]);
          const st = stepOf(k, renormalize);
          const want = gatesAndGrad(reference.topk_gate, st, p, R);
          const got = gatesAndGrad(table.topk_gate, st, p, R);
          ['gates', 'dp'].forEach((what, i) => {
            for (let j = 0; j < want[i]!.length; j++) expect(Math.abs(got[i]![j]! - want[i]![j]!), `${what}[${j}] T=${T} E=${E} k=${k} renorm=${renormalize}`).toBeLessThan(1e-6);
          });
          tf.dispose([p, R]);
        }
      // k = 2 on the wasm heap: the two largest by ../tfjs/topk.wat; two cases x both renormalisations x (the gates,
      // then the forward and backward inside tf.grad).
      expect(topTwoCalls.n - before).toBe(backend === 'wasm' ? 2 * 2 * 3 : 0);
    });

  it('a row holding NaN: every entry with fewer than k entries ranked above it is kept (NaN ranks above none)', async () => {
    await initBackend('wasm');
    const p = tf.tensor2d([0.1, NaN, 0.5, 0.3, 0.2, 0.6, 0.1, 0.4], [2, 4]);
    const g = table.topk_gate([p], stepOf(2, false), ctx)[0]!;
    expect(Array.from(g.dataSync())).toEqual([0, NaN, 0.5, 0.3, 0, 0.6, 0, 0.4].map(Math.fround));
    tf.dispose([p, g]);
  });

  it('k = 2 on the wasm heap (topk.wat, gates and gradient) equals the JavaScript rows of the cpu backend bit for bit, NaN rows included', async () => {
    let x = 7;
    const rnd = () => ((x = (Math.imul(x, 1103515245) + 12345) | 0) >>> 8) / 2 ** 23;
    const [T, E] = [300, 8];
    const data = Float32Array.from({ length: T * E }, () => rnd() + 1e-3);
    data[5 * E + 3] = NaN; // a row holding NaN: the JavaScript rule on both backends
    data[17 * E + 2] = data[17 * E + 6] = 0.999; // a tie
    const R = Float32Array.from({ length: T * E }, () => rnd() - 0.5);
    for (const renormalize of [true, false]) {
      const run = async (backend: 'cpu' | 'wasm') => {
        await initBackend(backend);
        const [p, r] = [tf.tensor2d(data, [T, E]), tf.tensor2d(R, [T, E])];
        const out = gatesAndGrad(table.topk_gate, stepOf(2, renormalize), p, r);
        tf.dispose([p, r]);
        return out;
      };
      const before = topTwoCalls.n;
      const wasm = await run('wasm');
      expect(topTwoCalls.n - before).toBe(3);
      const js = await run('cpu');
      ['gates', 'dp'].forEach((what, i) => expect(Array.from(wasm[i]!), `${what}, renormalize ${renormalize}`).toEqual(Array.from(js[i]!)));
    }
  });

  it('runs one kernel forward', async () => {
    await initBackend('wasm');
    const p = tf.tensor2d([0.1, 0.5, 0.4, 0.3, 0.3, 0.4], [2, 3]);
    expect((await tf.profile(() => table.topk_gate([p], stepOf(2, true), ctx)[0])).kernelNames).toEqual(['McpcTopkGate']);
    p.dispose();
  });
});
