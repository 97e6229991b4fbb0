/**
 * The compiler's fused elementwise kernels (src/compiler/fusion/wgsl.ts) as a tfjs op on the webgpu backend:
 * the plan's WGSL modules run as they are, the forward in one dispatch, the generated backward in one (plus
 * one `reduce_cols` dispatch when a `vec` input's gradient is asked for).
 *
 *   fusedWgslOf(kernel)                       the plan kernel's modules, bindings and programs, checked (or why not)
 *   fusedWgsl(p, inputs, rows, cols)          its outputs, [rows, cols] each; differentiable
 *
 * tfjs kernels: `McpcFusedWgsl:<plan kernel id>` (forward; inputs in the expression's order, outputs its
 * roots), one name per plan kernel so that its gradient saves only what that backward module reads (shared, not
 * cloned: ./program.ts `runKernelSaving`; tfjs's own saving runs one `Identity` kernel per tensor), and
 * `McpcFusedWgslGrad` (inputs: what the backward module reads, in binding order; outputs: one per gradient
 * slot in `attrs.mask`, ascending, [rows, cols], or [cols] for a `vec` input's column-summed slot).
 *
 * The gradient is lazy per input, as tfjs asks for it, but one backward dispatch serves several inputs: the
 * first input asked for computes its slot and the slots of every later input (tfjs asks in input order, and
 * only for the inputs on the path to the parameters, so an earlier input not asked for wants none, and it
 * cannot tell in advance which later ones it will want). Those extra results are kept until asked for
 * (handed out as a tensor sharing their buffer, ./program.ts `share`: no kernel) and freed in a microtask once
 * the synchronous backward pass is over; inputs sharing a slot get clones of one result. A slot computed
 * ahead and never taken (an input off the path, e.g. a frozen norm weight, whose `vec` slot costs [rows, cols]
 * partials and a column-sum dispatch) is not computed ahead again for that program until an input asks for
 * it. MCPC_FUSED_GRAD_ONEPASS=0: each slot only when asked for. A slot that is the upstream gradient itself
 * (the residual branch of an add) is that gradient, no dispatch; an input with no gradient gets zeros.
 *
 * Unwanted gradient slots still need a buffer bound (the module declares them; bit s of `grad_mask` keeps
 * the kernel from writing them): a one-element scratch tensor each (writable bindings must not alias).
 */
import type { TensorInfo } from '@tensorflow/tfjs-core';
import type { FusedExprAttrs, FusedInputKind } from '../../plan/fused.js';
import type { PlanKernel } from '../../plan/types.js';
import { registerFamilyGradient, tf, type Tensor } from '../tfjs/index.js';
import { disposeInfo, keepUntilBackwardEnds, runKernelSaving, runWgsl, share, spread, type WebGpuBackendLike } from './program.js';
import { FusedSlots, type AheadSlot } from '../kernels/fused-slots.js';

/* eslint-disable @typescript-eslint/no-explicit-any -- tfjs kernel plumbing. */

export const FUSED_KERNEL = 'McpcFusedWgsl';
export const FUSED_GRAD_KERNEL = 'McpcFusedWgslGrad';

/** A binding of a generated module, as the kernel's `attrs.bindings` lists it (fusion/wgsl.ts `Binding`). */
interface Binding {
  binding: number;
  role: 'params' | 'input' | 'output' | 'saved_output' | 'dy' | 'grad' | 'grad_reduced';
  index: number;
}
/** An entry point of a generated module (fusion/wgsl.ts `EntryPoint`). */
interface EntryPoint {
  name: string;
  workgroups: 'ceil(rows*cols/256)' | 'rows' | 'cols';
  bindings: number[];
}

export interface FusedWgslProgram {
  id: string;
  inputs: FusedInputKind[];
  outputs: number;
  forward: { code: string; entry: EntryPoint; inputs: number[]; outputs: number[] };
  backward: {
    code: string;
    main: EntryPoint;
    reduceCols?: EntryPoint;
    /** What the backward reads, in binding order: role and index (input i, saved output k, upstream gradient k). */
    reads: { binding: number; role: 'input' | 'saved_output' | 'dy'; index: number }[];
    /** Per slot: its binding in `main`, and for a `cols` slot the binding of the reduced gradient. */
    slots: { binding: number; reduced?: number; reduce: 'none' | 'cols'; identityOf?: number }[];
    /** Per input: its slot, or null (zero gradient). */
    grads: (number | null)[];
  };
}

