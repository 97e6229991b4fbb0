/**
 * moe_up_grouped on each token's top-k experts only, for the CPU kernel table (../kernels/cpu-moe.ts): the
 * arithmetic over Float32Arrays, in WebAssembly (./moe.wat: SIMD gathers, scatters and the per-expert loops,
 * calling the GEMM of ./gemm.wat).
 *
 *   y = s·h_sh·B_shᵀ + Σ_e gate_e · s·h_e·B_eᵀ        h [T, R + E·r], gates [T, E], B_sh [out, R], B_e [E, out, r]
 *
 * The reference (../kernels/reference.ts) scales h_e by the gates and runs one dense GEMM over all E experts'
 * B, so with top-2 of 8 three quarters of its products are multiplied by zero. Here expert e sees only the
 * tokens routed to it (gate != 0): their h_e rows, scaled by s·gate, are gathered into a packed block, one
 * GEMM [n_e, r]·[r, out] each, and the rows are added into y. The shared part (R > 0) is one dense GEMM.
 * Backward, for the routed (t, e) only (zero elsewhere): U = s·dY_rows·B_e, dh_e = gate·U,
 * dgates[t, e] = U[t]·h_e[t]; dB_e = s·(gate·h_e rows)ᵀ·dY_rows.
 *
 * ./moe-down.ts (moe_down_routed, the A side) reuses this module's instance, routing tables and arena.
 *
 * On the `wasm` backend, where the widths are multiples of 8 (MedCare's are), the kernels run in place on
 * tfjs-backend-wasm's heap (the *Heap functions at the end: moe.wasm instantiated over that memory, scratch
 * from its malloc): no copy of the operands in or of the results out. Otherwise (the `cpu` backend, other
 * widths) moe.wasm runs in its own instance of gemm.wasm's memory (not the one ./gemm.ts multiplies in): every
 * call copies its operands into that memory (grown as needed) and the results out.
 */
import { readFileSync } from 'node:fs';
import { tf } from './index.js';
import { wasmHeap } from './wasm-extra.js';

interface GemmExports {
  memory: WebAssembly.Memory;
  gemm(a: number, b: number, c: number, batch: number, M: number, N: number, K: number): void;
  gemm_tn(a: number, b: number, c: number, batch: number, M: number, N: number, K: number): void;
}

interface MoeExports {
  gather(src: number, ld: number, idx: number, sc: number, c: number, n: number, w: number, dst: number, ldd: number): void;
  gather_t(src: number, ld: number, idx: number, sc: number, c: number, n: number, w: number, dst: number): void;
  scatter_add(src: number, lds: number, idx: number, n: number, w: number, dst: number, ldd: number, first?: number): void;
  transpose(src: number, lds: number, rows: number, cols: number, dst: number, ldd: number): void;
  mm(a: number, b: number, c: number, M: number, N: number, K: number, acc: number): void;
  fwd_experts(h: number, ldh: number, tab: number, idx: number, gts: number, E: number, r: number, bt: number, a: number, c: number, y: number, out: number, outP: number, s: number, first?: number): void;
  dh_experts(dy: number, out: number, outP: number, tab: number, idx: number, gts: number, E: number, r: number, rP: number, bp: number, g: number, u: number, h: number, dh: number, ldh: number, dg: number, s: number): void;
  db_experts(dy: number, out: number, outP: number, tab: number, idx: number, gts: number, E: number, r: number, h: number, ldh: number, at: number, g: number, c: number, db: number, s: number): void;
  nn(a: number, lda: number, b: number, ldb: number, K: number, N: number, c: number, ldc: number, idx: number, n: number, sc: number, cs: number, mode: number, h: number, dg: number, ldg: number, tmp: number): void;
}

/** The module's memory, its GEMMs (./gemm.wat: `gemm` C = A·B, `gemm_tn` C = Aᵀ·B) and moe.wat's exports. */
export interface Module {
  memory: WebAssembly.Memory;
  gemm: GemmExports['gemm'];
  gemmTn: GemmExports['gemm_tn'];
  moe: MoeExports;
}

