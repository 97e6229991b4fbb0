/**
 * The optimizer side of a training step: learning-rate schedule, global-norm clipping, AdamW and SGD, with
 * PyTorch's semantics so a run can be compared with a PyTorch program step by step.
 *
 * Schedule (step s = 0, 1, ... of `total` optimizer steps; W warmup steps; lr the peak, min the floor):
 *   W = steps given, or ceil(total · percent / 100)
 *   s < W:      lr · (s + 1) / W                      (never 0: the first step already learns)
 *   s ≥ W:      constant  lr
 *               linear    min + (lr − min) · (1 − q)
 *               cosine    min + (lr − min) · ½ (1 + cos(π q))      q = (s − W) / max(1, total − W), ≤ 1
 *
 * Clipping (torch.nn.utils.clip_grad_norm_): n = ‖(g_1, …, g_k)‖₂ over every trainable tensor; when
 * clip > 0 and n > clip, every g is scaled by clip / (n + 1e-6).
 *
 * AdamW (torch.optim.AdamW, one parameter group, decoupled weight decay on every trainable tensor), t the
 * number of steps taken so far including this one:
 *   p ← p · (1 − lr · wd);  m ← β₁ m + (1 − β₁) g;  v ← β₂ v + (1 − β₂) g²
 *   p ← p − (lr / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε)
 * SGD (torch.optim.SGD): g ← g + wd · p; b ← g on the first step, else μ b + g; p ← p − lr · b (μ = 0: p − lr g).
 */
import type { PlanStageSettings } from '../plan/types.js';
import { tf, type Tensor } from './tfjs/index.js';

/** Warmup steps of a stage of `total` optimizer steps. */
export function warmupSteps(schedule: PlanStageSettings['schedule'], total: number): number {
  const w = schedule.warmup;
  return 'steps' in w ? Math.max(0, Math.floor(w.steps)) : Math.ceil((total * w.percent) / 100);
}

/** Whether the schedule needs the stage's total number of steps. */
export const needsTotal = (schedule: PlanStageSettings['schedule']): boolean => schedule.kind !== 'constant' || 'percent' in schedule.warmup;

/** The learning rate of optimizer step `step` (0-based) of `total`. */
export function learningRate(settings: Pick<PlanStageSettings, 'lr' | 'schedule'>, step: number, total: number): number {
  const { lr, schedule } = settings;
  const W = warmupSteps(schedule, total);
  if (step < W) return (lr * (step + 1)) / W;
  if (schedule.kind === 'constant') return lr;
  const q = Math.min(1, (step - W) / Math.max(1, total - W));
  const min = schedule.minLr;
  if (schedule.kind === 'linear') return min + (lr - min) * (1 - q);
  return min + (lr - min) * 0.5 * (1 + Math.cos(Math.PI * q));
}

/** Most terms of one AddN in {@link globalNorm} (inputs plus output within 8 storage buffers). */
const ADD_N = 6;

/** ‖g‖₂ over all tensors, as a number (NaN or Infinity when any gradient is); read asynchronously (webgpu has no synchronous read in Node). */
export async function globalNorm(grads: readonly Tensor[]): Promise<number> {
  if (!grads.length) return 0;
  // The squares are summed in order, at most ADD_N terms per AddN (the running sum first), which on cpu and wasm
  // is bit-identical to one AddN over all of them; tfjs-webgpu's AddN binds one storage buffer per term and
  // fails validation past the device's per-stage limit (8 by default).
  const sq = tf.tidy(() => {
    const terms = grads.map((g) => tf.sum(tf.square(g)));
    let acc = terms.length === 1 ? terms[0]! : tf.addN(terms.slice(0, ADD_N));
    for (let i = ADD_N; i < terms.length; i += ADD_N - 1) acc = tf.addN([acc, ...terms.slice(i, i + ADD_N - 1)]);
    return acc;
  });
  try {
    return Math.sqrt((await sq.data())[0]);
  } finally {
    sq.dispose();
  }
}

/** The factor clip_grad_norm_ scales every gradient by (1 when no clipping applies). */
export function clipFactor(norm: number, clip: number): number {
  return clip > 0 && norm > clip ? clip / (norm + 1e-6) : 1;
}

