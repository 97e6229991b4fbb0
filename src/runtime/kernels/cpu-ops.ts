/**
 * Fused CPU operations as tfjs kernels with gradients, for the `wasm` and `cpu` backends: each reads its
 * inputs and writes its outputs as Float32Array views (on wasm straight from the backend's heap:
 * `typedArrayFromHeap` / `makeOutput`, as src/runtime/tfjs/wasm-extra.ts does; on cpu the backend's own
 * arrays), so one fused step is one kernel call and one pass over memory instead of a chain of tfjs ops.
 *
 *   McpcFused / McpcFusedGrad      a fused_elementwise expression (./fused-js.ts compiles it: to WebAssembly SIMD
 *                                  by ./fused-wasm.ts, or to JavaScript);
 *                                  the gradient runs the generated backward once for the slot asked for and
 *                                  those of the later inputs, in one pass (MCPC_FUSED_GRAD_ONEPASS=0: per slot)
 *   McpcRope / McpcRopeInverse     rotate-half rotary embedding in one pass; its gradient is the inverse
 *   McpcAdamW                      one AdamW step of every trainable tensor (the plan's fused optimizer; gradient
 *                                  and moments flat)
 *   McpcConcatLinear               x·[W_1 ; … ; W_n]ᵀ (concat_linear's one GEMM), one output per part, with a
 *                                  gradient per weight: dW_i = dY_iᵀ·x only for the weights autodiff asks for
 *                                  (differentiating through tf.concat computed dYᵀ·x for the whole stack, frozen
 *                                  base weights included); dX by McpcConcatLinearDx, one GEMM over the parts
 *
 * Kernels are registered on first use (`ensureCpuOps`) and called through `tf.engine().runKernel` with
 * array inputs, so their gradients (tf.registerGradient, lazy per input) see the inputs as '0', '1', ...
 */
import { registerFamilyGradient, tf, type Tensor } from '../tfjs/index.js';
import { KeptForGradient, share } from '../tfjs/share.js';
import { heapViews, type WasmBackendLike } from '../tfjs/wasm-extra.js';
import { heapFor } from '../tfjs/moe.js';
import { linearPartsInto, partsTimesInto, sliceTnInto } from '../tfjs/gemm.js';
import { activationGradOnHeap, columnSumsOnHeap } from '../tfjs/gemm-heap.js';
import { adamwOnHeap } from '../tfjs/adamw.js';
import { softmaxRowsWasm } from './cpu-xent.js';
import { ropeOnHeap } from '../tfjs/rope.js';
import { adamwScalars, type AdamWStep } from '../optimizer.js';
import type { CompiledFused } from './fused-js.js';
import { FusedSlots, type AheadSlot } from './fused-slots.js';

type Info = tf.TensorInfo;
type Attrs = Record<string, unknown>;

interface CpuLike {
  makeTensorInfo(shape: number[], dtype: string, values?: Float32Array): Info;
  data: { get(id: object): { values: Float32Array | Int32Array } };
}

/** Output shapes, then the computation over views (inputs first, outputs after; outputs start zeroed unless `writesAll`). */
export interface CpuOp {
  shapes(inputs: Info[], attrs: Attrs): number[][];
  /** Writes every element of every output: the outputs are not zeroed first. */
  writesAll?: boolean;
  /** `outputs`: the outputs' TensorInfos (their dataIds identify them to a later call, e.g. a gradient's). */
  run(ins: (Float32Array | Int32Array)[], outs: Float32Array[], inputs: Info[], attrs: Attrs, outputs: Info[]): void;
}

const size = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);

function kernelFor(op: CpuOp, backendName: 'wasm' | 'cpu'): tf.KernelFunc {
  return ({ inputs, backend, attrs }) => {
    const ins = Object.keys(inputs).map((k) => (inputs as unknown as Record<string, Info>)[k]!);
    const shapes = op.shapes(ins, attrs as Attrs);
    let outs: Info[];
    let views: Float32Array[];
    let read: (t: Info) => Float32Array | Int32Array;
    if (backendName === 'wasm') {
      const b = backend as unknown as WasmBackendLike;
      outs = shapes.map((s) => b.makeOutput(s, 'float32'));
      // Views after every allocation: allocating may grow (and so move) the heap.
      views = outs.map((o) => b.typedArrayFromHeap(o) as Float32Array);
      if (!op.writesAll) views.forEach((v) => v.fill(0));
      read = (t) => b.typedArrayFromHeap(t) as Float32Array | Int32Array;
    } else {
      const b = backend as unknown as CpuLike;
      views = shapes.map((s) => new Float32Array(size(s)));
      outs = shapes.map((s, i) => b.makeTensorInfo(s, 'float32', views[i]));
      read = (t) => b.data.get(t.dataId).values;
    }
    op.run(ins.map(read), views, ins, attrs as Attrs, outs);
    return outs.length === 1 ? outs[0]! : outs;
  };
}