let mod: Module | undefined;
const load = (name: string) => new WebAssembly.Module(readFileSync(new URL(name, import.meta.url)));
let moeWasm: WebAssembly.Module | undefined;

/** The one instance of gemm.wasm + moe.wasm (also used by ./moe-down.ts). */
export function moeModule(): Module {
  if (!mod) {
    const g = new WebAssembly.Instance(load('./gemm.wasm'), {}).exports as unknown as GemmExports;
    moeWasm ??= load('./moe.wasm');
    const moe = new WebAssembly.Instance(moeWasm, { gemm: { memory: g.memory } }).exports as unknown as MoeExports;
    mod = { memory: g.memory, gemm: g.gemm, gemmTn: g.gemm_tn, moe };
  }
  return mod;
}

/**
 * moe.wasm over tfjs-backend-wasm's heap, for the in-place kernels (nn, tn: no GEMM import is
 * called), with the heap's malloc and free for scratch.
 */
export interface Heap {
  memory: WebAssembly.Memory;
  moe: MoeExports;
  malloc(bytes: number): number;
  free(p: number): void;
}

const heaps = new WeakMap<WebAssembly.Memory, Heap>();

/**
 * The heap instance when every array is a view of tfjs-backend-wasm's (unshared) heap, else null (the `cpu`
 * backend, or a copy): the in-place paths run only there. Pointers are the views' byteOffsets; read them before
 * any malloc, which may grow the heap (a view of the old buffer then reads byteOffset 0).
 */
export function heapFor(arrays: (Float32Array | undefined)[]): Heap | null {
  const memory = wasmHeap();
  if (!memory || !arrays.every((a) => !a || a.buffer === memory.buffer)) return null;
  let hp = heaps.get(memory);
  if (!hp) {
    const w = (tf.engine() as unknown as { registry: Record<string, { wasm?: { _malloc?: (n: number) => number; _free?: (p: number) => void } }> }).registry.wasm?.wasm;
    if (!w?._malloc || !w._free) return null;
    moeWasm ??= load('./moe.wasm');
    const moe = new WebAssembly.Instance(moeWasm, { gemm: { memory } }).exports as unknown as MoeExports;
    const malloc = w._malloc.bind(w);
    const free = w._free.bind(w);
    hp = { memory, moe, malloc: (n) => malloc(n) >>> 0, free };
    heaps.set(memory, hp);
  }
  return hp;
}

/**
 * Each expert's routed tokens (gate != 0), for the in-place kernels: expert e's are idx[off[e] .. off[e+1])
 * (ascending t; bit 31 set where the entry is not its token's first in expert order, so the first can store
 * and the others add), gts their gates; `unrouted` the tokens routed nowhere. Cached by the gates tensor's
 * dataId (tensors are immutable): the up and down ops of a site, forward and backward, read one gates tensor.
 */
export interface Routes {
  T: number;
  total: number;
  maxN: number;
  off: Int32Array;
  idx: Int32Array;
  gts: Float32Array;
  unrouted: number[];
}

const routeCache = new WeakMap<object, Routes>();

export function routesOf(gates: Float32Array, T: number, E: number, key?: object): Routes {
  const hit = key && routeCache.get(key);
  if (hit && hit.T === T && hit.off.length === E + 1) return hit;
  const { off, idx, gts, unrouted } = E <= 32 ? routeByMasks(gates, T, E) : routeByScan(gates, T, E);
  let maxN = 0;
  for (let e = 0; e < E; e++) maxN = Math.max(maxN, off[e + 1]! - off[e]!);
  const r: Routes = { T, total: off[E]!, maxN, off, idx, gts, unrouted };
  if (key) routeCache.set(key, r);
  return r;
}

/** A routing's tables (routesOf adds the totals and caches it). */
export type Placed = Pick<Routes, 'off' | 'idx' | 'gts' | 'unrouted'>;

/** The tables to fill from per-expert counts off[e + 1] (made cumulative here), and each expert's next place. */
function tablesFor(off: Int32Array, E: number): Placed & { at: Int32Array } {
  for (let e = 0; e < E; e++) off[e + 1] += off[e]!;
  return { off, idx: new Int32Array(off[E]!), gts: new Float32Array(off[E]!), unrouted: [], at: off.slice(0, E) };
}

