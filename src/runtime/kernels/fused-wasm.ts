/**
 * A fused_elementwise expression (src/plan/fused.ts) compiled to WebAssembly with 128-bit SIMD (f32x4), at
 * run time, by our own emitter (../tfjs/wasm-emit.ts). Same structure as the JavaScript version
 * (./fused-js.ts `generate`): per row, one pass over the columns per row-sum level, the last pass writing the
 * roots; const-class nodes are computed once, per-row values between the passes, everything else per
 * element. Each pass walks the columns 4 at a time (v128.load/store) and then the `cols % 4` tail one at a
 * time (the same code on a splatted lane, lane 0 stored). Row sums accumulate in an f32x4 and are added
 * horizontally; `vec` inputs are read at column c; a `reduce: 'cols'` root accumulates into [cols] over the
 * rows.
 *
 * Arithmetic is f32 (the JavaScript version computes in f64 and rounds the stored result). exp and log have
 * no instruction: Cephes-style range reduction and polynomials (exp: n = round(x·log2 e) by adding 1.5·2^23, r = x − n·ln 2 in
 * two parts, degree-6 polynomial, 2^n applied as two factors so the underflow to denormals and the overflow
 * to ∞ are those of the true result; log: frexp by bit manipulation, denormals scaled first, degree-9
 * polynomial), both within 1-2 ulp; exp(−∞) = 0, exp(∞) = ∞, log(0) = −∞, log(x<0) = NaN. sigmoid, silu and
 * tanh are built on exp (tanh: Cephes' odd polynomial below |x| = 0.625, 1 − 2/(e^{2|x|} + 1) above), so a
 * large |x| saturates without a NaN; silu(x) is x·sigmoid(x) where the program computes sigmoid(x) anyway
 * (`shareLogistic`: a SwiGLU backward in one pass). max/min/comparisons/select keep the JavaScript semantics exactly
 * (`a >= b ? a : b`, NaN included).
 *
 * Memory: the module imports its memory. On tfjs-backend-wasm the arrays a kernel gets are views of the
 * backend's heap, so the function runs in place there (an instance per program importing that
 * WebAssembly.Memory; growing the heap keeps the Memory object, and the views are taken after the kernel's
 * outputs are allocated). Arrays elsewhere (the `cpu` backend, tests) are copied into a memory of our own and
 * the results back.
 */
import type { FusedInputKind, FusedSerialNode } from '../../plan/fused.js';
import { wasmHeap } from '../tfjs/wasm-extra.js';
import { CONST, ROW, isLeaf, programShape, type FusedRoot } from './fused-program.js';
import { Code, encodeModule, I32, Op, Simd, V128, type ValType, wasmSimdSupported } from '../tfjs/wasm-emit.js';

/** (rows, cols, inputs, saved outputs, upstream gradients, results): as ./fused-js.ts FusedFn. */
type FusedFn = (rows: number, cols: number, ins: Float32Array[], ys: Float32Array[], dys: Float32Array[], outs: Float32Array[]) => void;

export type WasmRoot = FusedRoot;


/** 1.5·2^23: adding it rounds an f32 below 2^22 in magnitude to an integer (to nearest even). */
const MAGIC = 12582912;

/** A pointer parameter of the generated function. */
interface Ptr {
  kind: 'I' | 'Y' | 'D' | 'O';
  index: number;
}

export interface FusedWasmModule {
  bytes: Uint8Array<ArrayBuffer>;
  /** The function's pointer parameters (after rows, cols), in order. */
  ptrs: Ptr[];
  roots: WasmRoot[];
  kinds: readonly FusedInputKind[];
}

const SIGN = -0x80000000;
const NUM_TEMPS = 6;

