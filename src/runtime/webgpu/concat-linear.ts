/**
 * The plan's `concat_linear` (one GEMM x·[W_1 ; … ; W_n]ᵀ split into one output per part, each with its own
 * epilogue: a bias; a router part's softmax or sigmoid) as a tfjs op on the webgpu backend, with its gradient.
 *
 *   concatLinear(inputs, layout)   the parts' outputs; differentiable
 *
 * Forward (tfjs kernel `McpcConcatLinearWgsl`): ONE register-tiled GEMM (./gemm-wgsl.ts) whose B operand is
 * the weights stacked in place from their own buffers (an expert stack [E, r, in] read as [E·r, in] rows, no
 * Reshape), its store hook writing each column range to its part's output with the part's bias added; a
 * router part's logits go to a scratch buffer that one more dispatch (in the same tfjs kernel) turns into
 * probabilities, as the reference does (tf.softmax / tf.sigmoid of x·W_rᵀ + b_r).
 *
 * Gradient, lazy per input (an input autodiff does not ask for, e.g. the frozen base weight, costs nothing):
 *
 *   dZ_i   the upstream gradient of part i, or for a router part the activation's backward of it
 *          (`McpcConcatLinearActGrad`: softmax p·(dp − Σ p·dp), sigmoid dp·p·(1 − p)), computed once
 *   dx     Σ_j dZ_{part(j)}[:, cols of W_j] · W_j: ONE GEMM with one K segment per weight (`McpcConcatLinearDx`)
 *   dW_j   dZ_{part(j)}[:, cols of W_j]ᵀ · x, read in place, in W_j's own shape (`McpcConcatLinearDw`)
 *   db_i   the column sums of dZ_i (`McpcColSum`)
 *
 * The forward saves x, the weights and the router parts' probabilities (tfjs clones each saved tensor).
 *
 * Bindings: the forward module binds x, every weight and bias and one output per part. A layout over more
 * storage buffers than the device allows per shader stage (maxStorageBuffersPerShaderStage: llvmpipe 16,
 * WebGPU's default 8; a concat_linear merged over several sites by concat-shared-input can need 21) runs as
 * consecutive chunks of parts, each one such GEMM over x (dx then adds up per chunk through autodiff).
 */
import type { TensorInfo } from '@tensorflow/tfjs-core';
import { registerFamilyGradient, tf, type Tensor } from '../tfjs/index.js';
import { gemmDispatch, gemmWgsl, tileKey, type GemmSpec, type Segment } from './gemm-wgsl.js';
import { tileFor } from './gemm-tune.js';
import { disposeInfo, keepUntilBackwardEnds, runKernel1, runWgsl, type WebGpuBackendLike } from './program.js';

/* eslint-disable @typescript-eslint/no-explicit-any -- tfjs kernel plumbing. */

export const CONCAT_LINEAR_KERNEL = 'McpcConcatLinearWgsl';
const ACT_GRAD_KERNEL = 'McpcConcatLinearActGrad';
const DX_KERNEL = 'McpcConcatLinearDx';
const DW_KERNEL = 'McpcConcatLinearDw';
const COLSUM_KERNEL = 'McpcColSum';

export type Activation = 'none' | 'softmax' | 'sigmoid';

/** One part of a concat_linear, as the kernel reads its inputs: the input indices of its weights and bias. */
export interface ConcatLayoutPart {
  /** Output columns (Σ of the weights' rows). */
  out: number;
  /** Input index of each weight ([r, in] or an expert stack [E, r, in]). */
  weights: number[];
  /** Input index of the bias [out], if any. */
  bias?: number;
  act: Activation;
}

export interface ConcatLayout {
  parts: ConcatLayoutPart[];
}

/** Largest row count the one-thread-per-row activation kernels take (workgroups in x only). */
const MAX_ROWS = 65535 * 64;

const rows = (t: { shape: number[] }): number => (t.shape.length === 3 ? t.shape[0]! * t.shape[1]! : t.shape[0]!);

