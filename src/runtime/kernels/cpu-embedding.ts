/**
 * `embedding` for the CPU kernel table as one tfjs kernel each way (McpcEmbedding, McpcEmbeddingDw): x = W[tokens]
 * as row copies, and dW[v] = Σ_{t: tokens_t = v} dy_t only when autodiff asks for it (a trainable table, as in
 * pretraining). tfjs-wasm's GatherV2 walked the [T, d] output element by element: 4.4 ms for 2,048 tokens of
 * 64, where copying the rows takes microseconds (BENCHMARKS.md).
 * A token id outside [0, V) is an error naming it, as tfjs-cpu's gather reports one.
 */
import { tf, type Tensor } from '../tfjs/index.js';
import { registerCpuKernel } from './cpu-ops.js';

/* eslint-disable @typescript-eslint/no-explicit-any -- tfjs kernel plumbing. */

function register(): void {
  registerCpuKernel(
    'McpcEmbedding',
    {
      shapes: (ins) => [[ins[0]!.shape[0]!, ins[1]!.shape[1]!]],
      writesAll: true,
      run: ([tokens, W], [x], infos) => {
        const [V, d] = infos[1]!.shape as [number, number];
        const ids = tokens as Int32Array;
        const w = W as Float32Array;
        for (let t = 0; t < ids.length; t++) {
          const v = ids[t]!;
          if (!(v >= 0 && v < V)) throw new Error(`embedding: token id ${v} at position ${t} is not in [0, ${V - 1}] (the rows of the embedding table)`);
          // Short rows by a loop: subarray + set allocates a view per row, which costs more than 64 floats.
          if (d < 128) for (let j = 0, o = t * d, i = v * d; j < d; j++) x![o + j] = w[i + j]!;
          else x!.set(w.subarray(v * d, v * d + d), t * d);
        }
      },
    },
    {
      inputsToSave: ['0', '1'],
      gradFunc: ((dy: Tensor, saved: Tensor[]) => ({
        0: () => tf.zerosLike(saved[0]!),
        1: () => tf.engine().runKernel('McpcEmbeddingDw', [saved[0]!, dy, saved[1]!] as unknown as tf.NamedTensorMap) as Tensor,
      })) as any,
    },
  );
  // dW starts zeroed (no writesAll): each token's dy row is added into its row.
  registerCpuKernel('McpcEmbeddingDw', {
    shapes: (ins) => [ins[2]!.shape as number[]],
    run: ([tokens, dy], [dW], infos) => {
      const d = infos[2]!.shape[1]!;
      const ids = tokens as Int32Array;
      const g = dy as Float32Array;
      for (let t = 0; t < ids.length; t++) for (let j = 0, o = ids[t]! * d, i = t * d; j < d; j++) dW![o + j]! += g[i + j]!;
    },
  });
}

/** Whether the kernel takes these inputs: tokens int32 [T], W float32 [V, d]. */
export function embeddingCpuFits(tokens: Tensor, W: Tensor): boolean {
  return tokens.dtype === 'int32' && tokens.rank === 1 && W.dtype === 'float32' && W.rank === 2;
}

/** W[tokens] (checked by {@link embeddingCpuFits}), its gradient lazy for W. */
export function embeddingCpu(tokens: Tensor, W: Tensor): Tensor {
  register();
  return tf.engine().runKernel('McpcEmbedding', [tokens, W] as unknown as tf.NamedTensorMap) as Tensor;
}
