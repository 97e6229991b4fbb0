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
 * the webgpu backend: host time per call is what bounds this layer on a GPU, and each tfjs kernel costs an
 * engine round trip.
 */
import type { TensorInfo } from '@tensorflow/tfjs-core';
import { tf, type Tensor } from '../tfjs/index.js';
import { reference as ref, type KernelContext, type KernelStep } from '../kernels/reference.js';
import { gemm } from './gemm.js';
import { gemmDispatch, gemmWgsl, workgroupBytes, type GemmSpec, type Tile } from './gemm-wgsl.js';
import { tileFor } from './gemm-tune.js';
import { BACK_THREADS, backWgsl, cols, dASpec, dBSpec, downSpec, dxSpec, inputIndex, routerBiasSumWgsl, upSpec, type MoeShape } from './moe-lora-wgsl.js';
import { gemmF16, gemmF16Info } from './gemm-f16.js';
import { gemmSpec } from './gemm.js';
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
const tileKey = (t: Tile) => `${t.bm},${t.bn},${t.bk},${t.tm},${t.tn},${+!!t.pf},${+!!t.db}`;

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

function dxKernel({ inputs, backend, attrs }: { inputs: any; backend: WebGpuBackendLike; attrs: any }): TensorInfo {
  const ins = Object.keys(inputs)
    .sort((a, b) => Number(a) - Number(b))
    .map((k) => inputs[k] as TensorInfo);
  const s = shapeOf(ins[0], ins, attrs);
  const dxTile = tileOf(backend, { m: s.T, n: s.din }, s.dout);
  const { spec, inputs: names } = fit(backend, 'dx', s, dxTile, (t) => dxSpec(s, t), (r) => r.spec);
  const apart = (attrs as MoeShape).apart;
  if (!apart) return runGemm(backend, spec, ins, [[s.T, s.din]], 'McpcMoeLoraDx')[0];
  // Inputs dy, W, dG, A_sh?, A_e?, W_r?: dy·W apart, added in the adapters' GEMM epilogue.
  const add = baseProduct(backend, apart, ins[0], ins[1], true);
  const byName: Record<string, TensorInfo> = { dG: ins[2], add };
  let i = 3;
  if (s.RS) byName.aSh = ins[i++];
  if (s.E) {
    byName.aE = ins[i++];
    byName.wr = ins[i++];
  }
  const out = runGemm(backend, spec, names.map((n) => byName[n]!), [[s.T, s.din]], 'McpcMoeLoraDx')[0];
  disposeInfo(backend, add);
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
function gradKernel({ inputs, backend, attrs }: { inputs: any; backend: WebGpuBackendLike; attrs: any }): TensorInfo[] {
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
    outs.push(dxKernel({ inputs: dxIns, backend, attrs: a }));
  }
  if (a.needA) outs.push(...dAKernel({ inputs: [dG, ins[ix.x]!], backend, attrs: a }));
  if (a.needB) outs.push(...dBKernel({ inputs: [dy, Hs], backend, attrs: a }));
  disposeInfo(backend, dG);
  disposeInfo(backend, Hs);
  return outs;
}

/**
 * The gradient of McpcMoeLora. `need` (the input indices tfjs asks gradients of, when known: see withNullDys)
 * leaves out the dispatches of gradients nobody reads (frozen adapters, an input x that needs none).
 */
function gradient(dys: Tensor | Tensor[], saved: Tensor[], attrs: any, need?: Set<string>): Record<string, () => Tensor> {
  const s = attrs as MoeShape;
  const ix = inputIndex(s);
  const ins = saved.slice(0, ix.count);
  // Saved: the inputs, then G (plain) or p and G (routed): G is last.
  const G = saved[saved.length - 1]!;
  const d = Array.isArray(dys) ? dys : [dys];
  // dys of outputs off the backward path are null here (see withNullDys), zeros from tfjs's own wrapper.
  const dy = d[0] ?? tf.zeros([saved[0]!.shape[0]!, s.dout]);
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
    return g;
  }
  const needX = wants(ix.x);
  const needA = wants(ix.aSh, ix.aE, ix.wr, ix.br);
  const needB = wants(ix.bSh, ix.bE);
  if (!needX && !needA && !needB) return g;
  const hasDp = s.E > 0 && !!d[1];
  const hasDgates = s.E > 0 && !!d[2];
  const gradIns = [dy, G, ...ins];
  if (hasDp) gradIns.push(d[1]!);
  if (hasDgates) gradIns.push(d[2]!);
  // Computed once, here, for every closure below (freed when backprop ends).
  const outs = run('McpcMoeLoraGrad', gradIns, intern({ ...s, hasDp, hasDgates, needX, needA, needB }));
  let o = 0;
  if (needX) {
    const dx = outs[o++]!;
    g[ix.x] = () => dx;
  }
  if (needA) {
    if (s.RS) {
      const t = outs[o++]!;
      g[ix.aSh] = () => t;
    }
    if (s.E) {
      const [dAe, dWr] = [outs[o++]!, outs[o++]!];
      g[ix.aE] = () => dAe;
      g[ix.wr] = () => dWr;
      if (s.routerBias) {
        const dbr = outs[o++]!;
        g[ix.br] = () => dbr;
      }
    }
  }
  if (needB) {
    if (s.RS) {
      const t = outs[o++]!;
      g[ix.bSh] = () => t;
    }
    if (s.E) {
      const t = outs[o++]!;
      g[ix.bE] = () => t;
    }
  }
  return g;
}

