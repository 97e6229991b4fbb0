/**
 * The CPU table's fused attention (src/runtime/kernels/cpu-attention.ts on src/runtime/tfjs/attention.wat):
 * forward and the gradients of q, k and v against the reference kernel and tfjs autodiff of it, on the
 * `wasm` backend (in place on its heap) and on `cpu`: packed rows with several segments, padding (segment 0,
 * which sees only padding), rows of one token, S not a multiple of 4 or 16, head dims 16, 32 and 5, 6, 20 (not
 * multiples of 16: padded in the kernel), GQA groups of 1, 2, 3 and 4 (the kernel's pairs of queries: two heads
 * of a token, consecutive tokens across segment boundaries, one query left over), causal and not; a row whose
 * segment ids are not contiguous falls back to the composition. The backward from the P the forward saved, and
 * recomputing it (MCPC_ATTENTION_SAVE_P=0).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { PlanOp, PlanStep } from '../../../src/plan/types.js';
import { attentionPCounts, attentionRanges } from '../../../src/runtime/kernels/cpu-attention.js';
import { cpuKernels } from '../../../src/runtime/kernels/cpu.js';
import { reference, type Kernel, type KernelContext } from '../../../src/runtime/kernels/reference.js';
import { initBackend, tf, type Tensor } from '../../../src/runtime/tfjs/index.js';
import { probsSlotBytes } from '../../../src/runtime/tfjs/attention.js';
import { lcg, relErr } from '../executor/helpers.js';

const rnd = lcg(9876);
const randn = (n: number, scale = 1) => Float32Array.from({ length: n }, () => (rnd() * 2 - 1) * scale);

/** Rows of `segs` segments of random lengths (ids 1, 2, ...), then `pad` padding tokens (segment 0). */
function packed(rows: number, S: number, segs: number, pad: number): KernelContext {
  const positions = new Int32Array(rows * S);
  const segments = new Int32Array(rows * S);
  for (let r = 0; r < rows; r++) {
    const real = S - pad;
    // segs − 1 distinct cut points in (0, real)
    const cuts = new Set<number>();
    while (cuts.size < Math.min(segs - 1, Math.max(real - 1, 0))) cuts.add(1 + Math.floor(rnd() * (real - 1)));
    const bounds = [0, ...[...cuts].sort((a, b) => a - b), real];
    for (let s = 0; s + 1 < bounds.length; s++)
      for (let t = bounds[s]!; t < bounds[s + 1]!; t++) {
        segments[r * S + t] = s + 1;
        positions[r * S + t] = t - bounds[s]!;
      }
  }
  return { rows, seqLen: S, positions, segments, cache: new Map() };
}

const step = (H: number, KV: number, d: number, causal: boolean): PlanStep => ({
  node: 'n',
  op: 'attention' as PlanOp,
  kernel: '',
  inputs: ['q', 'k', 'v'],
  outputs: ['o'],
  attrs: { heads: H, kvHeads: KV, headDim: d, causal },
  flops: 0,
  bytes: 0,
});

function valueAndGrads(kernel: Kernel, st: PlanStep, inputs: Tensor[], ctx: KernelContext, R: Tensor): { y: Float32Array; gs: Float32Array[] } {
  return tf.tidy(() => {
    ctx.cache.clear();
    const y = Float32Array.from(kernel(inputs, st, ctx)[0]!.dataSync());
    ctx.cache.clear();
    const f = (...xs: Tensor[]) => tf.sum(tf.mul(kernel(xs, st, ctx)[0]!, R)) as tf.Scalar;
    const gs = tf.grads(f)(inputs).map((g) => Float32Array.from(g.dataSync()));
    ctx.cache.clear();
    return { y, gs };
  });
}

/** The CPU table's attention against the reference: output and the three gradients. */
function check(ctx: KernelContext, H: number, KV: number, d: number, causal: boolean, tol = 2e-5, qScale = 2): void {
  const T = ctx.rows * ctx.seqLen;
  const inputs = [tf.tensor2d(randn(T * H * d, qScale), [T, H * d]), tf.tensor2d(randn(T * KV * d, 2), [T, KV * d]), tf.tensor2d(randn(T * KV * d), [T, KV * d])];
  const R = tf.tensor2d(randn(T * H * d), [T, H * d]);
  const st = step(H, KV, d, causal);
  const a = valueAndGrads(reference.attention, st, inputs, ctx, R);
  const b = valueAndGrads(cpuKernels({ kernels: [] }).attention, st, inputs, ctx, R);
  const what = `rows ${ctx.rows} S ${ctx.seqLen} H ${H} KV ${KV} d ${d} causal ${causal}`;
  expect(relErr(b.y, a.y), `${what}: output`).toBeLessThan(tol);
  a.gs.forEach((g, i) => expect(relErr(b.gs[i]!, g), `${what}: gradient of ${'qkv'[i]}`).toBeLessThan(tol));
  tf.dispose([...inputs, R]);
}

