/**
 * The mixture-of-LoRA linear on WebGPU, one tfjs op with its gradient:
 *
 *   y = x·Wᵀ + b + s·(x·A_shᵀ)·B_shᵀ + Σ_{e ∈ top-k(p)} g_e · s·(x·A_eᵀ)·B_eᵀ
 *   p = softmax(x·W_rᵀ + b_r) (or sigmoid), g = p on the top-k, renormalised over them when asked
 *
 * which is, in the plan's ops, linear + moe_down_batched + router + topk_gate + moe_up_grouped + add (see
 * ../kernels/reference.ts); `moeLoraLinear` returns y, p and the dense gates [T, E] (zeros off the top-k) so
 * the load-balancing loss can read them, and takes gradients through all three. Plain LoRA is the case
 * without routed experts (the shared pair is the LoRA pair); a linear without adapters is E = RS = 0.
 *
 * Kernels (./moe-lora-wgsl.ts): forward 2 dispatches (down GEMM; base + shared + top-k B side with routing
 * fused), backward 4 (per-token routing backward and top-k B products; dx; dA; dB) plus a column sum for
 * b_r, only those whose gradients are asked, and dW / db of the base only when the base is trained. With the
 * base product apart (`base: 'f16' | 'f32'`) it is one more dispatch forward and in dx, added in the
 * adapters' GEMM epilogue. Weights keep the reference layout:
 * W [dout, din], A [r, din], B [dout, r], A_e [E, r, din], B_e [E, dout, r], W_r [E, din].
 * Registered as tfjs kernels `McpcMoeLora` (with gradient) and `McpcMoeLoraGrad` (the whole backward) on
 * the webgpu backend, and for two sites of one x (`moeLoraLinearPair`: an FFN's gate and up) `McpcMoeLoraPair`
 * and `McpcMoeLoraPairGrad`: host time per call is what bounds this layer on a GPU (each tfjs kernel costs an
 * engine round trip), so an FFN's forward+backward is a few tfjs kernels, gradients tfjs does not ask for are
 * not dispatched, outputs off the backward path get null dys (no CPU-made zeros), and the f16 copy of a frozen
 * W is made once (./gemm-f16.ts cachedCopy).
 */
import type { TensorInfo } from '@tensorflow/tfjs-core';
import { registerFamilyGradient, tf, type Tensor } from '../tfjs/index.js';
import { reference as ref, type KernelContext, type KernelStep } from '../kernels/reference.js';
import { gemm, gemmSpec } from './gemm.js';
import { gemmDispatch, gemmWgsl, tileKey, workgroupBytes, type GemmSpec, type Tile } from './gemm-wgsl.js';
import { tileFor } from './gemm-tune.js';
import { BACK_THREADS, backWgsl, cols, dASpec, dBSpec, downSpec, dxSpec, inputIndex, routerBiasSumWgsl, upSpec, type MoeShape } from './moe-lora-wgsl.js';
import { gemmF16, gemmF16Info } from './gemm-f16.js';
import { disposeInfo, runWgsl, spread, type WebGpuBackendLike } from './program.js';

/* eslint-disable @typescript-eslint/no-explicit-any -- tfjs kernel plumbing. */

export interface MoeLoraWeights {
  /** Base weight [dout, din] and bias [dout]. */
  w: Tensor;
  b?: Tensor;
  /** Shared (or plain) LoRA pair: A [RS, din], B [dout, RS]. */
  sharedA?: Tensor;
  sharedB?: Tensor;
  /** Router [E, din], bias [E]. */
  routerW?: Tensor;
  routerB?: Tensor;
  /** Routed experts: A_e [E, r, din], B_e [E, dout, r]. */
  expertA?: Tensor;
  expertB?: Tensor;
}

export interface MoeLoraOptions {
  /**
   * Where the frozen base product x·Wᵀ is computed: `fused` (default) in the kernels' first GEMM segment;
   * `f16` apart on tensor cores (f16 inputs, f32 accumulation: ./gemm-f16.ts, after probeF16 said ok), the
   * adapters staying f32; `f32` apart through the f32 GEMM (the same plumbing, for adapters without f16).
   */
  base?: 'fused' | 'f16' | 'f32';
  scale: number;
  topK?: number;
  renormalize?: boolean;
  activation?: 'softmax' | 'sigmoid';
}

export interface MoeLoraResult {
  y: Tensor;
  /** Router probabilities [T, E] (absent without routed experts). */
  p?: Tensor;
  /** Gates [T, E], zero off each token's top-k (absent without routed experts). */
  gates?: Tensor;
}

export const MOE_KERNEL = 'McpcMoeLora';
export const PAIR_KERNEL = 'McpcMoeLoraPair';

/** The kernel's shape: its attrs (moeLoraLinear interns them with T), or a copy with x's T. */
function shapeOf(x: TensorInfo, inputs: TensorInfo[], attrs: any): MoeShape {
  const s = attrs as MoeShape;
  void inputs;
  return s.T === x.shape[0] ? s : { ...s, T: x.shape[0] };
}