let registered = false;

export function registerMoeLora(): void {
  if (registered) return;
  registered = true;
  const k = (kernelName: string, kernelFunc: unknown) => tf.registerKernel({ kernelName, backendName: 'webgpu', kernelFunc: kernelFunc as any });
  k(MOE_KERNEL, forwardKernel);
  k('McpcMoeLoraGrad', gradKernel);
  tf.registerGradient({ kernelName: MOE_KERNEL, saveAllInputs: true, outputsToSave: [false, true, false, true], gradFunc: gradient } as any);
}

/** How many outputs the forward kernel has (G is last). */
const outputsOf = (E: number) => (E ? 4 : 2);

/** The mixture-of-LoRA linear (see the top of the file). x [T, din]. */
export function moeLoraLinear(x: Tensor, wts: MoeLoraWeights, opts: MoeLoraOptions, useReference = false): MoeLoraResult {
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
  if (useReference || tf.getBackend() !== 'webgpu') return reference(x, wts, shape);
  registerMoeLora();
  const apart = opts.base === 'f16' || opts.base === 'f32';
  // Apart: y = x·Wᵀ (the f16 or f32 GEMM, W's f16 copy cached) added in the adapters' up GEMM's epilogue, in the
  // same tfjs kernel; its backward computes dy·W the same way inside McpcMoeLoraDx (dW, if W is trained, apart).
  const attrs = intern(apart && (RS || E) ? { ...shape, base: false, addend: true, apart: opts.base as Apart } : shape);
  const tape = (tf.engine() as any).isTapeOn() as boolean;
  const outs = tf.engine().runKernel(MOE_KERNEL, moeInputs(x, wts, RS, E) as any, attrs as any) as unknown as Tensor[];
  if (tape) withNullDys(outs[0]!, attrs);
  if (outs.length !== outputsOf(E)) throw new Error(`McpcMoeLora returned ${outs.length} outputs`);
  const G = outs[outs.length - 1];
  // G is the saved activation of the backward (kept by the tape through the kernel's outputs).
  void G;
  return E ? { y: outs[0], p: outs[1], gates: outs[2] } : { y: outs[0] };
}

/**
 * tfjs's tape node wraps a gradient so that every output off the backward path gets a dy of zeros, made on
 * the CPU and uploaded (p and gates when only y is used: [T, E] each, every call, and a [T, R] array for G,
 * which is never read). The node just recorded for `y` calls the gradient directly instead, with those dys
 * null (the gradient treats a missing dp or dgates as zero, without reading a buffer).
 */
function withNullDys(y: Tensor, attrs: object): void {
  const tape = (tf.engine() as any).state.activeTape as { outputs: Tensor[]; saved: Tensor[]; gradient?: unknown }[] | undefined;
  const node = tape?.[tape.length - 1];
  if (!node || node.outputs[0] !== y || !node.gradient) return;
  // backpropagateGradients calls node.gradient(dys) on its pruned copy of the node, whose inputs are those
  // needing a gradient: `this` says which (all, if a tfjs version calls it otherwise).
  node.gradient = function (this: { inputs?: Record<string, unknown> } | undefined, dys: (Tensor | null)[]) {
    const need = this?.inputs && typeof this.inputs === 'object' ? new Set(Object.keys(this.inputs)) : undefined;
    return gradient(dys as Tensor[], node.saved, attrs, need);
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