/** The kernels a call of the CPU table's attention runs (forward and gradient). */
async function kernelsRun(ctx: KernelContext, H: number, KV: number, d: number): Promise<string[]> {
  const T = ctx.rows * ctx.seqLen;
  const xs = [tf.tensor2d(randn(T * H * d), [T, H * d]), tf.tensor2d(randn(T * KV * d), [T, KV * d]), tf.tensor2d(randn(T * KV * d), [T, KV * d])];
  const info = await tf.profile(() => tf.grads((...x: Tensor[]) => tf.sum(cpuKernels({ kernels: [] }).attention(x, step(H, KV, d, true), ctx)[0]!) as tf.Scalar)(xs));
  ctx.cache.clear();
  tf.dispose(xs);
  return info.kernelNames;
}

/** The cases: [rows, S, segments per row, padding, H, KV, d, causal]. */
const cases: [number, number, number, number, number, number, number, boolean][] = [
  [2, 37, 3, 5, 4, 2, 16, true],
  [3, 21, 2, 0, 4, 1, 6, true],
  [1, 50, 4, 3, 2, 2, 16, false],
  [2, 13, 2, 2, 8, 2, 6, false],
  [1, 1, 1, 0, 4, 2, 16, true],
  [2, 1, 1, 1, 2, 1, 6, true], // every token padding
  [2, 6, 5, 0, 3, 3, 6, true], // one-token segments
  [1, 40, 1, 0, 4, 4, 16, true], // one segment: the plain causal mask, 16-key blocks past S
  [2, 33, 2, 31, 2, 1, 16, true], // mostly padding
  [2, 19, 3, 2, 3, 1, 5, true], // GQA 3: pairs across tokens and heads, S·G odd (a query paired with itself)
  [2, 17, 3, 0, 1, 1, 16, true], // one head: pairs of consecutive tokens, across segment boundaries, one left over
  [2, 23, 3, 1, 2, 2, 20, false], // pairs of tokens over whole segments; d 20: two 16-column chunks, padded
  [1, 35, 2, 0, 4, 2, 32, true], // d 32: two chunks, unpadded
];

