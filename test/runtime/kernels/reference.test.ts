/**
 * Every reference kernel against a direct formula (plain loops in f64) on small random inputs, the batched
 * and concatenated kernels against the unbatched ones they replace, and gradients against central finite
 * differences (a random directional derivative per checked input).
 */
import { beforeAll, describe, expect, it } from 'vitest';
import type { PlanOp } from '../../../src/plan/types.js';
import { reference, ropeTables, type KernelContext } from '../../../src/runtime/kernels/reference.js';
import { initBackend, tf, type Tensor } from '../../../src/runtime/tfjs/index.js';
import { lcg, relErr } from '../executor/helpers.js';

beforeAll(() => initBackend('cpu'));

const rnd = lcg(1234);
const randn = (n: number, scale = 1) => Float32Array.from({ length: n }, () => (rnd() * 2 - 1) * scale);
const T2 = (rows: number, cols: number, scale = 1) => tf.tensor2d(randn(rows * cols, scale), [rows, cols]);

/** A context for `rows` sequences of `S` tokens: row r packs two examples split at S/2 + r, no padding. */
function context(rows: number, S: number, pad = 0): KernelContext {
  const positions = new Int32Array(rows * S);
  const segments = new Int32Array(rows * S);
  for (let r = 0; r < rows; r++) {
    const split = Math.floor(S / 2) + r;
    for (let t = 0; t < S; t++) {
      if (t >= S - pad) continue;
      segments[r * S + t] = t < split ? 1 : 2;
      positions[r * S + t] = t < split ? t : t - split;
    }
  }
  return { rows, seqLen: S, positions, segments, cache: new Map() };
}

/** Run the reference kernel of `op` (inputs named i0, i1, ... unless `names` are given). */
function run(op: PlanOp, inputs: Tensor[], attrs: Record<string, unknown> = {}, ctx: KernelContext = context(1, 1), names?: string[], outputs = 1): Tensor[] {
  const step = { node: 'n', op, inputs: names ?? inputs.map((_, i) => `i${i}`), outputs: Array.from({ length: outputs }, (_, i) => `o${i}`), attrs };
  return reference[op](inputs, step, ctx);
}
const arr = (t: Tensor) => Array.from(t.dataSync());
const close = (a: ArrayLike<number>, b: ArrayLike<number>, tol = 1e-5) => expect(relErr(a, b)).toBeLessThanOrEqual(tol);

/**
 * Checks d/dε f(x + ε v) at 0 (central difference, step h) against <∇f(x), v> for each input in `which`,
 * where f sums the kernel's first output weighted by a fixed random tensor.
 */
function gradCheck(fn: (xs: Tensor[]) => Tensor, xs: Tensor[], which: number[], h = 1e-2, tol = 1e-2): void {
  const out = tf.tidy(() => fn(xs));
  const R = tf.tensor(randn(out.size), out.shape);
  out.dispose();
  const scalar = (ys: Tensor[]) => tf.sum(tf.mul(fn(ys), R)) as tf.Scalar;
  const grads = tf.grads((...ys: Tensor[]) => scalar(ys))(xs);
  for (const i of which) {
    const v = tf.tensor(randn(xs[i].size), xs[i].shape);
    const shifted = (s: number) => tf.tidy(() => scalar(xs.map((x, j) => (j === i ? tf.add(x, tf.mul(v, s)) : x))).dataSync()[0]);
    const numeric = (shifted(h) - shifted(-h)) / (2 * h);
    const analytic = tf.sum(tf.mul(grads[i], v)).dataSync()[0];
    expect(Math.abs(numeric - analytic), `input ${i}: numeric ${numeric} vs analytic ${analytic}`).toBeLessThan(tol * Math.abs(analytic) + 2e-3);
    expect(Math.abs(analytic), `input ${i}: a vanishing directional derivative checks nothing`).toBeGreaterThan(0.01);
  }
}

