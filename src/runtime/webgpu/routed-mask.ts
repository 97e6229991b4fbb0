/**
 * The top-k mask of `moe_down_routed` as one tfjs op on the webgpu backend (tfjs kernel `McpcRoutedMask`):
 * h [T, E·r] with expert e's block of token t zeroed where gates[t, e] = 0. Its gradient with respect to h is
 * the same kernel applied to dy; the gates get none (a mask, as in the reference: zeros). One thread per
 * element, forward and backward, where the reference's NotEqual, Cast, Reshape, Multiply and their backward
 * recorded about 16 tfjs kernels forward and 12 backward per site.
 */
import type { TensorInfo } from '@tensorflow/tfjs-core';
import { tf, type Tensor } from '../tfjs/index.js';
import { runWgsl, type WebGpuBackendLike } from './program.js';

/* eslint-disable @typescript-eslint/no-explicit-any -- tfjs kernel plumbing. */

const NAME = 'McpcRoutedMask';
const WG = 64;
/** Largest element count the kernel takes (workgroups in x only). */
const MAX_ELEMENTS = 65535 * WG;

const u = (x: number): string => `${x >>> 0}u`;

function code(n: number, E: number, r: number): string {
  return `@group(0) @binding(0) var<storage, read> h: array<f32>;
@group(0) @binding(1) var<storage, read> gates: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x;
  if (i >= ${u(n)}) { return; }
  let t = i / ${u(E * r)};
  let e = (i % ${u(E * r)}) / ${u(r)};
  y[i] = select(0.0, h[i], gates[t * ${u(E)} + e] != 0.0);
}
`;
}

function kernel({ inputs, backend, attrs }: { inputs: any; backend: WebGpuBackendLike; attrs: any }): TensorInfo {
  const [h, gates] = inputs as TensorInfo[];
  const n = h!.shape.reduce((a, b) => a * b, 1);
  return runWgsl(backend, { code: code(n, attrs.experts, attrs.rank), inputs: [h!, gates!], outputs: [{ shape: [...h!.shape], dtype: 'float32' }], dispatch: [Math.ceil(n / WG), 1, 1], label: NAME })[0]!;
}

let registered = false;
function register(): void {
  if (registered) return;
  registered = true;
  tf.registerKernel({ kernelName: NAME, backendName: 'webgpu', kernelFunc: kernel as any });
  tf.registerGradient({
    kernelName: NAME,
    inputsToSave: ['1'],
    gradFunc: ((dy: Tensor, saved: Tensor[], attrs: any) => ({
      0: () => tf.engine().runKernel(NAME, [dy, saved[0]!] as unknown as tf.NamedTensorMap, attrs as tf.NamedAttrMap) as Tensor,
      1: () => tf.zerosLike(saved[0]!),
    })) as any,
  } as any);
}

/** Whether the kernel takes h [T, E·r] and gates [T, E]: float32, T ≥ 1, not too many elements. */
export function routedMaskFits(h: Tensor, gates: Tensor, experts: number, rank: number): boolean {
  if (h.dtype !== 'float32' || gates.dtype !== 'float32' || h.rank !== 2 || gates.rank !== 2) return false;
  const [T, W] = h.shape as [number, number];
  return T >= 1 && rank >= 1 && experts >= 1 && W === experts * rank && gates.shape[0] === T && gates.shape[1] === experts && T * W <= MAX_ELEMENTS;
}

/** h with expert e's block of token t zeroed where gates[t, e] = 0 (checked by {@link routedMaskFits}). */
export function routedMask(h: Tensor, gates: Tensor, experts: number, rank: number): Tensor {
  register();
  return tf.engine().runKernel(NAME, [h, gates] as unknown as tf.NamedTensorMap, { experts, rank } as unknown as tf.NamedAttrMap) as Tensor;
}
