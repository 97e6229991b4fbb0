/**
 * Run a hand-written WGSL compute module on tfjs-backend-webgpu's device, reading and writing tfjs tensors,
 * in tfjs's own command stream (so it is ordered with every tfjs op before and after it).
 *
 * tfjs's `WebGPUProgram` wraps user code in its own preamble (one output, generated uniforms, `main()`),
 * which rules out kernels with several outputs, `enable` directives (f16, subgroups, subgroup matrices)
 * and entry points with their own builtins. Here the module is the caller's, whole:
 *
 *   - bindings in group 0: the inputs first (0 … n−1, `var<storage, read>`), then the outputs
 *     (n … n+m−1, `var<storage, read_write>`), then, when `uniforms` is given, one `var<uniform>`;
 *     or, for modules with a layout of their own (the compiler's fused kernels: params at 0), the binding
 *     numbers given in `bindings` / `uniformBinding`;
 *   - the entry point is `main`, or `entryPoint` (a module with several: one pipeline each);
 *   - the kernel must write every element of every output (tfjs recycles buffers: nothing is zeroed).
 *
 * Pipelines are cached per device by module text. Kernels are used inside tfjs kernel functions
 * (`tf.registerKernel`), which receive the backend and return the `TensorInfo`s made here.
 */
import type { DataType, TensorInfo } from '@tensorflow/tfjs-core';
import { registerFamilyGradient, tf, type Tensor } from '../tfjs/index.js';
import { share } from '../tfjs/share.js';

/* eslint-disable @typescript-eslint/no-explicit-any -- tfjs-backend-webgpu's internals and WebGPU objects are untyped here. */
export type WebGpuBackendLike = any;

export interface WgslRun {
  /** The whole WGSL module (entry point `main`). */
  code: string;
  inputs: TensorInfo[];
  outputs: { shape: number[]; dtype: DataType }[];
  /** Raw bytes of the uniform block (a multiple of 16 bytes), bound after the outputs. */
  uniforms?: ArrayBuffer;
  /** Workgroups in x, y, z (each at most maxComputeWorkgroupsPerDimension). */
  dispatch: [number, number, number];
  /** A name for profiles and error messages. */
  label?: string;
  /** The entry point (default `main`). */
  entryPoint?: string;
  /** Binding numbers of the inputs, then the outputs (default 0, 1, … in that order). */
  bindings?: number[];
  /** Binding number of the uniform block (default: after the inputs and outputs). */
  uniformBinding?: number;
  /**
   * Existing tensors to bind as the outputs instead of new ones (`outputs` is then ignored): a kernel that writes
   * one output in several dispatches (each its own part of it). Not returned.
   */
  into?: TensorInfo[];
}

const pipelines = new WeakMap<object, Map<string, any>>();

/**
 * The compute pipeline of `entryPoint` in `code` on `device`, compiled once (cached by module text and entry
 * point). Validation errors surface as Dawn's uncaptured errors.
 */
export function pipelineFor(device: any, code: string, label = 'mcpc', entryPoint = 'main'): any {
  let cache = pipelines.get(device);
  if (!cache) pipelines.set(device, (cache = new Map()));
  const key = entryPoint === 'main' ? code : `${entryPoint}\u0000${code}`;
  let p = cache.get(key);
  if (!p) {
    const module = device.createShaderModule({ code, label });
    p = device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint }, label });
    cache.set(key, p);
  }
  return p;
}

/** Bind group layout 0 of each pipeline (getBindGroupLayout makes a new object per call). */
const layouts = new WeakMap<object, any>();
/** A number per GPUBuffer, for bind group keys. */
const bufferIds = new WeakMap<object, number>();
let nextBufferId = 1;
/** Bind groups per pipeline by their buffers: tfjs's pool hands the same buffers out again call after call. */
const bindGroups = new WeakMap<object, Map<string, any>>();
const BIND_GROUPS_PER_PIPELINE = 256;

/**
 * The bind group of `entries` (whole buffers or { buffer, offset, size }) for `pipeline`'s group 0: made once
 * per set of buffers and reused (createBindGroup was a third of runWgsl's host time on llvmpipe, ~20 µs each).
 * A pooled buffer is never destroyed while tfjs can hand it out, so a cached group never binds a dead one.
 */
export function bindGroupFor(device: any, pipeline: any, entries: { binding: number; resource: { buffer: object; offset?: number; size?: number } }[]): any {
  let layout = layouts.get(pipeline);
  if (!layout) layouts.set(pipeline, (layout = pipeline.getBindGroupLayout(0)));
  let key = '';
  for (const e of entries) {
    const r = e.resource;
    let id = bufferIds.get(r.buffer);
    if (id === undefined) bufferIds.set(r.buffer, (id = nextBufferId++));
    key += `${e.binding}:${id}:${r.offset ?? 0}:${r.size ?? -1},`;
  }
  let groups = bindGroups.get(pipeline);
  if (!groups) bindGroups.set(pipeline, (groups = new Map()));
  let group = groups.get(key);
  if (!group) {
    if (groups.size >= BIND_GROUPS_PER_PIPELINE) groups.clear();
    group = device.createBindGroup({ layout, entries });
    groups.set(key, group);
  }
  return group;
}