const registered = new Set<string>();
/** Register `op` as tfjs kernel `name` on both CPU backends (once), with its gradient. Other CPU kernel modules use it too. */
export function registerCpuKernel(name: string, op: CpuOp, grad?: Omit<tf.GradConfig, 'kernelName'>): void {
  if (registered.has(name)) return;
  registered.add(name);
  for (const b of ['wasm', 'cpu'] as const) tf.registerKernel({ kernelName: name, backendName: b, kernelFunc: kernelFor(op, b) });
  if (grad) registerFamilyGradient('cpu', { kernelName: name, ...grad });
}

const run1 = (name: string, inputs: Tensor[], attrs: Attrs): Tensor => tf.engine().runKernel(name, inputs as unknown as tf.NamedTensorMap, attrs as tf.NamedAttrMap) as Tensor;
const runN = (name: string, inputs: Tensor[], attrs: Attrs): Tensor[] => {
  const r = tf.engine().runKernel(name, inputs as unknown as tf.NamedTensorMap, attrs as tf.NamedAttrMap) as Tensor | Tensor[];
  return Array.isArray(r) ? r : [r];
};
const grads = (n: number, fn: (i: number) => Tensor): Record<string, () => Tensor> => Object.fromEntries(Array.from({ length: n }, (_, i) => [String(i), () => fn(i)]));
/** Enough `true`s to save every output of any kernel here. */
const ALL_OUTPUTS = new Array<boolean>(64).fill(true);

// --- fused elementwise -----------------------------------------------------------------------------------------------

const programs = new Map<number, CompiledFused>();
let nextProgram = 1;
const programIds = new WeakMap<CompiledFused, number>();
function programId(p: CompiledFused): number {
  let id = programIds.get(p);
  if (id === undefined) {
    id = nextProgram++;
    programIds.set(p, id);
    programs.set(id, p);
  }
  return id;
}
const program = (attrs: Attrs) => programs.get(attrs.program as number)!;

/** The fused gradients' slot policy (./fused-slots.ts) for McpcFused's program ids. */
const fusedSlots = new FusedSlots();
/** Gradient slots McpcFusedGrad computed and kept for the inputs' closures, until releaseFusedGrads. */
const pending: Tensor[] = [];
let sweepQueued = false;
/** Release in a microtask too: after the synchronous backward pass that computed them. */
function ensureSweep(): void {
  if (sweepQueued) return;
  sweepQueued = true;
  queueMicrotask(() => {
    sweepQueued = false;
    releaseFusedGrads();
  });
}

/**
 * Dispose the gradient slots McpcFused's gradient computed and kept for its inputs' closures (every closure
 * took a tensor sharing the buffer; the slots nobody took are freed here). Called when the next fused node's
 * gradient starts, by the executor after its backward pass, and in a microtask after the pass.
 */
export function releaseFusedGrads(): void {
  fusedSlots.settle();
  for (const t of pending) t.dispose();
  pending.length = 0;
}

/**
 * Evaluate a compiled fused expression: `inputs` in the expression's order (elem [rows, cols], vec [cols]);
 * one [rows, cols] output per root. Differentiable: the first input asked for runs the expression's
 * generated backward once for its slot and the slots of every later input (McpcFusedGrad, one pass with one
 * output per slot), which the later inputs' closures then take; an earlier input nobody asked for costs
 * nothing, and a later slot computed ahead but never taken is not computed ahead again (releaseFusedGrads).
 */
export function fusedOp(p: CompiledFused, inputs: Tensor[], rows: number, cols: number): Tensor[] {
  ensureCpuOps();
  // the logistic kept for the backward (keptLogistic) only when a gradient tape records this call
  return runN('McpcFused', inputs, { program: programId(p), rows, cols, keep: tf.engine().isTapeOn() });
}

