/**
 * The f16 training path: every `BatchMatMul` on the webgpu backend (the linear layers' products, forward and
 * backward, since tfjs differentiates a matMul into matMuls) runs on tensor cores as f16 inputs with f32
 * accumulation (./gemm-f16.ts); master weights, optimizer state and every other kernel stay f32.
 *
 * `useF16Matmul(true)` replaces tfjs-backend-webgpu's `BatchMatMul` kernel (kept, and put back by
 * `useF16Matmul(false)`); products with a real batch (attention's) and tiny ones keep the f32 kernel.
 * Only after `probeF16(device)` said ok: llvmpipe has no subgroup matrices.
 */
import type { TensorInfo } from '@tensorflow/tfjs-core';
import { tf } from '../tfjs/index.js';
import { emulateF16, F16_EMULATION_TILES, gemmF16Kernel, setF16Tile } from './gemm-f16.js';

/* eslint-disable @typescript-eslint/no-explicit-any -- tfjs kernel plumbing. */

type GemmKernelFunc = (args: { inputs: TensorInfo[]; backend: any; attrs: { transA: boolean; transB: boolean } }) => TensorInfo;

let saved: any | undefined;
let product: GemmKernelFunc = gemmF16Kernel;
let count = 0;

/** Whether the replacement is in place. */
export function f16MatmulOn(): boolean {
  return saved !== undefined;
}

/** How many products the f16 path has run since it was switched on (tests and reports). */
export function f16MatmulCount(): number {
  return count;
}

/**
 * Switch the webgpu backend's BatchMatMul to the f16 tensor-core GEMM (true) or back to tfjs's (false).
 * `kernel` replaces the f16 GEMM (tests on adapters without subgroup matrices route through the f32 one).
 */
export function useF16Matmul(on: boolean, kernel: GemmKernelFunc = gemmF16Kernel): void {
  product = kernel;
  if (on && !saved) {
    saved = tf.getKernel('BatchMatMul', 'webgpu');
    if (!saved) throw new Error('useF16Matmul: the webgpu backend has no BatchMatMul kernel to replace');
    tf.unregisterKernel('BatchMatMul', 'webgpu');
    count = 0;
    tf.registerKernel({ ...saved, kernelFunc: (args: any) => batchMatMulF16(args) });
  } else if (!on && saved) {
    tf.unregisterKernel('BatchMatMul', 'webgpu');
    tf.registerKernel(saved);
    saved = undefined;
  }
}

/**
 * The f16 path on any adapter (tests; bench/gpu.ts --emulate-f16): useF16Matmul with every product through the
 * f16 GEMM's emulated spelling, its operands rounded to f16 (the tensor cores' arithmetic), on the smallest
 * emulation tile (llvmpipe compiles a kernel per product shape). false: the replacement, the emulation and the
 * forced tile all off.
 */
export function useF16MatmulEmulated(on: boolean): void {
  emulateF16(on ? 'f16' : false);
  setF16Tile(on ? F16_EMULATION_TILES[0] : undefined);
  useF16Matmul(on);
}

function batchMatMulF16(args: { inputs: any; backend: any; attrs: any }): TensorInfo {
  const { a, b } = args.inputs as { a: TensorInfo; b: TensorInfo };
  const { transposeA, transposeB } = args.attrs as { transposeA: boolean; transposeB: boolean };
  const batchA = a.shape.slice(0, -2).reduce((x, y) => x * y, 1);
  const batchB = b.shape.slice(0, -2).reduce((x, y) => x * y, 1);
  const fallback = () => saved.kernelFunc(args);
  if (a.dtype !== 'float32' || b.dtype !== 'float32' || batchB !== 1) return fallback();
  // A batch of A with a shared B is one product of the stacked rows (unless A is transposed per batch).
  if (batchA !== 1 && transposeA) return fallback();
  const [ar, ac] = a.shape.slice(-2) as [number, number];
  const [br, bc] = b.shape.slice(-2) as [number, number];
  const a2 = { ...a, shape: [batchA * ar, ac] };
  const b2 = { ...b, shape: [br, bc] };
  const M = transposeA ? ac : batchA * ar;
  const N = transposeB ? br : bc;
  const K = transposeA ? ar : ac;
  if (M * N * K < 32 * 32 * 32) return fallback();
  count++;
  const out = product({ inputs: [a2, b2], backend: args.backend, attrs: { transA: transposeA, transB: transposeB } });
  const outShape = [...a.shape.slice(0, -2), transposeA ? ac : ar, N];
  return { ...out, shape: outShape };
}