/**
 * The routing for E <= 32: each token's routed experts as a bit mask (bit e: gate != 0, from the gate's bits
 * without a branch), then the experts of each mask in turn (popcount iterations: top_k for every token, a
 * branch the CPU predicts). routeByScan's `if` on each gate follows random routing (`npx tsx bench/topk-gate.ts`
 * times both on fresh gates).
 */
export function routeByMasks(gates: Float32Array, T: number, E: number): Placed {
  const bits = new Int32Array(gates.buffer, gates.byteOffset, T * E);
  const masks = new Int32Array(T);
  const off = new Int32Array(E + 1);
  for (let t = 0, k = 0; t < T; t++) {
    let m = 0;
    for (let e = 0; e < E; e++, k++) {
      // |gate| bits > 0 (NaN counts, ±0 does not): 1 in bit 31 of |bits| + 0x7fffffff exactly then
      m |= (((bits[k]! & 0x7fffffff) + 0x7fffffff) >>> 31) << e;
    }
    masks[t] = m;
    for (let r = m; r !== 0; r &= r - 1) off[32 - Math.clz32(r & -r)]++;
  }
  const { idx, gts, unrouted, at } = tablesFor(off, E);
  for (let t = 0; t < T; t++) {
    let m = masks[t]!;
    if (m === 0) {
      unrouted.push(t);
      continue;
    }
    let flag = 0;
    for (; m !== 0; m &= m - 1) {
      const e = 31 - Math.clz32(m & -m);
      const p = at[e]!++;
      idx[p] = t | flag;
      gts[p] = gates[t * E + e]!;
      flag = 0x80000000 | 0;
    }
  }
  return { off, idx, gts, unrouted };
}

/** The routing by testing every gate (any E). */
export function routeByScan(gates: Float32Array, T: number, E: number): Placed {
  const off = new Int32Array(E + 1);
  for (let t = 0, k = 0; t < T; t++) for (let e = 0; e < E; e++, k++) if (gates[k] !== 0) off[e + 1]++;
  const { idx, gts, unrouted, at } = tablesFor(off, E);
  for (let t = 0, k = 0; t < T; t++) {
    let flag = 0;
    for (let e = 0; e < E; e++, k++) {
      const g = gates[k]!;
      if (g !== 0) {
        const p = at[e]!++;
        idx[p] = t | flag;
        gts[p] = g;
        flag = 0x80000000 | 0;
      }
    }
    if (flag === 0) unrouted.push(t);
  }
  return { off, idx, gts, unrouted };
}

/**
 * Scratch on the heap: the routing tables (tab: [off_e, n_e] per expert, as moe.wat reads them; idx; gts), a
 * 32-float tile, then `extra` floats (16-byte aligned); `done` frees it. Null where malloc fails.
 */
export function heapScratch(hp: Heap, rt: Routes, extra: number): { tab: number; idx: number; gts: number; tmp: number; extra: number; done(): void } | null {
  const E = rt.off.length - 1;
  const p = hp.malloc(4 * (2 * E + 2 * rt.total + 32 + extra) + 64);
  if (!p) return null; // out of memory: the caller takes the copying path
  const tab = up(p, 16);
  const idx = up(tab + 8 * E, 16);
  const gts = idx + 4 * rt.total;
  const tmp = up(gts + 4 * rt.total, 16);
  const ex = tmp + 128;
  const i32 = new Int32Array(hp.memory.buffer);
  for (let e = 0; e < E; e++) {
    i32[tab / 4 + 2 * e] = rt.off[e]!;
    i32[tab / 4 + 2 * e + 1] = rt.off[e + 1]! - rt.off[e]!;
  }
  i32.set(rt.idx, idx / 4);
  new Float32Array(hp.memory.buffer, gts, rt.total).set(rt.gts);
  return { tab, idx, gts, tmp, extra: ex, done: () => hp.free(p) };
}

