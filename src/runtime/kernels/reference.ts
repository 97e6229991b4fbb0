/**
 * Reference kernels: one composition of tfjs ops for every op a plan step can name (`PlanOp`). They define
 * what each kernel computes; the fused WGSL path must match them, and the executor runs them on the CPU.
 * Every kernel is differentiable through tfjs autodiff (discrete choices, such as top-k routing, go through
 * masks that carry no gradient).
 *
 * Conventions. A micro-batch has `rows` sequences of `seqLen` tokens, T = rows·seqLen, laid out row-major;
 * activations are [T, features]. Weights follow PyTorch: a linear weight is [out, in] and y = x·Wᵀ + b;
 * LoRA A is [r, in], B is [out, r]; routed experts stack them: A_e [E, r, in], B_e [E, out, r].
 *
 *   embedding      x = W[tokens]
 *   rmsnorm        y = x · rsqrt(mean(x²) + eps) · w                                     attrs {eps}
 *   rope           rotate-half (Qwen2/Llama) rotary embedding of q and k at each token's position in its
 *                  own example (the batch's `positions`, so packed examples restart at 0)
 *                  attrs {theta, headDim, heads, kvHeads}
 *   attention      softmax(q·kᵀ/√d + mask)·v per head; grouped-query (head h reads kv head ⌊h·KV/H⌋);
 *                  query i sees key j iff j ≤ i and both are in the same example (segment) of the same row
 *                  (padding, segment 0, sees only padding); the sequence length is the batch's, not
 *                  attrs.seqLen (the plan's max_len)                     attrs {heads, kvHeads, headDim, causal}
 *   swiglu         silu(gate) · up
 *   add            the sum of the inputs (any number)
 *   lm_head_xent   mean over the tokens in the loss mask of −log softmax(x·Wᵀ)[label] (or of the given
 *                  logits); labels are already shifted; `loss: all` vs `response` is already in the mask
 *   linear         x·Wᵀ (+ b)
 *   lora_down      x·Aᵀ                        lora_up   s·h·Bᵀ                          attrs {scale}
 *   lora_merge     inputs W, A, B: W + s·B·A (the weight a step's linear reads when the LoRA is merged into
 *                  it every step)                                                        attrs {scale}
 *   router         softmax or sigmoid of x·W_rᵀ + b_r (+ ε, the last input, when attrs.noise) attrs {activation, noise?}
 *   topk_gate      p masked to each token's top-k experts, renormalised over them when asked
 *                  attrs {k, renormalize}; the mask has no gradient, the kept p do
 *   expert_down    x·A_e[e]ᵀ                   expert_up s·h·B_e[e]ᵀ                     attrs {expert, scale}
 *   gate_combine   Σ_e gates[:, e] · y_e
 *   load_balance   Switch-Transformer auxiliary loss E · Σ_e f_e · P_e over the real tokens (segment > 0):
 *                  f_e = share of the top-k assignments that went to expert e (no gradient),
 *                  P_e = mean router probability of e
 *   moe_down_batched  x·[A_sh ; A_0 ; … ; A_{E−1}]ᵀ                                     attrs {sharedRank}
 *   moe_down_routed   inputs x, gates, A_e: x·[A_0 ; … ; A_{E−1}]ᵀ with expert e's block [t, e·r:(e+1)·r]
 *                  zeroed where gates[t, e] = 0 (the dense product times the (gates ≠ 0) mask per expert block;
 *                  the mask has no gradient: dx, dA_e flow through the routed entries only, none to the gates)
 *                  attrs {rank, experts}
 *   moe_up_grouped    s·h_sh·B_shᵀ + Σ_e gates_e · s·h_e·B_eᵀ  (gates are zero outside the top-k, so
 *                  only those experts contribute: the same math as expert_up + gate_combine)
 *                  attrs {sharedRank, rank, experts, scale}
 *   concat_linear  one GEMM x·[W | A_1 | … | W_r]ᵀ split into one output per part, each with the epilogue of
 *                  the op it replaced (base bias; router bias + activation)             attrs {parts}
 *   ortho_penalty  norm(X_t·X_oᵀ): X the rows of the target's (other's) A matrices stacked (matrix A:
 *                  [r, in] rows; matrix B: the columns of B), l1 = Σ|·|, l2 and fro = Σ(·)²
 *                  attrs {targetParts, matrix, norm}
 *   ortho_penalty_batched  Σ_t weight_t · ortho_penalty_t                              attrs {terms}
 *   loss_sum       Σ_i weight_i · input_i                                              attrs {weights}
 *   fused_elementwise  the serialised expression in attrs.expr (see ./fused.ts)
 *   adapted_linear the un-expanded site (only before expand-sites; plans never contain it, but the
 *                  reference exists): linear + every adapter listed in attrs.adapters
 */