/**
 * The logistic a fused forward kept for its backward (./fused-js.ts keepLogistic: a SwiGLU's σ(gate)), in
 * tfjs-wasm's heap (malloc), by the dataId of the forward's first output: the gradient gets that output back
 * as its saved copy, which shares the dataId (../tfjs/share.ts), as attention's P and the loss's dlogits are
 * kept. The backward then reads σ instead of computing exp and a division per element again (MCPC_FUSED_KEEP=0:
 * it does). An entry goes when its output's data is gone (at the next forward: the first layer's backward in the
 * align stage never comes), its block handed back to the heap.
 */
const keptLogistic = new KeptForGradient<{ at: number; free: () => void }>((k) => k.free());
/** Kept logistic blocks now (for tests). */
export const keptLogisticCount = (): number => keptLogistic.size;

// --- rope ------------------------------------------------------------------------------------------

/** Rotary embedding of x [T, heads·d] with tables cos, sin [T, d/2] (rotate-half). */
export function ropeOp(x: Tensor, cos: Tensor, sin: Tensor, heads: number, headDim: number): Tensor {
  ensureCpuOps();
  return run1('McpcRope', [x, cos, sin], { heads, headDim, inverse: false });
}

// --- concat_linear ------------------------------------------------------------------------------------------------

/**
 * x [T, in] times the row stack of `weights` (each [out_i, in]) transposed, as one GEMM whose result is
 * written straight into one output per part: part j is the next `parts[j]` weights, [T, Σ their rows]. The
 * gradient of x is one GEMM [dY_1 | … ]·[W_1 ; …] reading the parts' gradients where they are; that of W_i is
 * dY_iᵀ·x, computed only if autodiff asks for it (a frozen weight is not on the gradient's path, so its
 * product never runs). No stacked copy of the weights, no split of the product, no concat of the gradients.
 */
export function concatLinearOp(x: Tensor, weights: Tensor[], parts: number[], biases: (Tensor | undefined)[] = [], acts: PartActivation[] = []): Tensor[] {
  ensureCpuOps();
  const bias = parts.map((_, j) => (biases[j] ? 1 : 0));
  const act = parts.map((_, j) => acts[j] ?? 'none');
  return runN('McpcConcatLinear', [x, ...weights, ...biases.filter((b): b is Tensor => !!b)], { widths: weights.map((w) => w.shape[0]!), parts, bias, act });
}

/** A part's activation after its bias (a router's softmax or sigmoid), applied in McpcConcatLinear itself. */
export type PartActivation = 'none' | 'softmax' | 'sigmoid';

/** Each row of y [T, w] replaced by its softmax (max subtracted; f64 sums) or each element by its sigmoid. */
function activateRows(y: Float32Array, T: number, w: number, act: PartActivation): void {
  if (act === 'sigmoid') {
    for (let i = 0; i < T * w; i++) y[i] = 1 / (1 + Math.exp(-y[i]!));
    return;
  }
  if (softmaxRowsWasm(y, T, w)) return;
  for (let t = 0, o = 0; t < T; t++, o += w) {
    let m = -Infinity;
    for (let j = 0; j < w; j++) if (y[o + j]! > m) m = y[o + j]!;
    let s = 0;
    for (let j = 0; j < w; j++) {
      const e = Math.exp(y[o + j]! - m);
      y[o + j] = e;
      s += e;
    }
    for (let j = 0; j < w; j++) y[o + j] = y[o + j]! / s;
  }
}

/** The gradient through activateRows from its output y and the upstream dy, into dz. */
function activationGrad(y: Float32Array, dy: Float32Array, dz: Float32Array, T: number, w: number, act: PartActivation): void {
  // WebAssembly SIMD on the wasm heap (../tfjs/gemm-heap.ts; ~1 ms of the -O1 aggregate step's 12 router rows in
  // JavaScript); these loops elsewhere
  if ((act === 'softmax' || act === 'sigmoid') && activationGradOnHeap(y, dy, dz, T, w, act)) return;
  if (act === 'sigmoid') {
    for (let i = 0; i < T * w; i++) dz[i] = dy[i]! * y[i]! * (1 - y[i]!);
    return;
  }
  for (let t = 0, o = 0; t < T; t++, o += w) {
    let dot = 0;
    for (let j = 0; j < w; j++) dot += dy[o + j]! * y[o + j]!;
    for (let j = 0; j < w; j++) dz[o + j] = y[o + j]! * (dy[o + j]! - dot);
  }
}

