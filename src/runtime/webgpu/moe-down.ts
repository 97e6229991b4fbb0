/**
 * The plan's `moe_down_routed` as one tfjs op on the webgpu backend, with its gradient:
 *
 *   h[T, E·r] = x·[A_0 ; … ; A_{E−1}]ᵀ with expert e's block of token t zeroed where gates[t, e] = 0
 *
 * x [T, in], gates [T, E] (zero outside each token's top-k), A_e [E, r, in] read in place as the weight
 * [E·r, in]. One GEMM (./gemm-wgsl.ts) each, the mask folded into it:
 *
 *   forward  McpcMoeDown     h = x·A2ᵀ, the mask applied in the GEMM's store
 *   dx       McpcMoeDownDx   (m∘dy)·A2, the mask applied in A's loader (m[t, e·r + j] = gates[t, e] ≠ 0)
 *   dA_e     McpcMoeDownDa   (m∘dy)ᵀ·x, the mask in A's loader, stored as [E, r, in]
 *
 * each backward GEMM only when autodiff asks for it (a frozen A costs nothing). The gates get no gradient (the
 * mask has none, as in the reference, which gives them zeros): the op's tape node leaves them out
 * (./program.ts runKernelSaving `noGrad`), so no zeros tensor is made and none is added to the gates' gradient.
 * Where the reference recorded ~12 tfjs kernels forward and ~8 backward (and the McpcGemm + McpcRoutedMask
 * composition 4 and 5), this records 1 forward and 1 per gradient asked for; x, gates and A are saved shared.
 */
import type { TensorInfo } from '@tensorflow/tfjs-core';
import { tf, type Tensor } from '../tfjs/index.js';
import { gemmDispatch, gemmWgsl, specCache, tileKey, type GemmSpec } from './gemm-wgsl.js';
import { tileFor } from './gemm-tune.js';
import { kernelRegistrar, runKernel1, runKernelSaving, runWgsl, type WebGpuBackendLike } from './program.js';

/* eslint-disable @typescript-eslint/no-explicit-any -- tfjs kernel plumbing. */

const FWD = 'McpcMoeDown';
const DX = 'McpcMoeDownDx';
const DA = 'McpcMoeDownDa';

const u = (x: number): string => `${x >>> 0}u`;

interface Shape {
  experts: number;
  rank: number;
}

/**
 * Whether the kernels take x [T, in], gates [T, E], A_e [E, r, in]: float32, no empty dimension (a GEMM with
 * an empty side reads no operand, and a binding nobody reads breaks the pipeline layout), every buffer under
 * 2^31 elements (u32 indices).
 */
export function moeDownFits(x: Tensor | undefined, gates: Tensor | undefined, ae: Tensor | undefined, s: Shape): boolean {
  if (!x || !gates || !ae || ![x, gates, ae].every((t) => t.dtype === 'float32' && t.size > 0 && t.size < 2 ** 31)) return false;
  const { experts: E, rank: r } = s;
  if (!Number.isInteger(E) || !Number.isInteger(r) || E < 1 || r < 1) return false;
  if (x.rank !== 2 || gates.rank !== 2 || ae.rank !== 3) return false;
  const [T, K] = x.shape as [number, number];
  return gates.shape[0] === T && gates.shape[1] === E && ae.shape[0] === E && ae.shape[1] === r && ae.shape[2] === K && T * E * r < 2 ** 31;
}

/** This module's GEMM specs by shape key (gemm-wgsl.ts specCache). */
const cached = specCache();

/** The masked upstream gradient m∘dy at (t, c), dy [T, E·r] in `in0`, gates [T, E] in `in1`. */
const maskedDy = (s: Shape, t: string, c: string): string =>
  `select(0.0, in0[${t} * ${u(s.experts * s.rank)} + ${c}], in1[${t} * ${u(s.experts)} + ${c} / ${u(s.rank)}] != 0.0)`;

/** Inputs x, gates, A_e; output h [T, E·r]. */
function forwardKernel({ inputs, backend, attrs }: { inputs: any; backend: WebGpuBackendLike; attrs: any }): TensorInfo {
  const s = attrs as Shape;
  const [x, g, a] = inputs as TensorInfo[];
  const [T, K] = x!.shape as [number, number];
  const N = s.experts * s.rank;
  const tile = tileFor(backend.device, T, N, K);
  const spec = cached(`f|${s.experts},${s.rank}|${T}|${K}|${tileKey(tile)}`, () => ({
    m: T,
    n: N,
    tile,
    segments: [
      {
        k: K,
        a: { kMajor: false, parts: [{ input: 0, count: T, ld: K, off: 0 }] },
        b: { kMajor: false, parts: [{ input: 2, count: N, ld: K, off: 0 }] },
      },
    ],
    inputs: [{}, { type: 'f32' }, {}],
    outputs: ['f32'],
    store: `  out0[r * ${u(N)} + c] = select(0.0, v, in1[r * ${u(s.experts)} + c / ${u(s.rank)}] != 0.0);`,
  }));
  return runWgsl(backend, { code: gemmWgsl(spec), inputs: [x!, g!, a!], outputs: [{ shape: [T, N], dtype: 'float32' }], dispatch: gemmDispatch(spec), label: FWD })[0]!;
}