/** moe_up_grouped's sizes: h [T, R + E·r], gates [T, E], B_sh [out, R] (R > 0), B_e [E, out, r]; scale s. */
export interface MoeUpShape {
  T: number;
  out: number;
  sharedRank: number;
  rank: number;
  experts: number;
  scale: number;
}

export const up = (n: number, m: number) => Math.ceil(n / m) * m;

/** moe.wat's CH: the rows per chunk of the gathered blocks (fwd_experts, db_experts; moe-down.ts likewise). */
export const CHUNK = 64;

/** Byte offsets in the module's memory, 16-byte aligned; `views` after `grow`. */
export class Arena {
  private at = 64; // 0 stays free: a pointer of 0 means "none" to gather's scales
  take(floats: number): number {
    const p = this.at;
    this.at += up(Math.max(floats, 1), 4) * 4;
    return p;
  }
  views(m: Module): { f: Float32Array; i: Int32Array } {
    const have = m.memory.buffer.byteLength;
    if (this.at > have) m.memory.grow(Math.ceil((this.at - have) / 65536));
    return { f: new Float32Array(m.memory.buffer), i: new Int32Array(m.memory.buffer) };
  }
}

/** Experts' token lists: count per expert (gate != 0), then tab/idx/gts (see moe.wat) once memory is laid out. */
export class Routing {
  readonly counts: Int32Array;
  readonly total: number;
  readonly maxN: number;
  tab = 0;
  idx = 0;
  gts = 0;
  constructor(
    private readonly gates: Float32Array,
    private readonly T: number,
    private readonly E: number,
  ) {
    this.counts = new Int32Array(E);
    for (let t = 0, k = 0; t < T; t++) for (let e = 0; e < E; e++, k++) if (gates[k] !== 0) this.counts[e]!++;
    this.total = this.counts.reduce((a, b) => a + b, 0);
    this.maxN = Math.max(0, ...this.counts);
  }
  place(a: Arena): void {
    this.tab = a.take(2 * this.E);
    this.idx = a.take(this.total);
    this.gts = a.take(this.total);
  }
  write(f: Float32Array, i: Int32Array): void {
    const { E, T, gates } = this;
    const at = new Int32Array(E);
    for (let e = 0, off = 0; e < E; e++) {
      i[this.tab / 4 + 2 * e] = off;
      i[this.tab / 4 + 2 * e + 1] = this.counts[e]!;
      at[e] = off;
      off += this.counts[e]!;
    }
    const idx = this.idx / 4;
    const gts = this.gts / 4;
    for (let t = 0, k = 0; t < T; t++)
      for (let e = 0; e < E; e++, k++) {
        const g = gates[k]!;
        if (g !== 0) {
          const p = at[e]!++;
          i[idx + p] = t;
          f[gts + p] = g;
        }
      }
  }
}

export function iota(i: Int32Array, at: number, n: number): void {
  const o = at / 4;
  for (let k = 0; k < n; k++) i[o + k] = k;
}

/** y [T, out] = the forward (every element written). */
export function moeUpForward(h: Float32Array, gates: Float32Array, be: Float32Array, bsh: Float32Array | undefined, y: Float32Array, s: MoeUpShape): void {
  const { T, out, sharedRank: R, rank: r, experts: E, scale } = s;
  const W = R + E * r;
  if (T === 0 || out === 0) return;
  const m = moeModule();
  const outP = up(out, 8);
  const Tp = up(T, 4);
  const route = new Routing(gates, T, E);
  const a = new Arena();
  route.place(a);
  const H = a.take(T * W);
  const BE = a.take(E * out * r);
  const BT = a.take(E * r * outP);
  const Y = a.take(T * out);
  const A = a.take(Math.max(up(route.maxN, 4) * r, R > 0 ? Tp * R : 0));
  const C = a.take(Math.max(up(route.maxN, 4), R > 0 ? Tp : 0) * outP);
  const IOTA = R > 0 ? a.take(T) : 0;
  const BSH = R > 0 ? a.take(out * R) : 0;
  const BST = R > 0 ? a.take(R * outP) : 0;
  const { f, i } = a.views(m);
  route.write(f, i);
  f.set(h.subarray(0, T * W), H / 4);
  f.set(be.subarray(0, E * out * r), BE / 4);
  f.fill(0, BT / 4, BT / 4 + E * r * outP);
  for (let e = 0; e < E; e++) m.moe.transpose(BE + 4 * e * out * r, r, out, r, BT + 4 * e * r * outP, outP);
  f.fill(0, Y / 4, Y / 4 + T * out);
  if (R > 0) {
    iota(i, IOTA, T);
    f.set(bsh!.subarray(0, out * R), BSH / 4);
    f.fill(0, BST / 4, BST / 4 + R * outP);
    m.moe.transpose(BSH, R, out, R, BST, outP);
    m.moe.gather(H, W, IOTA, 0, scale, T, R, A, R);
    f.fill(0, A / 4 + T * R, A / 4 + Tp * R);
    m.gemm(A, BST, C, 1, Tp, outP, R);
    m.moe.scatter_add(C, outP, IOTA, T, out, Y, out);
  }
  if (r > 0) m.moe.fwd_experts(H + 4 * R, W, route.tab, route.idx, route.gts, E, r, BT, A, C, Y, out, outP, scale);
  y.set(new Float32Array(m.memory.buffer, Y, T * out));
}

