/**
 * The plan's `moe_up_grouped` as a tfjs op on the webgpu backend, with its gradient:
 *
 *   y[T, out] = s·( h_sh·B_shᵀ + Σ_e g_e·h_e·B_eᵀ )
 *
 * h [T, W] (W = R_sh + E·r: the shared hidden, then each expert's r columns), gates g [T, E] (zero outside a
 * token's top-k), B_sh [out, R_sh] (only when R_sh > 0), B_e [E, out, r], s the scale. The reference
 * (../kernels/reference.ts) runs slice, reshape, mul, transpose, reshape, matMul, slice, matMul, add, mul and
 * their gradients; here:
 *
 *   forward  ONE GEMM (./gemm-wgsl.ts) with K = W: A(t, k) = h[t, k]·(k < R_sh ? 1 : g[t, (k − R_sh)/r]) and
 *            B(k, n) = B_sh[n, k] or B_e[e, n, j], both read in place through the loaders' `expr` option
 *   dh, dg   U = s·dy·[B_sh | B_e]  (one GEMM, the un-gated dh) whose store also writes dh = U·(1 or g), both
 *            computed once and freed after the backward pass; then dg[t, e] = Σ_j h·U over the expert's
 *            columns (one kernel, a thread per (t, e))
 *   dB_e     s·dyᵀ·(g·h_e) as ONE GEMM dense over all E experts whose store hook writes [E, out, r] in place
 *   dB_sh    s·dyᵀ·h_sh, one GEMM
 *
 * each only when autodiff asks for it (a frozen B costs nothing).
 */
import type { TensorInfo } from '@tensorflow/tfjs-core';
import { tf, type Tensor } from '../tfjs/index.js';
import { gemmDispatch, gemmWgsl, specCache, tileKey, type GemmSpec } from './gemm-wgsl.js';
import { tileFor } from './gemm-tune.js';
import { keepUntilBackwardEnds, kernelRegistrar, runKernel1, runKernelSaving, runWgsl, share, type WebGpuBackendLike } from './program.js';

/* eslint-disable @typescript-eslint/no-explicit-any -- tfjs kernel plumbing. */

const FWD = 'McpcMoeUp';
const U_KERNEL = 'McpcMoeUpU';
const DG_KERNEL = 'McpcMoeUpDg';
const DB_KERNEL = 'McpcMoeUpDb';

export interface MoeUpShape {
  sharedRank: number;
  rank: number;
  experts: number;
  scale: number;
}

const u = (x: number): string => `${x >>> 0}u`;
const is2 = (t: Tensor | undefined, a: number, b: number): boolean => !!t && t.dtype === 'float32' && t.rank === 2 && t.shape[0] === a && t.shape[1] === b;

/**
 * Whether the WGSL path takes these inputs (else the caller runs the reference, which also reports malformed
 * ones): float32 h [T, R_sh + E·r], gates [T, E], B_sh [out, R_sh] exactly when R_sh > 0, B_e [E, out, r], no
 * empty dimension (a GEMM with an empty side reads no operand, and a binding nobody reads breaks the pipeline
 * layout), and every buffer under 2^31 elements (u32 indices).
 */
export function moeUpFits(inputs: Tensor[], s: MoeUpShape): boolean {
  const { sharedRank: R, rank: r, experts: E } = s;
  if (![R, r, E].every((x) => Number.isInteger(x) && x >= 0) || r < 1 || E < 1 || !Number.isFinite(s.scale)) return false;
  if (inputs.length !== (R > 0 ? 4 : 3)) return false;
  const [h, g] = inputs;
  const be = inputs[inputs.length - 1]!;
  if (!h || h.rank !== 2) return false;
  const T = h.shape[0]!;
  if (be.dtype !== 'float32' || be.rank !== 3 || be.shape[0] !== E || be.shape[2] !== r) return false;
  const out = be.shape[1]!;
  if (T < 1 || out < 1 || !is2(h, T, R + E * r) || !is2(g, T, E)) return false;
  if (R > 0 && !is2(inputs[2], out, R)) return false;
  return inputs.every((t) => t.size < 2 ** 31);
}