/** The module (one export `f(rows, cols, ...byte offsets)`) computing `roots` of the serial program `nodes`. */
export function emitFused(program: readonly FusedSerialNode[], kinds: readonly FusedInputKind[], roots: readonly WasmRoot[]): FusedWasmModule {
  const nodes = shareLogistic(program, programShape(program, kinds, roots).needed);
  const { cls, stage, needed, last } = programShape(nodes, kinds, roots);

  // Parameters: rows, cols, then one byte offset per array used.
  const ptrs: Ptr[] = [];
  const ptrOf = new Map<string, number>();
  const addPtr = (kind: Ptr['kind'], index: number) => {
    const key = kind + index;
    if (!ptrOf.has(key)) {
      ptrOf.set(key, 2 + ptrs.length);
      ptrs.push({ kind, index });
    }
  };
  for (const i of [...needed].sort((a, b) => a - b)) {
    const [op, v] = nodes[i]!;
    if (op === 'in') addPtr('I', v!);
    else if (op === 'out') addPtr('Y', v!);
    else if (op === 'dy') addPtr('D', v!);
  }
  roots.forEach((_, k) => addPtr('O', k));
  const params: ValType[] = [I32, I32, ...ptrs.map((): ValType => I32)];
  const ROWS = 0;
  const COLS = 1;
  // Locals.
  const locals: ValType[] = [];
  const local = (t: ValType) => {
    locals.push(t);
    return params.length + locals.length - 1;
  };
  const R = local(I32);
  const ROWOFF = local(I32); // r·cols·4
  const CB = local(I32); // c·4
  const E = local(I32); // ROWOFF + CB
  const COLSB = local(I32);
  const C4B = local(I32);
  const ADDR = local(I32);
  const val = new Map<number, number>();
  for (const i of needed) val.set(i, local(V128));
  const acc = new Map<number, number>();
  for (const i of needed) if (nodes[i]![0] === 'rowsum') acc.set(i, local(V128));
  const T = Array.from({ length: NUM_TEMPS }, () => local(V128));

  const f = new Code();
  const splatConst = (v: number) => f.f32x4(v);

  // --- math on v128 locals: each leaves its result on the stack ----------------------------------------------
  /** exp(x) of the value in local x. Uses T[0..2]. */
  const exp = (x: number) => {
    const [t0, t1, t2] = [T[0]!, T[1]!, T[2]!];
    // pmax/pmin return their first operand unless the bound wins, so NaN stays NaN (one SSE instruction each,
    // where f32x4.max/min's NaN and −0 rules cost V8 several).
    f.get(x).f32x4(-104).simd(Simd.f32x4_pmax).f32x4(89).simd(Simd.f32x4_pmin).set(t0);
    // t1 = x·log2 e + 1.5·2^23: n = round(x·log2 e) to nearest even is t1 − 1.5·2^23, and t1's bits are
    // 0x4B400000 + n (|n| < 2^22): no f32x4.nearest, no trunc_sat (several instructions without AVX-512).
    f.get(t0).f32x4(1.44269504088896341).simd(Simd.f32x4_mul).f32x4(MAGIC).simd(Simd.f32x4_add).set(t1);
    f.get(t0).get(t1).f32x4(MAGIC).simd(Simd.f32x4_sub).f32x4(0.693359375).simd(Simd.f32x4_mul).simd(Simd.f32x4_sub);
    f.get(t1).f32x4(MAGIC).simd(Simd.f32x4_sub).f32x4(-2.12194440e-4).simd(Simd.f32x4_mul).simd(Simd.f32x4_sub).set(t0); // r
    // p = ((((c0 r + c1) r + c2) r + c3) r + c4) r + c5) r² + r + 1
    f.f32x4(1.9875691500e-4).get(t0).simd(Simd.f32x4_mul);
    for (const c of [1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1]) f.f32x4(c).simd(Simd.f32x4_add).get(t0).simd(Simd.f32x4_mul);
    f.get(t0).simd(Simd.f32x4_mul).get(t0).simd(Simd.f32x4_add).f32x4(1).simd(Simd.f32x4_add).set(t2);
    // 2^n as 2^(n>>1) · 2^(n − (n>>1)): both factors normal for n in [−150, 129].
    f.get(t1).i32x4(0x4b400000).simd(Simd.i32x4_sub).set(t1); // n
    f.get(t1).i32(1).simd(Simd.i32x4_shr_s).set(t0);
    f.get(t2);
    f.get(t0).i32x4(127).simd(Simd.i32x4_add).i32(23).simd(Simd.i32x4_shl).simd(Simd.f32x4_mul);
    f.get(t1).get(t0).simd(Simd.i32x4_sub).i32x4(127).simd(Simd.i32x4_add).i32(23).simd(Simd.i32x4_shl).simd(Simd.f32x4_mul);
  };
  /** log(x) of the value in local x. Uses T[0..3]. */
  const log = (x: number) => {
    const [t0, t1, t2, t3] = [T[0]!, T[1]!, T[2]!, T[3]!];
    // Denormals: scale by 2^23 first (t3 = mask).
    f.get(x).f32x4(1.17549435e-38).simd(Simd.f32x4_lt).set(t3);
    f.get(x).f32x4(8388608).simd(Simd.f32x4_mul).get(x).get(t3).simd(Simd.v128_bitselect).set(t0);
    // e = exponent − 126 (− 23 where scaled); m in [0.5, 1)
    f.get(t0).i32(23).simd(Simd.i32x4_shr_u).i32x4(0xff).simd(Simd.v128_and).i32x4(126).simd(Simd.i32x4_sub).simd(Simd.f32x4_convert_i32x4_s);
    f.get(t3).f32x4(23).simd(Simd.v128_and).simd(Simd.f32x4_sub).set(t1);
    f.get(t0).i32x4(0x007fffff).simd(Simd.v128_and).i32x4(0x3f000000).simd(Simd.v128_or).set(t0);
    // m < √½: e −= 1, m = 2m − 1; else m = m − 1
    f.get(t0).f32x4(0.707106781186547524).simd(Simd.f32x4_lt).set(t2);
    f.get(t1).get(t2).f32x4(1).simd(Simd.v128_and).simd(Simd.f32x4_sub).set(t1);
    f.get(t0).get(t0).get(t2).simd(Simd.v128_and).simd(Simd.f32x4_add).f32x4(1).simd(Simd.f32x4_sub).set(t0);
    // y = P(m)·m·m²
    f.get(t0).get(t0).simd(Simd.f32x4_mul).set(t2); // z = m²
    f.f32x4(7.0376836292e-2).get(t0).simd(Simd.f32x4_mul);
    for (const c of [-1.151461031e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1, -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1])
      f.f32x4(c).simd(Simd.f32x4_add).get(t0).simd(Simd.f32x4_mul);
    f.get(t2).simd(Simd.f32x4_mul);
    f.get(t1).f32x4(-2.12194440e-4).simd(Simd.f32x4_mul).simd(Simd.f32x4_add);
    f.get(t2).f32x4(-0.5).simd(Simd.f32x4_mul).simd(Simd.f32x4_add);
    f.get(t0).simd(Simd.f32x4_add);
    f.get(t1).f32x4(0.693359375).simd(Simd.f32x4_mul).simd(Simd.f32x4_add).set(t0);
    // Special values: log(0) = −∞, log(x<0) = NaN, log(∞) = ∞, log(NaN) = NaN.
    f.f32x4(-Infinity).get(t0).get(x).f32x4(0).simd(Simd.f32x4_eq).simd(Simd.v128_bitselect).set(t0);
    f.f32x4(NaN).get(t0).get(x).f32x4(0).simd(Simd.f32x4_lt).simd(Simd.v128_bitselect).set(t0);
    f.get(x).get(t0).get(x).get(x).simd(Simd.f32x4_ne).get(x).f32x4(Infinity).simd(Simd.f32x4_eq).simd(Simd.v128_or).simd(Simd.v128_bitselect);
  };
  /** 1 / (1 + exp(−x)) or x / (1 + exp(−x)). Uses T[0..3]. */
  const logistic = (x: number, silu: boolean) => {
    f.get(x).simd(Simd.f32x4_neg).set(T[3]!);
    if (silu) f.get(x);
    else f.f32x4(1);
    exp(T[3]!);
    f.f32x4(1).simd(Simd.f32x4_add).simd(Simd.f32x4_div);
  };
  /** tanh(x). Uses T[0..5]. */
  const tanh = (x: number) => {
    const [t3, t4, t5] = [T[3]!, T[4]!, T[5]!];
    f.get(x).simd(Simd.f32x4_abs).set(t4);
    f.get(t4).get(t4).simd(Simd.f32x4_add).set(t3);
    // big = 1 − 2/(e^{2|x|} + 1), with x's sign
    f.f32x4(1).f32x4(2);
    exp(t3);
    f.f32x4(1).simd(Simd.f32x4_add).simd(Simd.f32x4_div).simd(Simd.f32x4_sub);
    f.get(x).i32x4(SIGN).simd(Simd.v128_and).simd(Simd.v128_or).set(t5);
    // small = x + x·z·Q(z), z = x²
    f.get(x).get(x).simd(Simd.f32x4_mul).set(t3);
    f.f32x4(-5.70498872745e-3).get(t3).simd(Simd.f32x4_mul);
    for (const c of [2.06390887954e-2, -5.37397155531e-2, 1.33314422036e-1, -3.33332819422e-1]) f.f32x4(c).simd(Simd.f32x4_add).get(t3).simd(Simd.f32x4_mul);
    f.get(x).simd(Simd.f32x4_mul).get(x).simd(Simd.f32x4_add);
    f.get(t5).get(t4).f32x4(0.625).simd(Simd.f32x4_lt).simd(Simd.v128_bitselect);
  };
  const cmp: Record<string, number> = { gt: Simd.f32x4_gt, ge: Simd.f32x4_ge, lt: Simd.f32x4_lt, le: Simd.f32x4_le, eq: Simd.f32x4_eq };
  const arith: Record<string, number> = { add: Simd.f32x4_add, sub: Simd.f32x4_sub, mul: Simd.f32x4_mul, div: Simd.f32x4_div };

  /** Compute non-leaf node i from its arguments' locals into its own local. */
  const compute = (i: number) => {
    const [op, ...a] = nodes[i]!;
    const x = val.get(a[0]!)!;
    const y = a.length > 1 ? val.get(a[1]!)! : -1;
    if (op === 'neg') f.get(x).simd(Simd.f32x4_neg);
    else if (op === 'sqrt') f.get(x).simd(Simd.f32x4_sqrt);
    else if (op === 'rsqrt') f.f32x4(1).get(x).simd(Simd.f32x4_sqrt).simd(Simd.f32x4_div);
    else if (op === 'exp') exp(x);
    else if (op === 'log') log(x);
    else if (op === 'sigmoid') logistic(x, false);
    else if (op === 'silu') logistic(x, true);
    else if (op === 'tanh') tanh(x);
    else if (op in arith) f.get(x).get(y).simd(arith[op]!);
    else if (op === 'max') f.get(x).get(y).get(x).get(y).simd(Simd.f32x4_ge).simd(Simd.v128_bitselect);
    else if (op === 'min') f.get(x).get(y).get(x).get(y).simd(Simd.f32x4_le).simd(Simd.v128_bitselect);
    else if (op in cmp) f.get(x).get(y).simd(cmp[op]!).f32x4(1).simd(Simd.v128_and);
    else if (op === 'select') f.get(y).get(val.get(a[2]!)!).get(x).f32x4(0).simd(Simd.f32x4_ne).simd(Simd.v128_bitselect);
    else throw new Error(`fused expression: no WebAssembly for '${op}'`);
    f.set(val.get(i)!);
  };
  /** Address of a leaf's element (vector or lane) on the stack. */
  const addr = (i: number) => {
    const [op, v] = nodes[i]! as [string, number];
    const p = ptrOf.get((op === 'in' ? 'I' : op === 'out' ? 'Y' : 'D') + v)!;
    f.get(p).get(op === 'in' && kinds[v] === 'vec' ? CB : E).op(Op.i32_add);
  };
  const loadLeaf = (i: number, vector: boolean) => {
    addr(i);
    if (vector) f.mem(Simd.v128_load, 2, 0, true);
    else f.mem(Simd.v128_load32_splat, 2, 0, true);
    f.set(val.get(i)!);
  };

  // Const-class nodes once.
  for (let i = 0; i < nodes.length; i++) {
    if (!needed.has(i) || cls[i] !== CONST) continue;
    const [op, v] = nodes[i]!;
    if (op === 'const') splatConst(v!).set(val.get(i)!);
    else if (op === 'cols') f.get(COLS).op(Op.f32_convert_i32_s).simd(Simd.f32x4_splat).set(val.get(i)!);
    else compute(i);
  }
  f.get(COLS).i32(2).op(Op.i32_shl).set(COLSB);
  f.get(COLS).i32(-4).op(Op.i32_and).i32(2).op(Op.i32_shl).set(C4B);
  // Zero the [cols] outputs.
  roots.forEach((rt, k) => {
    if (rt.reduce !== 'cols') return;
    const p = ptrOf.get('O' + k)!;
    f.i32(0).set(CB);
    f.block().loop();
    f.get(CB).get(COLSB).op(Op.i32_ge_s).brIf(1);
    f.get(p).get(CB).op(Op.i32_add).f32(0).mem(Op.f32_store, 2);
    f.get(CB).i32(4).op(Op.i32_add).set(CB).br(0);
    f.end().end();
  });

  // Per row.
  f.i32(0).set(R).i32(0).set(ROWOFF).i32(0).set(CB);
  f.block().loop();
  f.get(R).get(ROWS).op(Op.i32_ge_s).brIf(1);
  for (let p = 0; p <= last; p++) {
    for (let i = 0; i < nodes.length; i++) {
      if (!needed.has(i) || cls[i] !== ROW || nodes[i]![0] === 'rowsum' || stage[i] !== p) continue;
      compute(i);
    }
    const sums = [...needed].filter((i) => nodes[i]![0] === 'rowsum' && stage[nodes[i]![1]!] === p).sort((a, b) => a - b);
    const writes = p === last ? roots : [];
    if (!sums.length && !writes.length) continue;
    // The per-element nodes this pass needs, in dependency order.
    const inPass = new Set<number>();
    const want = (j: number) => {
      if (inPass.has(j) || cls[j] === CONST || cls[j] === ROW) return;
      inPass.add(j);
      const [op, ...a] = nodes[j]!;
      if (!isLeaf(op)) a.forEach(want);
    };
    sums.forEach((s) => want(nodes[s]![1]!));
    writes.forEach((w) => want(w.node));
    const order = [...inPass].sort((a, b) => a - b);
    for (const s of sums) f.f32x4(0).set(acc.get(s)!);
    for (const vector of [true, false]) {
      f.block().loop();
      f.get(CB).get(vector ? C4B : COLSB).op(Op.i32_ge_s).brIf(1);
      f.get(ROWOFF).get(CB).op(Op.i32_add).set(E);
      for (const j of order) {
        if (isLeaf(nodes[j]![0])) loadLeaf(j, vector);
        else compute(j);
      }
      for (const s of sums) {
        f.get(acc.get(s)!).get(val.get(nodes[s]![1]!)!);
        if (!vector) f.i32x4(-1, 0, 0, 0).simd(Simd.v128_and);
        f.simd(Simd.f32x4_add).set(acc.get(s)!);
      }
      writes.forEach((w, k) => {
        const o = ptrOf.get('O' + k)!;
        const v = val.get(w.node)!;
        if (w.reduce === 'cols') {
          f.get(o).get(CB).op(Op.i32_add).set(ADDR);
          if (vector) f.get(ADDR).get(ADDR).mem(Simd.v128_load, 2, 0, true).get(v).simd(Simd.f32x4_add).mem(Simd.v128_store, 2, 0, true);
          else f.get(ADDR).get(ADDR).mem(Op.f32_load, 2).get(v).simd(Simd.f32x4_extract_lane).u(0).op(Op.f32_add).mem(Op.f32_store, 2);
        } else {
          f.get(o).get(E).op(Op.i32_add).get(v);
          if (vector) f.mem(Simd.v128_store, 2, 0, true);
          else f.simd(Simd.f32x4_extract_lane).u(0).mem(Op.f32_store, 2);
        }
      });
      f.get(CB).i32(vector ? 16 : 4).op(Op.i32_add).set(CB).br(0);
      f.end().end();
    }
    f.i32(0).set(CB);
    // Horizontal sums, splatted.
    for (const s of sums) {
      const a = acc.get(s)!;
      f.get(a).simd(Simd.f32x4_extract_lane).u(0).get(a).simd(Simd.f32x4_extract_lane).u(1).op(Op.f32_add);
      f.get(a).simd(Simd.f32x4_extract_lane).u(2).get(a).simd(Simd.f32x4_extract_lane).u(3).op(Op.f32_add).op(Op.f32_add);
      f.simd(Simd.f32x4_splat).set(val.get(s)!);
    }
  }
  f.get(R).i32(1).op(Op.i32_add).set(R);
  f.get(ROWOFF).get(COLSB).op(Op.i32_add).set(ROWOFF).br(0);
  f.end().end();

  const bytes = encodeModule({ memory: { module: 'e', name: 'm' }, funcs: [{ params, results: [], locals, code: f }], exports: [{ name: 'f', func: 0 }] });
  return { bytes, ptrs, roots: [...roots], kinds };
}