// --- direct formulas -------------------------------------------------------------------------------------------

function rmsnormRef(x: number[], w: number[], cols: number, eps: number): number[] {
  const out: number[] = [];
  for (let r = 0; r < x.length / cols; r++) {
    let ss = 0;
    for (let c = 0; c < cols; c++) ss += x[r * cols + c] ** 2;
    const s = 1 / Math.sqrt(ss / cols + eps);
    for (let c = 0; c < cols; c++) out.push(x[r * cols + c] * s * w[c]);
  }
  return out;
}

function ropeRef(x: number[], positions: Int32Array, heads: number, d: number, theta: number): number[] {
  const out = x.slice();
  const half = d / 2;
  for (let t = 0; t < positions.length; t++) {
    for (let h = 0; h < heads; h++) {
      const o = t * heads * d + h * d;
      for (let i = 0; i < half; i++) {
        const a = positions[t] * Math.pow(theta, (-2 * i) / d);
        const [x1, x2] = [x[o + i], x[o + i + half]];
        out[o + i] = x1 * Math.cos(a) - x2 * Math.sin(a);
        out[o + i + half] = x2 * Math.cos(a) + x1 * Math.sin(a);
      }
    }
  }
  return out;
}

function attentionRef(q: number[], k: number[], v: number[], ctx: KernelContext, H: number, KV: number, d: number): number[] {
  const S = ctx.seqLen;
  const out = new Array<number>(q.length).fill(0);
  for (let r = 0; r < ctx.rows; r++) {
    for (let h = 0; h < H; h++) {
      const g = Math.floor(h / (H / KV));
      for (let i = 0; i < S; i++) {
        const qi = (r * S + i) * H * d + h * d;
        const scores: number[] = [];
        const keys: number[] = [];
        for (let j = 0; j <= i; j++) {
          if (ctx.segments[r * S + j] !== ctx.segments[r * S + i]) continue;
          const kj = (r * S + j) * KV * d + g * d;
          let s = 0;
          for (let c = 0; c < d; c++) s += q[qi + c] * k[kj + c];
          scores.push(s / Math.sqrt(d));
          keys.push(kj);
        }
        const m = Math.max(...scores);
        const e = scores.map((s) => Math.exp(s - m));
        const z = e.reduce((a, b) => a + b, 0);
        for (let c = 0; c < d; c++) out[qi + c] = keys.reduce((acc, kj, n) => acc + (e[n] / z) * v[kj + c], 0);
      }
    }
  }
  return out;
}

// --- the tests -------------------------------------------------------------------------------------------------

