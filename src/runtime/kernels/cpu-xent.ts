/**
 * `lm_head_xent` for the CPU kernel table: the LM head and the softmax cross-entropy in one tfjs kernel
 * (McpcLmHeadXent), over chunks of rows so the [T, V] logits are never materialised whole: per chunk one
 * GEMM x·Wᵀ into a scratch block, then per row the logsumexp and the picked logit. The forward saves each
 * row's logsumexp; the gradient (McpcLmHeadXentDx, McpcLmHeadXentDw, each only when autodiff asks) recomputes
 * a chunk's logits and forms dlogits = g·mask_t/count·(softmax − onehot) in place, then dx = dlogits·W, and
 * dW += dlogitsᵀ·x (gemm_tn). The reference's semantics exactly: loss = −Σ_t mask_t·log softmax(x_t·Wᵀ)[label_t]
 * / max(Σ mask, 1); a label outside [0, V) picks nothing (its row adds 0 and has no gradient, as the
 * reference's all-zero one-hot row gives). Arithmetic per row in f64, stored as f32.
 */
import { matmulInto } from '../tfjs/gemm.js';
import { tf, type Tensor } from '../tfjs/index.js';
import { registerCpuKernel } from './cpu-ops.js';

/* eslint-disable @typescript-eslint/no-explicit-any -- tfjs kernel plumbing. */

/** Rows per chunk: the chunk's logits stay under 2^20 floats (4 MiB). */
const chunkRows = (V: number) => Math.max(1, Math.floor((1 << 20) / Math.max(1, V)));

let scratch = new Float32Array(0);
const block = (n: number) => (scratch.length >= n ? scratch : (scratch = new Float32Array(n)));

/** The logits of rows [r0, r1) into `z` ([r1 − r0, V]). */
function logits(x: Float32Array, W: Float32Array, r0: number, r1: number, d: number, V: number, z: Float32Array): void {
  matmulInto(x.subarray(r0 * d, r1 * d), W, z, { batchA: 1, batchB: 1, M: r1 - r0, N: V, K: d, transposeA: false, transposeB: true });
}

const maskCount = (mask: Float32Array | Int32Array) => {
  let c = 0;
  for (let t = 0; t < mask.length; t++) c += mask[t]!;
  return Math.max(c, 1);
};

/** dlogits of rows [r0, r1) in place over their logits `z`: coef·mask_t·(softmax − onehot), 0 for an invalid label. */
function dlogits(z: Float32Array, r0: number, r1: number, V: number, labels: Int32Array | Float32Array, mask: Float32Array | Int32Array, lse: Float32Array, coef: number): void {
  for (let t = r0; t < r1; t++) {
    const o = (t - r0) * V;
    const label = labels[t]!;
    const w = coef * mask[t]!;
    if (w === 0 || !(label >= 0 && label < V)) {
      z.fill(0, o, o + V);
      continue;
    }
    const L = lse[t]!;
    for (let v = 0; v < V; v++) z[o + v] = w * Math.exp(z[o + v]! - L);
    z[o + label] = z[o + label]! - w;
  }
}

