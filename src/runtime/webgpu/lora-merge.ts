/**
 * The plan's `lora_merge` (fold-trainable-lora) on the webgpu backend: W' = W + s·B·A [out, in] in one
 * dispatch (tfjs kernel `McpcLoraMerge`, one thread per element of W', the r products summed in a loop), and
 * its gradient: dW = dW' itself (shared, no kernel), dA = s·Bᵀ·dW' and dB = s·dW'·Aᵀ one dispatch each
 * (`McpcLoraMergeGrad`, one thread per element of the gradient, a loop over out or in). The reference's
 * composition (BatchMatMul, Multiply, Add and their gradients) was 3 tfjs kernels forward and 5 backward per
 * site and micro-batch: a MedCare stage-1 step on the demo shape recorded 448 of them. The products are tiny
 * (out·in·r multiply-adds, once a micro-batch), so a plain loop per thread does.
 */
import type { TensorInfo } from '@tensorflow/tfjs-core';
import { tf, type Tensor } from '../tfjs/index.js';
import { f32, runKernelSaving, runWgsl, share, spread, type WebGpuBackendLike } from './program.js';

/* eslint-disable @typescript-eslint/no-explicit-any -- tfjs kernel plumbing. */

const FWD = 'McpcLoraMerge';
const BWD = 'McpcLoraMergeGrad';
const WG = 64;

const u = (x: number): string => `${x >>> 0}u`;

/** W' = W + s·B·A; W [O, I], A [R, I], B [O, R]. */
function forwardCode(O: number, I: number, R: number, s: number): string {
  return `@group(0) @binding(0) var<storage, read> w: array<f32>;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
const O = ${u(O)};
const I = ${u(I)};
const R = ${u(R)};
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let e = gid.x + gid.y * nwg.x * ${u(WG)};
  if (e >= O * I) { return; }
  let o = e / I;
  let i = e % I;
  var acc = 0.0;
  for (var r = 0u; r < R; r++) { acc += b[o * R + r] * a[r * I + i]; }
  y[e] = w[e] + ${f32(s)} * acc;
}
`;
}

/** which 'A': dA [R, I] = s·Σ_o B[o, r]·g[o, i];  which 'B': dB [O, R] = s·Σ_i g[o, i]·A[r, i]. */
function gradCode(O: number, I: number, R: number, s: number, which: 'A' | 'B'): string {
  const body =
    which === 'A'
      ? `  if (e >= R * I) { return; }
  let r = e / I;
  let i = e % I;
  var acc = 0.0;
  for (var o = 0u; o < O; o++) { acc += b[o * R + r] * g[o * I + i]; }`
      : `  if (e >= O * R) { return; }
  let o = e / R;
  let r = e % R;
  var acc = 0.0;
  for (var i = 0u; i < I; i++) { acc += g[o * I + i] * a[r * I + i]; }`;
  // Only the factor it reads is bound (a binding the shader does not use would not be in its layout).
  return `@group(0) @binding(0) var<storage, read> g: array<f32>;
@group(0) @binding(1) var<storage, read> ${which === 'A' ? 'b' : 'a'}: array<f32>;
@group(0) @binding(2) var<storage, read_write> d: array<f32>;
const O = ${u(O)};
const I = ${u(I)};
const R = ${u(R)};
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let e = gid.x + gid.y * nwg.x * ${u(WG)};
${body}
  d[e] = ${f32(s)} * acc;
}
`;
}

function fwdKernel({ inputs, backend, attrs }: { inputs: any; backend: WebGpuBackendLike; attrs: any }): TensorInfo {
  const [w, a, b] = [inputs[0], inputs[1], inputs[2]] as TensorInfo[];
  const [O, I] = w!.shape as [number, number];
  const R = a!.shape[0]!;
  return runWgsl(backend, { code: forwardCode(O, I, R, attrs.scale), inputs: [w!, a!, b!], outputs: [{ shape: [O, I], dtype: 'float32' }], dispatch: spread(Math.ceil((O * I) / WG)), label: FWD })[0]!;
}

function bwdKernel({ inputs, backend, attrs }: { inputs: any; backend: WebGpuBackendLike; attrs: any }): TensorInfo {
  const [g, a, b] = [inputs[0], inputs[1], inputs[2]] as TensorInfo[];
  const [O, I] = g!.shape as [number, number];
  const R = a!.shape[0]!;
  const which = attrs.which as 'A' | 'B';
  const n = which === 'A' ? R * I : O * R;
  return runWgsl(backend, { code: gradCode(O, I, R, attrs.scale, which), inputs: [g!, which === 'A' ? b! : a!], outputs: [{ shape: which === 'A' ? [R, I] : [O, R], dtype: 'float32' }], dispatch: spread(Math.ceil(n / WG)), label: BWD })[0]!;
}

let registered = false;
function register(): void {
  if (registered) return;
  registered = true;
  tf.registerKernel({ kernelName: FWD, backendName: 'webgpu', kernelFunc: fwdKernel as any });
  tf.registerKernel({ kernelName: BWD, backendName: 'webgpu', kernelFunc: bwdKernel as any });
  tf.registerGradient({
    kernelName: FWD,
    // A and B are saved by loraMerge() (./program.ts runKernelSaving: shared, no Identity kernel). The closures
    // run only for the inputs on the gradient's path: W's is dW' itself.
    gradFunc: ((dy: Tensor, saved: Tensor[], attrs: any) => {
      const grad = (which: 'A' | 'B') => tf.engine().runKernel(BWD, [dy, saved[0]!, saved[1]!] as unknown as tf.NamedTensorMap, { scale: attrs.scale, which } as unknown as tf.NamedAttrMap) as Tensor;
      return { 0: () => share(dy), 1: () => grad('A'), 2: () => grad('B') };
    }) as any,
  } as any);
}

/** Whether the kernel takes these: float32 W [O, I], A [R, I], B [O, R], none empty, indices within u32. */
export function loraMergeFits(w: Tensor, a: Tensor, b: Tensor): boolean {
  if ([w, a, b].some((t) => t.dtype !== 'float32' || t.rank !== 2 || t.size === 0)) return false;
  const [O, I] = w.shape as [number, number];
  const R = a.shape[0]!;
  return a.shape[1] === I && b.shape[0] === O && b.shape[1] === R && O * I < 2 ** 31;
}

/** W + s·B·A (checked by {@link loraMergeFits}), differentiable in W, A and B. */
export function loraMerge(w: Tensor, a: Tensor, b: Tensor, scale: number): Tensor {
  register();
  return runKernelSaving(FWD, [w, a, b], { scale }, { inputs: [1, 2] })[0]!;
}
