/**
 * The LM head fused with softmax cross-entropy on WebGPU, in vocabulary chunks (reference.ts `lm_head_xent`
 * with x and W given):
 *   loss = Σ_t w_t · (LSE_t − logit_t[label_t]),  logit_t = x_t·Wᵀ,  w_t = mask_t / max(Σ mask, 1)
 * (a token whose label is outside [0, V) adds nothing, as the reference's all-zero one-hot row).
 * The [T, V] logits are never materialised: only one [T, C] chunk of them at a time (C = XENT_CHUNK
 * columns of the vocabulary, fewer when T is large).
 *
 * Two tfjs kernels, each a sequence of WGSL dispatches on the backend (no tfjs op inside, so the host records
 * one kernel each way):
 *
 *   McpcXent      inputs x [T, D], W [V, D], labels [T] int32, mask [T]; outputs the loss [] and `stats` [T+1]
 *                 (LSE_t, then 1 / max(Σ mask, 1)). Per chunk: logits_c = x·W_cᵀ (GEMM, ../gemm-wgsl.ts, W_c
 *                 read in place) and one dispatch (a workgroup per token, shared-memory max and sum) folding
 *                 the chunk into the running (max, sum of exp, label logit) per token: an online log-sum-exp.
 *                 Then one workgroup reduces the loss and writes stats.
 *   McpcXentGrad  inputs dy [], x, W, labels, mask, stats; `attrs.of` 'x' or 'w'. Per chunk: logits_c again
 *                 (recomputed, not stored), one dispatch g_c = c_t · (exp(logits_c − LSE_t) − onehot(label)),
 *                 c_t = mask_t · dy / max(Σ mask, 1); then dx += g_c·W_c (a GEMM whose store adds the previous
 *                 sum) or dW rows of the chunk = g_cᵀ·x (a GEMM storing into the rows of the one dW tensor).
 *
 * x, W, labels, mask and stats are saved shared (../program.ts runKernelSaving); labels and mask get no gradient.
 * Each gradient is its own kernel, only when autodiff asks (the LM head is usually frozen: dx only); with both
 * asked the logits are computed once more. Memory is O(T·C) instead of O(T·V).
 */
import type { TensorInfo } from '@tensorflow/tfjs-core';
import { tf, type Tensor } from '../../tfjs/index.js';
import { gemmDispatch, gemmWgsl, specCache, tileKey, type GemmSpec } from '../gemm-wgsl.js';
import { tileFor } from '../gemm-tune.js';
import { disposeInfo, kernelRegistrar, runKernel1, runKernelSaving, runWgsl, spread, type WebGpuBackendLike } from '../program.js';
import { wgslReduceSum } from './run.js';

/* eslint-disable @typescript-eslint/no-explicit-any -- tfjs kernel plumbing. */

const FWD = 'McpcXent';
const GRAD = 'McpcXentGrad';
const WG = 128;
/** Vocabulary columns per chunk (fewer when T·C would pass XENT_CHUNK_ELEMENTS). */
export const XENT_CHUNK = 8192;
const XENT_CHUNK_ELEMENTS = 1 << 23;

const u = (x: number): string => `${x >>> 0}u`;
const i32 = (x: number): string => `${x | 0}i`;

/**
 * Whether the kernels take x [T, D], W [V, D], labels [T] (int32 or float), mask [T]: float32 x, W and mask, no
 * empty dimension, every index under 2^31.
 */
export function xentFits(x: Tensor, w: Tensor, labels: Tensor, mask: Tensor): boolean {
  if (x.dtype !== 'float32' || w.dtype !== 'float32' || mask.dtype !== 'float32' || x.rank !== 2 || w.rank !== 2 || labels.rank !== 1 || mask.rank !== 1) return false;
  const [T, D] = x.shape as [number, number];
  const V = w.shape[0]!;
  return T >= 1 && D >= 1 && V >= 1 && w.shape[1] === D && labels.shape[0] === T && mask.shape[0] === T && w.size < 2 ** 31 && x.size < 2 ** 31 && T * Math.min(V, XENT_CHUNK) < 2 ** 31;
}

/** The vocabulary chunks [offset, columns] for T tokens (`chunk` forces the width: tests). */
function chunks(T: number, V: number, chunk?: number): [number, number][] {
  const C = chunk ?? Math.max(256, Math.min(XENT_CHUNK, Math.floor(XENT_CHUNK_ELEMENTS / Math.max(1, T))));
  const out: [number, number][] = [];
  for (let o = 0; o < V; o += C) out.push([o, Math.min(C, V - o)]);
  return out;
}

