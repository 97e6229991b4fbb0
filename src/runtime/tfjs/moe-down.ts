/**
 * moe_down_routed on each token's top-k experts only, for the CPU kernel table (../kernels/cpu-moe.ts): the
 * arithmetic over Float32Arrays, in the WebAssembly module of ./moe.ts (its gemm.wasm instance, moe.wat's SIMD
 * gathers and scatters, its routing tables and arena), with the per-expert loop here.
 *
 *   h[t, e·r:(e+1)·r] = x_t·A_eᵀ where gates[t, e] ≠ 0, else 0      x [T, in], gates [T, E], A_e [E, r, in]
 *
 * The reference (../kernels/reference.ts) multiplies every token by all E experts' A and masks the product, so
 * with top-2 of 8 three quarters of it is thrown away. Here expert e sees only the tokens routed to it: their
 * x rows gathered into a packed block, one GEMM [n_e, in]·[in, r], the rows scattered into h. Backward, over
 * the same rows: dx[t] = Σ_e dh_e[t]·A_e (gather dh_e rows, one GEMM [n_e, r]·[r, in], scatter-add into dx);
 * dA_e = dh_e[rows]ᵀ·x[rows] (one gemm_tn over the gathered blocks; zero for an expert nobody is routed to).
 */
import { Arena, CHUNK, countHeapCall, heapFor, heapScratch, moeModule, Routing, routesOf, up } from './moe.js';

/** moe_down_routed's sizes: x [T, in], gates [T, E], A_e [E, r, in]. */
export interface MoeDownShape {
  T: number;
  inF: number;
  rank: number;
  experts: number;
}

/** Start of each expert's rows in the routing tables (expert order, as Routing.write lays them out). */
function offsets(route: Routing): number[] {
  const off: number[] = [];
  let at = 0;
  for (const n of route.counts) {
    off.push(at);
    at += n;
  }
  return off;
}

/**
 * The start every function here shares: `out` zeroed over `n` floats (what it stays where nothing is routed),
 * then the module and the routing of `gates`, with an arena holding the routing tables; null when there is
 * nothing to compute (an empty dimension, no routed token).
 */
function begin(gates: Float32Array, s: MoeDownShape, out: Float32Array, n: number): { m: ReturnType<typeof moeModule>; route: Routing; a: Arena } | null {
  out.fill(0, 0, n);
  if (s.T === 0 || s.rank === 0 || s.inF === 0) return null;
  const m = moeModule();
  const route = new Routing(gates, s.T, s.experts);
  if (route.total === 0) return null;
  const a = new Arena();
  route.place(a);
  return { m, route, a };
}

/** h [T, E·r] = the forward (every element written; zero off the routed (t, e)). */
export function moeDownForward(x: Float32Array, gates: Float32Array, ae: Float32Array, h: Float32Array, s: MoeDownShape): void {
  const { T, inF, rank: r, experts: E } = s;
  const W = E * r;
  const b = begin(gates, s, h, T * W);
  if (!b) return;
  const { m, route, a } = b;
  const rP = up(r, 8);
  const np = up(route.maxN, 4);
  const X = a.take(T * inF);
  const AT = a.take(E * inF * rP);
  const XG = a.take(np * inF);
  const C = a.take(np * rP);
  const H = a.take(T * W);
  const AS = a.take(r * inF);
  const { f, i } = a.views(m);
  route.write(f, i);
  f.set(x.subarray(0, T * inF), X / 4);
  f.fill(0, AT / 4, AT / 4 + E * inF * rP);
  f.fill(0, H / 4, H / 4 + T * W);
  // A_eᵀ [in, rP] per routed expert (columns r..rP zero): the GEMM's B operand.
  const off = offsets(route);
  for (let e = 0; e < E; e++) {
    if (!route.counts[e]) continue;
    f.set(ae.subarray(e * r * inF, (e + 1) * r * inF), AS / 4);
    m.moe.transpose(AS, inF, r, inF, AT + 4 * e * inF * rP, rP);
  }
  for (let e = 0; e < E; e++) {
    const n = route.counts[e]!;
    if (!n) continue;
    const idx = route.idx + 4 * off[e]!;
    const n4 = up(n, 4);
    m.moe.gather(X, inF, idx, 0, 1, n, inF, XG, inF);
    f.fill(0, XG / 4 + n * inF, XG / 4 + n4 * inF);
    m.gemm(XG, AT + 4 * e * inF * rP, C, 1, n4, rP, inF);
    m.moe.scatter_add(C, rP, idx, n, r, H + 4 * e * r, W);
  }
  h.set(new Float32Array(m.memory.buffer, H, T * W));
}