/** dh [T, R + E·r] and dgates [T, E] from dY [T, out] (every element written; zero outside the routed (t, e)). */
export function moeUpDh(dy: Float32Array, h: Float32Array, gates: Float32Array, be: Float32Array, bsh: Float32Array | undefined, dh: Float32Array, dg: Float32Array, s: MoeUpShape): void {
  const { T, out, sharedRank: R, rank: r, experts: E, scale } = s;
  const W = R + E * r;
  if (T === 0) return;
  if (out === 0) {
    dh.fill(0);
    dg.fill(0);
    return;
  }
  const m = moeModule();
  const outP = up(out, 8);
  const Tp = up(T, 4);
  const rP = up(r, 8);
  const RP = up(R, 8);
  const route = new Routing(gates, T, E);
  const a = new Arena();
  route.place(a);
  const DY = a.take(T * out);
  const H = a.take(T * W);
  const DH = a.take(T * W);
  const DG = a.take(T * E);
  const BE = a.take(E * out * r);
  const BP = a.take(E * outP * rP);
  const G = a.take(Math.max(up(route.maxN, 4), R > 0 ? Tp : 0) * outP);
  const U = a.take(Math.max(up(route.maxN, 4) * rP, R > 0 ? Tp * RP : 0));
  const IOTA = a.take(Math.max(T, out));
  const BSH = R > 0 ? a.take(out * R) : 0;
  const BSP = R > 0 ? a.take(outP * RP) : 0;
  const { f, i } = a.views(m);
  route.write(f, i);
  iota(i, IOTA, Math.max(T, out));
  f.set(dy.subarray(0, T * out), DY / 4);
  f.set(h.subarray(0, T * W), H / 4);
  f.fill(0, DH / 4, DH / 4 + T * W);
  f.fill(0, DG / 4, DG / 4 + T * E);
  f.set(be.subarray(0, E * out * r), BE / 4);
  f.fill(0, BP / 4, BP / 4 + E * outP * rP);
  if (r > 0) for (let e = 0; e < E; e++) m.moe.gather(BE + 4 * e * out * r, r, IOTA, 0, 1, out, r, BP + 4 * e * outP * rP, rP);
  if (R > 0) {
    f.set(bsh!.subarray(0, out * R), BSH / 4);
    f.fill(0, BSP / 4, BSP / 4 + outP * RP);
    m.moe.gather(BSH, R, IOTA, 0, 1, out, R, BSP, RP);
    m.moe.gather(DY, out, IOTA, 0, scale, T, out, G, outP);
    f.fill(0, G / 4 + T * outP, G / 4 + Tp * outP);
    m.gemm(G, BSP, U, 1, Tp, RP, outP);
    m.moe.scatter_add(U, RP, IOTA, T, R, DH, W);
  }
  if (r > 0) m.moe.dh_experts(DY, out, outP, route.tab, route.idx, route.gts, E, r, rP, BP, G, U, H + 4 * R, DH + 4 * R, W, DG, scale);
  dh.set(new Float32Array(m.memory.buffer, DH, T * W));
  dg.set(new Float32Array(m.memory.buffer, DG, T * E));
}