/** Per-tensor optimizer state: AdamW's moments (m, v), or SGD's momentum buffer (m). */
export interface SlotState {
  m: Tensor;
  v?: Tensor;
}

export type OptimizerSettings = PlanStageSettings['optimizer'];

/** Fresh (zero) state for a tensor of `shape`. */
export function zeroState(opt: OptimizerSettings, shape: number[]): SlotState {
  return opt.kind === 'adamw' ? { m: tf.zeros(shape), v: tf.zeros(shape) } : { m: tf.zeros(shape) };
}

/** One AdamW step over every trainable tensor at once (the fused optimizer's kernels: CPU and WebGPU). */
export interface AdamWStep {
  lr: number;
  weightDecay: number;
  beta1: number;
  beta2: number;
  eps: number;
  /** Steps taken including this one (1 on the first). */
  t: number;
  /** Clipping factor applied to every gradient (1: none). */
  gradScale: number;
}

/**
 * The step's scalars as `update` forms them (JavaScript numbers; tfjs rounds each to an f32 scalar):
 *   g ← g·gscale;  p ← p·decay;  m ← m·b1 + g·omb1;  v ← v·b2 + g²·omb2;  p ← p − (m / (√v / sqrtbc2 + eps))·stepsize
 * A factor of exactly 1 (no decay, no clipping) changes nothing, so a fused kernel may always multiply.
 */
export function adamwScalars(h: AdamWStep) {
  return {
    decay: h.weightDecay > 0 ? 1 - h.lr * h.weightDecay : 1,
    gscale: h.gradScale,
    b1: h.beta1,
    omb1: 1 - h.beta1,
    b2: h.beta2,
    omb2: 1 - h.beta2,
    sqrtbc2: Math.sqrt(1 - Math.pow(h.beta2, h.t)),
    eps: h.eps,
    stepsize: h.lr / (1 - Math.pow(h.beta1, h.t)),
  };
}

/** Tensors as one flat vector, in order (a reshape alone for one tensor): the fused optimizer's layout. */
export const flat = (ts: readonly Tensor[]): Tensor => (ts.length === 1 ? tf.reshape(ts[0]!, [-1]) : tf.concat(ts.map((t) => tf.reshape(t, [-1]))));

/** A flat vector back into tensors of the given shapes (reshapes of one split). */
export function unflat(flatT: Tensor, shapes: readonly number[][]): Tensor[] {
  if (shapes.length === 1) return [tf.reshape(flatT, shapes[0]!)];
  const sizes = shapes.map((sh) => sh.reduce((x, y) => x * y, 1));
  return tf.split(flatT, sizes).map((t, i) => tf.reshape(t, shapes[i]!));
}

/**
 * One update of one tensor: returns the new parameter and state (new tensors; the caller disposes the old).
 * `t` is the step count including this step (1 on the first). `g` is already clipped.
 */
export function update(opt: OptimizerSettings, p: Tensor, g: Tensor, s: SlotState, lr: number, wd: number, t: number): { p: Tensor; s: SlotState } {
  return tf.tidy(() => {
    if (opt.kind === 'adamw') {
      const k = adamwScalars({ lr, weightDecay: wd, beta1: opt.beta1, beta2: opt.beta2, eps: opt.eps, t, gradScale: 1 });
      const decayed = wd > 0 ? tf.mul(p, k.decay) : p;
      const m = tf.add(tf.mul(s.m, k.b1), tf.mul(g, k.omb1));
      const v = tf.add(tf.mul(s.v!, k.b2), tf.mul(tf.square(g), k.omb2));
      const denom = tf.add(tf.div(tf.sqrt(v), k.sqrtbc2), k.eps);
      const np = tf.sub(decayed, tf.mul(tf.div(m, denom), k.stepsize));
      return { p: np, s: { m, v } };
    }
    const gg = wd > 0 ? tf.add(g, tf.mul(p, wd)) : g;
    const mu = opt.momentum;
    if (mu === 0) return { p: tf.sub(p, tf.mul(gg, lr)), s: { m: tf.clone(s.m) } };
    const b = t === 1 ? tf.clone(gg) : tf.add(tf.mul(s.m, mu), gg);
    return { p: tf.sub(p, tf.mul(b, lr)), s: { m: b } };
  });
}