describe('reference kernels match direct formulas', () => {
  it('embedding, add, swiglu, linear, lora_down, lora_up, loss_sum', () => {
    const W = T2(10, 4);
    const tok = tf.tensor1d([3, 0, 9, 3], 'int32');
    close(arr(run('embedding', [tok, W])[0]), [3, 0, 9, 3].flatMap((i) => arr(W).slice(i * 4, i * 4 + 4)), 0);
    const [a, b, c] = [T2(3, 5), T2(3, 5), T2(3, 5)];
    close(arr(run('add', [a, b, c])[0]), arr(a).map((x, i) => x + arr(b)[i] + arr(c)[i]));
    close(arr(run('swiglu', [a, b])[0]), arr(a).map((g, i) => (g / (1 + Math.exp(-g))) * arr(b)[i]));
    const x = T2(3, 5);
    const w = T2(2, 5);
    const bias = tf.tensor1d([0.5, -1]);
    const lin = (withBias: boolean) => [0, 1, 2].flatMap((t) => [0, 1].map((o) => arr(x).slice(t * 5, t * 5 + 5).reduce((s, xi, i) => s + xi * arr(w)[o * 5 + i], withBias ? arr(bias)[o] : 0)));
    close(arr(run('linear', [x, w, bias])[0]), lin(true));
    close(arr(run('linear', [x, w])[0]), lin(false));
    close(arr(run('lora_down', [x, w])[0]), lin(false));
    const h = T2(3, 2);
    const B = T2(4, 2);
    close(arr(run('lora_up', [h, B], { scale: 2.5 })[0]), [0, 1, 2].flatMap((t) => [0, 1, 2, 3].map((o) => 2.5 * (arr(h)[t * 2] * arr(B)[o * 2] + arr(h)[t * 2 + 1] * arr(B)[o * 2 + 1]))));
    close(arr(run('loss_sum', [tf.scalar(2), tf.scalar(3)], { weights: [1, 0.5] })[0]), [3.5]);
  });

  it('rmsnorm', () => {
    const x = T2(4, 8);
    const w = tf.tensor1d(randn(8));
    close(arr(run('rmsnorm', [x, w], { eps: 1e-6 })[0]), rmsnormRef(arr(x), arr(w), 8, 1e-6));
  });

  it('rope: rotate-half at each token’s position in its own example (packed rows restart at 0)', () => {
    const ctx = context(2, 6);
    const [H, KV, d] = [2, 1, 4];
    const q = T2(12, H * d);
    const k = T2(12, KV * d);
    const [qr, kr] = run('rope', [q, k], { theta: 10000, headDim: d, heads: H, kvHeads: KV }, ctx, undefined, 2);
    close(arr(qr), ropeRef(arr(q), ctx.positions, H, d, 10000));
    close(arr(kr), ropeRef(arr(k), ctx.positions, KV, d, 10000));
    // Position 0 is the identity.
    expect(ctx.positions[0]).toBe(0);
    close(arr(qr).slice(0, H * d), arr(q).slice(0, H * d), 1e-7);
  });

  it('rope tables: each token’s row is cos/sin of its position’s angles, bit for bit, as positions grow between batches', () => {
    const d = 6;
    // rows kept per position across calls: small positions first, then larger ones (the rows grow), repeats, one past the cap
    for (const positions of [[0, 1, 2, 1], [5, 40, 3, 0, 39], [1000, 7, 1000], [70000, 2]]) {
      const ctx = { rows: 1, seqLen: positions.length, positions: Int32Array.from(positions), segments: new Int32Array(positions.length).fill(1), cache: new Map<string, Tensor>() };
      const [cos, sin] = ropeTables(ctx, d, 5000, 2);
      const [c, sn] = [arr(cos), arr(sin)];
      positions.forEach((p, t) => {
        for (let i = 0; i < d / 2; i++) {
          const a = Math.fround(p * Math.fround(1 / Math.pow(5000, (2 * i) / d)));
          expect([c[t * (d / 2) + i], sn[t * (d / 2) + i]], `position ${p}, frequency ${i}`).toEqual([Math.fround(Math.cos(a)), Math.fround(Math.sin(a))]);
        }
      });
    }
  });

  it('attention: causal, grouped-query, packed segments (against a naive loop)', () => {
    const ctx = context(2, 7, 2);
    const [H, KV, d] = [4, 2, 3];
    const q = T2(14, H * d);
    const k = T2(14, KV * d);
    const v = T2(14, KV * d);
    close(arr(run('attention', [q, k, v], { heads: H, kvHeads: KV, headDim: d, causal: true }, ctx)[0]), attentionRef(arr(q), arr(k), arr(v), ctx, H, KV, d));
    // A query never sees another example: changing the keys and values of segment 2 leaves segment 1 unchanged.
    const k2 = tf.tensor2d(arr(k).map((x, i) => (ctx.segments[Math.floor(i / (KV * d))] === 2 ? x + 5 : x)), [14, KV * d]);
    const a = arr(run('attention', [q, k, v], { heads: H, kvHeads: KV, headDim: d }, ctx)[0]);
    const b = arr(run('attention', [q, k2, v], { heads: H, kvHeads: KV, headDim: d }, ctx)[0]);
    for (let t = 0; t < 14; t++) if (ctx.segments[t] === 1) close(a.slice(t * H * d, (t + 1) * H * d), b.slice(t * H * d, (t + 1) * H * d), 1e-6);
  });

  it('lm_head_xent: mean cross-entropy over the mask, from hidden states or logits', () => {
    const x = T2(5, 4);
    const W = T2(7, 4);
    const labels = tf.tensor1d([1, 6, 0, 3, 3], 'int32');
    const mask = tf.tensor1d([1, 0, 1, 1, 0]);
    const logits = arr(tf.matMul(x, W, false, true));
    let sum = 0;
    for (const t of [0, 2, 3]) {
      const row = logits.slice(t * 7, t * 7 + 7);
      const m = Math.max(...row);
      sum += m + Math.log(row.reduce((s, z) => s + Math.exp(z - m), 0)) - row[arr(labels)[t]];
    }
    close(arr(run('lm_head_xent', [x, W, labels, mask], { logitsGiven: false })[0]), [sum / 3]);
    close(arr(run('lm_head_xent', [tf.tensor2d(logits, [5, 7]), labels, mask], { logitsGiven: true })[0]), [sum / 3]);
    expect(Math.abs(arr(run('lm_head_xent', [x, W, labels, tf.zeros([5])], { logitsGiven: false })[0])[0])).toBe(0);
  });

  it('router and topk_gate: k experts per token, renormalised to sum to 1', () => {
    const x = T2(6, 5);
    const Wr = T2(5, 5);
    const br = tf.tensor1d(randn(5));
    const p = run('router', [x, Wr, br], { activation: 'softmax' })[0];
    for (let t = 0; t < 6; t++) expect(arr(p).slice(t * 5, t * 5 + 5).reduce((a, b) => a + b, 0)).toBeCloseTo(1, 5);
    const sig = arr(run('router', [x, Wr, br], { activation: 'sigmoid' })[0]);
    const lin = arr(tf.add(tf.matMul(x, Wr, false, true), br));
    close(sig, lin.map((z) => 1 / (1 + Math.exp(-z))));
    for (const renormalize of [true, false]) {
      const g = arr(run('topk_gate', [p], { k: 2, renormalize })[0]);
      for (let t = 0; t < 6; t++) {
        const row = arr(p).slice(t * 5, t * 5 + 5);
        const top = [...row.keys()].sort((a, b) => row[b] - row[a]).slice(0, 2);
        const z = renormalize ? row[top[0]] + row[top[1]] : 1;
        close(g.slice(t * 5, t * 5 + 5), row.map((v, e) => (top.includes(e) ? v / z : 0)));
        if (renormalize) expect(g.slice(t * 5, t * 5 + 5).reduce((a, b) => a + b, 0)).toBeCloseTo(1, 6);
        expect(g.slice(t * 5, t * 5 + 5).filter((v) => v > 0)).toHaveLength(2);
      }
    }
  });

  it('topk_gate keeps every expert when k >= E, one expert included (oneHot needs depth >= 2)', () => {
    const one = tf.tensor2d([0.3, 0.9, 0.5], [3, 1]);
    close(arr(run('topk_gate', [one], { k: 1, renormalize: true })[0]), [1, 1, 1]);
    close(arr(run('topk_gate', [one], { k: 1, renormalize: false })[0]), [0.3, 0.9, 0.5]);
    const p = tf.tensor2d([0.2, 0.5, 0.3, 0.6, 0.1, 0.3], [2, 3]);
    close(arr(run('topk_gate', [p], { k: 3, renormalize: false })[0]), [0.2, 0.5, 0.3, 0.6, 0.1, 0.3]);
    close(arr(run('topk_gate', [p], { k: 5, renormalize: true })[0]), [0.2, 0.5, 0.3, 0.6, 0.1, 0.3]);
  });

  it('load_balance: E · Σ f_e P_e over the real tokens', () => {
    const ctx = context(1, 6, 2); // 4 real tokens, 2 padding
    const p = tf.softmax(T2(6, 3));
    const gates = run('topk_gate', [p], { k: 1, renormalize: true })[0];
    const P = arr(p);
    const G = arr(gates);
    let want = 0;
    for (let e = 0; e < 3; e++) {
      let f = 0;
      let pe = 0;
      for (let t = 0; t < 4; t++) {
        f += G[t * 3 + e] > 0 ? 1 : 0;
        pe += P[t * 3 + e];
      }
      want += (f / 4) * (pe / 4);
    }
    close(arr(run('load_balance', [p, gates], { experts: 3, k: 1 }, ctx)[0]), [3 * want]);
  });

  it('expert_down, expert_up, gate_combine, and the batched mixture kernels equal the unbatched ones', () => {
    const [Tn, inF, out, r, E, rs] = [5, 6, 4, 2, 3, 2];
    const x = T2(Tn, inF);
    const Ash = T2(rs, inF);
    const Bsh = T2(out, rs);
    const Ae = tf.tensor3d(randn(E * r * inF), [E, r, inF]);
    const Be = tf.tensor3d(randn(E * out * r), [E, out, r]);
    const gates = run('topk_gate', [tf.softmax(T2(Tn, E))], { k: 2, renormalize: true })[0];
    const s = 1.5;
    // expert_down e is x·A_e[e]ᵀ
    const Ae1 = tf.reshape(tf.slice(Ae, [1, 0, 0], [1, r, inF]), [r, inF]);
    close(arr(run('expert_down', [x, Ae], { expert: 1 })[0]), arr(tf.matMul(x, Ae1, false, true)));
    const hs = [0, 1, 2].map((e) => run('expert_down', [x, Ae], { expert: e })[0]);
    const ys = hs.map((h, e) => run('expert_up', [h, Be], { expert: e, scale: s })[0]);
    const combined = run('gate_combine', [gates, ...ys], { experts: E })[0];
    const G = arr(gates);
    close(arr(combined), arr(ys[0]).map((_, i) => ys.reduce((acc, y, e) => acc + G[Math.floor(i / out) * E + e] * arr(y)[i], 0)));
    const hsh = run('lora_down', [x, Ash])[0];
    const hcat = run('moe_down_batched', [x, Ash, Ae], { sharedRank: rs, rank: r, experts: E })[0];
    close(arr(hcat), arr(tf.concat([hsh, ...hs], 1)));
    const moe = run('moe_up_grouped', [hcat, gates, Bsh, Be], { k: 2, rank: r, sharedRank: rs, experts: E, out, scale: s })[0];
    close(arr(moe), arr(tf.add(run('lora_up', [hsh, Bsh], { scale: s })[0], combined)));
    // Without shared experts.
    const hcat0 = run('moe_down_batched', [x, Ae], { sharedRank: 0, rank: r, experts: E })[0];
    close(arr(run('moe_up_grouped', [hcat0, gates, Be], { k: 2, rank: r, sharedRank: 0, experts: E, out, scale: s })[0]), arr(combined));
  });

  it('concat_linear equals the separate linear, lora_down, moe_down_batched and router', () => {
    const [Tn, inF] = [4, 5];
    const x = T2(Tn, inF);
    const W = T2(3, inF);
    const b = tf.tensor1d(randn(3));
    const A = T2(2, inF);
    const Ash = T2(2, inF);
    const Ae = tf.tensor3d(randn(3 * 2 * inF), [3, 2, inF]);
    const Wr = T2(3, inF);
    const br = tf.tensor1d(randn(3));
    const parts = [
      { kind: 'linear', out: 3, params: ['W'], node: 'a', bias: 'b', attrs: { out: 3 } },
      { kind: 'lora_down', out: 2, params: ['A'], node: 'c', adapter: 'l', attrs: { rank: 2 } },
      { kind: 'moe_down_batched', out: 8, params: ['Ash', 'Ae'], node: 'd', adapter: 'm', attrs: { rows: 8, sharedRank: 2, rank: 2, experts: 3 } },
      { kind: 'router', out: 3, params: ['Wr'], node: 'e', adapter: 'm', bias: 'br', activation: 'softmax', attrs: { experts: 3, activation: 'softmax' } },
    ];
    const outs = run('concat_linear', [x, W, b, A, Ash, Ae, Wr, br], { in: inF, parts, totalOut: 16 }, undefined, ['x', 'W', 'b', 'A', 'Ash', 'Ae', 'Wr', 'br'], 4);
    close(arr(outs[0]), arr(run('linear', [x, W, b])[0]));
    close(arr(outs[1]), arr(run('lora_down', [x, A])[0]));
    close(arr(outs[2]), arr(run('moe_down_batched', [x, Ash, Ae], { sharedRank: 2 })[0]));
    close(arr(outs[3]), arr(run('router', [x, Wr, br], { activation: 'softmax' })[0]));
  });

  it('concat_linear over several sites (concat-shared-input): each base part with its own bias, each output its own linear', () => {
    // q, k, v on one x: [W_q + b_q | A_q | W_k + b_k | W_v + b_v | A_v], then a router part after them.
    const [Tn, inF] = [5, 6];
    const x = T2(Tn, inF);
    const ws = [T2(4, inF), T2(2, inF), T2(3, inF), T2(2, inF)];
    const bs = [tf.tensor1d(randn(4)), tf.tensor1d(randn(2)), tf.tensor1d(randn(3))];
    const Aq = T2(2, inF);
    const Wr = T2(3, inF);
    const parts = [
      { kind: 'linear', out: 4, params: ['Wq'], node: 'q', site: 'q', bias: 'bq', attrs: { out: 4 } },
      { kind: 'lora_down', out: 2, params: ['Aq'], node: 'qa', site: 'q', adapter: 'l', attrs: { rank: 2 } },
      { kind: 'linear', out: 2, params: ['Wk'], node: 'k', site: 'k', bias: 'bk', attrs: { out: 2 } },
      { kind: 'linear', out: 3, params: ['Wv'], node: 'v', site: 'v', bias: 'bv', attrs: { out: 3 } },
      { kind: 'linear', out: 2, params: ['Wo'], node: 'o', site: 'o', attrs: { out: 2 } },
      { kind: 'router', out: 3, params: ['Wr'], node: 'r', site: 'o', adapter: 'm', activation: 'sigmoid', attrs: { experts: 3, activation: 'sigmoid' } },
    ];
    const ins = [x, ws[0]!, bs[0]!, Aq, ws[1]!, bs[1]!, ws[2]!, bs[2]!, ws[3]!, Wr];
    const outs = run('concat_linear', ins, { in: inF, parts, totalOut: 16 }, undefined, ['x', 'Wq', 'bq', 'Aq', 'Wk', 'bk', 'Wv', 'bv', 'Wo', 'Wr'], 6);
    close(arr(outs[0]), arr(run('linear', [x, ws[0]!, bs[0]!])[0]));
    close(arr(outs[1]), arr(run('lora_down', [x, Aq])[0]));
    close(arr(outs[2]), arr(run('linear', [x, ws[1]!, bs[1]!])[0]));
    close(arr(outs[3]), arr(run('linear', [x, ws[2]!, bs[2]!])[0]));
    close(arr(outs[4]), arr(run('linear', [x, ws[3]!])[0]));
    close(arr(outs[5]), arr(run('router', [x, Wr], { activation: 'sigmoid' })[0]));
  });

  it('ortho_penalty: Σ|A_t A_oᵀ| (l1) or Σ(A_t A_oᵀ)² (l2, fro), over A rows or B columns, mixtures stacked', () => {
    const At = T2(3, 6);
    const Ao = T2(2, 6);
    const M = (a: number[], ra: number, b: number[], rb: number, d: number) => {
      const m: number[] = [];
      for (let i = 0; i < ra; i++) for (let j = 0; j < rb; j++) m.push(Array.from({ length: d }, (_, c) => a[i * d + c] * b[j * d + c]).reduce((s, z) => s + z, 0));
      return m;
    };
    const m = M(arr(At), 3, arr(Ao), 2, 6);
    close(arr(run('ortho_penalty', [At, Ao], { targetParts: 1, norm: 'l1', matrix: 'A' })[0]), [m.reduce((s, z) => s + Math.abs(z), 0)]);
    for (const norm of ['l2', 'fro']) close(arr(run('ortho_penalty', [At, Ao], { targetParts: 1, norm, matrix: 'A' })[0]), [m.reduce((s, z) => s + z * z, 0)]);
    // matrix B: B is [out, r]; the rank directions are its columns.
    const Bt = tf.transpose(At);
    const Bo = tf.transpose(Ao);
    close(arr(run('ortho_penalty', [Bt, Bo], { targetParts: 1, norm: 'l1', matrix: 'B' })[0]), [m.reduce((s, z) => s + Math.abs(z), 0)]);
    // A mixture's shared_A [2, 6] and expert_A [2 experts, 1, 6] stack to 4 rows.
    const sh = tf.slice(At, [0, 0], [2, 6]);
    const ex = tf.reshape(tf.concat([tf.slice(At, [2, 0], [1, 6]), tf.slice(At, [0, 0], [1, 6])], 0), [2, 1, 6]);
    const stacked = tf.concat([sh, tf.reshape(ex, [2, 6])], 0);
    const m2 = M(arr(stacked), 4, arr(Ao), 2, 6);
    close(arr(run('ortho_penalty', [sh, ex, Ao], { targetParts: 2, norm: 'l1', matrix: 'A' })[0]), [m2.reduce((s, z) => s + Math.abs(z), 0)]);
    // The batched penalty is the weighted sum of the separate terms.
    const Ao2 = T2(4, 6);
    const terms = [
      { targetParams: ['t'], otherParams: ['o'], matrix: 'A', norm: 'l1', weight: 0.5 },
      { targetParams: ['t'], otherParams: ['o2'], matrix: 'A', norm: 'l2', weight: 2 },
    ];
    const sep = 0.5 * arr(run('ortho_penalty', [At, Ao], { targetParts: 1, norm: 'l1', matrix: 'A' })[0])[0] + 2 * arr(run('ortho_penalty', [At, Ao2], { targetParts: 1, norm: 'l2', matrix: 'A' })[0])[0];
    close(arr(run('ortho_penalty_batched', [At, Ao, Ao2], { terms, weighted: true }, undefined, ['t', 'o', 'o2'])[0]), [sep]);
  });

  it('adapted_linear equals its expansion (base + LoRA + mixture)', () => {
    const [Tn, inF, out] = [4, 5, 3];
    const x = T2(Tn, inF);
    const W = T2(out, inF);
    const A = T2(2, inF);
    const B = T2(out, 2);
    const Wr = T2(3, inF);
    const br = tf.tensor1d(randn(3));
    const Ae = tf.tensor3d(randn(3 * 2 * inF), [3, 2, inF]);
    const Be = tf.tensor3d(randn(3 * out * 2), [3, out, 2]);
    const adapters = [
      { name: 'l', type: 'lora', params: { A: 'A', B: 'B' }, scale: 2, rank: 2, experts: 1, topK: 0, renormalize: true, router: 'softmax' },
      { name: 'm', type: 'moe_lora', params: { router_W: 'Wr', router_b: 'br', expert_A: 'Ae', expert_B: 'Be' }, scale: 0.5, rank: 2, experts: 3, topK: 2, renormalize: true, router: 'softmax' },
    ];
    const y = run('adapted_linear', [x, W, A, B, Wr, br, Ae, Be], { in: inF, out, weight: 'W', adapters }, undefined, ['x', 'W', 'A', 'B', 'Wr', 'br', 'Ae', 'Be'])[0];
    const gates = run('topk_gate', [run('router', [x, Wr, br], { activation: 'softmax' })[0]], { k: 2, renormalize: true })[0];
    const ys = [0, 1, 2].map((e) => run('expert_up', [run('expert_down', [x, Ae], { expert: e })[0], Be], { expert: e, scale: 0.5 })[0]);
    const want = tf.addN([run('linear', [x, W])[0], run('lora_up', [run('lora_down', [x, A])[0], B], { scale: 2 })[0], run('gate_combine', [gates, ...ys])[0]]);
    close(arr(y), arr(want));
  });
});

