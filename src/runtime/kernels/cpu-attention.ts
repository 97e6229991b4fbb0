/**
 * The CPU table's attention (./cpu.ts): tfjs kernels McpcAttention (forward) and McpcAttentionGrad (its
 * gradient), for both CPU backends, on ../tfjs/attention.wat: per (row, query head), each query against only
 * the keys it can see, flash-attention style. The reference (./reference.ts) adds a −1e9 mask to the full S×S
 * scores; a masked key's exp underflows to exactly 0 there, so softmax over the visible keys alone is the same
 * function, and in packed rows most keys are masked (two examples per row, causal: a query sees ~1/4 of S).
 *
 * Visible keys: query i sees key j iff both are in the same segment of the row (padding, segment 0, is a
 * segment like the others) and j <= i when causal. That is one range [lo_i, hi_i) per query when every
 * segment id of a row occupies one contiguous run; `attentionRanges` returns null otherwise (the caller falls
 * back). The query always sees itself, so no range is empty.
 *
 * Forward saves o, per (token, head) the logsumexp of the scaled scores, and (under a gradient tape) P over
 * each query's window (~T·H·keys seen floats; up to a cap, ../tfjs/attention.ts savedProbsSize; savedP); the
 * backward takes that P (or recomputes P = exp(s − logsumexp) from q and k) and forms dV = Pᵀ·dO, dP = dO·Vᵀ,
 * dS = P ⊙ (dP − rowsum(dO ⊙ O)), dQ = dS·K/√d, dK = dSᵀ·Q/√d in one call (all three gradients at once; the
 * gradient function runs it when autodiff reaches the node and hands each input its part).
 */
import { tf, type Tensor } from '../tfjs/index.js';
import { allocProbs, attentionBackward, attentionForward, freeProbs, savedProbsSize, type AttentionShape, type ProbsSlot } from '../tfjs/attention.js';
import { registerCpuKernel } from './cpu-ops.js';
import { KeptForGradient } from '../tfjs/share.js';
import { tensorScratch } from '../tfjs/wasm-extra.js';
import type { KernelContext } from './reference.js';

type Attrs = Record<string, unknown>;

/**
 * Each query's visible keys [lo, hi) within its row, [T, 2] int32, made once per micro-batch (ctx.cache);
 * null when some row has a segment id in two separate runs (the ranges would not describe the mask).
 */
export function attentionRanges(ctx: KernelContext, causal: boolean): Tensor | null {
  const key = `cpu:attn-ranges:${causal}`;
  const hit = ctx.cache.get(key);
  if (hit && !hit.isDisposed) return hit;
  const { rows, seqLen: S, segments } = ctx;
  const rng = tensorScratch('attention-ranges', Int32Array, rows * S * 2); // every element written below
  for (let r = 0; r < rows; r++) {
    const seen = new Set<number>();
    let a = 0;
    while (a < S) {
      const id = segments[r * S + a]!;
      if (seen.has(id)) return null;
      seen.add(id);
      let b = a + 1;
      while (b < S && segments[r * S + b] === id) b++;
      for (let i = a; i < b; i++) {
        rng[(r * S + i) * 2] = a;
        rng[(r * S + i) * 2 + 1] = causal ? i + 1 : b;
      }
      a = b;
    }
  }
  const t = tf.tensor2d(rng, [rows * S, 2], 'int32');
  ctx.cache.set(key, t);
  return t;
}

const shapeOf = (a: Attrs): AttentionShape => ({ rows: a.rows as number, S: a.S as number, H: a.H as number, KV: a.KV as number, d: a.d as number });

/**
 * P saved by a forward for its backward (../tfjs/attention.ts savedProbsSize), in a slot of the attention
 * module's memory (allocProbs: written there by the forward, read there by the backward, never copied; a copy
 * out to JavaScript memory and back cost ~1 ms each way per layer in a training step at 8x256), by the dataId
 * of the forward's stats output: the gradient gets that output back as its saved copy, which shares the
 * dataId (../tfjs/share.ts on both CPU backends; before it, their Identity did). Not a third output: autodiff
 * would give an output no gradient reaches a zero-filled dy of its size (~8 ms a step for 2 MB at 8x256, more
 * than P saves). Taken by the backward, which frees the slot; one not found (no tape, past the cap, a copying
 * Identity) is recomputed there. A forward whose backward never comes (a layer below every trainable
 * parameter: the align stage's first layer) has its slot freed by the next forward once the stats' data is
 * gone (KeptForGradient's sweep): waiting for garbage collection left one fresh slot per step, the module's memory growing and
 * the calls' arrays above the slots moving onto untouched pages each step (the backward 7 -> 14 ms a step).
 */
