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
import { tf, type Tensor } from '../tfjs/index.js';

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

const USAGE_UNIFORM = 0x40;
const USAGE_COPY_DST = 0x8;

/** Record one dispatch of `run.code` in tfjs's command stream; returns the outputs (owned by the caller). */
export function runWgsl(backend: WebGpuBackendLike, run: WgslRun): TensorInfo[] {
  const outputs = run.outputs.map((o) => backend.makeTensorInfo(o.shape, o.dtype) as TensorInfo);
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
  [...run.inputs, ...outputs].forEach((t, i) => entries.push({ binding: run.bindings?.[i] ?? i, resource: backend.tensorToBinding(t) }));
  if (run.uniforms) {
    const size = run.uniforms.byteLength;
    const buf = backend.bufferManager.acquireBuffer(size, USAGE_COPY_DST | USAGE_UNIFORM);
    backend.queue.writeBuffer(buf, 0, run.uniforms, 0, size);
    backend.uniformPendingDisposal.push(buf);
    entries.push({ binding: run.uniformBinding ?? entries.length, resource: { offset: 0, size, buffer: buf } });
  }
  for (const t of [...run.inputs, ...outputs]) backend.commandQueueOwnedIds.add(t.dataId);
  const bindGroup = device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries });

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
  return outputs;
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