import type { PlanOp } from '../../plan/types.js';
import { tf, type Tensor } from '../tfjs/index.js';
import { absSign, dims, noGrad } from './autodiff.js';
import { evalFused } from './fused.js';
import { tensorScratch } from '../tfjs/wasm-extra.js';

/** What a kernel sees of the step it runs. A `PlanStep` is one. */
export interface KernelStep {
  node: string;
  op: PlanOp;
  inputs: string[];
  outputs: string[];
  attrs: Record<string, unknown>;
}

/** The micro-batch a forward pass runs on, as far as kernels need it. */
export interface KernelContext {
  rows: number;
  seqLen: number;
  /** Position of each token within its example, [T]. */
  positions: Int32Array;
  /** Example number within the row (1, 2, ...), 0 on padding, [T]. */
  segments: Int32Array;
  /**
   * Tensors derived from the batch (rotary tables, attention mask), made once per forward pass and freed
   * with its tf.tidy scope (a disposed entry is rebuilt).
   */
  cache: Map<string, Tensor>;
}

export type Kernel = (inputs: Tensor[], step: KernelStep, ctx: KernelContext) => Tensor[];

/** A step whose attrs or inputs do not fit its op: a bug in the plan (or in this file), never user input. */
export class KernelError extends Error {
  constructor(step: Pick<KernelStep, 'node' | 'op'>, message: string) {
    super(`${step.op} (node ${step.node}): ${message}`);
    this.name = 'KernelError';
  }
}

// --- attribute access -----------------------------------------------------------------------------------------

function num(step: KernelStep, key: string, fallback?: number): number {
  const v = step.attrs[key];
  if (typeof v === 'number' && Number.isFinite(v)) return v;
  if (v === undefined && fallback !== undefined) return fallback;
  throw new KernelError(step, `attrs.${key} must be a finite number (got ${JSON.stringify(v)})`);
}
function str(step: KernelStep, key: string, fallback?: string): string {
  const v = step.attrs[key];
  if (typeof v === 'string') return v;
  if (v === undefined && fallback !== undefined) return fallback;
  throw new KernelError(step, `attrs.${key} must be a string (got ${JSON.stringify(v)})`);
}
function bool(step: KernelStep, key: string, fallback: boolean): boolean {
  const v = step.attrs[key];
  if (typeof v === 'boolean') return v;
  if (v === undefined) return fallback;
  throw new KernelError(step, `attrs.${key} must be a boolean (got ${JSON.stringify(v)})`);
}
function arity(step: KernelStep, inputs: Tensor[], min: number, max = min): void {
  if (inputs.length < min || inputs.length > max) throw new KernelError(step, `expects ${min === max ? min : `${min} to ${max}`} inputs, got ${inputs.length}`);
}

// --- building blocks --------------------------------------------------------------------------------------------

/** x·Wᵀ for x [T, in], W [out, in]. */
const xwT = (x: Tensor, w: Tensor): Tensor => tf.matMul(x as tf.Tensor2D, w as tf.Tensor2D, false, true);

/** A [E, r, in] stack of A matrices (or a [r, in] one) as [E·r, in] rows. */
const stackRows = (a: Tensor): Tensor => (a.rank === 3 ? tf.reshape(a, [dims(a)[0] * dims(a)[1], dims(a)[2]]) : a);

/** Expert e of a stack [E, m, n], as [m, n]. */
function expert(step: KernelStep, stack: Tensor, e: number): Tensor {
  if (stack.rank !== 3) throw new KernelError(step, `expects an expert stack [E, ., .], got shape [${dims(stack)}]`);
  if (!Number.isInteger(e) || e < 0 || e >= dims(stack)[0]) throw new KernelError(step, `expert ${e} out of range (the stack has ${dims(stack)[0]})`);
  return tf.reshape(tf.slice(stack, [e, 0, 0], [1, dims(stack)[1], dims(stack)[2]]), [dims(stack)[1], dims(stack)[2]]);
}