/**
 * A number per distinct attrs object (by value: JSON once per object), so memo keys need no JSON.stringify of
 * the shape per kernel call; moeLoraLinear hands the same interned object to every call of a shape.
 */
const ids = new WeakMap<object, number>();
const idByJson = new Map<string, number>();
function idOf(a: object): number {
  let id = ids.get(a);
  if (id === undefined) {
    const json = JSON.stringify(a);
    id = idByJson.get(json);
    if (id === undefined) idByJson.set(json, (id = idByJson.size + 1));
    ids.set(a, id);
  }
  return id;
}
/** The first attrs object seen with these values (stable identity for idOf and tfjs's attrs). */
const interned = new Map<string, object>();
function intern<A extends object>(a: A): A {
  let key = '';
  for (const k in a) key += `${k}=${(a as Record<string, unknown>)[k]};`;
  let v = interned.get(key) as A | undefined;
  if (v === undefined) {
    if (interned.size > 4096) interned.clear();
    interned.set(key, (v = a));
  }
  return v;
}

const tileOf = (backend: WebGpuBackendLike, spec: { m: number; n: number }, k: number): Tile => tileFor(backend.device, spec.m, spec.n, k);

/**
 * Specs and modules by (builder, shape, tile): a kernel call rebuilds neither (host time per call mattered
 * more than the GPU's on an H200: 17 ms to record a layer's forward and backward against 7.7 ms of GPU work).
 */
const memo = new Map<string, unknown>();
function once<T>(key: string, make: () => T): T {
  let v = memo.get(key) as T | undefined;
  if (v === undefined) {
    v = make();
    if (memo.size > 4096) memo.clear();
    memo.set(key, v);
  }
  return v;
}

/** Smaller tiles to fall back to when a tile and a kernel's own workgroup arrays exceed the device's limit. */
const FALLBACK: Tile[] = [
  { bm: 64, bn: 64, bk: 16, tm: 4, tn: 4 },
  { bm: 32, bn: 32, bk: 16, tm: 4, tn: 4 },
];

/**
 * The spec a builder makes with `tile`, memoised, unless the module's workgroup memory (the tile's plus the
 * kernel's own arrays) exceeds the device's limit: then with the first fallback tile that fits. (The tuner
 * times plain GEMMs, whose tiles alone fit; a tile of 32 KB and a kernel's 2 KB do not fit llvmpipe's 32 KB.)
 */
function fit<R>(backend: WebGpuBackendLike, name: string, s: MoeShape, tile: Tile, build: (t: Tile) => R, specOf: (r: R) => GemmSpec = (r) => r as unknown as GemmSpec): R {
  const limit = Number(backend.device?.limits?.maxComputeWorkgroupStorageSize ?? 16384);
  return once(`${name}#${idOf(s)}|${tileKey(tile)}|${limit}`, () => {
    for (const t of [tile, ...FALLBACK]) {
      const r = build(t);
      if (workgroupBytes(gemmWgsl(specOf(r))) <= limit) return r;
    }
    throw new Error(`${name}: no GEMM tile fits ${limit} bytes of workgroup memory`);
  });
}

function runGemm(backend: WebGpuBackendLike, spec: GemmSpec, inputs: TensorInfo[], outShapes: number[][], label: string): TensorInfo[] {
  return runWgsl(backend, { code: gemmWgsl(spec), inputs, outputs: outShapes.map((shape) => ({ shape, dtype: 'float32' as const })), dispatch: gemmDispatch(spec), label });
}

/** Where the base product is computed apart (attrs.apart): the f16 GEMM on tensor cores, or the f32 GEMM. */
type Apart = 'f16' | 'f32';

/**
 * The base product apart, inside the kernel (a TensorInfo the caller disposes): x·Wᵀ (forward) or dy·W (dx).
 * On the f16 path W's f16 copy is cast once and cached while W lives (gemm-f16.ts cachedCopy): W is frozen.
 */
function baseProduct(backend: WebGpuBackendLike, apart: Apart, a: TensorInfo, w: TensorInfo, dx: boolean): TensorInfo {
  if (apart === 'f16') return gemmF16Info(backend, a, w, false, !dx, { frozenB: true });
  const [M, K] = a.shape as [number, number];
  const N = dx ? w.shape[1]! : w.shape[0]!;
  const tile = tileFor(backend.device, M, N, K);
  const spec = once(`base${M},${K},${N}|${+dx}|${tileKey(tile)}`, () => gemmSpec(a.shape, w.shape, false, !dx, tile, false));
  return runGemm(backend, spec, [a, w], [[M, N]], 'McpcMoeLoraBase')[0]!;
}