const WORKGROUP = 256;
/** Elements past which the generated kernels' u32 index arithmetic (idx, row·cols + col) could overflow. */
const MAX_ELEMENTS = 2 ** 31;

/**
 * The program of a plan kernel, or why the WGSL path cannot run it (the caller falls back to the reference).
 * Checks what the dispatch relies on: both modules, the serialised expression with its backward, the binding
 * lists, and that the forward reads every input (a binding the shader never uses is dropped from its `auto`
 * layout, and a bind group that names it would not match).
 */
export function fusedWgslOf(kernel: Pick<PlanKernel, 'id' | 'wgsl' | 'attrs'> | undefined): FusedWgslProgram | string {
  if (!kernel) return 'no such kernel in the plan';
  if (!kernel.wgsl?.forward || !kernel.wgsl.backward) return 'the kernel has no WGSL';
  const a = (kernel.attrs ?? {}) as { expr?: FusedExprAttrs; bindings?: { forward?: Binding[]; backward?: Binding[] }; entryPoints?: { forward?: EntryPoint[]; backward?: EntryPoint[] }; workgroupSize?: number };
  const e = a.expr;
  if (!e || !Array.isArray(e.inputs) || !e.forward || !e.backward) return 'the kernel has no expression with a generated backward';
  if (a.workgroupSize !== WORKGROUP) return `workgroup size ${a.workgroupSize} (expected ${WORKGROUP})`;
  const fb = a.bindings?.forward;
  const bb = a.bindings?.backward;
  const fe = a.entryPoints?.forward?.find((x) => x.name === 'main');
  const bm = a.entryPoints?.backward?.find((x) => x.name === 'main');
  const br = a.entryPoints?.backward?.find((x) => x.name === 'reduce_cols');
  if (!fb || !bb || !fe || !bm) return 'the kernel lists no bindings or entry points';
  const outputs = e.forward.roots.length;
  const find = (list: Binding[], role: Binding['role'], index: number) => list.find((b) => b.role === role && b.index === index)?.binding;
  const fin = e.inputs.map((_, i) => find(fb, 'input', i));
  const fout = Array.from({ length: outputs }, (_, k) => find(fb, 'output', k));
  if (fin.some((b) => b === undefined) || fout.some((b) => b === undefined)) return 'the forward bindings do not cover the inputs and outputs';
  const read = new Set(e.forward.nodes.filter((n) => n[0] === 'in').map((n) => n[1]));
  if (e.inputs.some((_, i) => !read.has(i))) return 'the forward does not read every input';
  const bw = e.backward;
  const slots = bw.slots.map((s, k) => ({ binding: find(bb, 'grad', k), reduced: s.reduce === 'cols' ? find(bb, 'grad_reduced', k) : undefined, reduce: s.reduce, identityOf: s.identityOf }));
  if (slots.some((s) => s.binding === undefined || (s.reduce === 'cols' && s.reduced === undefined))) return 'the backward bindings do not cover the gradient slots';
  if (slots.some((s) => s.reduce === 'cols') && !br) return 'a vec gradient but no reduce_cols entry point';
  if (slots.length > 32) return 'more than 32 gradient slots (grad_mask is a u32)';
  const reads = bb.filter((b): b is Binding & { role: 'input' | 'saved_output' | 'dy' } => b.role === 'input' || b.role === 'saved_output' || b.role === 'dy').sort((x, y) => x.binding - y.binding);
  return {
    id: kernel.id,
    inputs: [...e.inputs],
    outputs,
    forward: { code: kernel.wgsl.forward, entry: fe, inputs: fin as number[], outputs: fout as number[] },
    backward: {
      code: kernel.wgsl.backward,
      main: bm,
      ...(br ? { reduceCols: br } : {}),
      reads: reads.map((b) => ({ binding: b.binding, role: b.role, index: b.index })),
      slots: slots as FusedWgslProgram['backward']['slots'],
      grads: [...bw.grads],
    },
  };
}