function activation(step: KernelStep, logits: Tensor, kind: string): Tensor {
  if (kind === 'softmax') return tf.softmax(logits);
  if (kind === 'sigmoid') return tf.sigmoid(logits);
  throw new KernelError(step, `unknown router activation '${kind}'`);
}

/** The top-k mask of p [T, E] (1 on each token's k largest entries), without gradient. */
export function topkMask(p: Tensor, k: number): Tensor {
  return noGrad(p, (q) => {
    const E = dims(q)[q.rank - 1];
    const kk = Math.max(0, Math.min(k, E));
    if (kk === 0) return tf.zerosLike(q);
    if (kk >= E) return tf.onesLike(q); // every expert kept (also E = 1, where oneHot needs depth >= 2)
    const { indices } = tf.topk(q, kk);
    return tf.sum(tf.oneHot(indices as tf.Tensor2D, E, 1, 0, 'float32'), 1);
  });
}

/** cos and sin of position p's angles (p · θ^(−2i/d), the angle rounded to f32) into c and s at `at`. */
function ropeRow(p: number, headDim: number, theta: number, c: Float32Array, s: Float32Array, at: number): void {
  for (let i = 0; i < headDim / 2; i++) {
    const a = Math.fround(p * Math.fround(1 / Math.pow(theta, (2 * i) / headDim)));
    c[at + i] = Math.cos(a);
    s[at + i] = Math.sin(a);
  }
}

/**
 * The rotary rows of positions 0 .. n − 1 per (headDim, θ), kept across micro-batches and grown to the largest
 * position seen (capped at 1 << 16 positions; beyond, rows are computed per call): the tables of a batch are
 * then copies of its positions' rows (Math.cos and Math.sin of every (token, frequency) cost ~0.4 ms a step at
 * 8x256, the same values each step).
 */
const ropeRows = new Map<string, { positions: number; cos: Float32Array; sin: Float32Array }>();
function ropeByPosition(headDim: number, theta: number, positions: ArrayLike<number>): { positions: number; cos: Float32Array; sin: Float32Array } {
  const key = `${headDim}:${theta}`;
  let have = ropeRows.get(key) ?? { positions: 0, cos: new Float32Array(0), sin: new Float32Array(0) };
  let max = -1;
  for (let t = 0; t < positions.length; t++) max = Math.max(max, positions[t]!);
  const want = Math.min(max + 1, 1 << 16);
  if (want > have.positions) {
    const half = headDim / 2;
    const n = Math.min(Math.max(want, 2 * have.positions), 1 << 16);
    const next = { positions: n, cos: new Float32Array(n * half), sin: new Float32Array(n * half) };
    next.cos.set(have.cos);
    next.sin.set(have.sin);
    for (let p = have.positions; p < next.positions; p++) ropeRow(p, headDim, theta, next.cos, next.sin, p * half);
    ropeRows.set(key, (have = next));
  }
  return have;
}

/**
 * The rotary tables of the batch (cos and sin of position · θ^(−2i/d)), cached in `ctx` for the forward pass:
 * [T, 1, d/2] each (broadcast over heads), or [T, d/2] with `rank` 2.
 */
export function ropeTables(ctx: KernelContext, headDim: number, theta: number, rank: 2 | 3 = 3): [Tensor, Tensor] {
  const key = `rope:${rank}:${headDim}:${theta}`;
  let cos = ctx.cache.get(`${key}:cos`);
  let sin = ctx.cache.get(`${key}:sin`);
  if (!cos || !sin || cos.isDisposed || sin.isDisposed) {
    const half = headDim / 2;
    const T = ctx.positions.length;
    const c = tensorScratch('rope-cos', Float32Array, T * half);
    const s = tensorScratch('rope-sin', Float32Array, T * half);
    const byPos = ropeByPosition(headDim, theta, ctx.positions);
    for (let t = 0; t < T; t++) {
      const p = ctx.positions[t]!;
      if (p >= 0 && p < byPos.positions)
        for (let i = 0, a = p * half, b = t * half; i < half; i++) {
          c[b + i] = byPos.cos[a + i]!;
          s[b + i] = byPos.sin[a + i]!;
        }
      else ropeRow(p, headDim, theta, c, s, t * half);
    }
    const shape = rank === 3 ? [T, 1, half] : [T, half];
    cos = tf.tensor(c, shape);
    sin = tf.tensor(s, shape);
    ctx.cache.set(`${key}:cos`, cos);
    ctx.cache.set(`${key}:sin`, sin);
  }
  return [cos, sin];
}