/**
 * silu(x) as x·sigmoid(x) where the program computes sigmoid(x) anyway (an earlier node the roots need): one
 * exp and one division fewer per element. A SwiGLU backward with both slots in one pass needs both (the gate's
 * gradient sigmoid(g)·(1 + g·(1 − sigmoid(g))), the up projection's silu(g)). Within an ulp or two of the
 * direct x/(1 + e^−x); the same at 0, ±∞ and NaN.
 */
export function shareLogistic(nodes: readonly FusedSerialNode[], needed: ReadonlySet<number>): FusedSerialNode[] {
  const sigmoidOf = new Map<number, number>();
  return nodes.map((n, i) => {
    const [op, a] = n;
    if (op === 'sigmoid' && needed.has(i) && !sigmoidOf.has(a!)) sigmoidOf.set(a!, i);
    if (op === 'silu' && sigmoidOf.has(a!)) return ['mul', a!, sigmoidOf.get(a!)!] as FusedSerialNode;
    return n;
  });
}

// --- running ----------------------------------------------------------------------------------------------------

type Raw = (rows: number, cols: number, ...ptrs: number[]) => void;

let own: WebAssembly.Memory | undefined;
function ownMemory(bytes: number): WebAssembly.Memory {
  if (!own) own = new WebAssembly.Memory({ initial: 16 });
  const have = own.buffer.byteLength;
  if (bytes > have) own.grow(Math.ceil((bytes - have) / 65536));
  return own;
}

