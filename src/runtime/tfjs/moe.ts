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
 * The module runs in its own instance of gemm.wasm (moe.wasm imports that instance's `memory` and `gemm`),
 * not the one ./gemm.ts multiplies in: every call copies its operands into that memory (grown as needed)
 * and the results out, so nothing is shared with matmulInto's scratch.
 */
import { readFileSync } from 'node:fs';

interface GemmExports {
  memory: WebAssembly.Memory;
  gemm(a: number, b: number, c: number, batch: number, M: number, N: number, K: number): void;
  gemm_tn(a: number, b: number, c: number, batch: number, M: number, N: number, K: number): void;
}

interface MoeExports {
  gather(src: number, ld: number, idx: number, sc: number, c: number, n: number, w: number, dst: number, ldd: number): void;
  scatter_add(src: number, lds: number, idx: number, n: number, w: number, dst: number, ldd: number): void;
  transpose(src: number, lds: number, rows: number, cols: number, dst: number, ldd: number): void;
  fwd_experts(h: number, ldh: number, tab: number, idx: number, gts: number, E: number, r: number, bt: number, a: number, c: number, y: number, out: number, outP: number, s: number): void;
  dh_experts(dy: number, out: number, outP: number, tab: number, idx: number, gts: number, E: number, r: number, rP: number, bp: number, g: number, u: number, h: number, dh: number, ldh: number, dg: number, s: number): void;
  db_experts(dy: number, out: number, outP: number, tab: number, idx: number, gts: number, E: number, r: number, h: number, ldh: number, at: number, g: number, c: number, db: number, s: number): void;
}

/** The module's memory, its GEMMs (./gemm.wat: `gemm` C = A·B, `gemm_tn` C = Aᵀ·B) and moe.wat's exports. */
export interface Module {
  memory: WebAssembly.Memory;
  gemm: GemmExports['gemm'];
  gemmTn: GemmExports['gemm_tn'];
  moe: MoeExports;
}

let mod: Module | undefined;

/** The one instance of gemm.wasm + moe.wasm (also used by ./moe-down.ts). */
export function moeModule(): Module {
  if (!mod) {
    const load = (name: string) => new WebAssembly.Module(readFileSync(new URL(name, import.meta.url)));
    const g = new WebAssembly.Instance(load('./gemm.wasm'), {}).exports as unknown as GemmExports;
    const moe = new WebAssembly.Instance(load('./moe.wasm'), { gemm: { memory: g.memory, gemm: g.gemm } }).exports as unknown as MoeExports;
    mod = { memory: g.memory, gemm: g.gemm, gemmTn: g.gemm_tn, moe };
  }
  return mod;
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