describe('fused attention (cpu-attention.ts)', () => {
  for (const backend of ['wasm', 'cpu'] as const) {
    describe(`on ${backend}`, () => {
      beforeAll(() => initBackend(backend));
      afterAll(() => initBackend('cpu'));

      it('matches the reference (output, dq, dk, dv): packed segments, padding, S = 1, odd S, d 5/6/16/20/32, GQA 1/2/3/4, causal or not', () => {
        for (const [rows, S, segs, pad, H, KV, d, causal] of cases) check(packed(rows, S, segs, pad), H, KV, d, causal);
      });

      it('pair tables kept per ranges tensor: calls sharing one (other head counts, again, forward and backward) match the reference', () => {
        const ctx = packed(2, 37, 3, 5);
        const T = ctx.rows * ctx.seqLen;
        const table = cpuKernels({ kernels: [] });
        for (const [H, KV, d] of [[4, 2, 16], [2, 1, 6], [4, 2, 16], [6, 3, 16]] as const) {
          const xs = [tf.tensor2d(randn(T * H * d), [T, H * d]), tf.tensor2d(randn(T * KV * d), [T, KV * d]), tf.tensor2d(randn(T * KV * d), [T, KV * d])];
          const R = tf.tensor2d(randn(T * H * d), [T, H * d]);
          const st = step(H, KV, d, true);
          // ctx.cache is not cleared: every call reads the same ranges tensor
          const run = (k: Kernel) => tf.tidy(() => [k(xs, st, ctx)[0]!, ...tf.grads((...x: Tensor[]) => tf.sum(tf.mul(k(x, st, ctx)[0]!, R)) as tf.Scalar)(xs)].map((t) => Float32Array.from(t.dataSync())));
          const [a, b] = [run(reference.attention), run(table.attention)];
          a.forEach((v, i) => expect(relErr(b[i]!, v), `H ${H} KV ${KV}: ${['output', 'dq', 'dk', 'dv'][i]}`).toBeLessThan(2e-5));
          tf.dispose([...xs, R]);
        }
        for (const t of ctx.cache.values()) t.dispose();
      });

      it('matches the reference with scores far apart (weights below e^−87 of the largest: 0, no denormals)', () => {
        for (const save of ['1', '0']) {
          process.env.MCPC_ATTENTION_SAVE_P = save;
          try {
            check(packed(2, 37, 2, 3), 4, 2, 16, true, 2e-5, 60);
            check(packed(1, 29, 1, 0), 2, 1, 6, false, 2e-5, 60);
          } finally {
            delete process.env.MCPC_ATTENTION_SAVE_P;
          }
        }
      });

      it('matches the reference with P recomputed in the backward (MCPC_ATTENTION_SAVE_P=0) instead of saved by the forward', () => {
        process.env.MCPC_ATTENTION_SAVE_P = '0';
        try {
          for (const [rows, S, segs, pad, H, KV, d, causal] of cases) check(packed(rows, S, segs, pad), H, KV, d, causal);
        } finally {
          delete process.env.MCPC_ATTENTION_SAVE_P;
        }
      });

      it('the backward takes the P its forward saved (under a gradient tape)', () => {
        const ctx = packed(2, 10, 2, 1);
        const T = 20;
        const xs = [tf.tensor2d(randn(T * 8), [T, 8]), tf.tensor2d(randn(T * 4), [T, 4]), tf.tensor2d(randn(T * 4), [T, 4])];
        const st = step(2, 1, 4, true);
        const attention = cpuKernels({ kernels: [] }).attention;
        const before = { ...attentionPCounts };
        tf.dispose(tf.grads((...x: Tensor[]) => tf.sum(attention(x, st, ctx)[0]!) as tf.Scalar)(xs));
        expect(attentionPCounts.saved).toBe(before.saved + 1);
        expect(attentionPCounts.recomputed).toBe(before.recomputed);
        ctx.cache.forEach((t) => t.dispose());
        ctx.cache.clear();
        tf.dispose(xs);
      });

      it('a forward whose backward never comes (inputs off the gradient path) gives its P slot back to the next forward', () => {
        const ctx = packed(2, 10, 2, 1);
        const T = 20;
        const xs = [tf.tensor2d(randn(T * 8), [T, 8]), tf.tensor2d(randn(T * 4), [T, 4]), tf.tensor2d(randn(T * 4), [T, 4])];
        const w = tf.tensor2d(randn(T * 8), [T, 8]);
        const st = step(2, 1, 4, true);
        const attention = cpuKernels({ kernels: [] }).attention;
        // the attention of constants under the tape: saved, never taken
        const run = () => tf.dispose(tf.grads((x: Tensor) => tf.sum(tf.mul(attention(xs, st, ctx)[0]!, x)) as tf.Scalar)([w]));
        run();
        const bytes = probsSlotBytes();
        const before = { ...attentionPCounts };
        for (let i = 0; i < 4; i++) run();
        expect(probsSlotBytes()).toBe(bytes);
        expect(attentionPCounts).toEqual(before);
        ctx.cache.forEach((t) => t.dispose());
        ctx.cache.clear();
        tf.dispose([...xs, w]);
      });

      it('runs McpcAttention and McpcAttentionGrad (no BatchMatMul, Softmax)', async () => {
        const names = await kernelsRun(packed(2, 10, 2, 1), 4, 2, 6);
        expect(names).toContain('McpcAttention');
        expect(names).toContain('McpcAttentionGrad');
        expect(names).not.toContain('BatchMatMul');
        expect(names).not.toContain('Softmax');
      });

      it('a gradient of q alone (k, v constants) matches and leaves no tensor behind', () => {
        const ctx = packed(2, 12, 2, 1);
        const T = 24;
        const [q, k, v] = [tf.tensor2d(randn(T * 8), [T, 8]), tf.tensor2d(randn(T * 4), [T, 4]), tf.tensor2d(randn(T * 4), [T, 4])];
        const st = step(2, 1, 4, true);
        const grad = (kernel: Kernel) => {
          const before = tf.memory().numTensors;
          const g = tf.grad((x: Tensor) => tf.sum(tf.square(kernel([x, k, v], st, ctx)[0]!)) as tf.Scalar)(q);
          ctx.cache.forEach((t) => t.dispose());
          ctx.cache.clear();
          expect(tf.memory().numTensors).toBe(before + 1);
          const out = Float32Array.from(g.dataSync());
          g.dispose();
          return out;
        };
        expect(relErr(grad(cpuKernels({ kernels: [] }).attention), grad(reference.attention))).toBeLessThan(2e-5);
        tf.dispose([q, k, v]);
      });

      it('falls back to the composition when a segment id is split into two runs (padding at both ends)', async () => {
        const ctx = packed(2, 9, 2, 0);
        ctx.segments.set([0, 0, 1, 1, 1, 2, 2, 0, 0], 0);
        expect(attentionRanges(ctx, true)).toBeNull();
        check(ctx, 4, 2, 6, true);
        expect(await kernelsRun(ctx, 4, 2, 6)).not.toContain('McpcAttention');
        ctx.cache.clear();
      });

      it('ranges: padding sees the padding before it, real tokens their own example', () => {
        const ctx: KernelContext = { rows: 1, seqLen: 6, positions: new Int32Array(6), segments: Int32Array.from([1, 1, 2, 2, 0, 0]), cache: new Map() };
        const r = attentionRanges(ctx, true)!;
        expect(Array.from(r.dataSync())).toEqual([0, 1, 0, 2, 2, 3, 2, 4, 4, 5, 4, 6]);
        const n = attentionRanges(ctx, false)!;
        expect(Array.from(n.dataSync())).toEqual([0, 2, 0, 2, 2, 4, 2, 4, 4, 6, 4, 6]);
        tf.dispose([r, n]);
      });
    });
  }
});
