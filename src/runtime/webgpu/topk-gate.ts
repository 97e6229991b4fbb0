/**
 * The plan's `topk_gate` as one tfjs op on the webgpu backend (tfjs kernel `McpcTopkGate`), with its gradient
 * (`McpcTopkGateGrad`): p [T, E] masked to each token's k largest entries (ties to the lower index, as
 * tf.topk and ./kernels/topk.ts), renormalised over them when asked. One thread per token, forward and
 * backward; the backward recomputes the mask from the saved p (the mask has no gradient, as in the reference):
 *
 *   renormalize   g = kept / S, S = Σ kept      dp_e = mask_e · (dg_e − Σ_e' dg_e'·g_e') / S
 *   otherwise     g = kept                      dp_e = mask_e · dg_e
 *
 * Replaces the reference's mask kernel, Mul, Sum, RealDiv and their backward (about 9 tfjs kernels forward, 17
 * backward) with one each.
 */
import type { TensorInfo } from '@tensorflow/tfjs-core';
import { tf, type Tensor } from '../tfjs/index.js';
import { kernelRegistrar, runKernelSaving, runWgsl, type WebGpuBackendLike } from './program.js';

/* eslint-disable @typescript-eslint/no-explicit-any -- tfjs kernel plumbing. */

const FWD = 'McpcTopkGate';
const BWD = 'McpcTopkGateGrad';
/** Largest expert count (a per-thread private array) and token count (workgroups in x only) the kernels take. */
export const TOPK_GATE_MAX_EXPERTS = 256;
const MAX_ROWS = 65535 * 64;

const u = (x: number): string => `${x >>> 0}u`;

function code(T: number, E: number, k: number, renorm: boolean, backward: boolean): string {
  const io = backward
    ? `@group(0) @binding(0) var<storage, read> p: array<f32>;
@group(0) @binding(1) var<storage, read> dg: array<f32>;
@group(0) @binding(2) var<storage, read_write> dp: array<f32>;`
    : `@group(0) @binding(0) var<storage, read> p: array<f32>;
@group(0) @binding(1) var<storage, read_write> g: array<f32>;`;
  let tail: string;
  if (!backward) tail = renorm ? `  let inv = 1.0 / s;\n  for (var e = 0u; e < E; e++) { g[o + e] = kept[e] * inv; }` : `  for (var e = 0u; e < E; e++) { g[o + e] = kept[e]; }`;
  else if (renorm)
    tail = `  let inv = 1.0 / s;
  var dot = 0.0;
  for (var e = 0u; e < E; e++) { dot += dg[o + e] * kept[e] * inv; }
  for (var e = 0u; e < E; e++) { dp[o + e] = select(0.0, (dg[o + e] - dot) * inv, mask[e]); }`;
  else tail = `  for (var e = 0u; e < E; e++) { dp[o + e] = select(0.0, dg[o + e], mask[e]); }`;
  return `${io}
const T = ${u(T)};
const E = ${u(E)};
const K = ${u(k)};
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let t = gid.x;
  if (t >= T) { return; }
  let o = t * E;
  var kept: array<f32, ${E}>;
  var mask: array<bool, ${E}>;
  var s = 0.0;
  for (var e = 0u; e < E; e++) {
    let me = p[o + e];
    var above = 0u;
    for (var j = 0u; j < E; j++) {
      let x = p[o + j];
      if (x > me || (x == me && j < e)) { above++; }
    }
    mask[e] = above < K;
    kept[e] = select(0.0, me, mask[e]);
    s += kept[e];
  }
${tail}
}
`;
}

function fwdKernel({ inputs, backend, attrs }: { inputs: any; backend: WebGpuBackendLike; attrs: any }): TensorInfo {
  const p = inputs[0] as TensorInfo;
  const [T, E] = p.shape as [number, number];
  return runWgsl(backend, { code: code(T, E, attrs.k, attrs.renormalize, false), inputs: [p], outputs: [{ shape: [T, E], dtype: 'float32' }], dispatch: [Math.ceil(T / 64), 1, 1], label: FWD })[0]!;
}

function bwdKernel({ inputs, backend, attrs }: { inputs: any; backend: WebGpuBackendLike; attrs: any }): TensorInfo {
  const [p, dg] = inputs as TensorInfo[];
  const [T, E] = p!.shape as [number, number];
  return runWgsl(backend, { code: code(T, E, attrs.k, attrs.renormalize, true), inputs: [p!, dg!], outputs: [{ shape: [T, E], dtype: 'float32' }], dispatch: [Math.ceil(T / 64), 1, 1], label: BWD })[0]!;
}

// p is saved by topkGate() (./program.ts runKernelSaving: shared, no Identity kernel).
const register = kernelRegistrar(
  { [FWD]: fwdKernel, [BWD]: bwdKernel },
  {
    [FWD]: (dy: Tensor, saved: Tensor[], attrs: any) => ({
      0: () => tf.engine().runKernel(BWD, [saved[0]!, dy] as unknown as tf.NamedTensorMap, { k: attrs.k, renormalize: attrs.renormalize } as unknown as tf.NamedAttrMap) as Tensor,
    }),
  },
);

/** Whether the kernel takes p for this k: float32 [T, E], 1 ≤ k, E ≤ TOPK_GATE_MAX_EXPERTS, T ≥ 1 and not too many rows. */
export function topkGateFits(p: Tensor, k: number): boolean {
  if (p.dtype !== 'float32' || p.rank !== 2 || !Number.isInteger(k) || k < 1) return false;
  const [T, E] = p.shape as [number, number];
  return T >= 1 && T <= MAX_ROWS && E >= 1 && E <= TOPK_GATE_MAX_EXPERTS;
}

/** topk_gate of p [T, E] (checked by {@link topkGateFits}); k past E keeps every expert, as the reference. */
export function topkGate(p: Tensor, k: number, renormalize: boolean): Tensor {
  register();
  const kk = Math.min(k, p.shape[1]!);
  return runKernelSaving(FWD, [p], { k: kk, renormalize }, { inputs: [0] })[0]!;
}