/**
 * Whether the WGSL path takes these inputs for `layout` (else undefined, and the caller runs the reference):
 * float32, x [T, in] with T ≥ 1, every weight [r, in] or [E, r, in] with r ≥ 1 (a binding nobody reads would
 * break the pipeline's layout), each part's weights adding up to its width, biases [out], few enough rows for
 * the activation kernels, each part within the device's storage-buffer limit.
 */
export function concatLinearFits(inputs: Tensor[], layout: ConcatLayout): boolean {
  if (inputs.some((t) => t.dtype !== 'float32')) return false;
  const x = inputs[0];
  if (!x || x.rank !== 2 || x.shape[0]! < 1 || x.shape[0]! > MAX_ROWS || x.shape[1]! < 1) return false;
  const K = x.shape[1]!;
  const used = new Set<number>([0]);
  for (const p of layout.parts) {
    let sum = 0;
    for (const w of p.weights) {
      const t = inputs[w];
      if (!t || (t.rank !== 2 && t.rank !== 3) || t.shape[t.rank - 1] !== K || rows(t) < 1 || used.has(w)) return false;
      used.add(w);
      sum += rows(t);
    }
    if (sum !== p.out || p.out < 1) return false;
    if (p.bias !== undefined) {
      const b = inputs[p.bias];
      if (!b || b.rank !== 1 || b.shape[0] !== p.out || used.has(p.bias)) return false;
      used.add(p.bias);
    }
  }
  // Every part must fit the device's storage-buffer limit on its own (a layout over more runs in chunks).
  return used.size === inputs.length && chunksOf(layout, bindingLimit()) !== null;
}

// --- layouts by number (tfjs attrs carry numbers) ------------------------------------------------------------------------

const layouts: ConcatLayout[] = [];
const layoutIds = new Map<string, number>();
function layoutId(l: ConcatLayout): number {
  const key = JSON.stringify(l);
  let id = layoutIds.get(key);
  if (id === undefined) {
    id = layouts.length;
    layouts.push(l);
    layoutIds.set(key, id);
  }
  return id;
}

/** Specs (and their module text, cached by gemmWgsl per spec object) by a short key. */
const specs = new Map<string, GemmSpec>();
function cachedSpec(key: string, make: () => GemmSpec): GemmSpec {
  let s = specs.get(key);
  if (!s) {
    s = make();
    if (specs.size > 4096) specs.clear();
    specs.set(key, s);
  }
  return s;
}

// --- WGSL ----------------------------------------------------------------------------------------------------------------

const u = (x: number): string => `${x >>> 0}u`;

/** A module with one thread per row t of [T, E] matrices (`o` = t·E); `bindings` are `name: access` in order. */
function perRowModule(bindings: [string, 'read' | 'read_write'][], T: number, E: number, body: string): string {
  return `${bindings.map(([name, access], i) => `@group(0) @binding(${i}) var<storage, ${access}> ${name}: array<f32>;`).join('\n')}
const T = ${u(T)};
const E = ${u(E)};
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
  let t = g.x;
  if (t >= T) { return; }
  let o = t * E;
${body}
}
`;
}

/** Row-wise activation of z [T, E] into p, one thread per row. */
function actCode(act: 'softmax' | 'sigmoid', T: number, E: number): string {
  const body =
    act === 'softmax'
      ? `  var m = z[o];
  for (var e = 1u; e < E; e++) { m = max(m, z[o + e]); }
  var s = 0.0;
  for (var e = 0u; e < E; e++) { s += exp(z[o + e] - m); }
  let inv = 1.0 / s;
  for (var e = 0u; e < E; e++) { p[o + e] = exp(z[o + e] - m) * inv; }`
      : `  for (var e = 0u; e < E; e++) { p[o + e] = 1.0 / (1.0 + exp(-z[o + e])); }`;
  return perRowModule([['z', 'read'], ['p', 'read_write']], T, E, body);
}

