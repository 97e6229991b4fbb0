/**
 * src/runtime/tfjs/moe.ts (moe.wat): moe_up_grouped over the top-k experts only, forward, dh/dgates and dB_e,
 * against a plain double-precision loop over the same formulas (every (t, e), dense), on awkward shapes: one
 * token, T not a multiple of 4, out not a multiple of 8, rank not a multiple of 4, top_k = experts, top_k = 1,
 * an expert nobody is routed to, sharedRank 0 and > 0.
 */
import { describe, expect, it } from 'vitest';
import { moeUpDbe, moeUpDh, moeUpForward, routeByScan, routesOf, type MoeUpShape } from '../../../src/runtime/tfjs/moe.js';
import { lcg, relErr } from '../executor/helpers.js';

const rnd = lcg(97);
const randn = (n: number) => Float32Array.from({ length: n }, () => rnd() * 2 - 1);

/** Gates [T, E]: each token's k largest of random scores kept (renormalised), expert `skip` never chosen. */
function gatesFor(T: number, E: number, k: number, skip = -1): Float32Array {
  const g = new Float32Array(T * E);
  for (let t = 0; t < T; t++) {
    const p = Array.from({ length: E }, (_, e) => (e === skip ? -1 : rnd()));
    const top = p.map((v, e) => [v, e] as const).sort((a, b) => b[0] - a[0]).slice(0, Math.min(k, skip >= 0 ? E - 1 : E));
    const sum = top.reduce((s, [v]) => s + v, 0);
    for (const [v, e] of top) g[t * E + e] = v / sum;
  }
  return g;
}

function dense(h: Float32Array, g: Float32Array, be: Float32Array, bsh: Float32Array | undefined, dy: Float32Array, s: MoeUpShape) {
  const { T, out, sharedRank: R, rank: r, experts: E, scale } = s;
  const W = R + E * r;
  const y = new Float64Array(T * out);
  const dh = new Float64Array(T * W);
  const dg = new Float64Array(T * E);
  const dbe = new Float64Array(E * out * r);
  for (let t = 0; t < T; t++)
    for (let o = 0; o < out; o++) {
      let acc = 0;
      for (let j = 0; j < R; j++) acc += h[t * W + j]! * bsh![o * R + j]!;
      for (let e = 0; e < E; e++) {
        const ge = g[t * E + e]!;
        let ye = 0;
        for (let j = 0; j < r; j++) ye += h[t * W + R + e * r + j]! * be[(e * out + o) * r + j]!;
        acc += ge * ye;
        // Routed entries only (gate != 0): dgates is zero elsewhere by design.
        if (ge !== 0) dg[t * E + e] += scale * dy[t * out + o]! * ye;
        for (let j = 0; j < r; j++) {
          dh[t * W + R + e * r + j] += scale * ge * dy[t * out + o]! * be[(e * out + o) * r + j]!;
          dbe[(e * out + o) * r + j] += scale * ge * h[t * W + R + e * r + j]! * dy[t * out + o]!;
        }
      }
      for (let j = 0; j < R; j++) dh[t * W + j] += scale * dy[t * out + o]! * bsh![o * R + j]!;
      y[t * out + o] = scale * acc;
    }
  return { y, dh, dg, dbe };
}