/** The WGSL names (bindings) of h, g, B_sh and B_e in one module. */
interface Names {
  h?: string;
  g?: string;
  bsh?: string;
  be?: string;
}
/** A(t, k): h[t, k] gated by its expert's gate (k global, 0 … W). */
function gatedH(n: Names, s: MoeUpShape, t: string, k: string): string {
  const R = s.sharedRank;
  const hk = `${n.h}[${t} * ${u(R + s.experts * s.rank)} + ${k}]`;
  if (!R) return `${hk} * ${n.g}[${t} * ${u(s.experts)} + ${k} / ${u(s.rank)}]`;
  return `select(${hk} * ${n.g}[${t} * ${u(s.experts)} + (max(${k}, ${u(R)}) - ${u(R)}) / ${u(s.rank)}], ${hk}, ${k} < ${u(R)})`;
}
/** B(k, n) for k global (0 … W), n an output column. */
function weight(n: Names, s: MoeUpShape, out: number, k: string, col: string): string {
  const R = s.sharedRank;
  const kk = R ? `(max(${k}, ${u(R)}) - ${u(R)})` : k;
  const be = `${n.be}[(${kk} / ${u(s.rank)} * ${u(out)} + ${col}) * ${u(s.rank)} + ${kk} % ${u(s.rank)}]`;
  if (!R) return be;
  return `select(${be}, ${n.bsh}[${col} * ${u(R)} + min(${k}, ${u(R - 1)})], ${k} < ${u(R)})`;
}

/** This module's GEMM specs by shape key (gemm-wgsl.ts specCache). */
const cached = specCache();
const shapeKey = (s: MoeUpShape): string => `${s.sharedRank},${s.rank},${s.experts},${s.scale}`;
const f32In = (n: number) => Array.from({ length: n }, () => ({ type: 'f32' as const }));

// --- kernels -------------------------------------------------------------------------------------------------------------

/** Inputs h, g, [B_sh], B_e. */
function forwardKernel({ inputs, backend, attrs }: { inputs: any; backend: WebGpuBackendLike; attrs: any }): TensorInfo {
  const s = attrs as MoeUpShape;
  const ins = inputs as TensorInfo[];
  const T = ins[0]!.shape[0]!;
  const W = ins[0]!.shape[1]!;
  const out = ins[ins.length - 1]!.shape[1]!;
  const tile = tileFor(backend.device, T, out, W);
  const n: Names = { h: 'in0', g: 'in1', bsh: 'in2', be: s.sharedRank ? 'in3' : 'in2' };
  const spec = cached(`f|${shapeKey(s)}|${T}|${out}|${tileKey(tile)}`, () => ({
    m: T,
    n: out,
    tile,
    segments: [
      {
        k: W,
        a: { kMajor: false, parts: [], expr: gatedH(n, s, 'i', 'k'), ...(s.scale !== 1 ? { scale: s.scale } : {}) },
        b: { kMajor: false, parts: [], expr: weight(n, s, out, 'k', 'i') },
      },
    ],
    inputs: f32In(ins.length),
    outputs: [out % 4 === 0 ? 'vec4' : 'f32'],
  }));
  return runWgsl(backend, { code: gemmWgsl(spec), inputs: ins, outputs: [{ shape: [T, out], dtype: 'float32' }], dispatch: gemmDispatch(spec), label: FWD })[0]!;
}

/**
 * U = s·dy·[B_sh | B_e] [T, W] (un-gated dh) and dh = U·(1 on the shared columns, g on each expert's), both
 * written by the GEMM's store; inputs dy, [B_sh], B_e, g.
 */