function rotate(x: Tensor, heads: number, headDim: number, cos: Tensor, sin: Tensor): Tensor {
  const T = dims(x)[0];
  const half = headDim / 2;
  const h = tf.reshape(x, [T, heads, headDim]);
  const x1 = tf.slice(h, [0, 0, 0], [T, heads, half]);
  const x2 = tf.slice(h, [0, 0, half], [T, heads, half]);
  const y1 = tf.sub(tf.mul(x1, cos), tf.mul(x2, sin));
  const y2 = tf.add(tf.mul(x2, cos), tf.mul(x1, sin));
  return tf.reshape(tf.concat([y1, y2], 2), [T, heads * headDim]);
}

/**
 * Additive attention mask [rows, 1, S, S]: 0 where query i may see key j (same segment, and j ≤ i when
 * causal), else −1e9.
 */
function attentionMask(ctx: KernelContext, causal: boolean): Tensor {
  const key = `attn:mask:${causal}`;
  const hit = ctx.cache.get(key);
  if (hit && !hit.isDisposed) return hit;
  const { rows, seqLen: S, segments } = ctx;
  const m = new Float32Array(rows * S * S);
  for (let r = 0; r < rows; r++) {
    for (let i = 0; i < S; i++) {
      const si = segments[r * S + i];
      const base = (r * S + i) * S;
      for (let j = 0; j < S; j++) m[base + j] = (!causal || j <= i) && segments[r * S + j] === si ? 0 : -1e9;
    }
  }
  const t = tf.tensor4d(m, [rows, 1, S, S]);
  ctx.cache.set(key, t);
  return t;
}

/** [T, heads·d] -> [rows·heads, S, d] */
function toHeads(x: Tensor, rows: number, S: number, heads: number, d: number): Tensor {
  return tf.reshape(tf.transpose(tf.reshape(x, [rows, S, heads, d]), [0, 2, 1, 3]), [rows * heads, S, d]);
}

/** GQA: repeat each of the kv heads `group` times ([T, kv·d] -> [T, kv·group·d], head h reads kv h / group). */
function repeatKv(x: Tensor, kvHeads: number, group: number, d: number): Tensor {
  if (group === 1) return x;
  const T = dims(x)[0];
  return tf.reshape(tf.tile(tf.reshape(x, [T, kvHeads, 1, d]), [1, 1, group, 1]), [T, kvHeads * group * d]);
}

/** The rows X (one per rank direction) of an adapter's A or B parts for an orthogonality term. */
function orthoRows(parts: Tensor[], matrix: string, step: KernelStep): Tensor {
  const rows = parts.map((p) => {
    if (matrix === 'A') return stackRows(p);
    if (matrix === 'B') return p.rank === 3 ? stackRows(tf.transpose(p, [0, 2, 1])) : tf.transpose(p);
    throw new KernelError(step, `unknown orthogonality matrix '${matrix}'`);
  });
  return rows.length === 1 ? rows[0] : tf.concat(rows, 0);
}

function orthoNorm(m: Tensor, norm: string, step: KernelStep): Tensor {
  if (norm === 'l1') return tf.sum(absSign(m));
  if (norm === 'l2' || norm === 'fro') return tf.sum(tf.square(m));
  throw new KernelError(step, `unknown orthogonality norm '${norm}'`);
}

export function orthoPenalty(target: Tensor[], other: Tensor[], matrix: string, norm: string, step: KernelStep): Tensor {
  const m = tf.matMul(orthoRows(target, matrix, step) as tf.Tensor2D, orthoRows(other, matrix, step) as tf.Tensor2D, false, true);
  return orthoNorm(m, norm, step);
}