describe('reference kernel gradients match finite differences', () => {
  it('rmsnorm (x, w), rope (q), swiglu', () => {
    gradCheck(([x, w]) => run('rmsnorm', [x, w], { eps: 1e-6 })[0], [T2(3, 6), tf.tensor1d(randn(6))], [0, 1]);
    gradCheck(([q, k]) => tf.concat(run('rope', [q, k], { theta: 100, headDim: 4, heads: 2, kvHeads: 1 }, context(1, 4), undefined, 2), 1), [T2(4, 8), T2(4, 4)], [0, 1]);
    gradCheck(([g, u]) => run('swiglu', [g, u])[0], [T2(3, 4), T2(3, 4)], [0, 1]);
  });

  it('attention (q, k, v)', () => {
    gradCheck(([q, k, v]) => run('attention', [q, k, v], { heads: 2, kvHeads: 1, headDim: 3 }, context(2, 5, 1))[0], [T2(10, 6), T2(10, 3), T2(10, 3)], [0, 1, 2]);
  });

  it('lm_head_xent (x, W)', () => {
    const labels = tf.tensor1d([1, 2, 0, 3], 'int32');
    const mask = tf.tensor1d([1, 1, 0, 1]);
    gradCheck(([x, W]) => run('lm_head_xent', [x, W, labels, mask], { logitsGiven: false })[0], [T2(4, 3), T2(5, 3)], [0, 1]);
  });

  it('topk_gate (p) and moe_up_grouped (h, gates, B) with the routing fixed', () => {
    const p = tf.softmax(T2(4, 4, 3));
    gradCheck(([q]) => run('topk_gate', [q], { k: 2, renormalize: true })[0], [p], [0], 1e-3);
    const gates = run('topk_gate', [p], { k: 2, renormalize: true })[0];
    gradCheck(
      ([h, g, Bsh, Be]) => run('moe_up_grouped', [h, g, Bsh, Be], { rank: 2, sharedRank: 1, experts: 4, scale: 2 })[0],
      [T2(4, 9), gates, T2(3, 1), tf.tensor3d(randn(4 * 3 * 2), [4, 3, 2])],
      [0, 1, 2, 3],
    );
  });

  it('ortho_penalty l1 (target A) and concat_linear (x, every weight)', () => {
    gradCheck(([a, o]) => run('ortho_penalty', [a, o], { targetParts: 1, norm: 'l1', matrix: 'A' })[0], [T2(2, 5), T2(3, 5)], [0, 1], 1e-3);
    const parts = [
      { kind: 'linear', out: 3, params: ['W'], node: 'a', bias: 'b', attrs: {} },
      { kind: 'router', out: 2, params: ['Wr'], node: 'e', bias: 'br', activation: 'sigmoid', attrs: {} },
    ];
    const both = (xs: Tensor[]) => tf.concat(run('concat_linear', xs, { parts }, undefined, ['x', 'W', 'b', 'Wr', 'br'], 2), 1);
    gradCheck(both, [T2(3, 4), T2(3, 4), tf.tensor1d(randn(3)), T2(2, 4), tf.tensor1d(randn(2))], [0, 1, 2, 3, 4]);
  });
});
