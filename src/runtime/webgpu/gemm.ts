/**
 * The f32 GEMM as a tfjs op on the webgpu backend, with its gradient.
 *
 *   gemm(a, b, transA, transB)   C = op(a)·op(b), like tf.matMul for 2-D tensors
 *   linear(x, w, bias?)          x·Wᵀ (+ b): the plan's linear, W stored [out, in] and read in place
 *
 * Both run one WGSL kernel (./gemm-wgsl.ts, tiles from ./gemm-tune.ts) registered as the tfjs kernel
 * `McpcGemm` with a gradient (`tf.registerGradient`), so autodiff gives dA and dB as GEMMs that read their
 * operands transposed in place (the linear's dX = dY·W and dW = dYᵀ·X, no transpose pass), and computes
 * only the gradients asked for (a frozen weight costs nothing). On another backend they fall back to
 * tf.matMul (the reference).
 */
import type { TensorInfo } from '@tensorflow/tfjs-core';
import { registerFamilyGradient, tf, type Tensor } from '../tfjs/index.js';
import { gemmDispatch, gemmWgsl, tileKey, type GemmSpec, type Tile } from './gemm-wgsl.js';
import { pendingShapes, tileFor, tune, type TuneResult } from './gemm-tune.js';
import { runKernelSaving, runWgsl, type WebGpuBackendLike } from './program.js';

/* eslint-disable @typescript-eslint/no-explicit-any -- tfjs kernel plumbing. */

export const GEMM_KERNEL = 'McpcGemm';

interface GemmAttrs {
  transA: boolean;
  transB: boolean;
  /** Forced tile (the tuner); otherwise tileFor(). */
  tile?: Tile;
  /** C = scale·op(a)·op(b) (the bias, if any, unscaled); default 1. */
  scale?: number;
  /** Whether input 2 is a bias [N] (for the gradient, which saves a and b only). */
  bias?: boolean;
}

/** The spec of C = op(a)·op(b) (+ bias) for stored shapes a, b. */
export function gemmSpec(aShape: number[], bShape: number[], transA: boolean, transB: boolean, tile: Tile, bias: boolean, scale = 1): GemmSpec {
  const [M, K] = transA ? [aShape[1], aShape[0]] : [aShape[0], aShape[1]];
  const [K2, N] = transB ? [bShape[1], bShape[0]] : [bShape[0], bShape[1]];
  if (K !== K2) throw new Error(`gemm: inner dimensions differ (${aShape} ${transA ? 'ᵀ' : ''} · ${bShape}${transB ? 'ᵀ' : ''})`);
  return {
    m: M,
    n: N,
    tile,
    segments: [
      {
        k: K,
        a: { kMajor: transA, parts: [{ input: 0, count: M, ld: aShape[1], off: 0 }], ...(scale !== 1 ? { scale } : {}) },
        b: { kMajor: !transB, parts: [{ input: 1, count: N, ld: bShape[1], off: 0 }] },
      },
    ],
    inputs: bias ? [{}, {}, {}] : [{}, {}],
    outputs: [N % 4 === 0 ? 'vec4' : 'f32'],
    ...(bias ? { bias: 2 } : {}),
  };
}

/** Specs by shape, tile and flags: gemmWgsl caches the module per spec object, so a call with a known shape builds nothing. */
const specs = new Map<string, GemmSpec>();
function specOf(aShape: number[], bShape: number[], transA: boolean, transB: boolean, tile: Tile, bias: boolean, scale: number): GemmSpec {
  const key = `${aShape}|${bShape}|${+transA}${+transB}${+bias}|${scale}|${tileKey(tile)}`;
  let s = specs.get(key);
  if (!s) {
    if (specs.size > 4096) specs.clear();
    specs.set(key, (s = gemmSpec(aShape, bShape, transA, transB, tile, bias, scale)));
  }
  return s;
}

export function gemmKernel({ inputs, backend, attrs }: { inputs: any; backend: WebGpuBackendLike; attrs: any }): TensorInfo {
  const { transA, transB, tile: forced, scale } = attrs as GemmAttrs;
  const a = inputs[0] as TensorInfo;
  const b = inputs[1] as TensorInfo;
  const bias = inputs[2] as TensorInfo | undefined;
  const M = transA ? a.shape[1] : a.shape[0];
  const N = transB ? b.shape[0] : b.shape[1];
  const K = transA ? a.shape[0] : a.shape[1];
  const tile = forced ?? tileFor(backend.device, M, N, K);
  const spec = specOf(a.shape, b.shape, transA, transB, tile, !!bias, scale ?? 1);
  return runWgsl(backend, {
    code: gemmWgsl(spec),
    inputs: bias ? [a, b, bias] : [a, b],
    outputs: [{ shape: [M, N], dtype: 'float32' }],
    dispatch: gemmDispatch(spec),
    label: 'McpcGemm',
  })[0];
}