function uKernel({ inputs, backend, attrs }: { inputs: any; backend: WebGpuBackendLike; attrs: any }): TensorInfo[] {
  const s = attrs as MoeUpShape;
  const ins = inputs as TensorInfo[];
  const [T, out] = ins[0]!.shape as [number, number];
  const R = s.sharedRank;
  const W = R + s.experts * s.rank;
  const tile = tileFor(backend.device, T, W, out);
  const n: Names = { bsh: 'in1', be: R ? 'in2' : 'in1' };
  const g = `in${ins.length - 1}`;
  const gate = `${g}[r * ${u(s.experts)} + (c - ${u(R)}) / ${u(s.rank)}]`;
  const spec = cached(`u|${shapeKey(s)}|${T}|${out}|${tileKey(tile)}`, () => ({
    m: T,
    n: W,
    tile,
    segments: [
      {
        k: out,
        a: { kMajor: false, parts: [{ input: 0, count: T, ld: out, off: 0 }], ...(s.scale !== 1 ? { scale: s.scale } : {}) },
        // B(k = output column, i = hidden column): rows k, contiguous along the expert's r columns.
        b: { kMajor: true, parts: [], expr: weight(n, s, out, 'i', 'k') },
      },
    ],
    inputs: [{}, ...f32In(ins.length - 1)],
    outputs: ['f32', 'f32'],
    store: `  out0[r * ${u(W)} + c] = v;
  out1[r * ${u(W)} + c] = ${R ? `select(v * ${gate}, v, c < ${u(R)})` : `v * ${gate}`};`,
  }));
  return runWgsl(backend, {
    code: gemmWgsl(spec),
    inputs: ins,
    outputs: [
      { shape: [T, W], dtype: 'float32' },
      { shape: [T, W], dtype: 'float32' },
    ],
    dispatch: gemmDispatch(spec),
    label: U_KERNEL,
  });
}

/** Workgroups of 64 for `n` threads, split over x and y; the kernel's thread index is `gid.x + gid.y·(64·nx)`. */
function grid(n: number): { nx: number; ny: number } {
  const groups = Math.max(1, Math.ceil(n / 64));
  const nx = Math.min(groups, 65535);
  return { nx, ny: Math.ceil(groups / nx) };
}

/** dg[t, e] = Σ_j h[t, R_sh + e·r + j]·U[t, …]; inputs U [T, W], h [T, W]. */
function dgKernel({ inputs, backend, attrs }: { inputs: any; backend: WebGpuBackendLike; attrs: any }): TensorInfo {
  const s = attrs as MoeUpShape;
  const [U, h] = inputs as TensorInfo[];
  const [T, W] = U!.shape as [number, number];
  const E = s.experts;
  const { nx, ny } = grid(T * E);
  const code = `@group(0) @binding(0) var<storage, read> U: array<f32>;
@group(0) @binding(1) var<storage, read> h: array<f32>;
@group(0) @binding(2) var<storage, read_write> dg: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x + gid.y * ${u(64 * nx)};
  if (i >= ${u(T * E)}) { return; }
  let t = i / ${u(E)};
  let e = i % ${u(E)};
  let base = t * ${u(W)} + ${u(s.sharedRank)} + e * ${u(s.rank)};
  var acc = 0.0;
  for (var j = 0u; j < ${u(s.rank)}; j++) { acc = fma(h[base + j], U[base + j], acc); }
  dg[i] = acc;
}
`;
  return runWgsl(backend, { code, inputs: [U!, h!], outputs: [{ shape: [T, E], dtype: 'float32' }], dispatch: [nx, ny, 1], label: DG_KERNEL })[0]!;
}

/**
 * dB: s·dyᵀ·A over the columns of one B: `part` 'experts' (inputs dy, h, g; C [out, E·r] stored straight into
 * [E, out, r]) or 'shared' (inputs dy, h; C [out, R_sh]).
 */
