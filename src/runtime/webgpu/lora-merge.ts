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
import { loraMergeShapesFit } from '../kernels/reference.js';
import { tf, type Tensor } from '../tfjs/index.js';
import { f32, kernelRegistrar, runKernelSaving, runWgsl, share, spread, type WebGpuBackendLike } from './program.js';

/* eslint-disable @typescript-eslint/no-explicit-any -- tfjs kernel plumbing. */

const FWD = 'McpcLoraMerge';
const BWD = 'McpcLoraMergeGrad';
const WG = 64;

const u = (x: number): string => `${x >>> 0}u`;

/**
 * A module of one thread per element e of its output (the last binding), over the read-only `inputs` bound in
 * order; `body` computes `acc` for e and the output's element count is `n` (a WGSL expression in O, I, R).
 */
function elementModule(O: number, I: number, R: number, inputs: string[], n: string, body: string, store: string): string {
  const io = [...inputs.map((v, k) => `@group(0) @binding(${k}) var<storage, read> ${v}: array<f32>;`), `@group(0) @binding(${inputs.length}) var<storage, read_write> out: array<f32>;`];
  return `${io.join('\n')}
const O = ${u(O)};
const I = ${u(I)};
const R = ${u(R)};
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let e = gid.x + gid.y * nwg.x * ${u(WG)};
  if (e >= ${n}) { return; }
  var acc = 0.0;
${body}
  out[e] = ${store};
}
`;
}

/** W' = W + s·B·A; W [O, I], A [R, I], B [O, R]. */
function forwardCode(O: number, I: number, R: number, s: number): string {
  return elementModule(O, I, R, ['w', 'a', 'b'], 'O * I', `  let o = e / I;
  let i = e % I;
  for (var r = 0u; r < R; r++) { acc += b[o * R + r] * a[r * I + i]; }`, `w[e] + ${f32(s)} * acc`);
}

/**
 * which 'A': dA [R, I] = s·Σ_o B[o, r]·g[o, i];  which 'B': dB [O, R] = s·Σ_i g[o, i]·A[r, i]. Only the factor
 * it reads is bound (a binding the shader does not use would not be in its layout).
 */
function gradCode(O: number, I: number, R: number, s: number, which: 'A' | 'B'): string {
  const store = `${f32(s)} * acc`;
  if (which === 'A')
    return elementModule(O, I, R, ['g', 'b'], 'R * I', `  let r = e / I;
  let i = e % I;
  for (var o = 0u; o < O; o++) { acc += b[o * R + r] * g[o * I + i]; }`, store);
  return elementModule(O, I, R, ['g', 'a'], 'O * R', `  let o = e / R;
  let r = e % R;
  for (var i = 0u; i < I; i++) { acc += g[o * I + i] * a[r * I + i]; }`, store);
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

// A and B are saved by loraMerge() (./program.ts runKernelSaving: shared, no Identity kernel). The gradient's
// closures run only for the inputs on its path: W's is dW' itself.
const register = kernelRegistrar(
  { [FWD]: fwdKernel, [BWD]: bwdKernel },
  {
    [FWD]: (dy: Tensor, saved: Tensor[], attrs: any) => {
      const grad = (which: 'A' | 'B') => tf.engine().runKernel(BWD, [dy, saved[0]!, saved[1]!] as unknown as tf.NamedTensorMap, { scale: attrs.scale, which } as unknown as tf.NamedAttrMap) as Tensor;
      return { 0: () => share(dy), 1: () => grad('A'), 2: () => grad('B') };
    },
  },
);

/** Whether the kernel takes these: float32 W [O, I], A [R, I], B [O, R], none empty, indices within u32. */
export function loraMergeFits(w: Tensor, a: Tensor, b: Tensor): boolean {
  // None empty: a binding nobody reads breaks the pipeline layout.
  return loraMergeShapesFit(w, a, b) && [w, a, b].every((t) => t.size > 0) && w.size < 2 ** 31;
}

/** W + s·B·A (checked by {@link loraMergeFits}), differentiable in W, A and B. */
export function loraMerge(w: Tensor, a: Tensor, b: Tensor, scale: number): Tensor {
  register();
  return runKernelSaving(FWD, [w, a, b], { scale }, { inputs: [1, 2] })[0]!;
}