let registered = false;

/** Register the kernel (webgpu backend) and its gradient; idempotent. */
export function registerGemm(): void {
  if (registered) return;
  registered = true;
  tf.registerKernel({ kernelName: GEMM_KERNEL, backendName: 'webgpu', kernelFunc: gemmKernel as any });
  registerFamilyGradient('webgpu', {
    kernelName: GEMM_KERNEL,
    // a and b are saved by gemm() / linear() (./program.ts runKernelSaving: shared, no Identity kernels).
    gradFunc: (dy: Tensor | Tensor[], saved: Tensor[], attrs: any) => {
      const dc = dy as Tensor;
      const [a, b] = saved;
      const { transA, transB, scale, bias } = attrs as GemmAttrs;
      const s = scale ?? 1;
      const g: Record<string, () => Tensor> = {};
      if (!transA && !transB) {
        g[0] = () => gemm(dc, b, false, true, s);
        g[1] = () => gemm(a, dc, true, false, s);
      } else if (!transA && transB) {
        g[0] = () => gemm(dc, b, false, false, s);
        g[1] = () => gemm(dc, a, true, false, s);
      } else if (transA && !transB) {
        g[0] = () => gemm(b, dc, false, true, s);
        g[1] = () => gemm(a, dc, false, false, s);
      } else {
        g[0] = () => gemm(b, dc, true, true, s);
        g[1] = () => gemm(dc, a, true, true, s);
      }
      if (bias) g[2] = () => tf.sum(dc, 0);
      return g;
    },
  } as any);
}

const SAVE_AB = { inputs: [0, 1] };
const onWebGpu = (): boolean => tf.getBackend() === 'webgpu';

/** C = scale·op(a)·op(b) for 2-D a, b. */
export function gemm(a: Tensor, b: Tensor, transA = false, transB = false, scale = 1): Tensor {
  if (!onWebGpu()) {
    const c = tf.matMul(a as tf.Tensor2D, b as tf.Tensor2D, transA, transB);
    return scale === 1 ? c : tf.mul(c, scale);
  }
  registerGemm();
  return runKernelSaving(GEMM_KERNEL, [a, b], scale === 1 ? { transA, transB } : { transA, transB, scale }, SAVE_AB)[0]!;
}

/** x·Wᵀ (+ bias), W [out, in]. */
export function linear(x: Tensor, w: Tensor, bias?: Tensor): Tensor {
  if (!onWebGpu()) {
    const y = tf.matMul(x as tf.Tensor2D, w as tf.Tensor2D, false, true);
    return bias ? tf.add(y, bias) : y;
  }
  registerGemm();
  return runKernelSaving(GEMM_KERNEL, bias ? [x, w, bias] : [x, w], bias ? { transA: false, transB: true, bias: true } : { transA: false, transB: true }, SAVE_AB)[0]!;
}

/** Wait until the webgpu backend's recorded work has run on the GPU. */
export async function gpuSync(): Promise<void> {
  const backend = tf.backend() as WebGpuBackendLike;
  if (backend.commandEncoder) {
    backend.endComputePassEncoder();
    backend.submitQueue();
  }
  await backend.device.queue.onSubmittedWorkDone();
}

/** Tune the tile of one GEMM shape on the current device (C = op(a)·op(b), a [m,k] b as W [n,k]). */
export async function tuneGemm(m: number, n: number, k: number): Promise<TuneResult> {
  registerGemm();
  const backend = tf.backend() as WebGpuBackendLike;
  const a = tf.randomUniform([m, k]);
  const b = tf.randomUniform([n, k]);
  try {
    return await tune(backend.device, m, n, k, async (tile, times) => {
      const cs: Tensor[] = [];
      for (let i = 0; i < times; i++) cs.push(tf.engine().runKernel(GEMM_KERNEL, [a, b] as any, { transA: false, transB: true, tile } as any) as Tensor);
      await gpuSync();
      tf.dispose(cs);
    });
  } finally {
    a.dispose();
    b.dispose();
  }
}

/** Tune every shape class that `tileFor` met without a cached choice. */
export async function tunePending(): Promise<TuneResult[]> {
  const out: TuneResult[] = [];
  for (const s of pendingShapes()) out.push(await tuneGemm(s.m, s.n, s.k));
  return out;
}