/** dx = (m∘dy)·A2 [T, in]; inputs dy, gates, A_e. */
function dxKernel({ inputs, backend, attrs }: { inputs: any; backend: WebGpuBackendLike; attrs: any }): TensorInfo {
  const s = attrs as Shape;
  const [dy, g, a] = inputs as TensorInfo[];
  const T = dy!.shape[0]!;
  const K = a!.shape[2]!;
  const N = s.experts * s.rank;
  const tile = tileFor(backend.device, T, K, N);
  const spec = cached(`x|${s.experts},${s.rank}|${T}|${K}|${tileKey(tile)}`, () => ({
    m: T,
    n: K,
    tile,
    segments: [
      {
        k: N,
        // A(i = token, k = column of h): contiguous along k.
        a: { kMajor: false, parts: [], expr: maskedDy(s, 'i', 'k') },
        // B(k = column of h, n = input feature) = A2[k, n]: rows k, contiguous along n.
        b: { kMajor: true, parts: [{ input: 2, count: K, ld: K, off: 0 }] },
      },
    ],
    inputs: [{ type: 'f32' }, { type: 'f32' }, {}],
    outputs: [K % 4 === 0 ? 'vec4' : 'f32'],
  }));
  return runWgsl(backend, { code: gemmWgsl(spec), inputs: [dy!, g!, a!], outputs: [{ shape: [T, K], dtype: 'float32' }], dispatch: gemmDispatch(spec), label: DX })[0]!;
}

/** dA_e = (m∘dy)ᵀ·x stored [E, r, in]; inputs dy, gates, x. */
function daKernel({ inputs, backend, attrs }: { inputs: any; backend: WebGpuBackendLike; attrs: any }): TensorInfo {
  const s = attrs as Shape;
  const [dy, g, x] = inputs as TensorInfo[];
  const [T, K] = x!.shape as [number, number];
  const N = s.experts * s.rank;
  const tile = tileFor(backend.device, N, K, T);
  const spec = cached(`a|${s.experts},${s.rank}|${T}|${K}|${tileKey(tile)}`, () => ({
    m: N,
    n: K,
    tile,
    segments: [
      {
        k: T,
        // A(i = column of h, k = token) = (m∘dy)[k, i]: rows k, contiguous along i.
        a: { kMajor: true, parts: [], expr: maskedDy(s, 'k', 'i') },
        // B(k = token, n = input feature) = x[k, n]: rows k, contiguous along n.
        b: { kMajor: true, parts: [{ input: 2, count: K, ld: K, off: 0 }] },
      },
    ],
    inputs: [{ type: 'f32' }, { type: 'f32' }, {}],
    outputs: [K % 4 === 0 ? 'vec4' : 'f32'],
  }));
  return runWgsl(backend, { code: gemmWgsl(spec), inputs: [dy!, g!, x!], outputs: [{ shape: [s.experts, s.rank, K], dtype: 'float32' }], dispatch: gemmDispatch(spec), label: DA })[0]!;
}

// x, gates and A_e are saved by moeDownRouted() (runKernelSaving: shared, no Identity kernels); no entry for
// the gates, which the tape node does not list.
const register = kernelRegistrar(
  { [FWD]: forwardKernel, [DX]: dxKernel, [DA]: daKernel },
  {
    [FWD]: (dy: Tensor, saved: Tensor[], attrs: any) => {
      const [x, g, a] = saved as [Tensor, Tensor, Tensor];
      const s = { experts: attrs.experts, rank: attrs.rank };
      return { 0: () => runKernel1(DX, [dy, g, a], s), 2: () => runKernel1(DA, [dy, g, x], s) };
    },
  },
);

/** moe_down_routed on the webgpu backend, inputs checked by {@link moeDownFits}. */
export function moeDownRouted(x: Tensor, gates: Tensor, ae: Tensor, s: Shape): Tensor {
  register();
  return runKernelSaving(FWD, [x, gates, ae], { experts: s.experts, rank: s.rank }, { inputs: [0, 1, 2], noGrad: [1] })[0]!;
}