/** A part of a concat_linear (src/compiler/4-optimize/passes/concat-base-adapter.ts writes them). */
interface ConcatPart {
  kind: 'linear' | 'lora_down' | 'moe_down_batched' | 'router';
  out: number;
  params: string[];
  bias?: string;
  activation?: string;
}

/** An orthogonality term of ortho_penalty_batched (src/compiler/4-optimize/passes/batch-orthogonality.ts). */
interface OrthoTerm {
  targetParams: string[];
  otherParams: string[];
  matrix: string;
  norm: string;
  weight: number;
}

/** An adapter of an adapted_linear (the compiler's LiveAdapter, as far as the kernel needs it). */
interface LiveAdapter {
  name: string;
  type: 'lora' | 'moe_lora';
  params: Record<string, string>;
  scale: number;
  rank: number;
  experts: number;
  topK: number;
  renormalize: boolean;
  router: string;
}

// --- the kernels -------------------------------------------------------------------------------------------------

/** Whether lora_merge's inputs are float32 W [O, I], A [R, I], B [O, R]: what its CPU and webgpu kernels take. */
export function loraMergeShapesFit(w: Tensor, a: Tensor, b: Tensor): boolean {
  if ([w, a, b].some((t) => t.dtype !== 'float32' || t.rank !== 2)) return false;
  const [O, I] = w.shape as [number, number];
  const R = a.shape[0]!;
  return a.shape[1] === I && b.shape[0] === O && b.shape[1] === R;
}