/** This module's GEMM specs by shape key (gemm-wgsl.ts specCache). */
const cached = specCache();

/** logits_c = x·W[o : o+c]ᵀ [T, c]. */
function logitsChunk(backend: WebGpuBackendLike, x: TensorInfo, w: TensorInfo, o: number, c: number): TensorInfo {
  const [T, D] = x.shape as [number, number];
  const tile = tileFor(backend.device, T, c, D);
  const spec = cached(`l|${T}|${D}|${o}|${c}|${tileKey(tile)}`, () => ({
    m: T,
    n: c,
    tile,
    segments: [{ k: D, a: { kMajor: false, parts: [{ input: 0, count: T, ld: D, off: 0 }] }, b: { kMajor: false, parts: [{ input: 1, count: c, ld: D, off: o * D }] } }],
    inputs: [{}, {}],
    outputs: [c % 4 === 0 ? 'vec4' : 'f32'],
  }));
  return runWgsl(backend, { code: gemmWgsl(spec), inputs: [x, w], outputs: [{ shape: [T, c], dtype: 'float32' }], dispatch: gemmDispatch(spec), label: FWD })[0]!;
}

const rowReduce = `
${wgslReduceSum(WG)}
var<workgroup> red_max: f32;
fn reduce_max(lid: u32, v: f32) -> f32 {
  red[lid] = v;
  workgroupBarrier();
  for (var k = ${WG / 2}u; k > 0u; k = k >> 1u) {
    if (lid < k) { red[lid] = max(red[lid], red[lid + k]); }
    workgroupBarrier();
  }
  // A slot of its own, as reduce_sum's (run.ts): reduce_sum's first write to red[0] may not clobber it.
  if (lid == 0u) { red_max = red[0]; }
  workgroupBarrier();
  return red_max;
}`;

/**
 * Folds logits_c [T, c] (vocabulary columns o … o+c−1) into the running state [3, T] (max, sum of exp, label
 * logit), read from `prev` (none for the first chunk) and written to a new buffer.
 */
function fold(backend: WebGpuBackendLike, logits: TensorInfo, labels: TensorInfo, prev: TensorInfo | undefined, o: number): TensorInfo {
  const [T, C] = logits.shape as [number, number];
  const code = `@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read> labels: array<i32>;
${prev ? '@group(0) @binding(2) var<storage, read> prev: array<f32>;\n' : ''}@group(0) @binding(${prev ? 3 : 2}) var<storage, read_write> state: array<f32>;
${rowReduce}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let t = wid.x + wid.y * nwg.x;
  if (t >= ${u(T)}) { return; }
  let base = t * ${u(C)};
  var mx = -3.0e38;
  for (var c = lid; c < ${u(C)}; c = c + ${u(WG)}) { mx = max(mx, logits[base + c]); }
  let cm = reduce_max(lid, mx);
  var s = 0.0;
  for (var c = lid; c < ${u(C)}; c = c + ${u(WG)}) { s = s + exp(logits[base + c] - cm); }
  let cs = reduce_sum(lid, s);
  if (lid == 0u) {
    ${prev ? `let m0 = prev[t];\n    let l0 = prev[${u(T)} + t];\n    var p = prev[${u(2 * T)} + t];` : 'let m0 = -3.0e38;\n    let l0 = 0.0;\n    var p = 0.0;'}
    let m1 = max(m0, cm);
    state[t] = m1;
    state[${u(T)} + t] = l0 * exp(m0 - m1) + cs * exp(cm - m1);
    let lab = labels[t];
    if (lab >= ${i32(o)} && lab < ${i32(o + C)}) { p = logits[base + u32(lab - ${i32(o)})]; }
    state[${u(2 * T)} + t] = p;
  }
}`;
  return runWgsl(backend, { code, inputs: prev ? [logits, labels, prev] : [logits, labels], outputs: [{ shape: [3, T], dtype: 'float32' }], dispatch: spread(T), label: FWD })[0]!;
}