/** Whether the program takes these inputs: float32, elem [rows, cols] and vec [cols] as declared, not too large. */
export function fusedWgslFits(p: FusedWgslProgram, inputs: Tensor[]): { rows: number; cols: number } | undefined {
  if (inputs.length !== p.inputs.length || inputs.some((t) => t.dtype !== 'float32')) return undefined;
  const elem = inputs.find((_, i) => p.inputs[i] === 'elem');
  if (!elem || elem.rank !== 2) return undefined;
  const [rows, cols] = elem.shape as [number, number];
  if (rows < 1 || cols < 1 || rows * cols >= MAX_ELEMENTS) return undefined;
  const ok = inputs.every((t, i) => (p.inputs[i] === 'vec' ? t.rank === 1 && t.shape[0] === cols : t.rank === 2 && t.shape[0] === rows && t.shape[1] === cols));
  return ok ? { rows, cols } : undefined;
}

// --- programs by number (tfjs attrs carry numbers), forward kernels by name --------------------------------------------

const programs = new Map<number, FusedWgslProgram>();
/** Per program object: its number and forward kernel name. */
/** Registered forward kernels: number, name, and what its gradient saves (inputs, then outputs, by index). */
interface Registered {
  id: number;
  name: string;
  save: { inputs: number[]; outputs: number[] };
}
const registeredPrograms = new WeakMap<FusedWgslProgram, Registered>();
/** Forward kernel names taken, with the program each was registered for. */
const byName = new Map<string, { id: number; program: FusedWgslProgram }>();
let nextId = 1;
const programOf = (attrs: any): FusedWgslProgram => programs.get(attrs.program as number)!;

/** What the forward saves for its gradient: the inputs and outputs the backward module binds (and nothing for a pure sum). */
export function savedForBackward(p: FusedWgslProgram): { inputs: number[]; outputs: boolean[] } {
  const inputs = [...new Set(p.backward.reads.filter((r) => r.role === 'input').map((r) => r.index))].sort((a, b) => a - b);
  const outputs = Array.from({ length: p.outputs }, (_, k) => p.backward.reads.some((r) => r.role === 'saved_output' && r.index === k));
  return { inputs, outputs };
}

/**
 * The number and forward kernel name of `p`, registering the kernel and its gradient the first time. Plans
 * compiled again (a new runner) reuse the registration of an equal program (same id and modules).
 */
function forwardKernelOf(p: FusedWgslProgram): Registered {
  const hit = registeredPrograms.get(p);
  if (hit) return hit;
  let name = `${FUSED_KERNEL}:${p.id}`;
  for (let k = 2; byName.has(name); k++) {
    const other = byName.get(name)!;
    if (other.program.forward.code === p.forward.code && other.program.backward.code === p.backward.code) {
      const r = { id: other.id, name, save: saveList(p) };
      registeredPrograms.set(p, r);
      return r;
    }
    name = `${FUSED_KERNEL}:${p.id}#${k}`;
  }
  const id = nextId++;
  programs.set(id, p);
  byName.set(name, { id, program: p });
  const reg = { id, name, save: saveList(p) };
  registeredPrograms.set(p, reg);
  const { inputs: inputsToSave, outputs: outputsToSave } = savedForBackward(p);
  tf.registerKernel({ kernelName: name, backendName: 'webgpu', kernelFunc: forwardKernel as any });
  // What the gradient reads is saved by fusedWgsl() (./program.ts runKernelSaving: shared, no Identity kernels).
  registerFamilyGradient('webgpu', { kernelName: name, gradFunc: ((dy: Tensor | Tensor[], saved: Tensor[], attrs: any) => gradient(dy, saved, attrs, inputsToSave, outputsToSave)) as any });
  return reg;
}

/** savedForBackward as the indices runKernelSaving takes. */
function saveList(p: FusedWgslProgram): Registered['save'] {
  const { inputs, outputs } = savedForBackward(p);
  return { inputs, outputs: outputs.flatMap((keep, k) => (keep ? [k] : [])) };
}