/** Forward: outputs [y, G] (plain) or [y, p, gates, G]. */
function forwardKernel({ inputs, backend, attrs }: { inputs: any; backend: WebGpuBackendLike; attrs: any }): TensorInfo[] {
  const ins = Object.keys(inputs)
    .sort((a, b) => Number(a) - Number(b))
    .map((k) => inputs[k] as TensorInfo);
  const s = shapeOf(ins[0], ins, attrs);
  const ix = inputIndex(s);
  const { R } = cols(s);
  const downTile = tileOf(backend, { m: s.T, n: R }, s.din);
  const down = fit(backend, 'down', s, downTile, (t) => downSpec(s, t));
  const downIns = [ins[ix.x]];
  if (s.RS) downIns.push(ins[ix.aSh]);
  if (s.E) downIns.push(ins[ix.aE], ins[ix.wr]);
  const G = R > 0 ? runGemm(backend, down, downIns, [[s.T, R]], 'McpcMoeLoraDown')[0] : backend.makeTensorInfo([s.T, 0], 'float32');
  if (R === 0) backend.tensorMap.get(G.dataId).values = new Float32Array(0);
  const upTile = tileOf(backend, { m: s.T, n: s.dout }, s.din + s.RS);
  const { spec, inputs: names } = fit(backend, 'up', s, upTile, (t) => upSpec(s, t), (r) => r.spec);
  const byName: Record<string, TensorInfo> = { x: ins[ix.x], w: ins[ix.w], G, Gs: G };
  if (s.bias) byName.b = ins[ix.b];
  if (s.RS) byName.bSh = ins[ix.bSh];
  if (s.E && s.routerBias) byName.br = ins[ix.br];
  if (s.E) byName.bE = ins[ix.bE];
  const apart = (attrs as MoeShape).apart;
  if (apart) byName.add = baseProduct(backend, apart, ins[ix.x], ins[ix.w], false);
  const outShapes = s.E ? [[s.T, s.dout], [s.T, s.E], [s.T, s.E]] : [[s.T, s.dout]];
  const outs = runGemm(backend, spec, names.map((n) => byName[n]!), outShapes, 'McpcMoeLoraUp');
  if (byName.add) disposeInfo(backend, byName.add);
  return [...outs, G];
}

/** Backward part 1: outputs [dG, Hs]. Inputs (array): dy, G, then br?, bSh?, bE?, dp?, dgates? as attrs say. */
function backKernel({ inputs, backend, attrs }: { inputs: any; backend: WebGpuBackendLike; attrs: any }): TensorInfo[] {
  const ins = Object.keys(inputs)
    .sort((a, b) => Number(a) - Number(b))
    .map((k) => inputs[k] as TensorInfo);
  const s = shapeOf(ins[0], ins, attrs);
  const { R, H } = cols(s);
  const upstream = { dp: !!attrs.hasDp, dgates: !!attrs.hasDgates };
  const { code } = once(`back#${idOf(s)}|${+upstream.dp}${+upstream.dgates}`, () => backWgsl(s, upstream));
  return runWgsl(backend, {
    code,
    inputs: ins,
    outputs: [
      { shape: [s.T, R], dtype: 'float32' },
      { shape: [s.T, H], dtype: 'float32' },
    ],
    dispatch: spread(s.T),
    label: 'McpcMoeLoraBack',
  });
}

function dxKernel({ inputs, backend, attrs, acc }: { inputs: any; backend: WebGpuBackendLike; attrs: any; acc?: TensorInfo }): TensorInfo {
  const ins = Object.keys(inputs)
    .sort((a, b) => Number(a) - Number(b))
    .map((k) => inputs[k] as TensorInfo);
  const s = shapeOf(ins[0], ins, attrs);
  const dxTile = tileOf(backend, { m: s.T, n: s.din }, s.dout);
  const { spec, inputs: names } = fit(backend, acc ? 'dxacc' : 'dx', s, dxTile, (t) => dxSpec(s, t, !!acc), (r) => r.spec);
  const apart = (attrs as MoeShape).apart;
  if (!apart && !acc) return runGemm(backend, spec, ins, [[s.T, s.din]], 'McpcMoeLoraDx')[0];
  // Inputs dy, W, dG, A_sh?, A_e?, W_r? (dG, A_sh?, ... without the base): with the base apart, dy·W is
  // computed apart and added in the adapters' GEMM epilogue; `acc` (another site's dx of the same x) too.
  const withBase = s.base !== false || !!apart;
  const byName: Record<string, TensorInfo> = {};
  let i = 0;
  if (withBase) {
    byName.dy = ins[i++]!;
    byName.w = ins[i++]!;
  }
  byName.dG = ins[i++]!;
  if (s.RS) byName.aSh = ins[i++]!;
  if (s.E) {
    byName.aE = ins[i++]!;
    byName.wr = ins[i++]!;
  }
  if (apart) byName.add = baseProduct(backend, apart, byName.dy!, byName.w!, true);
  if (acc) byName.acc = acc;
  const out = runGemm(backend, spec, names.map((n) => byName[n]!), [[s.T, s.din]], 'McpcMoeLoraDx')[0];
  if (byName.add) disposeInfo(backend, byName.add);
  return out;
}

