/**
 * Attention over each query's visible keys only, forward and backward, in WebAssembly SIMD (./attention.wat),
 * for the CPU kernel table (../kernels/cpu-attention.ts). Layouts as the plan op's: q, o [T, H·d], k, v
 * [T, KV·d], T = rows·S; GQA (head h reads kv head ⌊h·KV/H⌋). `ranges` ([T, 2] int32) gives each query's
 * visible keys [lo, hi) within its row.
 *
 * The module has its own memory: every call copies its arrays in as they are (memcpy; when d is not a multiple
 * of 16, each head's d columns into dp = d rounded up to 16, the rest zero), transposes k and v there per
 * (row, kv head) to [d4][Sp] for the scores (d4 = d rounded up to 4; Sp = S rounded up to 4, plus 16 zero
 * columns that the 16-key blocks may read past S), and copies the results out. The copies are O(T·d) against
 * the O(T·keys·d) arithmetic. The queries of a (row, kv head) go through the kernel two at a time (pairTable).
 * The forward can save P (normalized, over each query's window) for the backward, which then forms neither
 * q·k nor exp again (savedProbsSize).
 */
import { readFileSync } from 'node:fs';

interface AttentionExports {
  memory: WebAssembly.Memory;
  to_t(src: number, ld: number, S: number, d: number, dst: number, Sp: number): void;
  fwd(np: number, tab: number, Sp: number, d: number, dp: number, ldk: number, scale: number, q: number, kt: number, vr: number, o: number, st: number, sc: number, P: number): void;
  bwd(
    np: number,
    tab: number,
    Sp: number,
    d: number,
    dp: number,
    ldk: number,
    scale: number,
    q: number,
    kt: number,
    vt: number,
    kr: number,
    o: number,
    dout: number,
    L: number,
    sc: number,
    dq: number,
    dkr: number,
    dvr: number,
    P: number,
  ): void;
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

/**
 * Where the per-call arrays start: above the saved-P slots (allocProbs), which stay put in this module's memory
 * between a forward and its backward.
 */
let scratchBase = 64;

/** Byte offsets of consecutive float blocks (16-byte aligned) from scratchBase and the memory grown to hold them. */
function layout(sizes: number[]): { at: number[]; f: Float32Array; i: Int32Array } {
  const m = attentionModule().memory;
  const at: number[] = [];
  let p = scratchBase;
  for (const n of sizes) {
    at.push(p);
    p += Math.ceil(Math.max(n, 1) / 4) * 16;
  }
  const have = m.buffer.byteLength;
  if (p > have) m.grow(Math.ceil((p - have) / 65536));
  return { at, f: new Float32Array(m.buffer), i: new Int32Array(m.buffer) };
}

/**
 * A block of this module's memory holding a forward's P for its backward (savedProbsSize floats): the forward
 * writes P there and the backward reads it there, so P is never copied out and back in (2 MB each way per
 * layer at 8x256 cost ~1 ms a copy in a training step: P is written once and read once, from memory).
 */
export interface ProbsSlot {
  readonly at: number;
  readonly length: number;
  readonly bytes: number;
}

/** Slots handed back (freeProbs), reused by the smallest that fits. */
const freeSlots: ProbsSlot[] = [];
let slotBytes = 0;
/** Bytes of this module's memory that P slots may take in all (beyond it, allocProbs says no: recomputed). */
const MAX_SLOT_BYTES = 1 << 28;

/** A slot of at least n floats for a forward's P, or undefined when the slots would pass MAX_SLOT_BYTES. */
export function allocProbs(n: number): ProbsSlot | undefined {
  let best = -1;
  for (let j = 0; j < freeSlots.length; j++) if (freeSlots[j]!.length >= n && (best < 0 || freeSlots[j]!.length < freeSlots[best]!.length)) best = j;
  if (best >= 0) {
    const s = freeSlots.splice(best, 1)[0]!;
    return { at: s.at, length: n, bytes: s.bytes };
  }
  const bytes = Math.ceil((n * 4) / 64) * 64;
  if (slotBytes + bytes > MAX_SLOT_BYTES) return undefined;
  slotBytes += bytes;
  const at = scratchBase;
  scratchBase += bytes;
  return { at, length: n, bytes };
}

/** Bytes of this module's memory taken by P slots, in use or free (for tests). */
export const probsSlotBytes = (): number => slotBytes;

/** Hands a slot back for reuse. */
export function freeProbs(s: ProbsSlot): void {
  freeSlots.push({ at: s.at, length: s.bytes / 4, bytes: s.bytes });
}

const padded = (S: number) => Math.ceil(S / 4) * 4 + 16;
/** Each head's columns in the module: d rounded up to 16 (the kernel's sums along the head dimension go 16 at a time). */
const headCols = (d: number) => Math.ceil(d / 16) * 16;

/** x [n·heads, d] (n tokens of `heads` heads) into f at byte `at` as [n·heads, dp], the padded columns zero. */
function putHeads(x: Float32Array, f: Float32Array, at: number, d: number, dp: number): void {
  if (d === dp) {
    f.set(x, at / 4);
    return;
  }
  const rowsN = x.length / d;
  f.fill(0, at / 4, at / 4 + rowsN * dp);
  for (let r = 0; r < rowsN; r++) f.set(x.subarray(r * d, r * d + d), at / 4 + r * dp);
}

/** The inverse of putHeads: [n·heads, dp] at byte `at` into x [n·heads, d]. */
function getHeads(f: Float32Array, at: number, x: Float32Array, d: number, dp: number): void {
  if (d === dp) {
    x.set(f.subarray(at / 4, at / 4 + x.length));
    return;
  }
  const rowsN = x.length / d;
  for (let r = 0; r < rowsN; r++) x.set(f.subarray(at / 4 + r * dp, at / 4 + r * dp + d), r * d);
}

/** Rows of a transposed block: d rounded up to 4 (to_t goes 4 columns at a time). */
const tRows = (d: number) => Math.ceil(d / 4) * 4;

/** k or v staged at byte `raw` ([T, KV·dp]) into [rows·KV][tRows(d)][Sp] at byte `t`, the columns past S zero (in WebAssembly). */
function transposeIn(m: AttentionExports, raw: number, t: number, s: AttentionShape, Sp: number, dp: number): void {
  const { rows, S, KV, d } = s;
  for (let r = 0; r < rows; r++) for (let h = 0; h < KV; h++) m.to_t(raw + (r * S * KV + h) * dp * 4, KV * dp, S, d, t + (r * KV + h) * tRows(d) * Sp * 4, Sp);
}

/** Words per pair record. */
const REC = 9;

/**
 * The pairs of queries the kernel takes together, per row, as i32 records of REC words at i32 index `at` of `i`:
 * (eA, eB, lo, n, aA, bA, aB, bB, pOff). A (row, kv head)'s G = H/KV queries per token, in (token, head) order,
 * are paired in turn: the two heads sharing the kv head at one token (G even), or consecutive tokens (G = 1).
 * The pair's keys are [lo, lo + n), lo the smaller of the two lo_i; each query's own window is [a, b) relative
 * to lo. e is the query's index relative to the (row, kv head)'s first query (token i, head g: i·H + g), the
 * same for every kv head of the row. An odd query out is its own B with an empty window. pOff: where the pair's
 * probabilities start in its (row, kv head)'s block of saved P (A's n rounded up to 4, then B's). Returns the
 * pairs per row and the floats of P per (row, kv head) of each row.
 */
function pairTable(i: Int32Array, at: number, ranges: Int32Array, s: AttentionShape): { np: number; rowP: number[] } {
  const { rows, S, H, KV } = s;
  const G = H / KV;
  const E = S * G;
  const np = Math.ceil(E / 2);
  const rowP: number[] = [];
  let w = at;
  for (let r = 0; r < rows; r++) {
    let pOff = 0;
    for (let p = 0; p < np; p++) {
      const e0 = 2 * p;
      const e1 = Math.min(e0 + 1, E - 1);
      const t0 = Math.floor(e0 / G);
      const t1 = Math.floor(e1 / G);
      const lo0 = ranges[(r * S + t0) * 2]!;
      const hi0 = ranges[(r * S + t0) * 2 + 1]!;
      const lo1 = ranges[(r * S + t1) * 2]!;
      const hi1 = ranges[(r * S + t1) * 2 + 1]!;
      const lo = Math.min(lo0, lo1);
      const lone = e1 === e0;
      const n = (lone ? hi0 : Math.max(hi0, hi1)) - lo;
      i[w] = t0 * H + (e0 % G);
      i[w + 1] = t1 * H + (e1 % G);
      i[w + 2] = lo;
      i[w + 3] = n;
      i[w + 4] = lo0 - lo;
      i[w + 5] = hi0 - lo;
      i[w + 6] = lone ? 0 : lo1 - lo;
      i[w + 7] = lone ? 0 : hi1 - lo;
      i[w + 8] = pOff;
      pOff += 2 * Math.ceil(n / 4) * 4;
      w += REC;
    }
    rowP.push(pOff);
  }
  return { np, rowP };
}

/** Pair tables made, by the ranges tensor's dataId: a micro-batch's layers, forward and backward, share one. */
const pairCache = new WeakMap<object, { shape: string; recs: Int32Array; np: number; rowP: number[] }>();
/** The shape a pair table depends on (besides the ranges). */
const pairShape = (s: AttentionShape) => `${s.rows}:${s.S}:${s.H}:${s.KV}`;

/**
 * pairTable's records at i32 index `at` of `i`: made once per ranges tensor (`key`, its dataId) and shape, then
 * copied (the loop over every pair cost ~0.4 ms of a training step at 8x256, 7 calls on the same ranges).
 */
function pairsInto(i: Int32Array, at: number, ranges: Int32Array, s: AttentionShape, key?: object): { np: number; rowP: number[] } {
  const shape = pairShape(s);
  const hit = key && pairCache.get(key);
  if (hit && hit.shape === shape) {
    i.set(hit.recs, at);
    return hit;
  }
  const made = pairTable(i, at, ranges, s);
  if (key) pairCache.set(key, { shape, recs: i.slice(at, at + s.rows * made.np * REC), ...made });
  return made;
}

/** Saved P is kept up to this many floats per call (recomputed from q and k above). */
const MAX_SAVED_P = 1 << 23;

/**
 * Floats of the probabilities the forward saves for the backward (attentionForward's `probs`): per query its
 * window's P, n rounded up to 4 (~T·H·keys seen), so that the backward forms neither the scores nor their exp
 * again; 0 when that passes MAX_SAVED_P or with MCPC_ATTENTION_SAVE_P=0 (the backward then recomputes P).
 */
export function savedProbsSize(ranges: Int32Array, s: AttentionShape, key?: object): number {
  if (process.env.MCPC_ATTENTION_SAVE_P === '0') return 0;
  const { rows, S, H, KV } = s;
  const hit = key && pairCache.get(key);
  let total = 0;
  if (hit && hit.shape === pairShape(s)) for (const n of hit.rowP) total += n;
  else {
    const G = H / KV;
    const E = S * G;
    for (let r = 0; r < rows; r++)
      for (let e0 = 0; e0 < E; e0 += 2) {
        const e1 = Math.min(e0 + 1, E - 1);
        const t0 = r * S + Math.floor(e0 / G);
        const t1 = r * S + Math.floor(e1 / G);
        const n = Math.max(ranges[t0 * 2 + 1]!, ranges[t1 * 2 + 1]!) - Math.min(ranges[t0 * 2]!, ranges[t1 * 2]!);
        total += 2 * Math.ceil(n / 4) * 4;
      }
  }
  total *= KV;
  return total <= MAX_SAVED_P ? total : 0;
}

/** Byte offset of (row r, kv head h)'s block of saved P from the start of P. */
function probsAt(rowP: number[], KV: number): (r: number, h: number) => number {
  const base: number[] = [];
  let p = 0;
  for (const n of rowP) {
    base.push(p);
    p += KV * n;
  }
  return (r, h) => (base[r]! + h * rowP[r]!) * 4;
}

/**
 * What attentionForward and attentionBackward derive from the shape: tokens T, query heads per KV head G, the
 * padded key count Sp and head columns dp, the query pairs per (row, KV head) np, and the saved P's length nP
 * (0 without `probs`, or for an array of a single float: nothing saved).
 */
function sizesOf(s: AttentionShape, probs?: Float32Array | ProbsSlot) {
  const G = s.H / s.KV;
  const nP = probs && probs.length > 1 ? probs.length : 0;
  // a slot is in place: no block for P among the call's arrays
  const slot = nP > 0 && !(probs instanceof Float32Array) ? (probs as ProbsSlot) : undefined;
  return { T: s.rows * s.S, G, Sp: padded(s.S), dp: headCols(s.d), np: Math.ceil((s.S * G) / 2), nP, slot, nPcopy: slot ? 0 : nP };
}

/**
 * o = softmax(q·kᵀ/√d over each query's visible keys)·v, and per (token, head) the logsumexp of the scaled
 * scores into stats [T, H] (what the backward recomputes P from); P itself into `probs` when it has
 * savedProbsSize floats (a shorter array: not saved): an array (copied out) or a slot of this module's memory
 * (allocProbs: written in place).
 */
export function attentionForward(
  q: Float32Array,
  k: Float32Array,
  v: Float32Array,
  ranges: Int32Array,
  s: AttentionShape,
  o: Float32Array,
  stats: Float32Array,
  probs?: Float32Array | ProbsSlot,
  key?: object,
): void {
  const { rows, S, H, KV, d } = s;
  const { T, G, Sp, dp, np, nP, slot, nPcopy } = sizesOf(s, probs);
  const {
    at: [qA, kA, vA, ktA, oA, stA, tA, scA, pA],
    f,
    i,
  } = layout([T * H * dp, T * KV * dp, T * KV * dp, rows * KV * tRows(d) * Sp, T * H * dp, T * H * 2, rows * np * REC, 4 * Sp, nPcopy]);
  const pBase = slot ? slot.at : pA!;
  const m = attentionModule();
  putHeads(q, f, qA!, d, dp);
  putHeads(k, f, kA!, d, dp);
  putHeads(v, f, vA!, d, dp);
  transposeIn(m, kA!, ktA!, s, Sp, dp);
  const { rowP } = pairsInto(i, tA! / 4, ranges, s, key);
  const save = nP > 0 && nP === KV * rowP.reduce((x, y) => x + y, 0);
  const pAt = probsAt(rowP, KV);
  const scale = Math.fround(1 / Math.sqrt(d));
  for (let r = 0; r < rows; r++)
    for (let h = 0; h < KV; h++) {
      const e0 = r * S * H + h * G;
      const kvt = (r * KV + h) * tRows(d) * Sp * 4;
      const kvr = (r * S * KV + h) * dp * 4;
      m.fwd(np, tA! + r * np * REC * 4, Sp, d, dp, KV * dp, scale, qA! + e0 * dp * 4, ktA! + kvt, vA! + kvr, oA! + e0 * dp * 4, stA! + e0 * 8, scA!, save ? pBase + pAt(r, h) : 0);
    }
  getHeads(f, oA!, o, d, dp);
  if (save && !slot) (probs as Float32Array).set(f.subarray(pA! / 4, pA! / 4 + nP));
  // logsumexp = m + log l from the module's (m, 1/l)
  for (let t = 0, a = stA! / 4; t < T * H; t++, a += 2) stats[t] = f[a]! - Math.log(f[a + 1]!);
}

/**
 * dq, dk, dv of attentionForward's o for the upstream gradient dO, from q, k, v, o and its logsumexp, or from
 * the P it saved (`probs`, when it has savedProbsSize floats: neither q·k nor exp is formed again; a slot is
 * read in place, and stays the caller's to free).
 */
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
  probs?: Float32Array | ProbsSlot,
  key?: object,
): void {
  const { rows, S, H, KV, d } = s;
  const { T, G, Sp, dp, np, nP, slot, nPcopy } = sizesOf(s, probs);
  const kvT = rows * KV * tRows(d) * Sp;
  const {
    at: [qA, kA, vA, ktA, vtA, oA, gA, stA, tA, scA, dqA, dkA, dvA, pA],
    f,
    i,
  } = layout([T * H * dp, T * KV * dp, T * KV * dp, nP ? 0 : kvT, kvT, T * H * dp, T * H * dp, T * H, rows * np * REC, 4 * Sp, T * H * dp, T * KV * dp, T * KV * dp, nPcopy]);
  const pBase = slot ? slot.at : pA!;
  const m = attentionModule();
  const { rowP } = pairsInto(i, tA! / 4, ranges, s, key);
  const given = nP > 0 && nP === KV * rowP.reduce((x, y) => x + y, 0);
  if (nP && !given) throw new Error(`attentionBackward: ${nP} saved probabilities for a shape and ranges that have ${KV * rowP.reduce((x, y) => x + y, 0)}`);
  const pAt = probsAt(rowP, KV);
  putHeads(q, f, qA!, d, dp);
  putHeads(k, f, kA!, d, dp);
  putHeads(v, f, vA!, d, dp);
  if (given) {
    if (!slot) f.set(probs as Float32Array, pA! / 4);
  }
  else {
    transposeIn(m, kA!, ktA!, s, Sp, dp);
    f.set(stats, stA! / 4);
  }
  transposeIn(m, vA!, vtA!, s, Sp, dp);
  putHeads(o, f, oA!, d, dp);
  putHeads(dO, f, gA!, d, dp);
  f.fill(0, dkA! / 4, dkA! / 4 + T * KV * dp);
  f.fill(0, dvA! / 4, dvA! / 4 + T * KV * dp);
  const scale = Math.fround(1 / Math.sqrt(d));
  for (let r = 0; r < rows; r++)
    for (let h = 0; h < KV; h++) {
      const e0 = r * S * H + h * G;
      const kvt = (r * KV + h) * tRows(d) * Sp * 4;
      const kvr = (r * S * KV + h) * dp * 4;
      m.bwd(
        np,
        tA! + r * np * REC * 4,
        Sp,
        d,
        dp,
        KV * dp,
        scale,
        qA! + e0 * dp * 4,
        given ? 0 : ktA! + kvt,
        vtA! + kvt,
        kA! + kvr,
        oA! + e0 * dp * 4,
        gA! + e0 * dp * 4,
        stA! + e0 * 4,
        scA!,
        dqA! + e0 * dp * 4,
        dkA! + kvr,
        dvA! + kvr,
        given ? pBase + pAt(r, h) : 0,
      );
    }
  getHeads(f, dqA!, dq, d, dp);
  getHeads(f, dkA!, dk, d, dp);
  getHeads(f, dvA!, dv, d, dp);
}