const USAGE_UNIFORM = 0x40;
const USAGE_COPY_DST = 0x8;

/**
 * A module's webgpu kernels (name → kernel function) and the gradients of some of them (kernel name →
 * gradFunc), registered with tfjs the first time the returned function is called; later calls do nothing
 * (the registry is per process). Each op's entry point calls it before its first runKernel.
 */
export function kernelRegistrar(kernels: Record<string, (args: any) => TensorInfo | TensorInfo[]>, gradients: Record<string, (...args: any[]) => unknown> = {}): () => void {
  let done = false;
  return () => {
    if (done) return;
    done = true;
    for (const [kernelName, kernelFunc] of Object.entries(kernels)) tf.registerKernel({ kernelName, backendName: 'webgpu', kernelFunc: kernelFunc as any });
    for (const [kernelName, gradFunc] of Object.entries(gradients)) registerFamilyGradient('webgpu', { kernelName, gradFunc: gradFunc as any } as any);
  };
}

/** Record one dispatch of `run.code` in tfjs's command stream; returns the outputs (owned by the caller). */
export function runWgsl(backend: WebGpuBackendLike, run: WgslRun): TensorInfo[] {
  const outputs = run.into ?? run.outputs.map((o) => backend.makeTensorInfo(o.shape, o.dtype) as TensorInfo);
  const empty = outputs.some((o) => o.shape.some((d) => d === 0));
  if (empty || run.dispatch.some((d) => d === 0)) {
    // Nothing to compute: give empty outputs values so tfjs does not try to read a buffer.
    for (const o of outputs) if (o.shape.some((d) => d === 0)) backend.tensorMap.get(o.dataId).values = new Float32Array(0);
    if (empty) return outputs;
  }
  for (const t of run.inputs) backend.uploadToGPU(t.dataId);
  for (const o of outputs) backend.uploadToGPU(o.dataId);
  if (run.dispatch.some((d) => d === 0)) return outputs;
  const device = backend.device;
  const pipeline = pipelineFor(device, run.code, run.label, run.entryPoint);
  const entries: { binding: number; resource: unknown }[] = [];
  const owned = backend.commandQueueOwnedIds;
  const n = run.inputs.length;
  for (let i = 0; i < n + outputs.length; i++) {
    const t = i < n ? run.inputs[i]! : outputs[i - n]!;
    entries.push({ binding: run.bindings?.[i] ?? i, resource: backend.tensorToBinding(t) });
    owned.add(t.dataId);
  }
  if (run.uniforms) {
    const size = run.uniforms.byteLength;
    const buf = backend.bufferManager.acquireBuffer(size, USAGE_COPY_DST | USAGE_UNIFORM);
    backend.queue.writeBuffer(buf, 0, run.uniforms, 0, size);
    backend.uniformPendingDisposal.push(buf);
    entries.push({ binding: run.uniformBinding ?? entries.length, resource: { offset: 0, size, buffer: buf } });
  }
  const bindGroup = bindGroupFor(device, pipeline, entries as never);

  const timed = backend.activeTimers != null;
  backend.ensureCommandEncoderReady();
  if (timed && backend.supportTimestampQuery) {
    backend.endComputePassEncoder();
    backend.querySet ??= device.createQuerySet({ type: 'timestamp', count: backend.querySetCount });
    backend.computePassEncoder = backend.commandEncoder.beginComputePass({
      timestampWrites: { querySet: backend.querySet, beginningOfPassWriteIndex: 0, endOfPassWriteIndex: 1 },
    });
  } else if (!backend.computePassEncoder) {
    backend.computePassEncoder = backend.commandEncoder.beginComputePass({});
  }
  const pass = backend.computePassEncoder;
  pass.setPipeline(pipeline);
  pass.setBindGroup(0, bindGroup);
  pass.dispatchWorkgroups(run.dispatch[0], run.dispatch[1], run.dispatch[2]);
  backend.dispatchCountInPass++;
  const batch = tf.env().getNumber('WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE');
  if (timed || backend.dispatchCountInPass >= batch) {
    backend.endComputePassEncoder();
    if (timed) backend.activeTimers.push({ name: run.label ?? 'mcpc', query: backend.getQueryTime() });
    else backend.submitQueue();
  }
  return run.into ? [] : outputs;
}

/** Split a workgroup count over x and y when it exceeds the per-dimension limit; kernels linearise `wid.x + wid.y·nx`. */
export function spread(groups: number, limit = 65535): [number, number, number] {
  if (groups <= limit) return [groups, 1, 1];
  const y = Math.ceil(groups / limit);
  return [Math.ceil(groups / y), y, 1];
}

/** Free an intermediate made by `runWgsl` that is not returned to tfjs. */
export function disposeInfo(backend: WebGpuBackendLike, t: TensorInfo): void {
  backend.disposeData(t.dataId);
}

