/**
 * Running our own WGSL on tfjs-backend-webgpu's device, command encoder and buffers, so WGSL kernels and
 * tfjs ops interleave in one queue and our outputs are ordinary tfjs tensors (autodiff, tidy, dispose).
 *
 *   const [y, r] = dispatch({
 *     name: 'rmsnorm_fwd',
 *     inputs: { x, w },                              // bound read-only, in this order
 *     outputs: { y: [T, D], rstd: [T] },             // new float32 tensors, bound read_write
 *     uniforms: { rows: ['u32', T], eps: ['f32', 1e-6] },
 *     workgroups: T,                                 // flat count; split over x/y past 65535
 *     body: `@compute @workgroup_size(64) fn main(@builtin(workgroup_id) wid: vec3<u32>, ...) { ... }`,
 *   });
 *
 * Why not `backend.runWebGPUProgram`: it binds exactly one output, and most of our kernels write several
 * (a backward writes every input's gradient; AdamW writes parameters and both moments). We do what its
 * `recordAndSubmit` does (same command encoder and compute pass, same deferred-submit batching, same
 * ownership bookkeeping), with bindings of our own:
 *
 *   @group(0) @binding(i)  inputs in order (`var<storage, read>`, or `read_write` for `inout` tensors,
 *                          which the kernel updates in place: only for tensors the caller owns alone),
 *                          then outputs in order (`var<storage, read_write>`), then `u: U` (uniform) when
 *                          there are uniforms. Element types follow the tensor dtype (f32, or i32 for
 *                          int32/bool). Every binding must be used by the body (layout 'auto' drops unused
 *                          ones and the bind group would not match).
 *   `flat_wg(wid, nwg)`    the flat workgroup index, for dispatches of more than 65535 workgroups
 *                          (guard with `if (g >= u.<count>) { return; }`: the grid is rounded up).
 *
 * Pipelines are cached by source text per device. WGSL validation errors are reported asynchronously by
 * Dawn; the first such error of a pipeline is printed and rethrown by its next dispatch.
 */
import { tf, type Tensor } from '../../tfjs/index.js';

/* eslint-disable @typescript-eslint/no-explicit-any -- tfjs-backend-webgpu's internals and WebGPU types are untyped here. */

export type UniformType = 'f32' | 'i32' | 'u32';

export interface DispatchSpec {
  /** For errors and the pipeline cache. */
  name: string;
  /** WGSL: functions, workgroup arrays and one `@compute` entry point `main`; the bindings are generated. */
  body: string;
  inputs: Record<string, Tensor>;
  /** Inputs the kernel updates in place (names of `inputs`). */
  inout?: readonly string[];
  outputs: Record<string, readonly number[]>;
  uniforms?: Record<string, [UniformType, number]>;
  /** Number of workgroups (flat), or an explicit grid. */
  workgroups: number | [number, number, number];
}

const GPU_MAX_DIM = 65535;

const pipelines = new WeakMap<object, Map<string, { pipeline: any; error?: string }>>();

export function webgpuBackend(): any {
  if (tf.getBackend() !== 'webgpu') throw new Error(`WGSL kernels need the webgpu backend (current: ${tf.getBackend()})`);
  return tf.backend() as any;
}

/** Whether the current tfjs backend is webgpu (our kernels apply). */
export const onWebGpu = (): boolean => tf.getBackend() === 'webgpu';

function wgslType(t: Tensor): string {
  return t.dtype === 'int32' || t.dtype === 'bool' ? 'i32' : 'f32';
}

export function grid(n: number): [number, number, number] {
  if (n <= GPU_MAX_DIM) return [Math.max(1, n), 1, 1];
  return [GPU_MAX_DIM, Math.ceil(n / GPU_MAX_DIM), 1];
}

function source(spec: DispatchSpec): string {
  const lines: string[] = [];
  let b = 0;
  const inout = new Set(spec.inout ?? []);
  for (const [name, t] of Object.entries(spec.inputs)) {
    lines.push(`@group(0) @binding(${b++}) var<storage, ${inout.has(name) ? 'read_write' : 'read'}> ${name}: array<${wgslType(t)}>;`);
  }
  for (const name of Object.keys(spec.outputs)) lines.push(`@group(0) @binding(${b++}) var<storage, read_write> ${name}: array<f32>;`);
  const uni = Object.entries(spec.uniforms ?? {});
  if (uni.length) {
    lines.push(`struct U {\n${uni.map(([n, [ty]]) => `  ${n}: ${ty},`).join('\n')}\n};`);
    lines.push(`@group(0) @binding(${b++}) var<uniform> u: U;`);
  }
  lines.push('fn flat_wg(wid: vec3<u32>, nwg: vec3<u32>) -> u32 { return wid.x + wid.y * nwg.x; }');
  return `${lines.join('\n')}\n${spec.body}`;
}