function dAKernel({ inputs, backend, attrs }: { inputs: any; backend: WebGpuBackendLike; attrs: any }): TensorInfo[] {
  const ins = [inputs[0], inputs[1]] as TensorInfo[];
  const s = shapeOf(ins[0], ins, attrs);
  const { R } = cols(s);
  const daTile = tileOf(backend, { m: R, n: s.din }, s.T);
  const spec = fit(backend, 'dA', s, daTile, (t) => dASpec(s, t));
  const shapes: number[][] = [];
  if (s.RS) shapes.push([s.RS, s.din]);
  if (s.E) shapes.push([s.E, s.r, s.din], [s.E, s.din]);
  const outs = runGemm(backend, spec, ins, shapes, 'McpcMoeLoraDA');
  if (!s.E || !s.routerBias) return outs;
  // db_r: the column sum of dG's router block, in the same kernel (no Slice and Sum kernels).
  const code = once(`sum#${idOf(s)}`, () => routerBiasSumWgsl(s));
  return [...outs, ...runWgsl(backend, { code, inputs: [ins[0]], outputs: [{ shape: [s.E], dtype: 'float32' }], dispatch: [s.E, 1, 1], label: 'McpcMoeLoraDbr' })];
}

function dBKernel({ inputs, backend, attrs }: { inputs: any; backend: WebGpuBackendLike; attrs: any }): TensorInfo[] {
  const ins = [inputs[0], inputs[1]] as TensorInfo[];
  const s = shapeOf(ins[0], ins, attrs);
  const { H } = cols(s);
  const dbTile = tileOf(backend, { m: s.dout, n: H }, s.T);
  const spec = fit(backend, 'dB', s, dbTile, (t) => dBSpec(s, t));
  const shapes: number[][] = [];
  if (s.RS) shapes.push([s.dout, s.RS]);
  if (s.E) shapes.push([s.E, s.dout, s.r]);
  return runGemm(backend, spec, ins, shapes, 'McpcMoeLoraDB');
}

const run = (name: string, inputs: Tensor[], attrs: object): Tensor[] => {
  const r = tf.engine().runKernel(name, inputs as any, attrs as any);
  return Array.isArray(r) ? (r as Tensor[]) : [r as Tensor];
};

/** Attrs of McpcMoeLoraGrad: the forward's, and what the backward has and computes. */
interface GradAttrs extends MoeShape {
  hasDp: boolean;
  hasDgates: boolean;
  /** Which gradients to compute: dx; dA_sh, dA_e, dW_r (and db_r); dB_sh, dB_e. */
  needX: boolean;
  needA: boolean;
  needB: boolean;
}

/**
 * The backward in one tfjs kernel: per-token routing backward (dG, Hs), then dx, dA (+ db_r) and dB as asked,
 * dG and Hs freed inside. Inputs: dy, G, the forward's inputs (inputIndex order), dp?, dgates?. Outputs, in
 * order: dx?; dA_sh?, dA_e, dW_r, db_r? (needA); dB_sh?, dB_e (needB). One kernel instead of four tfjs kernels
 * (each an engine round trip: scopes, tensors, tape bookkeeping) and two intermediate tensors per site.
 */
function gradKernel({ inputs, backend, attrs, acc }: { inputs: any; backend: WebGpuBackendLike; attrs: any; acc?: TensorInfo }): TensorInfo[] {
  const all = Object.keys(inputs)
    .sort((a, b) => Number(a) - Number(b))
    .map((k) => inputs[k] as TensorInfo);
  const a = attrs as GradAttrs;
  const [dy, G] = all as [TensorInfo, TensorInfo];
  const ins = all.slice(2);
  const s = shapeOf(dy, ins, a);
  const ix = inputIndex(s);
  const backIns = [dy, G];
  if (s.E && s.routerBias) backIns.push(ins[ix.br]!);
  if (s.RS) backIns.push(ins[ix.bSh]!);
  if (s.E) backIns.push(ins[ix.bE]!);
  let extra = 2 + ix.count;
  if (a.hasDp) backIns.push(all[extra++]!);
  if (a.hasDgates) backIns.push(all[extra++]!);
  const [dG, Hs] = backKernel({ inputs: backIns, backend, attrs: a }) as [TensorInfo, TensorInfo];
  const outs: TensorInfo[] = [];
  if (a.needX) {
    const withBase = s.base !== false || !!s.apart;
    const dxIns = withBase ? [dy, ins[ix.w]!, dG] : [dG];
    if (s.RS) dxIns.push(ins[ix.aSh]!);
    if (s.E) dxIns.push(ins[ix.aE]!, ins[ix.wr]!);
    outs.push(dxKernel({ inputs: dxIns, backend, attrs: a, acc }));
  }
  if (a.needA) outs.push(...dAKernel({ inputs: [dG, ins[ix.x]!], backend, attrs: a }));
  if (a.needB) outs.push(...dBKernel({ inputs: [dy, Hs], backend, attrs: a }));
  disposeInfo(backend, dG);
  disposeInfo(backend, Hs);
  return outs;
}