/** out[j] = Σ_t z[t, j] (a bias's gradient), summed in f64. */
function columnSums(z: Float32Array, out: Float32Array, T: number, w: number): void {
  if (columnSumsOnHeap(z, out, T, w)) return; // the same f64 sums in WebAssembly on the wasm heap
  const acc = new Float64Array(w);
  for (let t = 0, o = 0; t < T; t++, o += w) for (let j = 0; j < w; j++) acc[j] += z[o + j]!;
  out.set(acc);
}

/** Output widths of McpcConcatLinear's parts (the rows of each part's weights). */
function partWidths(a: Attrs): number[] {
  const widths = a.widths as number[];
  let at = 0;
  return (a.parts as number[]).map((n) => {
    const w = widths.slice(at, at + n).reduce((p, x) => p + x, 0);
    at += n;
    return w;
  });
}

// --- AdamW over every trainable tensor --------------------------------------------------------------------------------

/**
 * One AdamW step of every trainable tensor in ONE kernel call (McpcAdamW): the plan's fused optimizer (pass
 * fuse-optimizer) on the CPU backends, where the per-tensor update is ~12 tfjs ops a tensor. The gradient and
 * both moments are flat vectors over the tensors in order (the executor keeps the moments flat between steps
 * and concatenates each micro-batch's gradients once); the parameters stay tensors of their own, read and
 * written in place of a concat and a split. Each operation is rounded to f32 in the order optimizer.ts
 * `update` applies tfjs's f32 ops (and the clipping multiply before it), so the results equal the per-tensor
 * path's bit for bit: products, quotients and square roots of f32 values are correctly rounded through f64;
 * sums of two f32 values are exact in f64 but for exponent gaps beyond 29 bits, where double rounding could in
 * principle differ in the last place.
 */
export function adamwFlatCpu(ps: Tensor[], g: Tensor, m: Tensor, v: Tensor, h: AdamWStep): { p: Tensor[]; m: Tensor; v: Tensor } {
  ensureCpuOps();
  const n = ps.length;
  const total = ps.reduce((a, p) => a + p.size, 0);
  if (g.size !== total || m.size !== total || v.size !== total) throw new Error(`McpcAdamW: flat sizes differ (parameters ${total}, g ${g.size}, m ${m.size}, v ${v.size})`);
  const out = runN('McpcAdamW', [...ps, g, m, v], { ...h, n });
  return { p: out.slice(0, n), m: out[n]!, v: out[n + 1]! };
}

/** McpcAdamW's loop in JavaScript (the `cpu` backend; MCPC_ADAMW_WASM=0): Math.fround after each operation. */
function adamwJs(ps: Float32Array[], Ps: Float32Array[], g: Float32Array, m: Float32Array, v: Float32Array, M: Float32Array, V: Float32Array, k: number[]): void {
  const f = Math.fround;
  const [DEC, GS, B1, OB1, B2, OB2, SB2, EPS, LRB] = k as [number, number, number, number, number, number, number, number, number];
  let o = 0;
  for (let i = 0; i < ps.length; i++) {
    const p = ps[i]!;
    const P = Ps[i]!;
    for (let j = 0; j < p.length; j++, o++) {
      // A factor of 1 (no clipping, no decay) multiplies exactly: the same bits as skipping it.
      const gj = f(g[o]! * GS);
      const mj = f(f(m[o]! * B1) + f(gj * OB1));
      const vj = f(f(v[o]! * B2) + f(f(gj * gj) * OB2));
      const denom = f(f(f(Math.sqrt(vj)) / SB2) + EPS);
      P[j] = f(f(p[j]! * DEC) - f(f(mj / denom) * LRB));
      M[o] = mj;
      V[o] = vj;
    }
  }
}

// --- registration -------------------------------------------------------------------------------------------------------