/** The activation's backward: dz from the probabilities p and their upstream gradient dp, one thread per row. */
function actGradCode(act: 'softmax' | 'sigmoid', T: number, E: number): string {
  const body =
    act === 'softmax'
      ? `  var s = 0.0;
  for (var e = 0u; e < E; e++) { s += p[o + e] * dp[o + e]; }
  for (var e = 0u; e < E; e++) { dz[o + e] = p[o + e] * (dp[o + e] - s); }`
      : `  for (var e = 0u; e < E; e++) { let q = p[o + e]; dz[o + e] = dp[o + e] * q * (1.0 - q); }`;
  return perRowModule([['p', 'read'], ['dp', 'read'], ['dz', 'read_write']], T, E, body);
}

/** Column sums of a [T, C] matrix: one workgroup of 64 per column (x and y over columns), a tree reduction. */
function colSumCode(T: number, C: number, nx: number): string {
  return `@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read_write> s: array<f32>;
const T = ${u(T)};
const C = ${u(C)};
var<workgroup> part: array<f32, 64>;
@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let c = wid.x + wid.y * ${u(nx)};
  var acc = 0.0;
  if (c < C) {
    for (var t = tid; t < T; t += 64u) { acc += a[t * C + c]; }
  }
  part[tid] = acc;
  workgroupBarrier();
  for (var w = 32u; w > 0u; w >>= 1u) {
    if (tid < w) { part[tid] += part[tid + w]; }
    workgroupBarrier();
  }
  if (tid == 0u && c < C) { s[c] = part[0]; }
}
`;
}

/** The forward GEMM's spec: B stacked from every weight, the store hook splitting columns by part (bias added). */
function forwardSpec(backend: WebGpuBackendLike, id: number, l: ConcatLayout, nInputs: number, rowsOf: number[], T: number, K: number): GemmSpec {
  const N = l.parts.reduce((s, p) => s + p.out, 0);
  const tile = tileFor(backend.device, T, N, K);
  return cachedSpec(`f${id}|${T}|${K}|${tileKey(tile)}`, () => {
    const bparts = l.parts.flatMap((p) => p.weights.map((w) => ({ input: w, count: rowsOf[w]!, ld: K, off: 0 })));
    const biases = new Set(l.parts.flatMap((p) => (p.bias !== undefined ? [p.bias] : [])));
    let start = 0;
    const branches = l.parts.map((p, i) => {
      const bias = p.bias !== undefined ? ` + in${p.bias}[cc]` : '';
      const s = `  ${i ? 'else ' : ''}if (c < ${u(start + p.out)}) { let cc = c - ${u(start)}; out${i}[r * ${u(p.out)} + cc] = v${bias}; }`;
      start += p.out;
      return s;
    });
    return {
      m: T,
      n: N,
      tile,
      segments: [{ k: K, a: { kMajor: false, parts: [{ input: 0, count: T, ld: K, off: 0 }] }, b: { kMajor: false, parts: bparts } }],
      inputs: Array.from({ length: nInputs }, (_, i) => (biases.has(i) ? { type: 'f32' as const } : {})),
      outputs: l.parts.map(() => 'f32' as const),
      store: branches.join('\n'),
    };
  });
}

// --- kernels -------------------------------------------------------------------------------------------------------------

function forwardKernel({ inputs, backend, attrs }: { inputs: any; backend: WebGpuBackendLike; attrs: any }): TensorInfo[] {
  const l = layouts[attrs.layout as number]!;
  const ins = inputs as TensorInfo[];
  const x = ins[0]!;
  const [T, K] = x.shape as [number, number];
  const spec = forwardSpec(
    backend,
    attrs.layout,
    l,
    ins.length,
    ins.map((t) => rows(t)),
    T,
    K,
  );
  const ys = runWgsl(backend, {
    code: gemmWgsl(spec),
    inputs: ins,
    outputs: l.parts.map((p) => ({ shape: [T, p.out], dtype: 'float32' as const })),
    dispatch: gemmDispatch(spec),
    label: CONCAT_LINEAR_KERNEL,
  });
  return ys.map((z, i) => {
    const p = l.parts[i]!;
    if (p.act === 'none') return z;
    const [probs] = runWgsl(backend, { code: actCode(p.act, T, p.out), inputs: [z], outputs: [{ shape: [T, p.out], dtype: 'float32' }], dispatch: [Math.ceil(T / 64), 1, 1], label: `${CONCAT_LINEAR_KERNEL} ${p.act}` });
    disposeInfo(backend, z);
    return probs!;
  });
}

