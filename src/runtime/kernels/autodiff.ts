/** Autodiff helpers for kernels whose tfjs building blocks have no (or the wrong) gradient. */
import { tf, type Tensor } from '../tfjs/index.js';

/** The argument type of tf.customGrad (tfjs does not export it by name). */
export type CustomGradFn = Parameters<typeof tf.customGrad>[0];

/**
 * `fn(x)` as a constant of the autodiff tape: its value, and a zero gradient for x. For masks and decisions
 * (top-k routing, comparisons) whose tfjs kernels have no gradient: without it, a backward pass that
 * reaches them fails ("gradient function not found for TopK").
 */
export function noGrad(x: Tensor, fn: (x: Tensor) => Tensor): Tensor {
  const f = tf.customGrad(((a: Tensor) => ({ value: fn(a), gradFunc: () => tf.zerosLike(a) })) as unknown as CustomGradFn);
  return f(x);
}

/** |x| with sign(x) as its gradient: 0 at 0, as in PyTorch (tfjs's own Abs gradient gives −1 there). */
export const absSign = tf.customGrad(((x: Tensor, save: tf.GradSaveFunc) => {
  save([x]);
  return { value: tf.abs(x), gradFunc: (dy: Tensor, saved: Tensor[]) => tf.mul(dy, tf.sign(saved[0])) };
}) as unknown as CustomGradFn) as (x: Tensor) => Tensor;

/** A tensor's shape as a plain number array (tfjs types it as a tuple per rank). */
export const dims = (t: Tensor): number[] => t.shape as number[];