/** dx [T, in] from dh [T, E·r] (every element written): Σ over the routed (t, e) of dh_e[t]·A_e. */
export function moeDownDx(dh: Float32Array, gates: Float32Array, ae: Float32Array, dx: Float32Array, s: MoeDownShape): void {
  const { T, inF, rank: r, experts: E } = s;
  const W = E * r;
  const b = begin(gates, s, dx, T * inF);
  if (!b) return;
  const { m, route, a } = b;
  const inP = up(inF, 8);
  const np = up(route.maxN, 4);
  const DH = a.take(T * W);
  const AP = a.take(r * inP);
  const G = a.take(np * r);
  const C = a.take(np * inP);
  const DX = a.take(T * inF);
  const { f, i } = a.views(m);
  route.write(f, i);
  f.set(dh.subarray(0, T * W), DH / 4);
  f.fill(0, DX / 4, DX / 4 + T * inF);
  f.fill(0, AP / 4, AP / 4 + r * inP);
  const off = offsets(route);
  for (let e = 0; e < E; e++) {
    const n = route.counts[e]!;
    if (!n) continue;
    const idx = route.idx + 4 * off[e]!;
    const n4 = up(n, 4);
    // A_e [r, inP] (columns in..inP zero): the GEMM's B operand.
    for (let j = 0; j < r; j++) f.set(ae.subarray((e * r + j) * inF, (e * r + j + 1) * inF), AP / 4 + j * inP);
    m.moe.gather(DH + 4 * e * r, W, idx, 0, 1, n, r, G, r);
    f.fill(0, G / 4 + n * r, G / 4 + n4 * r);
    m.gemm(G, AP, C, 1, n4, inP, r);
    m.moe.scatter_add(C, inP, idx, n, inF, DX, inF);
  }
  dx.set(new Float32Array(m.memory.buffer, DX, T * inF));
}

/** dA_e [E, r, in] from dh [T, E·r] (every element written; zero for an expert nobody is routed to). */
export function moeDownDa(dh: Float32Array, x: Float32Array, gates: Float32Array, da: Float32Array, s: MoeDownShape): void {
  const { T, inF, rank: r, experts: E } = s;
  const W = E * r;
  const b = begin(gates, s, da, E * r * inF);
  if (!b) return;
  const { m, route, a } = b;
  const inP = up(inF, 8);
  const rP = up(r, 8);
  const DH = a.take(T * W);
  const X = a.take(T * inF);
  const G = a.take(route.maxN * rP);
  const XG = a.take(route.maxN * inP);
  const C = a.take(rP * inP);
  const { f, i } = a.views(m);
  route.write(f, i);
  f.set(dh.subarray(0, T * W), DH / 4);
  f.set(x.subarray(0, T * inF), X / 4);
  const off = offsets(route);
  for (let e = 0; e < E; e++) {
    const n = route.counts[e]!;
    if (!n) continue;
    const idx = route.idx + 4 * off[e]!;
    // dh_e rows [n, rP] and x rows [n, inP] (padding columns zeroed by gather); C = dh_rowsᵀ·x_rows [rP, inP].
    m.moe.gather(DH + 4 * e * r, W, idx, 0, 1, n, r, G, rP);
    m.moe.gather(X, inF, idx, 0, 1, n, inF, XG, inP);
    m.gemmTn(G, XG, C, 1, rP, inP, n);
    const c = new Float32Array(m.memory.buffer, C, rP * inP);
    for (let j = 0; j < r; j++) da.set(c.subarray(j * inP, j * inP + inF), (e * r + j) * inF);
  }
}

// --- in place on tfjs-backend-wasm's heap (see ./moe.ts): r and in multiples of 8; false where not applicable ----

const ptr = (a: Float32Array) => a.byteOffset;