/** One site's backward: closures for W and b, and the McpcMoeLoraGrad call (inputs, attrs) whose outputs `take` maps. */
interface SiteGrad {
  g: Record<string, () => Tensor>;
  /** Absent when nothing of the adapters' backward is asked for. */
  kernel?: { inputs: Tensor[]; attrs: GradAttrs; outputs: number; take: (outs: Tensor[]) => void };
}

/** What McpcMoeLoraGrad outputs for these attrs (see gradKernel). */
function gradOutputs(a: GradAttrs): number {
  return (a.needX ? 1 : 0) + (a.needA ? (a.RS ? 1 : 0) + (a.E ? 2 + (a.routerBias ? 1 : 0) : 0) : 0) + (a.needB ? (a.RS ? 1 : 0) + (a.E ? 1 : 0) : 0);
}

/**
 * The gradient of one site: dys [dy, dp?, dgates?, dG (unused)], its inputs, G. `need` (the input indices tfjs
 * asks gradients of, when known: see withNullDys) leaves out the dispatches of gradients nobody reads
 * (frozen adapters, an input x that needs none).
 */
function siteGrad(d: (Tensor | null | undefined)[], ins: Tensor[], G: Tensor, s: MoeShape, need?: Set<string>): SiteGrad {
  const ix = inputIndex(s);
  // dys of outputs off the backward path are null here (see withNullDys), zeros from tfjs's own wrapper.
  const dy = d[0] ?? tf.zeros([ins[ix.x]!.shape[0]!, s.dout]);
  const g: Record<string, () => Tensor> = {};
  const apart = s.apart;
  const wants = (...idx: number[]) => idx.some((i) => i >= 0 && (!need || need.has(String(i))));
  // dW = dyᵀ·x, only when W is trained (tfjs calls only the closures of inputs on the path to what is asked);
  // without the base product (base false, not apart) W does not reach y through this kernel.
  g[ix.w] =
    apart === 'f16' ? () => gemmF16(dy, ins[ix.x]!, true, false) : s.base === false && !apart ? () => tf.zerosLike(ins[ix.w]!) : () => gemm(dy, ins[ix.x]!, true, false);
  if (s.bias) g[ix.b] = () => tf.sum(dy, 0);
  if (s.RS === 0 && s.E === 0) {
    g[ix.x] = () => gemm(dy, ins[ix.w]!, false, false);
    return { g };
  }
  const needX = wants(ix.x);
  const needA = wants(ix.aSh, ix.aE, ix.wr, ix.br);
  const needB = wants(ix.bSh, ix.bE);
  if (!needX && !needA && !needB) return { g };
  const hasDp = s.E > 0 && !!d[1];
  const hasDgates = s.E > 0 && !!d[2];
  const inputs = [dy, G, ...ins];
  if (hasDp) inputs.push(d[1]!);
  if (hasDgates) inputs.push(d[2]!);
  const attrs = intern({ ...s, hasDp, hasDgates, needX, needA, needB });
  const take = (outs: Tensor[]) => {
    let o = 0;
    const next = () => {
      const t = outs[o++]!;
      return () => t;
    };
    if (needX) g[ix.x] = next();
    if (needA) {
      if (s.RS) g[ix.aSh] = next();
      if (s.E) {
        g[ix.aE] = next();
        g[ix.wr] = next();
        if (s.routerBias) g[ix.br] = next();
      }
    }
    if (needB) {
      if (s.RS) g[ix.bSh] = next();
      if (s.E) g[ix.bE] = next();
    }
  };
  return { g, kernel: { inputs, attrs, outputs: gradOutputs(attrs), take } };
}

/** The gradient of McpcMoeLora (see siteGrad). */
function gradient(dys: Tensor | Tensor[], saved: Tensor[], attrs: any, need?: Set<string>): Record<string, () => Tensor> {
  const s = attrs as MoeShape;
  const ix = inputIndex(s);
  // Saved: the inputs, then G (plain) or p and G (routed): G is last.
  const site = siteGrad(Array.isArray(dys) ? dys : [dys], saved.slice(0, ix.count), saved[saved.length - 1]!, s, need);
  // Computed once, here, for every closure (freed when backprop ends).
  if (site.kernel) site.kernel.take(run('McpcMoeLoraGrad', site.kernel.inputs, site.kernel.attrs));
  return site.g;
}

// --- two sites reading the same x (an FFN's gate and up) as one op ------------------------------------------------