/** The 16-byte `Params` block: rows, cols, grad_mask, accum_mask (u32). */
function params(rows: number, cols: number, mask: number): ArrayBuffer {
  return new Uint32Array([rows, cols, mask >>> 0, 0]).buffer;
}

function workgroups(e: EntryPoint, rows: number, cols: number): [number, number, number] {
  const n = e.workgroups === 'rows' ? rows : e.workgroups === 'cols' ? cols : Math.ceil((rows * cols) / WORKGROUP);
  return spread(n);
}

// --- kernels ----------------------------------------------------------------------------------------------------------

function forwardKernel({ inputs, backend, attrs }: { inputs: any; backend: WebGpuBackendLike; attrs: any }): TensorInfo[] {
  const p = programOf(attrs);
  const { rows, cols } = attrs as { rows: number; cols: number };
  const ins = p.inputs.map((_, i) => inputs[i] as TensorInfo);
  return runWgsl(backend, {
    code: p.forward.code,
    inputs: ins,
    outputs: Array.from({ length: p.outputs }, () => ({ shape: [rows, cols], dtype: 'float32' as const })),
    uniforms: params(rows, cols, 0),
    bindings: [...p.forward.inputs, ...p.forward.outputs],
    uniformBinding: 0,
    dispatch: workgroups(p.forward.entry, rows, cols),
    label: `${FUSED_KERNEL} ${p.id}`,
  });
}

function gradKernel({ inputs, backend, attrs }: { inputs: any; backend: WebGpuBackendLike; attrs: any }): TensorInfo[] {
  const p = programOf(attrs);
  const { rows, cols, mask } = attrs as { rows: number; cols: number; mask: number };
  const bw = p.backward;
  const reads = bw.reads.map((_, i) => inputs[i] as TensorInfo);
  const wanted = (s: number) => ((mask >>> s) & 1) === 1;
  const label = `${FUSED_GRAD_KERNEL} ${p.id}`;
  // One buffer per slot in `main`: the gradient (or per-row partials) when wanted, else one-element scratch.
  const g = runWgsl(backend, {
    code: bw.code,
    entryPoint: 'main',
    inputs: reads,
    outputs: bw.slots.map((_, s) => ({ shape: wanted(s) ? [rows, cols] : [1], dtype: 'float32' as const })),
    uniforms: params(rows, cols, mask),
    bindings: [...bw.reads.map((r) => r.binding), ...bw.slots.map((s) => s.binding)],
    uniformBinding: 0,
    dispatch: workgroups(bw.main, rows, cols),
    label,
  });
  const colSlots = bw.slots.map((s, k) => (s.reduce === 'cols' ? k : -1)).filter((k) => k >= 0);
  let reduced: TensorInfo[] = [];
  if (colSlots.some(wanted)) {
    // The column sums of every vec slot's partials, in `reduce_cols` (it binds all of them; masked-off ones get the scratch).
    reduced = runWgsl(backend, {
      code: bw.code,
      entryPoint: 'reduce_cols',
      inputs: colSlots.map((s) => g[s]!),
      outputs: colSlots.map((s) => ({ shape: wanted(s) ? [cols] : [1], dtype: 'float32' as const })),
      uniforms: params(rows, cols, mask),
      bindings: [...colSlots.map((s) => bw.slots[s]!.binding), ...colSlots.map((s) => bw.slots[s]!.reduced!)],
      uniformBinding: 0,
      dispatch: workgroups(bw.reduceCols!, rows, cols),
      label,
    });
  }
  const out: TensorInfo[] = [];
  bw.slots.forEach((s, k) => {
    if (s.reduce === 'cols') {
      const r = reduced[colSlots.indexOf(k)];
      if (wanted(k)) out.push(r!);
      else if (r) disposeInfo(backend, r);
      disposeInfo(backend, g[k]!);
    } else if (wanted(k)) out.push(g[k]!);
    else disposeInfo(backend, g[k]!);
  });
  return out;
}