/** moeDownForward in place. `key`: the gates tensor's dataId (routing cache). */
export function moeDownForwardHeap(x: Float32Array, gates: Float32Array, ae: Float32Array, h: Float32Array, s: MoeDownShape, key?: object): boolean {
  const { T, inF, rank: r, experts: E } = s;
  if (T === 0 || inF === 0 || r === 0 || r % 8 !== 0) return false;
  const hp = heapFor([x, gates, ae, h]);
  if (!hp) return false;
  const W = E * r;
  const [X, AE, H] = [ptr(x), ptr(ae), ptr(h)];
  const rt = routesOf(gates, T, E, key);
  const sc = heapScratch(hp, rt, E * inF * r);
  if (!sc) return false;
  const m = hp.moe;
  // h is 0 off the routed (t, e): all of it zeroed (one memset), the routed rows then stored. Zeroing only the
  // unrouted blocks branched on each gate, which random routing mispredicts (~5 ms a stage-one step in both
  // kernels that did it).
  new Float32Array(hp.memory.buffer, H, T * W).fill(0);
  for (let e = 0; e < E; e++) {
    const n = rt.off[e + 1]! - rt.off[e]!;
    if (!n) continue;
    const at = sc.extra + 4 * e * inF * r;
    m.transpose(AE + 4 * e * r * inF, inF, r, inF, at, r);
    m.nn(X, inF, at, r, inF, r, H + 4 * e * r, W, sc.idx + 4 * rt.off[e]!, n, 0, 1, 0, 0, 0, 0, sc.tmp);
  }
  sc.done();
  countHeapCall('down');
  return true;
}

/** moeDownDx in place. */
export function moeDownDxHeap(dh: Float32Array, gates: Float32Array, ae: Float32Array, dx: Float32Array, s: MoeDownShape, key?: object): boolean {
  const { T, inF, rank: r, experts: E } = s;
  if (T === 0 || inF === 0 || inF % 8 !== 0 || r === 0) return false;
  const hp = heapFor([dh, gates, ae, dx]);
  if (!hp) return false;
  const W = E * r;
  const [DH, AE, DX] = [ptr(dh), ptr(ae), ptr(dx)];
  const rt = routesOf(gates, T, E, key);
  const n4 = Math.min(up(rt.maxN, 4), CHUNK);
  const sc = heapScratch(hp, rt, n4 * r + n4 * inF);
  if (!sc) return false;
  const G = sc.extra;
  const C = G + 4 * n4 * r;
  const m = hp.moe;
  for (const t of rt.unrouted) new Float32Array(hp.memory.buffer, DX + 4 * t * inF, inF).fill(0);
  // per expert, CHUNK rows at a time (in cache): dh_e rows gathered [n, r], one GEMM by A_e [r, in] (where it
  // is), rows stored (a token's first expert) or added into dx (rows n .. ⌈n⌉₄ of the block: computed, unread)
  for (let e = 0; e < E; e++) {
    for (let p = rt.off[e]!; p < rt.off[e + 1]!; p += CHUNK) {
      const n = Math.min(CHUNK, rt.off[e + 1]! - p);
      const idx = sc.idx + 4 * p;
      m.gather(DH + 4 * e * r, W, idx, 0, 1, n, r, G, r);
      m.mm(G, AE + 4 * e * r * inF, C, up(n, 4), inF, r, 0);
      m.scatter_add(C, inF, idx, n, inF, DX, inF, 1);
    }
  }
  sc.done();
  countHeapCall('dx');
  return true;
}

/** moeDownDa in place. */
export function moeDownDaHeap(dh: Float32Array, x: Float32Array, gates: Float32Array, da: Float32Array, s: MoeDownShape, key?: object): boolean {
  const { T, inF, rank: r, experts: E } = s;
  if (T === 0 || inF === 0 || inF % 8 !== 0 || r === 0 || r % 4 !== 0) return false;
  const hp = heapFor([dh, x, gates, da]);
  if (!hp) return false;
  const W = E * r;
  const [DH, X, DA] = [ptr(dh), ptr(x), ptr(da)];
  const rt = routesOf(gates, T, E, key);
  const ch = Math.min(rt.maxN, CHUNK);
  const sc = heapScratch(hp, rt, r * ch + ch * inF);
  if (!sc) return false;
  const AT = sc.extra;
  const XG = AT + 4 * r * ch;
  const m = hp.moe;
  // per expert, CHUNK rows at a time: dh_e rowsᵀ [r, n] and x rows [n, in] gathered, the GEMM stored (first
  // chunk) or added straight into dA_e [r, in]
  for (let e = 0; e < E; e++) {
    const at = DA + 4 * e * r * inF;
    if (rt.off[e + 1] === rt.off[e]) new Float32Array(hp.memory.buffer, at, r * inF).fill(0);
    for (let p = rt.off[e]!; p < rt.off[e + 1]!; p += CHUNK) {
      const n = Math.min(CHUNK, rt.off[e + 1]! - p);
      const idx = sc.idx + 4 * p;
      m.gather_t(DH + 4 * e * r, W, idx, 0, 1, n, r, AT);
      m.gather(X, inF, idx, 0, 1, n, inF, XG, inF);
      m.mm(AT, XG, at, r, inF, n, p > rt.off[e]! ? 1 : 0);
    }
  }
  sc.done();
  countHeapCall('da');
  return true;
}