/** Attrs of McpcMoeLoraPair: each site's, and how many of the op's inputs are the first site's (x included). */
interface PairAttrs {
  a: MoeShape;
  b: MoeShape;
  n1: number;
}
const pairs = new Map<string, PairAttrs>();
function pairAttrs(a: MoeShape, b: MoeShape, n1: number): PairAttrs {
  const key = `${idOf(a)}|${idOf(b)}|${n1}`;
  let p = pairs.get(key);
  if (!p) pairs.set(key, (p = { a, b, n1 }));
  return p;
}

/** Inputs: x and the first site's weights (n1 in all), then the second site's weights; outputs: each site's. */
function pairKernel({ inputs, backend, attrs }: { inputs: any; backend: WebGpuBackendLike; attrs: any }): TensorInfo[] {
  const all = Object.keys(inputs)
    .sort((a, b) => Number(a) - Number(b))
    .map((k) => inputs[k] as TensorInfo);
  const { a, b, n1 } = attrs as PairAttrs;
  return [...forwardKernel({ inputs: all.slice(0, n1), backend, attrs: a }), ...forwardKernel({ inputs: [all[0]!, ...all.slice(n1)], backend, attrs: b })];
}

interface PairGradAttrs {
  a?: GradAttrs;
  b?: GradAttrs;
  /** McpcMoeLoraGrad inputs of the first site. */
  n1: number;
}

/**
 * Both sites' backward in one tfjs kernel; the second site's dx GEMM adds the first's in its epilogue (x's
 * gradient without a tfjs Add). Outputs: dx? then each site's other outputs.
 */
function pairGradKernel({ inputs, backend, attrs }: { inputs: any; backend: WebGpuBackendLike; attrs: any }): TensorInfo[] {
  const all = Object.keys(inputs)
    .sort((a, b) => Number(a) - Number(b))
    .map((k) => inputs[k] as TensorInfo);
  const { a, b, n1 } = attrs as PairGradAttrs;
  const outs1 = a ? gradKernel({ inputs: all.slice(0, n1), backend, attrs: a }) : [];
  const acc = a?.needX ? outs1[0] : undefined;
  const outs2 = b ? gradKernel({ inputs: all.slice(n1), backend, attrs: b, acc }) : [];
  if (acc) disposeInfo(backend, acc);
  return acc ? [outs2[0]!, ...outs1.slice(1), ...outs2.slice(1)] : [...outs1, ...outs2];
}

function pairGradient(dys: (Tensor | null)[], saved: Tensor[], attrs: PairAttrs, need?: Set<string>): Record<string, () => Tensor> {
  const { a, b, n1 } = attrs;
  const c2 = inputIndex(b).count;
  const nIn = n1 + c2 - 1;
  // Saved: every input, then every output (each site's G last of its outputs).
  const o1 = outputsOf(a.E);
  const o2 = outputsOf(b.E);
  const outs = saved.slice(nIn);
  const ins1 = saved.slice(0, n1);
  const ins2 = [saved[0]!, ...saved.slice(n1, nIn)];
  // Input i of the pair is input i of the first site (i < n1) or input i − n1 + 1 of the second; x is both's 0.
  const to2 = (i: number) => (i === 0 ? 0 : i + n1 - 1);
  let need1: Set<string> | undefined;
  let need2: Set<string> | undefined;
  if (need) {
    need1 = new Set([...need].filter((k) => Number(k) < n1));
    need2 = new Set();
    for (const k of need) {
      const i = Number(k);
      if (i === 0) need2.add('0');
      else if (i >= n1) need2.add(String(i - n1 + 1));
    }
  }
  const s1 = siteGrad(dys.slice(0, o1), ins1, outs[o1 - 1]!, a, need1);
  const s2 = siteGrad(dys.slice(o1, o1 + o2), ins2, outs[o1 + o2 - 1]!, b, need2);
  const g: Record<string, () => Tensor> = {};
  const k1 = s1.kernel;
  const k2 = s2.kernel;
  if (k1 || k2) {
    const dxBoth = !!k1?.attrs.needX && !!k2?.attrs.needX;
    const ga = pairGradAttrsOf(k1?.attrs, k2?.attrs, k1?.inputs.length ?? 0);
    const outsAll = run('McpcMoeLoraPairGrad', [...(k1?.inputs ?? []), ...(k2?.inputs ?? [])], ga);
    if (dxBoth) {
      const dx = outsAll[0]!;
      const n1o = k1!.outputs - 1;
      k1!.take([dx, ...outsAll.slice(1, 1 + n1o)]);
      k2!.take([dx, ...outsAll.slice(1 + n1o)]);
    } else {
      const n1o = k1?.outputs ?? 0;
      k1?.take(outsAll.slice(0, n1o));
      k2?.take(outsAll.slice(n1o));
    }
  }
  for (const [k, f] of Object.entries(s1.g)) g[k] = f;
  for (const [k, f] of Object.entries(s2.g)) if (k !== '0' || !(k in g)) g[to2(Number(k))] = f;
  return g;
}