function actGradKernel({ inputs, backend, attrs }: { inputs: any; backend: WebGpuBackendLike; attrs: any }): TensorInfo {
  const [p, dp] = inputs as TensorInfo[];
  const [T, E] = p!.shape as [number, number];
  return runWgsl(backend, { code: actGradCode(attrs.act, T, E), inputs: [p!, dp!], outputs: [{ shape: [T, E], dtype: 'float32' }], dispatch: [Math.ceil(T / 64), 1, 1], label: ACT_GRAD_KERNEL })[0]!;
}

/** dx = Σ_j dZ_{part(j)}[:, cols of W_j]·W_j; inputs: dZ_0 … dZ_{n−1}, then the weights in layout order. */
function dxKernel({ inputs, backend, attrs }: { inputs: any; backend: WebGpuBackendLike; attrs: any }): TensorInfo {
  const l = layouts[attrs.layout as number]!;
  const ins = inputs as TensorInfo[];
  const n = l.parts.length;
  const T = ins[0]!.shape[0]!;
  const ws = ins.slice(n);
  const K = ws[0]!.shape[ws[0]!.shape.length - 1]!;
  const totalRows = ws.reduce((s, w) => s + rows(w), 0);
  const tile = tileFor(backend.device, T, K, totalRows);
  const spec = cachedSpec(`dx${attrs.layout}|${T}|${K}|${ws.map(rows).join(',')}|${tileKey(tile)}`, () => {
    const segments: Segment[] = [];
    let j = 0;
    l.parts.forEach((p, i) => {
      let col = 0;
      for (let q = 0; q < p.weights.length; q++, j++) {
        const r = rows(ws[j]!);
        segments.push({ k: r, a: { kMajor: false, parts: [{ input: i, count: T, ld: p.out, off: col }] }, b: { kMajor: true, parts: [{ input: n + j, count: K, ld: K, off: 0 }] } });
        col += r;
      }
    });
    return { m: T, n: K, tile, segments, inputs: ins.map(() => ({})), outputs: [K % 4 === 0 ? 'vec4' : 'f32'] };
  });
  return runWgsl(backend, { code: gemmWgsl(spec), inputs: ins, outputs: [{ shape: [T, K], dtype: 'float32' }], dispatch: gemmDispatch(spec), label: DX_KERNEL })[0]!;
}

/** dW = dZ[:, col : col + rows]ᵀ · x in the weight's shape; inputs dZ [T, out], x [T, in]. */
function dwKernel({ inputs, backend, attrs }: { inputs: any; backend: WebGpuBackendLike; attrs: any }): TensorInfo {
  const [dz, x] = inputs as TensorInfo[];
  const { col, shape } = attrs as { col: number; shape: number[] };
  const [T, out] = dz!.shape as [number, number];
  const K = x!.shape[1]!;
  const R = shape.length === 3 ? shape[0]! * shape[1]! : shape[0]!;
  const tile = tileFor(backend.device, R, K, T);
  const spec = cachedSpec(`dw|${T}|${out}|${K}|${R}|${col}|${tileKey(tile)}`, () => ({
    m: R,
    n: K,
    tile,
    segments: [{ k: T, a: { kMajor: true, parts: [{ input: 0, count: R, ld: out, off: col }] }, b: { kMajor: true, parts: [{ input: 1, count: K, ld: K, off: 0 }] } }],
    inputs: [{}, {}],
    outputs: [K % 4 === 0 ? 'vec4' : 'f32'],
  }));
  return runWgsl(backend, { code: gemmWgsl(spec), inputs: [dz!, x!], outputs: [{ shape, dtype: 'float32' }], dispatch: gemmDispatch(spec), label: DW_KERNEL })[0]!;
}