/** The loss [] and stats [T+1] (LSE per token, then 1 / max(Σ mask, 1)) from the state [3, T]. */
function finish(backend: WebGpuBackendLike, state: TensorInfo, labels: TensorInfo, mask: TensorInfo, V: number): TensorInfo[] {
  const T = mask.shape[0]!;
  const W = 256;
  const code = `@group(0) @binding(0) var<storage, read> state: array<f32>;
@group(0) @binding(1) var<storage, read> labels: array<i32>;
@group(0) @binding(2) var<storage, read> mask: array<f32>;
@group(0) @binding(3) var<storage, read_write> loss: array<f32>;
@group(0) @binding(4) var<storage, read_write> stats: array<f32>;
${wgslReduceSum(W)}
@compute @workgroup_size(${W})
fn main(@builtin(local_invocation_index) lid: u32) {
  var s = 0.0;
  var n = 0.0;
  for (var t = lid; t < ${u(T)}; t = t + ${u(W)}) {
    let lse = state[t] + log(state[${u(T)} + t]);
    stats[t] = lse;
    let lab = labels[t];
    let mk = mask[t];
    if (lab >= 0i && lab < ${i32(V)}) { s = s + mk * (lse - state[${u(2 * T)} + t]); }
    n = n + mk;
  }
  let total = reduce_sum(lid, s);
  let count = reduce_sum(lid, n);
  if (lid == 0u) {
    let inv = 1.0 / max(count, 1.0);
    loss[0] = total * inv;
    stats[${u(T)}] = inv;
  }
}`;
  return runWgsl(backend, { code, inputs: [state, labels, mask], outputs: [{ shape: [], dtype: 'float32' }, { shape: [T + 1], dtype: 'float32' }], dispatch: [1, 1, 1], label: FWD });
}

function forwardKernel({ inputs, backend, attrs }: { inputs: any; backend: WebGpuBackendLike; attrs: any }): TensorInfo[] {
  const [x, w, labels, mask] = inputs as TensorInfo[];
  const T = x!.shape[0]!;
  const V = w!.shape[0]!;
  let state: TensorInfo | undefined;
  for (const [o, c] of chunks(T, V, attrs.chunk)) {
    const logits = logitsChunk(backend, x!, w!, o, c);
    const next = fold(backend, logits, labels!, state, o);
    disposeInfo(backend, logits);
    if (state) disposeInfo(backend, state);
    state = next;
  }
  const out = finish(backend, state!, labels!, mask!, V);
  disposeInfo(backend, state!);
  return out;
}

/** g_c = c_t · (exp(logits_c − LSE_t) − [label_t = o + j]) [T, c]; inputs logits_c, stats, labels, mask, dy. */
function chunkGrad(backend: WebGpuBackendLike, logits: TensorInfo, stats: TensorInfo, labels: TensorInfo, mask: TensorInfo, dy: TensorInfo, o: number, V: number): TensorInfo {
  const [T, C] = logits.shape as [number, number];
  const n = T * C;
  const code = `@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read> stats: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<i32>;
@group(0) @binding(3) var<storage, read> mask: array<f32>;
@group(0) @binding(4) var<storage, read> dy: array<f32>;
@group(0) @binding(5) var<storage, read_write> g: array<f32>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let i = (wid.x + wid.y * nwg.x) * 256u + lid;
  if (i >= ${u(n)}) { return; }
  let t = i / ${u(C)};
  let j = i % ${u(C)};
  let lab = labels[t];
  let coef = select(0.0, mask[t] * dy[0] * stats[${u(T)}], lab >= 0i && lab < ${i32(V)});
  var p = exp(logits[i] - stats[t]);
  if (lab == ${i32(o)} + i32(j)) { p = p - 1.0; }
  g[i] = coef * p;
}`;
  return runWgsl(backend, { code, inputs: [logits, stats, labels, mask, dy], outputs: [{ shape: [T, C], dtype: 'float32' }], dispatch: spread(Math.ceil(n / 256)), label: GRAD })[0]!;
}

/** dx (+)= g_c·W[o : o+c] [T, D]; `prev` the sum so far (added in the store). */
function dxChunk(backend: WebGpuBackendLike, g: TensorInfo, w: TensorInfo, prev: TensorInfo | undefined, o: number): TensorInfo {
  const [T, c] = g.shape as [number, number];
  const D = w.shape[1]!;
  const tile = tileFor(backend.device, T, D, c);
  const spec = cached(`x|${T}|${D}|${o}|${c}|${+!!prev}|${tileKey(tile)}`, () => ({
    m: T,
    n: D,
    tile,
    // B(k = vocabulary row o + k, n) = W[o + k, n]: rows k, contiguous along n.
    segments: [{ k: c, a: { kMajor: false, parts: [{ input: 0, count: T, ld: c, off: 0 }] }, b: { kMajor: true, parts: [{ input: 1, count: D, ld: D, off: o * D }] } }],
    inputs: prev ? [{}, {}, { type: 'f32' as const }] : [{}, {}],
    outputs: [prev || D % 4 !== 0 ? 'f32' : 'vec4'],
    ...(prev ? { store: `  out0[r * ${u(D)} + c] = v + in2[r * ${u(D)} + c];` } : {}),
  }));
  return runWgsl(backend, { code: gemmWgsl(spec), inputs: prev ? [g, w, prev] : [g, w], outputs: [{ shape: [T, D], dtype: 'float32' }], dispatch: gemmDispatch(spec), label: GRAD })[0]!;
}