function pipelineFor(device: any, name: string, code: string): any {
  let cache = pipelines.get(device);
  if (!cache) {
    cache = new Map();
    pipelines.set(device, cache);
  }
  let hit = cache.get(code);
  if (!hit) {
    device.pushErrorScope('validation');
    const module = device.createShaderModule({ code, label: name });
    const pipeline = device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main' }, label: name });
    const entry: { pipeline: any; error?: string } = { pipeline };
    device.popErrorScope().then((e: any) => {
      if (e) {
        entry.error = `WGSL kernel ${name}: ${e.message}`;
        console.error(entry.error);
      }
    });
    cache.set(code, entry);
    hit = entry;
  }
  if (hit.error) throw new Error(hit.error);
  return hit.pipeline;
}

/** Records one dispatch of `spec` on the webgpu backend; returns the outputs, in the order of `spec.outputs`. */
export function dispatch(spec: DispatchSpec): Tensor[] {
  const backend = webgpuBackend();
  const device = backend.device;
  const code = source(spec);
  const pipeline = pipelineFor(device, spec.name, code);
  const ins = Object.values(spec.inputs);
  if (Object.values(spec.outputs).some((s) => s.reduce((a, b) => a * b, 1) === 0) || ins.some((t) => t.size === 0)) {
    throw new Error(`WGSL kernel ${spec.name}: empty tensors are not dispatched`);
  }
  const outs = Object.values(spec.outputs).map((shape) => {
    const info = backend.makeTensorInfo([...shape], 'float32');
    backend.uploadToGPU(info.dataId);
    return info;
  });
  for (const t of ins) backend.uploadToGPU(t.dataId);
  const entries: any[] = [...ins.map((t) => backend.tensorToBinding(t)), ...outs.map((o: any) => backend.tensorToBinding(o))];
  const uni = Object.values(spec.uniforms ?? {});
  if (uni.length) entries.push(backend.makeUniforms(uni.map(([ty, v]) => ({ type: ty === 'f32' ? 'float32' : ty === 'i32' ? 'int32' : 'uint32', data: [v] }))));
  for (const t of ins) backend.commandQueueOwnedIds.add(t.dataId);
  for (const o of outs) backend.commandQueueOwnedIds.add(o.dataId);
  const bindGroup = device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries: entries.map((resource, binding) => ({ binding, resource })) });
  const wg = typeof spec.workgroups === 'number' ? grid(spec.workgroups) : spec.workgroups;
  backend.ensureCommandEncoderReady();
  if (!backend.computePassEncoder) backend.computePassEncoder = backend.commandEncoder.beginComputePass({});
  backend.computePassEncoder.setPipeline(pipeline);
  backend.computePassEncoder.setBindGroup(0, bindGroup);
  backend.computePassEncoder.dispatchWorkgroups(wg[0], wg[1], wg[2]);
  backend.dispatchCountInPass++;
  if (tf.env().get('WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE') as number <= backend.dispatchCountInPass) {
    backend.endComputePassEncoder();
    backend.submitQueue();
  }
  return outs.map((o: any) => tf.engine().makeTensorFromTensorInfo(o, backend));
}

/** A small constant tensor (tables, index lists) on the current backend. */
export const i32 = (a: Int32Array | number[], shape?: number[]): Tensor => tf.tensor(a instanceof Int32Array ? a : Int32Array.from(a), shape ?? [a.length], 'int32');
export const f32 = (a: Float32Array | number[], shape?: number[]): Tensor => tf.tensor(a instanceof Float32Array ? a : Float32Array.from(a), shape ?? [a.length], 'float32');

/** Formats a number as a WGSL f32 literal. */
export function lit(x: number): string {
  if (!Number.isFinite(x)) throw new Error(`not a finite WGSL literal: ${x}`);
  const s = String(Math.fround(x));
  return /[.eE]/.test(s) ? s : `${s}.0`;
}

/**
 * WGSL: a workgroup array `red` of `wg` floats, a slot `red_sum`, and `reduce_sum(lid, v)`, the sum of `v`
 * over the workgroup (shared-memory tree; every invocation must call it; `wg` a power of two).
 */
export function wgslReduceSum(wg: number): string {
  // The total is handed out through a slot of its own (red_sum), not red[0]: Mesa's llvmpipe moves a
  // workgroup load below the bare barrier() Tint emits for workgroupBarrier(), so a read of red[0] could see
  // the next reduction's first write there (src/compiler/fusion/wgsl.ts REDUCE has the evidence). red_sum is
  // written again only after the next call's tree and its barriers.
  return `var<workgroup> red: array<f32, ${wg}>;
var<workgroup> red_sum: f32;
fn reduce_sum(lid: u32, v: f32) -> f32 {
  red[lid] = v;
  workgroupBarrier();
  for (var k = ${wg / 2}u; k > 0u; k = k >> 1u) {
    if (lid < k) { red[lid] = red[lid] + red[lid + k]; }
    workgroupBarrier();
  }
  if (lid == 0u) { red_sum = red[0]; }
  workgroupBarrier();
  return red_sum;
}`;
}