const pairGrads = new Map<string, PairGradAttrs>();
function pairGradAttrsOf(a: GradAttrs | undefined, b: GradAttrs | undefined, n1: number): PairGradAttrs {
  const key = `${a ? idOf(a) : 0}|${b ? idOf(b) : 0}|${n1}`;
  let p = pairGrads.get(key);
  if (!p) pairGrads.set(key, (p = { ...(a ? { a } : {}), ...(b ? { b } : {}), n1 }));
  return p;
}

let registered = false;

export function registerMoeLora(): void {
  if (registered) return;
  registered = true;
  const k = (kernelName: string, kernelFunc: unknown) => tf.registerKernel({ kernelName, backendName: 'webgpu', kernelFunc: kernelFunc as any });
  k(MOE_KERNEL, forwardKernel);
  k('McpcMoeLoraGrad', gradKernel);
  k(PAIR_KERNEL, pairKernel);
  k('McpcMoeLoraPairGrad', pairGradKernel);
  registerFamilyGradient('webgpu', { kernelName: MOE_KERNEL, saveAllInputs: true, outputsToSave: [false, true, false, true], gradFunc: gradient } as any);
  // Every output saved (shares, no copies): the gradient finds each site's G by position.
  registerFamilyGradient('webgpu', { kernelName: PAIR_KERNEL, saveAllInputs: true, outputsToSave: Array(8).fill(true), gradFunc: (dys: any, saved: Tensor[], attrs: any) => pairGradient(dys, saved, attrs) } as any);
}

/** How many outputs the forward kernel has (G is last). */
const outputsOf = (E: number) => (E ? 4 : 2);

/** The kernel attrs of one site (interned), after checking its weights. */
function siteAttrs(x: Tensor, wts: MoeLoraWeights, opts: MoeLoraOptions): MoeShape {
  const E = wts.expertA ? wts.expertA.shape[0] : 0;
  const RS = wts.sharedA ? wts.sharedA.shape[0] : 0;
  const r = wts.expertA ? wts.expertA.shape[1]! : 0;
  const shape: MoeShape = {
    T: x.shape[0]!,
    din: x.shape[1]!,
    dout: wts.w.shape[0]!,
    RS,
    E,
    r: r ?? 0,
    topK: Math.max(1, Math.min(opts.topK ?? E, E || 1)),
    renormalize: opts.renormalize ?? true,
    activation: opts.activation ?? 'softmax',
    scale: opts.scale,
    bias: !!wts.b,
    routerBias: !!wts.routerB,
  };
  if (E && (!wts.routerW || !wts.expertB)) throw new Error('moeLoraLinear: routed experts need routerW and expertB');
  if (RS && !wts.sharedB) throw new Error('moeLoraLinear: sharedA without sharedB');
  const apart = opts.base === 'f16' || opts.base === 'f32';
  // Apart: y = x·Wᵀ (the f16 or f32 GEMM, W's f16 copy cached) added in the adapters' up GEMM's epilogue, in the
  // same tfjs kernel; its backward computes dy·W the same way inside McpcMoeLoraGrad (dW, if W is trained, apart).
  return intern(apart && (RS || E) ? { ...shape, base: false, addend: true, apart: opts.base as Apart } : shape);
}

const resultOf = (outs: Tensor[], E: number): MoeLoraResult => (E ? { y: outs[0]!, p: outs[1], gates: outs[2] } : { y: outs[0]! });

/** The mixture-of-LoRA linear (see the top of the file). x [T, din]. */
export function moeLoraLinear(x: Tensor, wts: MoeLoraWeights, opts: MoeLoraOptions, useReference = false): MoeLoraResult {
  const attrs = siteAttrs(x, wts, opts);
  if (useReference || tf.getBackend() !== 'webgpu') return reference(x, wts, attrs);
  registerMoeLora();
  const tape = (tf.engine() as any).isTapeOn() as boolean;
  const outs = tf.engine().runKernel(MOE_KERNEL, moeInputs(x, wts, attrs.RS, attrs.E) as any, attrs as any) as unknown as Tensor[];
  if (outs.length !== outputsOf(attrs.E)) throw new Error(`McpcMoeLora returned ${outs.length} outputs`);
  // G (the last output) is the saved activation of the backward (kept by the tape through the kernel's outputs).
  if (tape) withNullDys(outs[0]!, (dys, saved, need) => gradient(dys as Tensor[], saved, attrs, need));
  return resultOf(outs, attrs.E);
}

/**
 * Two mixture-of-LoRA linears of the same x (an FFN's gate and up projections), as one tfjs op
 * (`McpcMoeLoraPair`, the same dispatches as two calls): its backward is one tfjs kernel too, and x's gradient
 * is summed in the second dx GEMM's epilogue instead of by a tfjs Add. Sites without adapters, another
 * backend or `useReference`: two moeLoraLinear calls.
 */
