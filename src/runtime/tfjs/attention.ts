/**
 * Attention over each query's visible keys only, forward and backward, in WebAssembly SIMD (./attention.wat),
 * for the CPU kernel table (../kernels/cpu-attention.ts). Layouts as the plan op's: q, o [T, H·d], k, v
 * [T, KV·d], T = rows·S; GQA (head h reads kv head ⌊h·KV/H⌋). `ranges` ([T, 2] int32) gives each query's
 * visible keys [lo, hi) within its row.
 *
 * The module has its own memory: every call copies its arrays in as they are (memcpy), transposes k and v there
 * per (row, kv head) to [d][Sp] (Sp = S rounded up to 4, plus 16 zero columns that the 16-key blocks may read
 * past S), and copies the results out (dk, dv transposed back first). The copies are O(T·d) against the
 * O(T·keys·d) arithmetic.
 */
import { readFileSync } from 'node:fs';

interface AttentionExports {
  memory: WebAssembly.Memory;
  to_t(src: number, ld: number, S: number, d: number, dst: number, Sp: number): void;
  from_t(src: number, Sp: number, S: number, d: number, dst: number, ld: number): void;
  fwd_head(S: number, Sp: number, ldq: number, d: number, scale: number, q: number, kt: number, vt: number, o: number, st: number, ldst: number, rng: number, sc: number): void;
  bwd_head(S: number, Sp: number, ldq: number, d: number, scale: number, q: number, kt: number, vt: number, o: number, dout: number, st: number, ldst: number, rng: number, sc: number, dq: number, dkt: number, dvt: number): void;
}

let mod: AttentionExports | undefined;
function attentionModule(): AttentionExports {
  mod ??= new WebAssembly.Instance(new WebAssembly.Module(readFileSync(new URL('./attention.wasm', import.meta.url))), {}).exports as unknown as AttentionExports;
  return mod;
}

/** Sizes of one attention call. */
export interface AttentionShape {
  rows: number;
  S: number;
  H: number;
  KV: number;
  d: number;
}

/** Byte offsets of consecutive float blocks (16-byte aligned) and the memory grown to hold them. */
function layout(sizes: number[]): { at: number[]; f: Float32Array; i: Int32Array } {
  const m = attentionModule().memory;
  const at: number[] = [];
  let p = 64;
  for (const n of sizes) {
    at.push(p);
    p += Math.ceil(Math.max(n, 1) / 4) * 16;
  }
  const have = m.buffer.byteLength;
  if (p > have) m.grow(Math.ceil((p - have) / 65536));
  return { at, f: new Float32Array(m.buffer), i: new Int32Array(m.buffer) };
}

const padded = (S: number) => Math.ceil(S / 4) * 4 + 16;

/** x [T, KV·d] at byte `raw` into [rows·KV][d][Sp] at byte `t`, the columns past S zero (in WebAssembly). */
function transposeIn(m: AttentionExports, raw: number, t: number, s: AttentionShape, Sp: number): void {
  const { rows, S, KV, d } = s;
  for (let r = 0; r < rows; r++) for (let h = 0; h < KV; h++) m.to_t(raw + (r * S * KV + h) * d * 4, KV * d, S, d, t + (r * KV + h) * d * Sp * 4, Sp);
}

/** The inverse of transposeIn. */
function transposeOut(m: AttentionExports, t: number, raw: number, s: AttentionShape, Sp: number): void {
  const { rows, S, KV, d } = s;
  for (let r = 0; r < rows; r++) for (let h = 0; h < KV; h++) m.from_t(t + (r * KV + h) * d * Sp * 4, Sp, S, d, raw + (r * S * KV + h) * d * 4, KV * d);
}

/**
 * o = softmax(q·kᵀ/√d over each query's visible keys)·v, and per (token, head) the logsumexp of the scaled
 * scores into stats [T, H] (what the backward recomputes P from).
 */