export function ensureCpuOps(): void {
  if (registered.has('McpcFused')) return;

  registerCpuKernel(
    'McpcFused',
    {
      shapes: (ins, a) => program(a).outputs.map(() => [a.rows as number, a.cols as number]),
      // Every forward root is elementwise (reduce 'none'): each output element is stored.
      writesAll: true,
      run: (ins, outs, _i, a, outInfos) => {
        const p = program(a);
        const [rows, cols] = [a.rows as number, a.cols as number];
        keptLogistic.sweep();
        const hp = a.keep && p.keep && process.env.MCPC_FUSED_KEEP !== '0' ? heapFor([...(ins as Float32Array[]), ...outs]) : null;
        if (hp && p.keep) {
          // the block's malloc may grow the heap: the views are taken again after it
          const again = heapViews([...(ins as Float32Array[]), ...outs]);
          const at = hp.malloc(4 * rows * cols);
          const views = again();
          if (!at) return p.forward(rows, cols, views.slice(0, ins.length), views.slice(ins.length));
          const sig = new Float32Array(hp.memory.buffer, at, rows * cols);
          p.keep.forward(rows, cols, views.slice(0, ins.length), [...views.slice(ins.length), sig]);
          keptLogistic.set(outInfos[0]!.dataId, { at, free: () => hp.free(at) });
          return;
        }
        p.forward(rows, cols, ins as Float32Array[], outs);
      },
    },
    {
      saveAllInputs: true,
      outputsToSave: ALL_OUTPUTS,
      gradFunc: (dy, saved, a) => {
        // The previous fused node's closures have all run: what it computed ahead and nobody took goes.
        releaseFusedGrads();
        const p = program(a);
        const id = a.program as number;
        const n = p.inputs.length;
        const dys = Array.isArray(dy) ? dy : [dy];
        const xs = saved.slice(0, n);
        const ys = saved.slice(n);
        // Slots computed so far for this node (kept until releaseFusedGrads): every input asking for one gets a
        // tensor on its buffer (share: no kernel), so several inputs can share a slot; `ahead` marks the slots
        // computed before their input asked.
        const got = new Map<number, { t: Tensor; ahead?: AheadSlot }>();
        const computes = (s: number): boolean => !(p.slots[s]!.identityOf !== undefined && p.slots[s]!.reduce === 'none');
        return grads(n, (i) => {
          const slot = p.grads[i];
          if (slot === null || slot === undefined) return tf.zerosLike(xs[i]!);
          if (!computes(slot)) return share(dys[p.slots[slot]!.identityOf!]!);
          fusedSlots.request(id, slot);
          let hit = got.get(slot);
          if (!hit) {
            // This slot and, in the same pass, those of the later inputs (./fused-slots.ts).
            const slots = fusedSlots.pass(id, p.grads, i, slot, computes, (s) => got.has(s));
            const res = runN('McpcFusedGrad', [...xs, ...ys, ...dys], { program: id, slots, rows: a.rows as number, cols: a.cols as number });
            slots.forEach((s, k) => {
              const t = tf.keep(res[k]!);
              pending.push(t);
              got.set(s, { t, ...(s === slot ? {} : { ahead: fusedSlots.ahead(id, s) }) });
            });
            ensureSweep();
            hit = got.get(slot)!;
          }
          if (hit.ahead) hit.ahead.taken = true;
          return share(hit.t);
        });
      },
    },
  );
  registerCpuKernel('McpcFusedGrad', {
    shapes: (ins, a) => (a.slots as number[]).map((s) => (program(a).slots[s]!.reduce === 'cols' ? [a.cols as number] : [a.rows as number, a.cols as number])),
    // The generated backward (wasm and JavaScript) stores every element of a 'none' slot and zeroes a 'cols'
    // slot before accumulating into it: no zero fill first (a SwiGLU's two [T, ff] slots cost ~0.7 ms a call
    // to zero, out of cache, before being written again).
    writesAll: true,
    run: (ins, outs, infos, a) => {
      const p = program(a);
      const n = p.inputs.length;
      const k = p.outputs.length;
      const v = ins as Float32Array[];
      const [rows, cols] = [a.rows as number, a.cols as number];
      // the forward's kept logistic, by its first output's dataId (the saved copy shares it)
      const kept = p.keep && keptLogistic.get(infos[n]!.dataId);
      const hp = kept ? heapFor(v) : null;
      if (kept && hp && p.keep) {
        const sig = new Float32Array(hp.memory.buffer, kept.at, rows * cols);
        p.keep.backwardSlots(a.slots as number[])(rows, cols, [...v.slice(0, n), sig], v.slice(n, n + k), v.slice(n + k), outs);
        return;
      }
      p.backwardSlots(a.slots as number[])(rows, cols, v.slice(0, n), v.slice(n, n + k), v.slice(n + k), outs);
    },
  });

  const rope: CpuOp = {
    shapes: (ins) => [ins[0]!.shape as number[]],
    writesAll: true,
    run: (ins, [y], infos, a) => {
      const x = ins[0] as Float32Array;
      const cos = ins[1] as Float32Array;
      const sin = ins[2] as Float32Array;
      const T = infos[0]!.shape[0]!;
      const H = a.heads as number;
      const d = a.headDim as number;
      const half = d / 2;
      // WebAssembly SIMD in place on the wasm backend's heap (../tfjs/rope.ts); this loop elsewhere
      if (ropeOnHeap(x, y!, cos, sin, T, H, d, a.inverse === true)) return;
      // inverse: the transpose of the rotation (the gradient).
      const sg = a.inverse ? -1 : 1;
      for (let t = 0; t < T; t++)
        for (let h = 0; h < H; h++) {
          const o = (t * H + h) * d;
          const tb = t * half;
          for (let i = 0; i < half; i++) {
            const c = cos[tb + i]!;
            const s = sg * sin[tb + i]!;
            const x1 = x[o + i]!;
            const x2 = x[o + half + i]!;
            y![o + i] = x1 * c - x2 * s;
            y![o + half + i] = x2 * c + x1 * s;
          }
        }
    },
  };
  registerCpuKernel('McpcRope', rope, {
    inputsToSave: [],
    saveAllInputs: true,
    gradFunc: (dy, saved, a) => ({
      0: () => run1('McpcRopeInverse', [dy as Tensor, saved[1]!, saved[2]!], { ...(a as Attrs), inverse: true }),
      1: () => tf.zerosLike(saved[1]!),
      2: () => tf.zerosLike(saved[2]!),
    }),
  });
  registerCpuKernel('McpcRopeInverse', rope);

  registerCpuKernel('McpcAdamW', {
    shapes: (ins, a) => {
      const n = a.n as number;
      return [...ins.slice(0, n).map((t) => t.shape as number[]), ins[n + 1]!.shape as number[], ins[n + 2]!.shape as number[]];
    },
    writesAll: true,
    run: (ins, outs, _i, a) => {
      const n = a.n as number;
      const f = Math.fround;
      // The scalars as tfjs makes them: f32 tensors of the JavaScript values (optimizer.ts adamwScalars).
      const k = adamwScalars(a as unknown as AdamWStep);
      const [DEC, GS, B1, OB1, B2, OB2, SB2, EPS, LRB] = [f(k.decay), f(k.gscale), f(k.b1), f(k.omb1), f(k.b2), f(k.omb2), f(k.sqrtbc2), f(k.eps), f(k.stepsize)];
      const g = ins[n] as Float32Array;
      const m = ins[n + 1] as Float32Array;
      const v = ins[n + 2] as Float32Array;
      const M = outs[n]!;
      const V = outs[n + 1]!;
      const ps = ins.slice(0, n) as Float32Array[];
      if (adamwOnHeap(ps, outs.slice(0, n), g, m, v, M, V, { DEC, GS, B1, OB1, B2, OB2, SB2, EPS, LRB })) return;
      adamwJs(ps, outs, g, m, v, M, V, [DEC, GS, B1, OB1, B2, OB2, SB2, EPS, LRB]);
    },
  });

  registerCpuKernel(
    'McpcConcatLinear',
    {
      shapes: (ins, a) => partWidths(a).map((w) => [ins[0]!.shape[0]!, w]),
      writesAll: true,
      run: (ins, outs, infos, a) => {
        const [T, K] = infos[0]!.shape as [number, number];
        const nW = (a.widths as number[]).length;
        const widths = partWidths(a);
        // Each part's bias in the product (the GEMM's accumulators start from it), its activation after, in place:
        // no tfjs Add / Softmax per part.
        let b = 1 + nW;
        const biases = widths.map((_, j) => ((a.bias as number[] | undefined)?.[j] ? (ins[b++] as Float32Array) : undefined));
        // The product mallocs heap scratch, which may grow the heap: the outputs are taken again after it.
        const again = heapViews(outs);
        linearPartsInto(ins[0] as Float32Array, T, K, ins.slice(1, 1 + nW) as Float32Array[], outs, widths, biases);
        const ys = again();
        widths.forEach((w, j) => {
          const act = ((a.act as PartActivation[] | undefined)?.[j] ?? 'none') as PartActivation;
          if (act !== 'none') activateRows(ys[j]!, T, w, act);
        });
      },
    },
    {
      saveAllInputs: true,
      outputsToSave: ALL_OUTPUTS,
      gradFunc: (dy, saved, a) => {
        const dys = Array.isArray(dy) ? dy : [dy];
        const widths = a.widths as number[];
        const parts = a.parts as number[];
        const nW = widths.length;
        const hasBias = (a.bias as number[] | undefined) ?? parts.map(() => 0);
        const acts = (a.act as PartActivation[] | undefined) ?? parts.map(() => 'none' as const);
        const nB = hasBias.reduce((n, h) => n + h, 0);
        const [x, ...rest] = saved as Tensor[];
        const ws = rest.slice(0, nW);
        const ys = rest.slice(nW + nB);
        // The gradient at each part's product: through its activation (from the saved output), computed here once
        // for every input that asks (autodiff's backward scope frees what none takes).
        const dz = dys.map((d, j) => (acts[j] !== 'none' ? run1('McpcActivationGrad', [ys[j]!, d], { act: acts[j]! }) : d));
        // Weight i: its part, and its first column within that part; bias k: its part.
        const where: [number, number][] = [];
        parts.forEach((n, j) => {
          let c = 0;
          for (let q = 0; q < n; q++) {
            where.push([j, c]);
            c += widths[where.length - 1]!;
          }
        });
        const biasPart = parts.flatMap((_, j) => (hasBias[j] ? [j] : []));
        return grads(1 + nW + nB, (i) => {
          if (i === 0) return run1('McpcConcatLinearDx', [...dz, ...ws], { widths, parts });
          if (i > nW) return run1('McpcColumnSums', [dz[biasPart[i - 1 - nW]!]!], {});
          const [j, c] = where[i - 1]!;
          return run1('McpcConcatLinearDw', [dz[j]!, x!], { col: c, shape: ws[i - 1]!.shape });
        });
      },
    },
  );
  registerCpuKernel('McpcActivationGrad', {
    shapes: (ins) => [ins[0]!.shape as number[]],
    writesAll: true,
    run: ([y, dy], [dz], infos, a) => {
      const [T, w] = infos[0]!.shape as [number, number];
      activationGrad(y as Float32Array, dy as Float32Array, dz!, T, w, a.act as PartActivation);
    },
  });
  registerCpuKernel('McpcColumnSums', {
    shapes: (ins) => [[ins[0]!.shape[1]!]],
    writesAll: true,
    run: ([z], [out], infos) => {
      const [T, w] = infos[0]!.shape as [number, number];
      columnSums(z as Float32Array, out!, T, w);
    },
  });
  // dW_i = dY_jᵀ·x over weight i's columns of its part's dY_j, in the weight's shape (inputs and attrs as the
  // webgpu kernel of this name): no slice of dY_j, in place on the wasm heap.
  registerCpuKernel('McpcConcatLinearDw', {
    shapes: (_ins, a) => [a.shape as number[]],
    writesAll: true,
    run: ([dy, x], [dw], infos, a) => {
      const [T, ld] = infos[0]!.shape as [number, number];
      const [width, K] = a.shape as [number, number];
      sliceTnInto(dy as Float32Array, ld, a.col as number, width, x as Float32Array, T, K, dw!);
    },
  });
  registerCpuKernel('McpcConcatLinearDx', {
    shapes: (ins, a) => [[ins[0]!.shape[0]!, ins[ins.length - 1]!.shape[1]!]],
    writesAll: true,
    run: (ins, [dx], infos, a) => {
      const n = (a.parts as number[]).length;
      const T = infos[0]!.shape[0]!;
      const K = infos[infos.length - 1]!.shape[1]!;
      partsTimesInto(ins.slice(0, n) as Float32Array[], partWidths(a), T, ins.slice(n) as Float32Array[], K, dx!);
    },
  });
}