export function moeLoraLinearPair(x: Tensor, sites: [MoeLoraWeights, MoeLoraWeights], opts: MoeLoraOptions, useReference = false): [MoeLoraResult, MoeLoraResult] {
  const [w1, w2] = sites;
  const a = siteAttrs(x, w1, opts);
  const b = siteAttrs(x, w2, opts);
  if (useReference || tf.getBackend() !== 'webgpu' || !(a.RS || a.E) || !(b.RS || b.E)) return [moeLoraLinear(x, w1, opts, useReference), moeLoraLinear(x, w2, opts, useReference)];
  registerMoeLora();
  const ins1 = moeInputs(x, w1, a.RS, a.E);
  const ins2 = moeInputs(x, w2, b.RS, b.E);
  const attrs = pairAttrs(a, b, ins1.length);
  const tape = (tf.engine() as any).isTapeOn() as boolean;
  const outs = tf.engine().runKernel(PAIR_KERNEL, [...ins1, ...ins2.slice(1)] as any, attrs as any) as unknown as Tensor[];
  const o1 = outputsOf(a.E);
  if (outs.length !== o1 + outputsOf(b.E)) throw new Error(`McpcMoeLoraPair returned ${outs.length} outputs`);
  if (tape) withNullDys(outs[0]!, (dys, saved, need) => pairGradient(dys, saved, attrs, need));
  return [resultOf(outs.slice(0, o1), a.E), resultOf(outs.slice(o1), b.E)];
}

/**
 * tfjs's tape node wraps a gradient so that every output off the backward path gets a dy of zeros, made on
 * the CPU and uploaded (p and gates when only y is used: [T, E] each, every call, and a [T, R] array for G,
 * which is never read). The node just recorded for `y` calls the gradient directly instead, with those dys
 * null (the gradient treats a missing dp or dgates as zero, without reading a buffer).
 */
function withNullDys(y: Tensor, grad: (dys: (Tensor | null)[], saved: Tensor[], need?: Set<string>) => Record<string, () => Tensor>): void {
  const tape = (tf.engine() as any).state.activeTape as { outputs: Tensor[]; saved: Tensor[]; gradient?: unknown }[] | undefined;
  const node = tape?.[tape.length - 1];
  if (!node || node.outputs[0] !== y || !node.gradient) return;
  // backpropagateGradients calls node.gradient(dys) on its pruned copy of the node, whose inputs are those
  // needing a gradient: `this` says which (all, if a tfjs version calls it otherwise).
  node.gradient = function (this: { inputs?: Record<string, unknown> } | undefined, dys: (Tensor | null)[]) {
    const need = this?.inputs && typeof this.inputs === 'object' ? new Set(Object.keys(this.inputs)) : undefined;
    return grad(dys, node.saved, need);
  };
}

/** The kernel's inputs in inputIndex order. */
function moeInputs(x: Tensor, wts: MoeLoraWeights, RS: number, E: number): Tensor[] {
  const inputs: Tensor[] = [x, wts.w];
  if (wts.b) inputs.push(wts.b);
  if (RS) inputs.push(wts.sharedA!, wts.sharedB!);
  if (E) {
    inputs.push(wts.routerW!);
    if (wts.routerB) inputs.push(wts.routerB);
    inputs.push(wts.expertA!, wts.expertB!);
  }
  return inputs;
}

/** The same function as the plan's reference kernels compute it (any backend). */
function reference(x: Tensor, w: MoeLoraWeights, s: Omit<MoeShape, 'T'>): MoeLoraResult {
  const step = (op: KernelStep['op'], attrs: Record<string, unknown>): KernelStep => ({ node: 'moe_lora', op, inputs: [], outputs: [], attrs });
  const ctx = undefined as unknown as KernelContext;
  const terms = [ref.linear(w.b ? [x, w.w, w.b] : [x, w.w], step('linear', {}), ctx)[0]];
  if (s.RS) {
    const h = ref.lora_down([x, w.sharedA!], step('lora_down', {}), ctx)[0];
    terms.push(ref.lora_up([h, w.sharedB!], step('lora_up', { scale: s.scale }), ctx)[0]);
  }
  if (!s.E) return { y: terms.length === 1 ? terms[0] : tf.addN(terms) };
  const p = ref.router(w.routerB ? [x, w.routerW!, w.routerB] : [x, w.routerW!], step('router', { activation: s.activation }), ctx)[0];
  const gates = ref.topk_gate([p], step('topk_gate', { k: s.topK, renormalize: s.renormalize }), ctx)[0];
  const h = ref.moe_down_batched([x, w.expertA!], step('moe_down_batched', {}), ctx)[0];
  terms.push(ref.moe_up_grouped([h, gates, w.expertB!], step('moe_up_grouped', { sharedRank: 0, rank: s.r, experts: s.E, scale: s.scale }), ctx)[0]);
  return { y: tf.addN(terms), p, gates };
}

export { BACK_THREADS };