/** dB_e [E, out, r] from dY [T, out] (every element written; zero for an expert nobody is routed to). */
export function moeUpDbe(dy: Float32Array, h: Float32Array, gates: Float32Array, dbe: Float32Array, s: MoeUpShape): void {
  const { T, out, sharedRank: R, rank: r, experts: E, scale } = s;
  const W = R + E * r;
  dbe.fill(0);
  if (T === 0 || out === 0 || r === 0) return;
  const m = moeModule();
  const outP = up(out, 8);
  const route = new Routing(gates, T, E);
  if (route.total === 0) return;
  const a = new Arena();
  route.place(a);
  const DY = a.take(T * out);
  const H = a.take(T * W);
  const AT = a.take(up(r, 4) * route.maxN);
  const G = a.take(route.maxN * outP);
  const C = a.take(up(r, 4) * outP);
  const DB = a.take(E * out * r);
  const { f, i } = a.views(m);
  route.write(f, i);
  f.set(dy.subarray(0, T * out), DY / 4);
  f.set(h.subarray(0, T * W), H / 4);
  f.fill(0, AT / 4, AT / 4 + up(r, 4) * route.maxN);
  f.fill(0, DB / 4, DB / 4 + E * out * r);
  m.moe.db_experts(DY, out, outP, route.tab, route.idx, route.gts, E, r, H + 4 * R, W, AT, G, C, DB, scale);
  dbe.set(new Float32Array(m.memory.buffer, DB, E * out * r));
}

// --- in place on tfjs-backend-wasm's heap -------------------------------------------------------------------------
//
// Where the arrays are views of the `wasm` backend's heap and the widths fit nn/tn's tiles (out and r multiples
// of 8; R too for dh), the kernels run there on the tensors themselves: no copy of h, dY, B in or of y, dh out,
// no zero-fill of what is written anyway, no gathered blocks (nn and tn read the routed rows through idx and
// keep their 4 x 8 tiles in registers; the gates scale the result as it is stored), and y / dx are stored by a
// token's first expert, added by the others. Each returns false where it does not apply (the caller then runs
// the functions above).

const ptr = (a: Float32Array | undefined) => (a ? a.byteOffset : 0);

/** Calls that ran in place, by kernel (for tests: the `wasm` backend must not fall back unnoticed). */
export const moeHeapCalls: Record<string, number> = {};
export const countHeapCall = (name: string): void => {
  moeHeapCalls[name] = (moeHeapCalls[name] ?? 0) + 1;
};

/** moeUpForward in place (see above); false: not applicable. `key`: the gates tensor's dataId (routing cache). */
export function moeUpForwardHeap(h: Float32Array, gates: Float32Array, be: Float32Array, bsh: Float32Array | undefined, y: Float32Array, s: MoeUpShape, key?: object): boolean {
  const { T, out, sharedRank: R, rank: r, experts: E, scale } = s;
  if (T === 0 || out === 0 || out % 8 !== 0 || r === 0) return false;
  const hp = heapFor([h, gates, be, bsh, y]);
  if (!hp) return false;
  const W = R + E * r;
  const [H, BE, BSH, Y] = [ptr(h), ptr(be), ptr(bsh), ptr(y)];
  const rt = routesOf(gates, T, E, key);
  const n4 = Math.min(up(rt.maxN, 4), CHUNK);
  const sc = heapScratch(hp, rt, E * r * out + R * out + n4 * r + n4 * out);
  if (!sc) return false;
  const m = hp.moe;
  const BT = sc.extra;
  const BST = BT + 4 * E * r * out;
  const A = BST + 4 * R * out;
  const C = A + 4 * n4 * r;
  if (R > 0) {
    m.transpose(BSH, R, out, R, BST, out);
    m.nn(H, W, BST, out, R, out, Y, out, 0, T, 0, scale, 0, 0, 0, 0, sc.tmp);
  } else for (const t of rt.unrouted) new Float32Array(hp.memory.buffer, Y + 4 * t * out, out).fill(0);
  for (let e = 0; e < E; e++) if (rt.off[e + 1]! > rt.off[e]!) m.transpose(BE + 4 * e * out * r, r, out, r, BT + 4 * e * r * out, out);
  // per expert: gates-scaled h_e rows gathered, one GEMM [n_e, r]·[r, out], rows stored (first expert) or added
  m.fwd_experts(H + 4 * R, W, sc.tab, sc.idx, sc.gts, E, r, BT, A, C, Y, out, out, scale, R > 0 ? 0 : 1);
  sc.done();
  countHeapCall('up');
  return true;
}