const up16 = (n: number) => (n + 15) & ~15;

/** Calls that ran in place on tfjs-wasm's heap and calls that went through the copy (for tests). */
export const fusedWasmCalls = { inPlace: 0, copied: 0 };

/**
 * A FusedFn running the module: in place where every array is a view of the imported heap, through a copy
 * into our own memory otherwise.
 */
export function instantiateFused(m: FusedWasmModule): FusedFn {
  const mod = new WebAssembly.Module(m.bytes);
  const instances = new Map<WebAssembly.Memory, Raw>();
  const raw = (mem: WebAssembly.Memory): Raw => {
    let fn = instances.get(mem);
    if (!fn) {
      fn = new WebAssembly.Instance(mod, { e: { m: mem } }).exports.f as Raw;
      instances.set(mem, fn);
    }
    return fn;
  };
  return (rows, cols, ins, ys, dys, outs) => {
    const arrays = m.ptrs.map((p) => (p.kind === 'I' ? ins : p.kind === 'Y' ? ys : p.kind === 'D' ? dys : outs)[p.index]!);
    const heap = wasmHeap();
    if (heap && arrays.every((a) => a.buffer === heap.buffer)) {
      raw(heap)(rows, cols, ...arrays.map((a) => a.byteOffset));
      fusedWasmCalls.inPlace++;
      return;
    }
    // Copy in, run, copy the results out.
    fusedWasmCalls.copied++;
    let total = 0;
    const offs = arrays.map((a) => {
      const o = total;
      total += up16(a.byteLength);
      return o;
    });
    const mem = ownMemory(total);
    const f32 = new Float32Array(mem.buffer);
    m.ptrs.forEach((p, k) => {
      if (p.kind !== 'O') f32.set(arrays[k]!, offs[k]! / 4);
    });
    raw(mem)(rows, cols, ...offs);
    const after = new Float32Array(mem.buffer);
    m.ptrs.forEach((p, k) => {
      if (p.kind === 'O') arrays[k]!.set(after.subarray(offs[k]! / 4, offs[k]! / 4 + arrays[k]!.length));
    });
  };
}

/** Whether the WebAssembly path is on: SIMD available and not switched off (MCPC_FUSED_WASM=0). */
export function fusedWasmEnabled(): boolean {
  const env = typeof process !== 'undefined' ? process.env.MCPC_FUSED_WASM : undefined;
  return env !== '0' && wasmSimdSupported();
}