export const reference: Record<PlanOp, Kernel> = {
  embedding(inputs, step) {
    arity(step, inputs, 2);
    const [tokens, w] = inputs;
    return [tf.gather(w, tokens)];
  },

  rmsnorm(inputs, step) {
    arity(step, inputs, 1, 2);
    const [x, w] = inputs;
    const eps = num(step, 'eps');
    const y = tf.mul(x, tf.rsqrt(tf.add(tf.mean(tf.square(x), -1, true), eps)));
    return [w ? tf.mul(y, w) : y];
  },

  rope(inputs, step, ctx) {
    arity(step, inputs, 2);
    const [q, k] = inputs;
    const d = num(step, 'headDim');
    if (d % 2 !== 0) throw new KernelError(step, `headDim ${d} is odd`);
    const [cos, sin] = ropeTables(ctx, d, num(step, 'theta'));
    return [rotate(q, num(step, 'heads'), d, cos, sin), rotate(k, num(step, 'kvHeads'), d, cos, sin)];
  },

  attention(inputs, step, ctx) {
    arity(step, inputs, 3);
    const [q, k, v] = inputs;
    const H = num(step, 'heads');
    const KV = num(step, 'kvHeads');
    const d = num(step, 'headDim');
    if (H % KV !== 0) throw new KernelError(step, `heads ${H} is not a multiple of kvHeads ${KV}`);
    const { rows, seqLen: S } = ctx;
    if (dims(q)[0] !== rows * S) throw new KernelError(step, `q has ${dims(q)[0]} tokens, the batch ${rows}×${S}`);
    const qh = toHeads(q, rows, S, H, d);
    const kh = toHeads(repeatKv(k, KV, H / KV, d), rows, S, H, d);
    const vh = toHeads(repeatKv(v, KV, H / KV, d), rows, S, H, d);
    const scores = tf.mul(tf.matMul(qh as tf.Tensor3D, kh as tf.Tensor3D, false, true), 1 / Math.sqrt(d));
    const masked = tf.add(tf.reshape(scores, [rows, H, S, S]), attentionMask(ctx, bool(step, 'causal', true)));
    const p = tf.reshape(tf.softmax(masked), [rows * H, S, S]);
    const o = tf.matMul(p as tf.Tensor3D, vh as tf.Tensor3D);
    return [tf.reshape(tf.transpose(tf.reshape(o, [rows, H, S, d]), [0, 2, 1, 3]), [rows * S, H * d])];
  },

  swiglu(inputs, step) {
    arity(step, inputs, 2);
    const [g, u] = inputs;
    return [tf.mul(tf.mul(g, tf.sigmoid(g)), u)];
  },

  add(inputs, step) {
    arity(step, inputs, 1, Infinity);
    return [inputs.length === 1 ? tf.clone(inputs[0]) : inputs.length === 2 ? tf.add(inputs[0], inputs[1]) : tf.addN(inputs)];
  },

  lm_head_xent(inputs, step) {
    const given = bool(step, 'logitsGiven', inputs.length === 3);
    arity(step, inputs, given ? 3 : 4);
    const logits = given ? inputs[0] : xwT(inputs[0], inputs[1]);
    const [labels, mask] = given ? [inputs[1], inputs[2]] : [inputs[2], inputs[3]];
    const V = dims(logits)[1]!;
    const logp = tf.logSoftmax(logits);
    const picked = tf.sum(tf.mul(logp, tf.oneHot(tf.cast(labels, 'int32') as tf.Tensor1D, V, 1, 0, 'float32')), 1);
    const count = tf.maximum(tf.sum(mask), 1);
    return [tf.div(tf.neg(tf.sum(tf.mul(picked, mask))), count)];
  },

  linear(inputs, step) {
    arity(step, inputs, 2, 3);
    const y = xwT(inputs[0], inputs[1]);
    return [inputs[2] ? tf.add(y, inputs[2]) : y];
  },

  lora_merge(inputs, step) {
    // W + s·B·A, the merged weight a step's base GEMM reads (fold-trainable-lora); autodiff gives dW = dW',
    // dA = s·Bᵀ·dW', dB = s·dW'·Aᵀ.
    arity(step, inputs, 3);
    const [w, a, b] = inputs;
    return [tf.add(w, tf.mul(tf.matMul(b as tf.Tensor2D, a as tf.Tensor2D), num(step, 'scale')))];
  },

  lora_down(inputs, step) {
    arity(step, inputs, 2);
    return [xwT(inputs[0], inputs[1])];
  },

  lora_up(inputs, step) {
    arity(step, inputs, 2);
    return [tf.mul(xwT(inputs[0], inputs[1]), num(step, 'scale'))];
  },

  router(inputs, step) {
    // attrs.noise (set by the executor in training steps, router_noise > 0): the last input is ε [T, E],
    // added to the logits before the activation.
    const noisy = step.attrs.noise === true;
    arity(step, inputs, noisy ? 3 : 2, noisy ? 4 : 3);
    const n = noisy ? inputs.length - 1 : inputs.length;
    let logits = xwT(inputs[0], inputs[1]);
    if (n === 3) logits = tf.add(logits, inputs[2]);
    if (noisy) {
      const eps = inputs[inputs.length - 1];
      if (eps.rank !== 2 || dims(eps)[0] !== dims(logits)[0] || dims(eps)[1] !== dims(logits)[1]) throw new KernelError(step, `router noise has shape [${dims(eps)}], the logits [${dims(logits)}]`);
      logits = tf.add(logits, eps);
    }
    return [activation(step, logits, str(step, 'activation', 'softmax'))];
  },

  topk_gate(inputs, step) {
    arity(step, inputs, 1);
    const [p] = inputs;
    const kept = tf.mul(p, topkMask(p, num(step, 'k')));
    return [bool(step, 'renormalize', true) ? tf.div(kept, tf.sum(kept, -1, true)) : kept];
  },

  expert_down(inputs, step) {
    arity(step, inputs, 2);
    return [xwT(inputs[0], expert(step, inputs[1], num(step, 'expert')))];
  },

  expert_up(inputs, step) {
    arity(step, inputs, 2);
    return [tf.mul(xwT(inputs[0], expert(step, inputs[1], num(step, 'expert'))), num(step, 'scale'))];
  },

  gate_combine(inputs, step) {
    const [gates, ...ys] = inputs;
    const E = dims(gates)[1]!;
    if (ys.length !== E) throw new KernelError(step, `${ys.length} expert outputs for ${E} gates`);
    const T = dims(gates)[0];
    const terms = ys.map((y, e) => tf.mul(tf.slice(gates, [0, e], [T, 1]), y));
    return [terms.length === 1 ? terms[0] : tf.addN(terms)];
  },

  load_balance(inputs, step, ctx) {
    arity(step, inputs, 2);
    const [p, gates] = inputs;
    const E = dims(p)[1]!;
    const k = num(step, 'k');
    const valid = new Float32Array(ctx.segments.length);
    let n = 0;
    for (let i = 0; i < valid.length; i++) {
      if (ctx.segments[i] > 0) {
        valid[i] = 1;
        n++;
      }
    }
    const w = tf.tensor2d(valid, [valid.length, 1]);
    const chosen = noGrad(gates, (g) => tf.cast(tf.greater(g, 0), 'float32'));
    const f = tf.div(tf.sum(tf.mul(chosen, w), 0), Math.max(1, n * k));
    const P = tf.div(tf.sum(tf.mul(p, w), 0), Math.max(1, n));
    return [tf.mul(tf.sum(tf.mul(f, P)), E)];
  },

  moe_down_batched(inputs, step) {
    arity(step, inputs, 2, 3);
    const [x, ...As] = inputs;
    const w = As.length === 1 ? stackRows(As[0]) : tf.concat(As.map(stackRows), 0);
    return [xwT(x, w)];
  },

  moe_down_routed(inputs, step) {
    arity(step, inputs, 3, 3);
    const [x, gates, Ae] = inputs;
    const rank = num(step, 'rank');
    const E = num(step, 'experts');
    const T = dims(x)[0];
    if (dims(Ae)[0] !== E || dims(Ae)[1] !== rank || dims(gates)[1] !== E) throw new KernelError(step, `A_e is [${dims(Ae)}] and gates [${dims(gates)}], expected [${E}, ${rank}, in] and [T, ${E}]`);
    const mask = noGrad(gates, (g) => tf.cast(tf.notEqual(g, 0), 'float32'));
    const h = tf.reshape(xwT(x, stackRows(Ae)), [T, E, rank]);
    return [tf.reshape(tf.mul(h, tf.reshape(mask, [T, E, 1])), [T, E * rank])];
  },

  moe_up_grouped(inputs, step) {
    arity(step, inputs, 3, 4);
    const [h, gates, ...Bs] = inputs;
    const sharedRank = num(step, 'sharedRank', 0);
    const rank = num(step, 'rank');
    const E = num(step, 'experts');
    const scale = num(step, 'scale');
    const Be = Bs[Bs.length - 1];
    const T = dims(h)[0];
    if (dims(h)[1] !== sharedRank + E * rank) throw new KernelError(step, `h has ${dims(h)[1]} columns, expected ${sharedRank} + ${E}×${rank}`);
    // Scale each expert's hidden by its gate (0 outside the token's top-k), then one GEMM over all of B.
    const he = tf.slice(h, [0, sharedRank], [T, E * rank]);
    const hg = tf.reshape(tf.mul(tf.reshape(he, [T, E, rank]), tf.reshape(gates, [T, E, 1])), [T, E * rank]);
    const be = tf.reshape(tf.transpose(Be, [0, 2, 1]), [E * rank, dims(Be)[1]]); // [E·r, out]
    let y = tf.matMul(hg as tf.Tensor2D, be as tf.Tensor2D);
    if (sharedRank > 0) {
      if (Bs.length !== 2) throw new KernelError(step, 'sharedRank > 0 but no shared B');
      y = tf.add(xwT(tf.slice(h, [0, 0], [T, sharedRank]), Bs[0]), y);
    }
    return [tf.mul(y, scale)];
  },

  concat_linear(inputs, step) {
    const parts = step.attrs.parts as ConcatPart[] | undefined;
    if (!Array.isArray(parts) || !parts.length) throw new KernelError(step, 'attrs.parts must be a non-empty list');
    const x = inputs[0];
    let at = 1;
    const weights: Tensor[] = [];
    const biases: (Tensor | undefined)[] = [];
    for (const p of parts) {
      const ws = inputs.slice(at, at + p.params.length);
      at += p.params.length;
      if (ws.length !== p.params.length) throw new KernelError(step, `too few inputs for part ${p.kind}`);
      weights.push(...ws.map(stackRows));
      biases.push(p.bias ? inputs[at++] : undefined);
    }
    if (at !== inputs.length) throw new KernelError(step, `${inputs.length} inputs, the parts read ${at}`);
    const y = xwT(x, tf.concat(weights, 0));
    const total = parts.reduce((s, p) => s + p.out, 0);
    if (dims(y)[1] !== total) throw new KernelError(step, `the concatenated weights give ${dims(y)[1]} outputs, the parts ${total}`);
    const T = dims(x)[0];
    let col = 0;
    return parts.map((p, i) => {
      let o = tf.slice(y, [0, col], [T, p.out]);
      col += p.out;
      if (biases[i]) o = tf.add(o, biases[i]!);
      if (p.kind === 'router') o = activation(step, o, p.activation ?? 'softmax');
      return o;
    });
  },

  ortho_penalty(inputs, step) {
    const tp = num(step, 'targetParts');
    if (tp < 1 || tp >= inputs.length) throw new KernelError(step, `targetParts ${tp} of ${inputs.length} inputs`);
    return [orthoPenalty(inputs.slice(0, tp), inputs.slice(tp), str(step, 'matrix', 'A'), str(step, 'norm', 'l1'), step)];
  },

  ortho_penalty_batched(inputs, step) {
    const terms = step.attrs.terms as OrthoTerm[] | undefined;
    if (!Array.isArray(terms) || !terms.length) throw new KernelError(step, 'attrs.terms must be a non-empty list');
    const weighted = bool(step, 'weighted', true);
    const byId = new Map(step.inputs.map((id, i) => [id, inputs[i]]));
    const get = (id: string) => {
      const t = byId.get(id);
      if (!t) throw new KernelError(step, `term reads ${id}, which is not an input`);
      return t;
    };
    const vals = terms.map((t) => {
      const v = orthoPenalty(t.targetParams.map(get), t.otherParams.map(get), t.matrix, t.norm, step);
      return weighted ? tf.mul(v, t.weight) : v;
    });
    return [vals.length === 1 ? vals[0] : tf.addN(vals)];
  },

  loss_sum(inputs, step) {
    const w = step.attrs.weights as number[] | undefined;
    if (!Array.isArray(w) || w.length !== inputs.length) throw new KernelError(step, `attrs.weights must list one weight per input (${inputs.length})`);
    const terms = inputs.map((x, i) => (w[i] === 1 ? x : tf.mul(x, w[i])));
    return [terms.length === 1 ? tf.clone(terms[0]) : tf.addN(terms)];
  },

  fused_elementwise(inputs, step) {
    return evalFused(step.attrs.expr, inputs, step.outputs.length, (m) => new KernelError(step, m));
  },

  adapted_linear(inputs, step, ctx) {
    const ads = (step.attrs.adapters ?? []) as LiveAdapter[];
    const byId = new Map(step.inputs.map((id, i) => [id, inputs[i]]));
    const x = inputs[0];
    const w = byId.get(str(step, 'weight'))!;
    const b = typeof step.attrs.bias === 'string' ? byId.get(step.attrs.bias) : undefined;
    const sub = (op: PlanOp, attrs: Record<string, unknown>): KernelStep => ({ node: step.node, op, inputs: [], outputs: [], attrs });
    const terms = [reference.linear(b ? [x, w, b] : [x, w], sub('linear', {}), ctx)[0]];
    for (const a of ads) {
      const P = (t: string) => {
        const v = byId.get(a.params[t]);
        if (!v) throw new KernelError(step, `adapter ${a.name}: ${t} is not an input`);
        return v;
      };
      if (a.type === 'lora') {
        terms.push(tf.mul(xwT(xwT(x, P('A')), P('B')), a.scale));
        continue;
      }
      if (a.params.shared_A) terms.push(tf.mul(xwT(xwT(x, P('shared_A')), P('shared_B')), a.scale));
      if (!a.params.expert_A) continue;
      const p = reference.router([x, P('router_W'), P('router_b')], sub('router', { activation: a.router }), ctx)[0];
      const gates = reference.topk_gate([p], sub('topk_gate', { k: a.topK, renormalize: a.renormalize }), ctx)[0];
      const h = xwT(x, stackRows(P('expert_A')));
      terms.push(reference.moe_up_grouped([h, gates, P('expert_B')], sub('moe_up_grouped', { sharedRank: 0, rank: a.rank, experts: a.experts, scale: a.scale }), ctx)[0]);
    }
    return [terms.length === 1 ? terms[0] : tf.addN(terms)];
  },
};