function dbKernel({ inputs, backend, attrs }: { inputs: any; backend: WebGpuBackendLike; attrs: any }): TensorInfo {
  const s = attrs as MoeUpShape & { part: 'experts' | 'shared' };
  const ins = inputs as TensorInfo[];
  const [T, out] = ins[0]!.shape as [number, number];
  const R = s.sharedRank;
  const W = R + s.experts * s.rank;
  const experts = s.part === 'experts';
  const N = experts ? s.experts * s.rank : R;
  const tile = tileFor(backend.device, out, N, T);
  const spec = cached(`b${s.part}|${shapeKey(s)}|${T}|${out}|${tileKey(tile)}`, () => ({
    m: out,
    n: N,
    tile,
    segments: [
      {
        k: T,
        a: { kMajor: true, parts: [{ input: 0, count: out, ld: out, off: 0 }], ...(s.scale !== 1 ? { scale: s.scale } : {}) },
        // B(k = token, i = column of this B): rows k (tokens), contiguous along h's columns.
        b: experts
          ? { kMajor: true, parts: [], expr: `in1[k * ${u(W)} + ${u(R)} + i] * in2[k * ${u(s.experts)} + i / ${u(s.rank)}]` }
          : { kMajor: true, parts: [], expr: `in1[k * ${u(W)} + i]` },
      },
    ],
    inputs: [{}, ...f32In(ins.length - 1)],
    outputs: ['f32'],
    // C(n, c) of the experts' part is B_e[c / r, n, c % r].
    ...(experts ? { store: `  out0[(c / ${u(s.rank)} * ${u(out)} + r) * ${u(s.rank)} + c % ${u(s.rank)}] = v;` } : {}),
  }));
  const shape = experts ? [s.experts, out, s.rank] : [out, R];
  return runWgsl(backend, { code: gemmWgsl(spec), inputs: ins, outputs: [{ shape, dtype: 'float32' }], dispatch: gemmDispatch(spec), label: DB_KERNEL })[0]!;
}

// --- gradient ------------------------------------------------------------------------------------------------------------

function gradient(dy: Tensor | Tensor[], saved: Tensor[], attrs: any): Record<string, () => Tensor> {
  const s: MoeUpShape = { sharedRank: attrs.sharedRank, rank: attrs.rank, experts: attrs.experts, scale: attrs.scale };
  const d = (Array.isArray(dy) ? dy[0] : dy)!;
  const [h, g] = saved as [Tensor, Tensor];
  const bs = saved.slice(2);
  // U and dh from one kernel, kept until the backward pass is over: dh handed out shared (../program.ts share:
  // tfjs may dispose what a closure returns), U for dg.
  let U: Tensor | undefined;
  let dh: Tensor | undefined;
  const un = (): void => {
    if (!U || U.isDisposed || !dh || dh.isDisposed) {
      const r = tf.engine().runKernel(U_KERNEL, [d, ...bs, g] as unknown as tf.NamedTensorMap, s as unknown as tf.NamedAttrMap) as Tensor[];
      U = keepUntilBackwardEnds(r[0]!);
      dh = keepUntilBackwardEnds(r[1]!);
    }
  };
  const out: Record<string, () => Tensor> = {
    '0': () => {
      un();
      return share(dh!);
    },
    '1': () => {
      un();
      return runKernel1(DG_KERNEL, [U!, h], s);
    },
    [String(saved.length - 1)]: () => runKernel1(DB_KERNEL, [d, h, g], { ...s, part: 'experts' }),
  };
  if (s.sharedRank > 0) out['2'] = () => runKernel1(DB_KERNEL, [d, h], { ...s, part: 'shared' });
  return out;
}

// Every input is saved by moeUpGrouped() (./program.ts runKernelSaving: shared, no Identity kernels).
const register = kernelRegistrar({ [U_KERNEL]: uKernel, [DG_KERNEL]: dgKernel, [DB_KERNEL]: dbKernel, [FWD]: forwardKernel }, { [FWD]: gradient });

/** moe_up_grouped on the webgpu backend; inputs h, gates, [B_sh], B_e checked by {@link moeUpFits}. */
export function moeUpGrouped(inputs: Tensor[], s: MoeUpShape): Tensor {
  register();
  return runKernelSaving(FWD, inputs, { sharedRank: s.sharedRank, rank: s.rank, experts: s.experts, scale: s.scale }, { inputs: inputs.map((_, i) => i) })[0]!;
}