const savedP = new KeptForGradient<ProbsSlot>(freeProbs);

/** How the backward got P, counted for tests: taken from the forward or recomputed. */
export const attentionPCounts = { saved: 0, recomputed: 0 };

function ensureRegistered(): void {
  const fwdShapes = (a: Attrs) => {
    const T = (a.rows as number) * (a.S as number);
    return [
      [T, (a.H as number) * (a.d as number)],
      [T, a.H as number],
    ];
  };
  // outputs o and the logsumexp; P kept for the backward when a gradient tape records the call (attr saveP)
  registerCpuKernel(
    'McpcAttention',
    {
      shapes: (_, a) => fwdShapes(a),
      writesAll: true,
      run: (ins, [o, st], inInfos, a, outInfos) => {
        // the ranges' dataId keys the pair tables (../tfjs/attention.ts pairsInto): one per micro-batch
        const key = inInfos[3]!.dataId;
        const n = a.saveP ? savedProbsSize(ins[3] as Int32Array, shapeOf(a), key) : 0;
        if (n) savedP.sweep();
        const p = n ? allocProbs(n) : undefined;
        attentionForward(ins[0] as Float32Array, ins[1] as Float32Array, ins[2] as Float32Array, ins[3] as Int32Array, shapeOf(a), o!, st!, p, key);
        if (p) savedP.set(outInfos[1]!.dataId, p);
      },
    },
    {
      saveAllInputs: true,
      outputsToSave: [true, true],
      gradFunc: (dy, saved, a) => {
        const [q, k, v, ranges, o, stats] = saved as Tensor[];
        const dO = (Array.isArray(dy) ? dy[0] : dy) as Tensor;
        // One call for the three gradients, made here (inside autodiff's backward scope, which frees whatever
        // no input takes) rather than in a per-input closure, whose own scope would free the other two.
        const [dq, dk, dv] = tf.engine().runKernel('McpcAttentionGrad', [q, k, v, o, stats, ranges, dO] as unknown as tf.NamedTensorMap, a as tf.NamedAttrMap) as Tensor[];
        return { 0: () => dq!, 1: () => dk!, 2: () => dv!, 3: () => tf.zeros(ranges!.shape, 'float32') };
      },
    },
  );
  // inputs q, k, v, o, stats, ranges, dO
  registerCpuKernel('McpcAttentionGrad', {
    shapes: (_, a) => {
      const T = (a.rows as number) * (a.S as number);
      return [
        [T, (a.H as number) * (a.d as number)],
        [T, (a.KV as number) * (a.d as number)],
        [T, (a.KV as number) * (a.d as number)],
      ];
    },
    writesAll: true,
    run: (ins, [dq, dk, dv], inInfos, a) => {
      const p = savedP.take(inInfos[4]!.dataId);
      attentionPCounts[p ? 'saved' : 'recomputed']++;
      attentionBackward(
        ins[0] as Float32Array,
        ins[1] as Float32Array,
        ins[2] as Float32Array,
        ins[3] as Float32Array,
        ins[4] as Float32Array,
        ins[5] as Int32Array,
        ins[6] as Float32Array,
        shapeOf(a),
        dq!,
        dk!,
        dv!,
        p,
        inInfos[5]!.dataId,
      );
      if (p) freeProbs(p);
    },
  });
}

/**
 * Attention of q [T, H·d] over k, v [T, KV·d] (T = rows·S) within `ranges` (attentionRanges), [T, H·d];
 * differentiable in q, k and v.
 */
export function attentionOp(q: Tensor, k: Tensor, v: Tensor, ranges: Tensor, s: AttentionShape): Tensor {
  ensureRegistered();
  // P is saved only for a backward: when a gradient tape records this call (tf.grads, engine.gradients).
  const attrs = { ...s, saveP: tf.engine().isTapeOn() };
  const [o] = tf.engine().runKernel('McpcAttention', [q, k, v, ranges] as unknown as tf.NamedTensorMap, attrs as unknown as tf.NamedAttrMap) as Tensor[];
  return o!;
}