describe('moe_up_grouped over the top-k only (moe.wat)', () => {
  const cases: [string, MoeUpShape, number, number][] = [
    ['MedCare-like, shared part', { T: 37, out: 44, sharedRank: 8, rank: 16, experts: 8, scale: 2 }, 2, -1],
    ['one token', { T: 1, out: 5, sharedRank: 0, rank: 4, experts: 3, scale: 0.5 }, 2, -1],
    ['top_k = experts, odd rank and out', { T: 6, out: 13, sharedRank: 3, rank: 5, experts: 4, scale: 1.5 }, 4, -1],
    ['top_k = 1, an expert nobody is routed to', { T: 23, out: 16, sharedRank: 0, rank: 3, experts: 5, scale: 1 }, 1, 2],
    ['one expert, rank 1, out 1', { T: 9, out: 1, sharedRank: 1, rank: 1, experts: 1, scale: 3 }, 1, -1],
  ];
  for (const [name, s, k, skip] of cases)
    it(name, () => {
      const { T, out, sharedRank: R, rank: r, experts: E } = s;
      const W = R + E * r;
      const h = randn(T * W);
      const g = gatesFor(T, E, k, skip);
      const be = randn(E * out * r);
      const bsh = R > 0 ? randn(out * R) : undefined;
      const dy = randn(T * out);
      const want = dense(h, g, be, bsh, dy, s);
      const y = new Float32Array(T * out).fill(NaN);
      moeUpForward(h, g, be, bsh, y, s);
      expect(relErr(y, want.y)).toBeLessThan(1e-5);
      const dh = new Float32Array(T * W).fill(NaN);
      const dg = new Float32Array(T * E).fill(NaN);
      moeUpDh(dy, h, g, be, bsh, dh, dg, s);
      expect(relErr(dh, want.dh)).toBeLessThan(1e-5);
      expect(relErr(dg, want.dg)).toBeLessThan(1e-5);
      const dbe = new Float32Array(E * out * r).fill(NaN);
      moeUpDbe(dy, h, g, dbe, s);
      expect(relErr(dbe, want.dbe)).toBeLessThan(1e-5);
      if (skip >= 0) expect(dbe.subarray(skip * out * r, (skip + 1) * out * r).every((v) => v === 0)).toBe(true);
    });

  it('a large call after small ones (the memory grows) and small after large (stale scratch is not read)', () => {
    for (const T of [5, 700, 3]) {
      const s: MoeUpShape = { T, out: 24, sharedRank: 4, rank: 8, experts: 6, scale: 1 };
      const W = 4 + 48;
      const h = randn(T * W);
      const g = gatesFor(T, 6, 2);
      const be = randn(6 * 24 * 8);
      const bsh = randn(24 * 4);
      const dy = randn(T * 24);
      const want = dense(h, g, be, bsh, dy, s);
      const y = new Float32Array(T * 24);
      moeUpForward(h, g, be, bsh, y, s);
      expect(relErr(y, want.y)).toBeLessThan(1e-5);
      const dbe = new Float32Array(6 * 24 * 8);
      moeUpDbe(dy, h, g, dbe, s);
      expect(relErr(dbe, want.dbe)).toBeLessThan(1e-5);
    }
  });
});

describe('routesOf: each expert\'s routed tokens', () => {
  /** The definition: gate != 0 routes (NaN does, ±0 does not); per expert in token order; bit 31 on all but a token's first. */
  function plain(g: Float32Array, T: number, E: number) {
    const lists: number[][] = Array.from({ length: E }, () => []);
    const gts: number[][] = Array.from({ length: E }, () => []);
    const unrouted: number[] = [];
    for (let t = 0; t < T; t++) {
      let first = true;
      for (let e = 0; e < E; e++) {
        const v = g[t * E + e]!;
        if (v === 0) continue;
        lists[e]!.push(first ? t : (t | 0x80000000) | 0);
        gts[e]!.push(v);
        first = false;
      }
      if (first) unrouted.push(t);
    }
    return { idx: lists.flat(), gts: gts.flat(), counts: lists.map((l) => l.length), unrouted };
  }

  it('equals the definition for 1, 8, 31, 32 experts (bit masks) and 33 (a scan): NaN, -0, denormals, unrouted tokens', () => {
    for (const E of [1, 8, 31, 32, 33])
      for (const T of [1, 7, 300]) {
        const g = new Float32Array(T * E);
        for (let k = 0; k < g.length; k++) {
          const u = rnd();
          g[k] = u < 0.55 ? 0 : u < 0.6 ? -0 : u < 0.62 ? NaN : u < 0.64 ? 1e-45 : u < 0.66 ? -rnd() : rnd();
        }
        for (let e = 0; e < E; e++) g[e] = 0; // token 0 routed nowhere
        const want = plain(g, T, E);
        const got = routesOf(g, T, E);
        const what = `E ${E}, T ${T}`;
        expect(Array.from(got.idx), what).toEqual(want.idx);
        expect(Array.from(got.gts), what).toEqual(want.gts);
        expect(Array.from(got.off.slice(1)).map((o, e) => o - got.off[e]!), what).toEqual(want.counts);
        expect(got.unrouted, what).toEqual(want.unrouted);
        expect(got.total, what).toBe(want.idx.length);
        expect(got.maxN, what).toBe(Math.max(...want.counts));
        if (E <= 32) expect(routeByScan(g, T, E), `${what}: the scan`).toEqual({ off: got.off, idx: got.idx, gts: got.gts, unrouted: got.unrouted });
      }
  });
});