/** dW[o : o+c] = g_cᵀ·x, stored into rows o … o+c−1 of `dw` [V, D]. */
function dwChunk(backend: WebGpuBackendLike, g: TensorInfo, x: TensorInfo, dw: TensorInfo, o: number): void {
  const [T, c] = g.shape as [number, number];
  const D = x.shape[1]!;
  const tile = tileFor(backend.device, c, D, T);
  const spec = cached(`w|${T}|${D}|${o}|${c}|${tileKey(tile)}`, () => ({
    m: c,
    n: D,
    tile,
    // A(i = vocabulary column, k = token) = g[k, i]: rows k, contiguous along i; B(k = token, n) = x[k, n].
    segments: [{ k: T, a: { kMajor: true, parts: [{ input: 0, count: c, ld: c, off: 0 }] }, b: { kMajor: true, parts: [{ input: 1, count: D, ld: D, off: 0 }] } }],
    inputs: [{}, {}],
    outputs: ['f32'],
    store: `  out0[(r + ${u(o)}) * ${u(D)} + c] = v;`,
  }));
  runWgsl(backend, { code: gemmWgsl(spec), inputs: [g, x], outputs: [], into: [dw], dispatch: gemmDispatch(spec), label: GRAD });
}

function gradKernel({ inputs, backend, attrs }: { inputs: any; backend: WebGpuBackendLike; attrs: any }): TensorInfo {
  const [dy, x, w, labels, mask, stats] = inputs as TensorInfo[];
  const T = x!.shape[0]!;
  const [V, D] = w!.shape as [number, number];
  const ofX = attrs.of === 'x';
  let acc: TensorInfo | undefined = ofX ? undefined : (backend.makeTensorInfo([V, D], 'float32') as TensorInfo);
  for (const [o, c] of chunks(T, V, attrs.chunk)) {
    const logits = logitsChunk(backend, x!, w!, o, c);
    const g = chunkGrad(backend, logits, stats!, labels!, mask!, dy!, o, V);
    disposeInfo(backend, logits);
    if (ofX) {
      const next = dxChunk(backend, g, w!, acc, o);
      if (acc) disposeInfo(backend, acc);
      acc = next;
    } else dwChunk(backend, g, x!, acc!, o);
    disposeInfo(backend, g);
  }
  return acc!;
}

// x, W, labels, mask and stats are saved by lmHeadXent() (runKernelSaving); labels and mask are off the tape.
const register = kernelRegistrar(
  { [FWD]: forwardKernel, [GRAD]: gradKernel },
  {
    [FWD]: (dys: Tensor | Tensor[], saved: Tensor[], attrs: any) => {
      const dy = (Array.isArray(dys) ? dys[0] : dys)!;
      const [x, w, labels, mask, stats] = saved as [Tensor, Tensor, Tensor, Tensor, Tensor];
      const ins = [dy, x, w, labels, mask, stats];
      const chunk = attrs.chunk === undefined ? {} : { chunk: attrs.chunk };
      return { 0: () => runKernel1(GRAD, ins, { of: 'x', ...chunk }), 1: () => runKernel1(GRAD, ins, { of: 'w', ...chunk }) };
    },
  },
);

/**
 * Mean cross-entropy of softmax(x·Wᵀ) at `labels` over the tokens of `mask` (x [T, D], W [V, D], labels [T]
 * int32 or float, mask [T] float; checked by {@link xentFits}), differentiable in x and W; logits exist one
 * chunk at a time (`chunk` columns when given: tests).
 */
export function lmHeadXent(x: Tensor, w: Tensor, labels: Tensor, mask: Tensor, chunk?: number): Tensor {
  register();
  const lab = labels.dtype === 'int32' ? labels : tf.cast(labels, 'int32');
  return runKernelSaving(FWD, [x, w, lab, mask], chunk === undefined ? {} : { chunk }, { inputs: [0, 1, 2, 3], outputs: [1], noGrad: [2, 3] })[0]!;
}
