/**
 * The CPU table's embedding (src/runtime/kernels/cpu-embedding.ts: row copies, dW a scatter-add) against the
 * reference kernel (tf.gather) on the cpu and wasm backends: values and dW with repeated tokens, one token,
 * a token outside the table (an error naming it), and the kernels it records.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { cpuKernels } from '../../../src/runtime/kernels/cpu.js';
import { reference, type KernelStep } from '../../../src/runtime/kernels/reference.js';
import { initBackend, tf, type Tensor } from '../../../src/runtime/tfjs/index.js';

const step: KernelStep = { node: 'x', op: 'embedding', inputs: ['tokens', 'W'], outputs: ['x'], attrs: {} };
const ctx = { rows: 1, seqLen: 1, positions: new Int32Array(1), segments: new Int32Array(1), cache: new Map<string, Tensor>() };
const table = cpuKernels({ kernels: [] });

/** The value and the gradient of sum(x · c) with respect to W, c fixed, through `kernel`. */
function valueAndDw(kernel: typeof reference.embedding, tokens: Tensor, W: Tensor, c: Tensor): [Float32Array, Float32Array] {
  return tf.tidy(() => {
    const x = kernel([tokens, W], step, ctx)[0]!;
    const dW = tf.grad((w: Tensor) => tf.sum(tf.mul(kernel([tokens, w], step, ctx)[0]!, c)) as tf.Scalar)(W);
    return [Float32Array.from(x.dataSync()), Float32Array.from(dW.dataSync())];
  });
}

afterAll(() => initBackend('cpu'));

describe('embedding on the CPU table', () => {
  for (const backend of ['cpu', 'wasm'] as const)
    it(`equals the reference: rows and dW with repeated tokens, one token (${backend})`, async () => {
      await initBackend(backend);
      for (const [V, d, ids] of [
        [7, 5, [3, 0, 6, 3, 3, 1]],
        [1, 3, [0]],
        [300, 64, Array.from({ length: 130 }, (_, t) => (t * 37) % 300)],
      ] as const) {
        const W = tf.tensor2d(Float32Array.from({ length: V * d }, (_, i) => Math.sin(i + 1)), [V, d]);
        const tokens = tf.tensor1d(Int32Array.from(ids), 'int32');
        const c = tf.tensor2d(Float32Array.from({ length: ids.length * d }, (_, i) => Math.cos(i)), [ids.length, d]);
        const [x, dW] = valueAndDw(table.embedding, tokens, W, c);
        const [xr, dWr] = valueAndDw(reference.embedding, tokens, W, c);
        expect(Array.from(x)).toEqual(Array.from(xr));
        dW.forEach((v, i) => expect(v, `dW[${i}] V=${V}`).toBeCloseTo(dWr[i]!, 5));
        tf.dispose([W, tokens, c]);
      }
    });

  it('one kernel forward, dW only when asked, and a token outside the table is an error naming it', async () => {
    await initBackend('wasm');
    const W = tf.tensor2d([1, 2, 3, 4, 5, 6], [3, 2]);
    const tokens = tf.tensor1d([2, 0, 2], 'int32');
    const fwd = await tf.profile(() => table.embedding([tokens, W], step, ctx)[0]!);
    expect(fwd.kernelNames).toEqual(['McpcEmbedding']);
    const bad = tf.tensor1d([1, 3], 'int32');
    expect(() => table.embedding([bad, W], step, ctx)).toThrow(/embedding: token id 3 at position 1 is not in \[0, 2\]/);
    tf.dispose([W, tokens, bad]);
  });
});