function colSumKernel({ inputs, backend }: { inputs: any; backend: WebGpuBackendLike }): TensorInfo {
  const [a] = inputs as TensorInfo[];
  const [T, C] = a!.shape as [number, number];
  const nx = Math.min(C, 65535);
  const ny = Math.ceil(C / nx);
  return runWgsl(backend, { code: colSumCode(T, C, nx), inputs: [a!], outputs: [{ shape: [C], dtype: 'float32' }], dispatch: [nx, ny, 1], label: COLSUM_KERNEL })[0]!;
}

// --- gradient ------------------------------------------------------------------------------------------------------------

function gradient(dy: Tensor | Tensor[], saved: Tensor[], attrs: any, weightIdx: number[], routerParts: number[]): Record<string, () => Tensor> {
  const l = layouts[attrs.layout as number]!;
  const dys = Array.isArray(dy) ? dy : [dy];
  const x = saved[0]!;
  const w = new Map<number, Tensor>(weightIdx.map((i, k) => [i, saved[1 + k]!]));
  const probs = new Map<number, Tensor>(routerParts.map((i, k) => [i, saved[1 + weightIdx.length + k]!]));
  const dz = new Map<number, Tensor>();
  const dZ = (i: number): Tensor => {
    const p = l.parts[i]!;
    if (p.act === 'none') return dys[i]!;
    let t = dz.get(i);
    if (!t || t.isDisposed) {
      t = keepUntilBackwardEnds(runKernel1(ACT_GRAD_KERNEL, [probs.get(i)!, dys[i]!], { act: p.act }));
      dz.set(i, t);
    }
    return t;
  };
  const out: Record<string, () => Tensor> = {};
  out['0'] = () =>
    runKernel1(
      DX_KERNEL,
      [...l.parts.map((_, i) => dZ(i)), ...l.parts.flatMap((p) => p.weights.map((j) => w.get(j)!))],
      { layout: attrs.layout },
    );
  l.parts.forEach((p, i) => {
    let col = 0;
    for (const j of p.weights) {
      const wj = w.get(j)!;
      const c = col;
      out[String(j)] = () => runKernel1(DW_KERNEL, [dZ(i), x], { col: c, shape: wj.shape });
      col += rows(wj);
    }
    if (p.bias !== undefined) out[String(p.bias)] = () => runKernel1(COLSUM_KERNEL, [dZ(i)], {});
  });
  return out;
}

const registeredLayouts = new Set<number>();
let registered = false;

function kernelName(id: number): string {
  return `${CONCAT_LINEAR_KERNEL}:${id}`;
}

/**
 * Register the kernels (webgpu backend): the gradient kernels once, the forward once per layout (its name
 * carries the layout so that its gradient saves exactly x, the weights and the router probabilities).
 */
function register(id: number): string {
  const name = kernelName(id);
  if (!registered) {
    registered = true;
    tf.registerKernel({ kernelName: ACT_GRAD_KERNEL, backendName: 'webgpu', kernelFunc: actGradKernel as any });
    tf.registerKernel({ kernelName: DX_KERNEL, backendName: 'webgpu', kernelFunc: dxKernel as any });
    tf.registerKernel({ kernelName: DW_KERNEL, backendName: 'webgpu', kernelFunc: dwKernel as any });
    tf.registerKernel({ kernelName: COLSUM_KERNEL, backendName: 'webgpu', kernelFunc: colSumKernel as any });
  }
  if (!registeredLayouts.has(id)) {
    registeredLayouts.add(id);
    const l = layouts[id]!;
    const weightIdx = l.parts.flatMap((p) => p.weights);
    const routerParts = l.parts.map((p, i) => (p.act !== 'none' ? i : -1)).filter((i) => i >= 0);
    const outputsToSave = l.parts.map((p) => p.act !== 'none');
    tf.registerKernel({ kernelName: name, backendName: 'webgpu', kernelFunc: forwardKernel as any });
    registerFamilyGradient('webgpu', {
      kernelName: name,
      inputsToSave: ['0', ...weightIdx.map(String)],
      outputsToSave,
      gradFunc: ((dy: Tensor | Tensor[], saved: Tensor[], attrs: any) => gradient(dy, saved, attrs, weightIdx, routerParts)) as any,
    } as any);
  }
  return name;
}