function gradient(dy: Tensor | Tensor[], saved: Tensor[], attrs: any, inputsSaved: number[], outputsSaved: boolean[]): Record<string, () => Tensor> {
  const p = programOf(attrs);
  const { rows, cols } = attrs as { rows: number; cols: number };
  const n = p.inputs.length;
  const dys = Array.isArray(dy) ? dy : [dy];
  const xs: Tensor[] = [];
  inputsSaved.forEach((i, k) => (xs[i] = saved[k]!));
  const ys: Tensor[] = [];
  let at = inputsSaved.length;
  outputsSaved.forEach((keep, k) => {
    if (keep) ys[k] = saved[at++]!;
  });
  const bw = p.backward;
  const shapeOf = (i: number) => (p.inputs[i] === 'vec' ? [cols] : [rows, cols]);
  // The previous fused node's closures have all run.
  fusedSlots.settle();
  const id = attrs.program as number;
  /** Slots computed so far: ahead of their request (kept until the backward pass ends) or returned to an earlier input. */
  const ahead = new Map<number, Tensor>();
  /** The slots computed before their input asked, by slot. */
  const logged = new Map<number, AheadSlot>();
  const run = (mask: number): Tensor[] => {
    const reads = bw.reads.map((r) => (r.role === 'input' ? xs[r.index]! : r.role === 'saved_output' ? ys[r.index]! : dys[r.index]!));
    const r = tf.engine().runKernel(FUSED_GRAD_KERNEL, reads as unknown as tf.NamedTensorMap, { program: attrs.program, rows, cols, mask } as unknown as tf.NamedAttrMap) as Tensor | Tensor[];
    return Array.isArray(r) ? r : [r];
  };
  const isIdentity = (s: number) => bw.slots[s]!.identityOf !== undefined && bw.slots[s]!.reduce === 'none';
  const out: Record<string, () => Tensor> = {};
  for (let i = 0; i < n; i++) {
    out[String(i)] = () => {
      const slot = bw.grads[i];
      if (slot === null || slot === undefined) return tf.zeros(shapeOf(i));
      if (isIdentity(slot)) return share(dys[bw.slots[slot]!.identityOf!]!);
      fusedSlots.request(id, slot);
      const hit = ahead.get(slot);
      if (hit && !hit.isDisposed) {
        const e = logged.get(slot);
        if (e) e.taken = true;
        return share(hit);
      }
      // This slot, and the slots of later inputs not computed yet (../kernels/fused-slots.ts; a skipped one, such
      // as a frozen norm weight's `vec` slot, would cost a column-sum dispatch more).
      const order = fusedSlots.pass(id, bw.grads, i, slot, (s) => !isIdentity(s), (s) => ahead.has(s));
      const res = run(order.reduce((m, s) => m | (1 << s), 0));
      let mine: Tensor | undefined;
      order.forEach((s, k) => {
        if (s === slot) mine = res[k];
        else {
          ahead.set(s, keepUntilBackwardEnds(res[k]!));
          logged.set(s, fusedSlots.ahead(id, s));
        }
      });
      // Later inputs sharing this slot get a clone of this result: tfjs moves it out of this closure's scope,
      // and nothing disposes it before the other closures of this node have run (as in kernels/cpu-ops.ts).
      ahead.set(slot, mine!);
      return mine!;
    };
  }
  return out;
}

/** The fused gradients' slot policy (../kernels/fused-slots.ts) for this backend's program ids. */
const fusedSlots = new FusedSlots();

let registered = false;

/** Register the gradient kernel (webgpu backend; the forward kernels are registered per program); idempotent. */
function registerFusedWgsl(): void {
  if (registered) return;
  registered = true;
  tf.registerKernel({ kernelName: FUSED_GRAD_KERNEL, backendName: 'webgpu', kernelFunc: gradKernel as any });
}

/** The fused kernel's outputs on the webgpu backend (inputs checked by {@link fusedWgslFits}). */
export function fusedWgsl(p: FusedWgslProgram, inputs: Tensor[], rows: number, cols: number): Tensor[] {
  registerFusedWgsl();
  const k = forwardKernelOf(p);
  return runKernelSaving(k.name, inputs, { program: k.id, rows, cols }, k.save);
}