/** A WGSL float literal (always with a decimal point or exponent). */
export function f32(x: number): string {
  if (!Number.isFinite(x)) throw new Error(`not a finite f32: ${x}`);
  const s = String(Math.fround(x));
  return /[.eE]/.test(s) ? s : `${s}.0`;
}

/** A tfjs kernel by name with one output (the gradient closures of our kernels call their backward kernels so). */
export const runKernel1 = (name: string, inputs: Tensor[], attrs: object): Tensor =>
  tf.engine().runKernel(name, inputs as unknown as tf.NamedTensorMap, attrs as unknown as tf.NamedAttrMap) as Tensor;

const afterBackward = new Set<Tensor>();
let sweepQueued = false;

/**
 * Keep `t` (a result one gradient closure computed for the others of the same node) and dispose it once the
 * synchronous backward pass that made it is over. Returns `t`.
 */
export function keepUntilBackwardEnds(t: Tensor): Tensor {
  afterBackward.add(tf.keep(t));
  if (!sweepQueued) {
    sweepQueued = true;
    queueMicrotask(() => {
      sweepQueued = false;
      for (const x of afterBackward) x.dispose();
      afterBackward.clear();
    });
  }
  return t;
}

// --- saving for the gradient without Identity kernels -----------------------------------------------------------------
//
// tfjs saves what a gradient reads by cloning each tensor (one `Identity` kernel and one tape node each); the
// kernels here instead put kept tensors sharing the buffer (../tfjs/share.ts `share`) into the `saved` list of
// the tape node tfjs just recorded for the op, which the engine disposes once the backward pass is over, as it
// does its own clones. The gradient functions receive that list as before. ../tfjs/share.ts
// `shareSavedTensors` does the same for every other op, through the engine.

const eng = (): any => tf.engine();

export { share };

/** Whether tfjs is recording a tape (inside `tf.grads`' forward pass, outside any kernel). */
export const taping = (): boolean => eng().isTapeOn();

/**
 * Hands `tensors` (kept shares, see {@link share}) to the tape node tfjs just recorded for `output`, as its
 * saved tensors; `drop` lists input names the node is to have no gradient for (a mask's gates: as stopGradient).
 * Call right after the op that made `output`, only when {@link taping} was true before it.
 */
function toTape(output: Tensor, tensors: Tensor[], drop?: readonly string[]): void {
  const tape = eng().state.activeTape as { outputs: Tensor[]; saved: Tensor[]; inputs: Record<string, Tensor> }[] | undefined;
  const node = tape?.[tape.length - 1];
  if (!node || !node.outputs.includes(output) || node.saved.length) {
    tf.dispose(tensors);
    throw new Error('saving for the gradient: the last tape node is not the op just run');
  }
  node.saved.push(...tensors);
  if (drop?.length) node.inputs = Object.fromEntries(Object.entries(node.inputs).filter(([k]) => !drop.includes(k)));
}

/**
 * `tf.engine().runKernel(name, inputs, attrs)` for a kernel whose gradient is registered WITHOUT inputsToSave /
 * outputsToSave / saveAllInputs: its gradient's `saved` gets inputs `save.inputs` then outputs `save.outputs`,
 * in that order, shared rather than cloned. `save.noGrad`: inputs that get no gradient (not even zeros).
 */
export function runKernelSaving(name: string, inputs: Tensor[], attrs: object, save: { inputs?: readonly number[]; outputs?: readonly number[]; noGrad?: readonly number[] }): Tensor[] {
  const tape = taping();
  const r = tf.engine().runKernel(name, inputs as unknown as tf.NamedTensorMap, attrs as unknown as tf.NamedAttrMap) as Tensor | Tensor[];
  const outs = Array.isArray(r) ? r : [r];
  if (tape) {
    const kept = [...(save.inputs ?? []).map((i) => inputs[i]!), ...(save.outputs ?? []).map((i) => outs[i]!)].map((t) => tf.keep(share(t)));
    toTape(outs[0]!, kept, save.noGrad?.map(String));
  }
  return outs;
}

export interface CustomOpResult {
  value: Tensor;
  /** What the gradient reads: inputs, tables, or tensors made in the forward (kept for it, no copy). */
  save: Tensor[];
  gradFunc: (dy: Tensor, saved: Tensor[]) => Tensor | Tensor[];
}

/**
 * `tf.customGrad` whose forward returns what to save instead of calling `save()`: the saved tensors are shared
 * (see above), not cloned through an Identity kernel each. `f` runs inside tfjs's tidy, as customGrad's does.
 */
export function customOp<A extends Tensor[]>(f: (...xs: A) => CustomOpResult): (...xs: A) => Tensor {
  return (...xs: A): Tensor => {
    const tapeOn = taping();
    let saved: Tensor[] = [];
    const g = tf.customGrad(((...args: unknown[]) => {
      const r = f(...(args.slice(0, -1) as A));
      if (tapeOn) saved = r.save.map((t) => tf.keep(share(t)));
      return { value: r.value, gradFunc: r.gradFunc };
    }) as never) as (...ys: Tensor[]) => Tensor;
    const y = g(...xs);
    if (tapeOn) toTape(y, saved);
    return y;
  };
}