/** Storage buffers one module may bind on the current device (WebGPU's default 8 when the device does not say). */
function bindingLimit(): number {
  const n = (tf.backend() as any)?.device?.limits?.maxStorageBuffersPerShaderStage;
  return typeof n === 'number' && n > 0 ? n : 8;
}

/** Storage buffers the forward module of `parts` binds: x, each weight and bias, one output per part. */
const bindingsOf = (parts: ConcatLayoutPart[]): number => 1 + parts.reduce((s, p) => s + p.weights.length + (p.bias !== undefined ? 1 : 0) + 1, 0);

/** A layout cut into layouts that each fit `limit` bindings: per chunk its layout and the input indices it reads. */
interface Chunk {
  layout: ConcatLayout;
  inputs: number[];
  /** Indices of the whole layout's parts this chunk computes. */
  parts: number[];
}
const chunked = new Map<string, Chunk[] | null>();

/**
 * The layout in chunks of consecutive parts whose forward module fits `limit` storage buffers (the forward binds
 * the most: dx binds the parts' gradients, the weights and dx; dW and db 2 or 3), or null when one part alone
 * does not fit. One chunk when the whole layout fits: a concat_linear merged over several sites
 * (concat-shared-input: q, k, v with biases and LoRA A, 16 bindings) may exceed a device's limit (llvmpipe 16,
 * WebGPU's default 8), and then runs as a few GEMMs over x instead of one.
 */
function chunksOf(layout: ConcatLayout, limit: number): Chunk[] | null {
  const key = `${limit}|${JSON.stringify(layout)}`;
  const hit = chunked.get(key);
  if (hit !== undefined) return hit;
  const groups: number[][] = [];
  let cur: number[] = [];
  for (let i = 0; i < layout.parts.length; i++) {
    if (bindingsOf([layout.parts[i]!]) > limit) {
      chunked.set(key, null);
      return null;
    }
    if (cur.length && bindingsOf([...cur, i].map((j) => layout.parts[j]!)) > limit) {
      groups.push(cur);
      cur = [];
    }
    cur.push(i);
  }
  if (cur.length) groups.push(cur);
  const res = groups.map((idx) => {
    const inputs = [0];
    const parts = idx.map((i) => {
      const p = layout.parts[i]!;
      const weights = p.weights.map((w) => (inputs.push(w), inputs.length - 1));
      const bias = p.bias !== undefined ? (inputs.push(p.bias), inputs.length - 1) : undefined;
      return { out: p.out, weights, ...(bias !== undefined ? { bias } : {}), act: p.act };
    });
    return { layout: { parts }, inputs, parts: idx };
  });
  if (chunked.size > 1024) chunked.clear();
  chunked.set(key, res);
  return res;
}

/** The parts' outputs of concat_linear on the webgpu backend (inputs checked by {@link concatLinearFits}). */
export function concatLinear(inputs: Tensor[], layout: ConcatLayout): Tensor[] {
  const chunks = chunksOf(layout, bindingLimit());
  if (!chunks) throw new Error('concat_linear: a part binds more storage buffers than the device allows (concatLinearFits)');
  if (chunks.length === 1) return concatOne(inputs, layout);
  const out: Tensor[] = new Array(layout.parts.length);
  for (const c of chunks) {
    const ys = concatOne(
      c.inputs.map((i) => inputs[i]!),
      c.layout,
    );
    c.parts.forEach((p, k) => (out[p] = ys[k]!));
  }
  return out;
}

function concatOne(inputs: Tensor[], layout: ConcatLayout): Tensor[] {
  const id = layoutId(layout);
  const name = register(id);
  const r = tf.engine().runKernel(name, inputs as unknown as tf.NamedTensorMap, { layout: id } as unknown as tf.NamedAttrMap) as Tensor | Tensor[];
  return Array.isArray(r) ? r : [r];
}