/** moeUpDh in place; false: not applicable. */
export function moeUpDhHeap(dy: Float32Array, h: Float32Array, gates: Float32Array, be: Float32Array, bsh: Float32Array | undefined, dh: Float32Array, dg: Float32Array, s: MoeUpShape, key?: object): boolean {
  const { T, out, sharedRank: R, rank: r, experts: E, scale } = s;
  if (T === 0 || out === 0 || r === 0 || r % 8 !== 0 || R % 8 !== 0) return false;
  const hp = heapFor([dy, h, gates, be, bsh, dh, dg]);
  if (!hp) return false;
  const W = R + E * r;
  const [DY, H, BE, BSH, DH, DG] = [ptr(dy), ptr(h), ptr(be), ptr(bsh), ptr(dh), ptr(dg)];
  const rt = routesOf(gates, T, E, key);
  const sc = heapScratch(hp, rt, 0);
  if (!sc) return false;
  const m = hp.moe;
  new Float32Array(hp.memory.buffer, DG, T * E).fill(0);
  // dh is 0 off the routed (t, e): all of it zeroed first (one memset; see moeDownForwardHeap), the shared
  // columns and the routed blocks then stored.
  new Float32Array(hp.memory.buffer, DH, T * W).fill(0);
  if (R > 0) m.nn(DY, out, BSH, R, out, R, DH, W, 0, T, 0, scale, 0, 0, 0, 0, sc.tmp);
  for (let e = 0; e < E; e++) {
    const n = rt.off[e + 1]! - rt.off[e]!;
    if (!n) continue;
    const col = 4 * (R + e * r);
    m.nn(DY, out, BE + 4 * e * out * r, r, out, r, DH + col, W, sc.idx + 4 * rt.off[e]!, n, sc.gts + 4 * rt.off[e]!, scale, 3, H + col, DG + 4 * e, E, sc.tmp);
  }
  sc.done();
  countHeapCall('dh');
  return true;
}

/** moeUpDbe in place; false: not applicable. */
export function moeUpDbeHeap(dy: Float32Array, h: Float32Array, gates: Float32Array, dbe: Float32Array, s: MoeUpShape, key?: object): boolean {
  const { T, out, sharedRank: R, rank: r, experts: E, scale } = s;
  if (T === 0 || out === 0 || out % 8 !== 0 || r === 0 || r % 8 !== 0) return false;
  const hp = heapFor([dy, h, gates, dbe]);
  if (!hp) return false;
  const W = R + E * r;
  const [DY, H, DB] = [ptr(dy), ptr(h), ptr(dbe)];
  const rt = routesOf(gates, T, E, key);
  const ch = Math.min(rt.maxN, CHUNK);
  const sc = heapScratch(hp, rt, r * ch + ch * out + r * out);
  if (!sc) return false;
  const AT = sc.extra;
  const G = AT + 4 * r * ch;
  const C = G + 4 * ch * out;
  for (let e = 0; e < E; e++) if (rt.off[e + 1] === rt.off[e]) new Float32Array(hp.memory.buffer, DB + 4 * e * out * r, out * r).fill(0);
  // per expert: (s·gate·h_e rows)ᵀ [r, n_e] and dY rows [n_e, out] gathered, one GEMM, transposed into dB_e [out, r]
  hp.moe.db_experts(DY, out, out, sc.tab, sc.idx, sc.gts, E, r, H + 4 * R, W, AT, G, C, DB, scale);
  sc.done();
  countHeapCall('dbe');
  return true;
}