function register(): void {
  registerCpuKernel(
    'McpcLmHeadXent',
    {
      shapes: (ins) => [[], [ins[0]!.shape[0]!]],
      writesAll: true,
      run: ([x, W, labels, mask], [loss, lse], infos) => {
        const [T, d] = infos[0]!.shape as [number, number];
        const V = infos[1]!.shape[0]!;
        const R = chunkRows(V);
        const z = block(R * V);
        let sum = 0;
        for (let r0 = 0; r0 < T; r0 += R) {
          const r1 = Math.min(T, r0 + R);
          logits(x as Float32Array, W as Float32Array, r0, r1, d, V, z);
          for (let t = r0; t < r1; t++) {
            const o = (t - r0) * V;
            let m = -Infinity;
            for (let v = 0; v < V; v++) if (z[o + v]! > m) m = z[o + v]!;
            let s = 0;
            for (let v = 0; v < V; v++) s += Math.exp(z[o + v]! - m);
            const L = m + Math.log(s);
            lse![t] = L;
            const label = labels![t]!;
            if (label >= 0 && label < V) sum += mask![t]! * (L - z[o + label]!);
          }
        }
        loss![0] = sum / maskCount(mask!);
      },
    },
    {
      inputsToSave: ['0', '1', '2', '3'],
      outputsToSave: [false, true],
      gradFunc: ((dy: Tensor | Tensor[], saved: Tensor[]) => {
        const g = Array.isArray(dy) ? dy[0]! : dy;
        const [x, W, labels, mask, lse] = saved as [Tensor, Tensor, Tensor, Tensor, Tensor];
        const args = [x, W, labels, mask, lse, g] as unknown as tf.NamedTensorMap;
        return {
          0: () => tf.engine().runKernel('McpcLmHeadXentDx', args) as Tensor,
          1: () => tf.engine().runKernel('McpcLmHeadXentDw', args) as Tensor,
          2: () => tf.zerosLike(labels),
          3: () => tf.zerosLike(mask),
        };
      }) as any,
    },
  );
  registerCpuKernel('McpcLmHeadXentDx', {
    shapes: (ins) => [ins[0]!.shape as number[]],
    writesAll: true,
    run: ([x, W, labels, mask, lse, dy], [dx], infos) => {
      const [T, d] = infos[0]!.shape as [number, number];
      const V = infos[1]!.shape[0]!;
      const R = chunkRows(V);
      const z = block(R * V);
      const coef = dy![0]! / maskCount(mask!);
      for (let r0 = 0; r0 < T; r0 += R) {
        const r1 = Math.min(T, r0 + R);
        logits(x as Float32Array, W as Float32Array, r0, r1, d, V, z);
        dlogits(z, r0, r1, V, labels!, mask!, lse as Float32Array, coef);
        matmulInto(z, W as Float32Array, dx!.subarray(r0 * d, r1 * d), { batchA: 1, batchB: 1, M: r1 - r0, N: d, K: V, transposeA: false, transposeB: false });
      }
    },
  });
  registerCpuKernel('McpcLmHeadXentDw', {
    shapes: (ins) => [ins[1]!.shape as number[]],
    run: ([x, W, labels, mask, lse, dy], [dW], infos) => {
      const [T, d] = infos[0]!.shape as [number, number];
      const V = infos[1]!.shape[0]!;
      const R = chunkRows(V);
      const z = block(R * V);
      const part = new Float32Array(V * d);
      const coef = dy![0]! / maskCount(mask!);
      for (let r0 = 0; r0 < T; r0 += R) {
        const r1 = Math.min(T, r0 + R);
        logits(x as Float32Array, W as Float32Array, r0, r1, d, V, z);
        dlogits(z, r0, r1, V, labels!, mask!, lse as Float32Array, coef);
        // dW += dlogitsᵀ·x over the chunk (dlogits read as stored: gemm_tn); dW starts zeroed.
        matmulInto(z, (x as Float32Array).subarray(r0 * d, r1 * d), part, { batchA: 1, batchB: 1, M: V, N: d, K: r1 - r0, transposeA: true, transposeB: false });
        for (let i = 0; i < part.length; i++) dW![i] = dW![i]! + part[i]!;
      }
    },
  });
}

/** Whether the kernel takes these inputs: x [T, d], W [V, d] float32, labels [T] int32 (the executor's; float labels go to the reference, which truncates them), mask [T] float32. */
export function lmHeadXentFits(x: Tensor, W: Tensor, labels: Tensor, mask: Tensor): boolean {
  return x.dtype === 'float32' && W.dtype === 'float32' && mask.dtype === 'float32' && labels.dtype === 'int32' && x.rank === 2 && W.rank === 2 && x.shape[1] === W.shape[1] && labels.rank === 1 && mask.rank === 1 && labels.shape[0] === x.shape[0] && mask.shape[0] === x.shape[0] && x.shape[0]! >= 1 && W.shape[0]! >= 1 && x.shape[1]! >= 1;
}

/** The mean masked cross-entropy of softmax(x·Wᵀ) against `labels` (a scalar), its gradient lazy per input. */
export function lmHeadXentCpu(x: Tensor, W: Tensor, labels: Tensor, mask: Tensor): Tensor {
  register();
  const [loss] = tf.engine().runKernel('McpcLmHeadXent', [x, W, labels, mask] as unknown as tf.NamedTensorMap) as Tensor[];
  return loss!;
}