export function attentionForward(q: Float32Array, k: Float32Array, v: Float32Array, ranges: Int32Array, s: AttentionShape, o: Float32Array, stats: Float32Array): void {
  const { rows, S, H, KV, d } = s;
  const T = rows * S;
  const G = H / KV;
  const Sp = padded(S);
  const kvSize = rows * KV * d * Sp;
  const {
    at: [qA, kA, vA, ktA, vtA, oA, stA, rA, scA],
    f,
    i,
  } = layout([T * H * d, T * KV * d, T * KV * d, kvSize, kvSize, T * H * d, T * H * 2, T * 2, 2 * Sp]);
  const m = attentionModule();
  f.set(q, qA! / 4);
  f.set(k, kA! / 4);
  f.set(v, vA! / 4);
  transposeIn(m, kA!, ktA!, s, Sp);
  transposeIn(m, vA!, vtA!, s, Sp);
  i.set(ranges, rA! / 4);
  const scale = Math.fround(1 / Math.sqrt(d));
  for (let r = 0; r < rows; r++)
    for (let h = 0; h < H; h++) {
      const tok = (r * S * H + h) * 4;
      const kvb = (r * KV + Math.floor(h / G)) * d * Sp * 4;
      m.fwd_head(S, Sp, H * d, d, scale, qA! + tok * d, ktA! + kvb, vtA! + kvb, oA! + tok * d, stA! + tok * 2, H * 2, rA! + r * S * 8, scA!);
    }
  o.set(f.subarray(oA! / 4, oA! / 4 + T * H * d));
  // logsumexp = m + log l from the module's (m, 1/l)
  for (let t = 0, a = stA! / 4; t < T * H; t++, a += 2) stats[t] = f[a]! - Math.log(f[a + 1]!);
}

/** dq, dk, dv of attentionForward's o for the upstream gradient dO, from q, k, v, o and its logsumexp. */
export function attentionBackward(
  q: Float32Array,
  k: Float32Array,
  v: Float32Array,
  o: Float32Array,
  stats: Float32Array,
  ranges: Int32Array,
  dO: Float32Array,
  s: AttentionShape,
  dq: Float32Array,
  dk: Float32Array,
  dv: Float32Array,
): void {
  const { rows, S, H, KV, d } = s;
  const T = rows * S;
  const G = H / KV;
  const Sp = padded(S);
  const kvSize = rows * KV * d * Sp;
  const {
    at: [qA, kA, vA, ktA, vtA, oA, gA, stA, rA, scA, dqA, dkA, dvA],
    f,
    i,
  } = layout([T * H * d, T * KV * d, T * KV * d, kvSize, kvSize, T * H * d, T * H * d, T * H, T * 2, 2 * Sp, T * H * d, kvSize, kvSize]);
  const m = attentionModule();
  f.set(q, qA! / 4);
  f.set(k, kA! / 4);
  f.set(v, vA! / 4);
  transposeIn(m, kA!, ktA!, s, Sp);
  transposeIn(m, vA!, vtA!, s, Sp);
  f.set(o, oA! / 4);
  f.set(dO, gA! / 4);
  f.set(stats, stA! / 4);
  i.set(ranges, rA! / 4);
  f.fill(0, dkA! / 4, dkA! / 4 + kvSize);
  f.fill(0, dvA! / 4, dvA! / 4 + kvSize);
  const scale = Math.fround(1 / Math.sqrt(d));
  for (let r = 0; r < rows; r++)
    for (let h = 0; h < H; h++) {
      const tok = (r * S * H + h) * 4;
      const kvb = (r * KV + Math.floor(h / G)) * d * Sp * 4;
      m.bwd_head(S, Sp, H * d, d, scale, qA! + tok * d, ktA! + kvb, vtA! + kvb, oA! + tok * d, gA! + tok * d, stA! + tok, H, rA! + r * S * 8, scA!, dqA! + tok * d, dkA! + kvb, dvA! + kvb);
    }
  dq.set(f.subarray(dqA! / 4, dqA! / 4 + T * H * d));
  // dk, dv back through the raw k, v blocks (no longer needed).
  transposeOut(m, dkA!, kA!, s, Sp);
  transposeOut(m, dvA!, vA!, s, Sp);
  dk.set(f.subarray(kA! / 4, kA! / 4 + T * KV * d));
  dv.set(f.subarray(vA! / 4, vA! / 4 + T * KV * d));
}
