/**
 * The generated WGSL on a real WebGPU implementation: Dawn (npm package `webgpu`) over Mesa's llvmpipe on
 * the CPU (apt: mesa-vulkan-drivers libegl1 libegl-mesa0 libgles2; see shared/gpu/README.md "On the CPU").
 * Every fused kernel of every pipeline must compile and give pipelines for its entry points, and the fused
 * kernels of the MedCare plan must compute, forward and backward, what the interpreter computes.
 * Skipped, saying why, when the package is not installed or Dawn finds no adapter.
 */
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { passes } from '../../../src/compiler/4-optimize/index.js';
import { deserialise, evaluateBackward, evaluateForward, ExprBuilder, type Backward, type InputKind, type SerialProgram } from '../../../src/compiler/fusion/expr.js';
import type { Binding, EntryPoint } from '../../../src/compiler/fusion/wgsl.js';
import { compileFile, nodeHost } from '../../../src/compiler/index.js';
import type { PlanKernel } from '../../../src/plan/types.js';
import { maxRelError, randomArray, rng } from './gradcheck.js';
import { validPipelines } from '../../support/pipelines.js';

const root = fileURLToPath(new URL('../../../', import.meta.url));

/* eslint-disable @typescript-eslint/no-explicit-any -- WebGPU types come from the optional package at run time. */
type GPUDevice = any;

const GPU_USAGE = { MAP_READ: 0x1, COPY_SRC: 0x4, COPY_DST: 0x8, UNIFORM: 0x40, STORAGE: 0x80 };

/**
 * A Dawn device on llvmpipe, or why there is none. The instance and adapter are returned too and must stay
 * referenced while the device is in use: with webgpu 0.6.2, a garbage-collected instance crashes the
 * process in InstanceBase::ProcessEvents (a futex error, SIGABRT or SIGSEGV, at a random later moment).
 */
async function openDevice(): Promise<{ device: GPUDevice; instance: unknown; adapter: unknown } | { skip: string }> {
  let mod: any;
  try {
    const name = 'webgpu';
    mod = await import(name);
  } catch (e) {
    return { skip: `the npm package \`webgpu\` (Dawn) is not installed (${(e as Error).message.split('\n')[0]})` };
  }
  try {
    process.env.EGL_PLATFORM ??= 'surfaceless';
    Object.assign(globalThis, mod.globals);
    const gpu = mod.create(['backend=opengles']);
    const adapter = await gpu.requestAdapter({ featureLevel: 'compatibility' });
    if (!adapter) return { skip: 'Dawn found no WebGPU adapter (install mesa-vulkan-drivers libegl1 libegl-mesa0 libgles2 for llvmpipe)' };
    const device = await adapter.requestDevice({ requiredLimits: { maxComputeInvocationsPerWorkgroup: 256, maxComputeWorkgroupSizeX: 256, maxStorageBuffersPerShaderStage: 8 } });
    return { device, instance: gpu, adapter };
  } catch (e) {
    return { skip: `Dawn could not open a device: ${(e as Error).message.split('\n')[0]}` };
  }
}


const pipelineFiles = (): string[] => validPipelines(root);

function fusedKernels(file: string): PlanKernel[] {
  const res = compileFile(file, nodeHost(root, root), {}, { optLevel: 1, passes });
  if (!res.plan) throw new Error(`${file} did not compile`);
  return res.plan.kernels.filter((k) => k.wgsl);
}

async function compileErrors(code: string, entryPoints: EntryPoint[]): Promise<string[]> {
  const module = device.createShaderModule({ code });
  const info = await module.getCompilationInfo();
  const msgs: string[] = info.messages.filter((m: any) => m.type === 'error').map((m: any) => `${m.lineNum}:${m.linePos} ${m.message}`);
  for (const ep of entryPoints) {
    device.pushErrorScope('validation');
    device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: ep.name } });
    const err = await device.popErrorScope();
    if (err) msgs.push(`${ep.name}: ${err.message}`);
  }
  return msgs;
}

/** Dispatch one entry point with the given buffer contents; returns the read_write buffers' contents after. */
async function dispatch(code: string, ep: EntryPoint, bindings: Binding[], data: Map<number, Float32Array>, params: number[], rows: number, cols: number): Promise<Map<number, Float32Array>> {
  const module = device.createShaderModule({ code });
  const pipeline = device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: ep.name } });
  const buffers = new Map<number, any>();
  const entries = ep.bindings.map((n) => {
    const b = bindings.find((x) => x.binding === n)!;
    let buf: any;
    if (b.role === 'params') {
      buf = device.createBuffer({ size: 16, usage: GPU_USAGE.UNIFORM | GPU_USAGE.COPY_DST });
      device.queue.writeBuffer(buf, 0, new Uint32Array(params));
    } else {
      const arr = data.get(n)!;
      buf = device.createBuffer({ size: arr.byteLength, usage: GPU_USAGE.STORAGE | GPU_USAGE.COPY_SRC | GPU_USAGE.COPY_DST });
      device.queue.writeBuffer(buf, 0, arr);
    }
    buffers.set(n, buf);
    return { binding: n, resource: { buffer: buf } };
  });
  const bindGroup = device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries });
  const groups = ep.workgroups === 'rows' ? rows : ep.workgroups === 'cols' ? cols : Math.ceil((rows * cols) / 256);
  const x = Math.min(groups, 65535);
  const enc = device.createCommandEncoder();
  const pass = enc.beginComputePass();
  pass.setPipeline(pipeline);
  pass.setBindGroup(0, bindGroup);
  pass.dispatchWorkgroups(x, Math.ceil(groups / x), 1);
  pass.end();
  const out = new Map<number, any>();
  for (const n of ep.bindings) {
    const b = bindings.find((y) => y.binding === n)!;
    if (b.access !== 'read_write') continue;
    const size = data.get(n)!.byteLength;
    const staging = device.createBuffer({ size, usage: GPU_USAGE.MAP_READ | GPU_USAGE.COPY_DST });
    enc.copyBufferToBuffer(buffers.get(n), 0, staging, 0, size);
    out.set(n, staging);
  }
  device.queue.submit([enc.finish()]);
  const result = new Map<number, Float32Array>();
  for (const [n, staging] of out) {
    await staging.mapAsync(1);
    result.set(n, new Float32Array(staging.getMappedRange().slice(0)));
    staging.unmap();
  }
  return result;
}

interface KernelAttrs {
  expr: { inputs: InputKind[]; forward: SerialProgram; backward: { program: SerialProgram; slots: { inputs: number[]; reduce: 'none' | 'cols' }[]; grads: (number | null)[] } };
  bindings: { forward: Binding[]; backward: Binding[] };
  entryPoints: { forward: EntryPoint[]; backward: EntryPoint[] };
}

/** Forward and backward of a plan kernel on the GPU and in the interpreter (f32), on random data. */
async function runKernel(k: PlanKernel, rows: number, cols: number, seed: number, gradMask = 0xffffffff, accumMask = 0) {
  const a = k.attrs as unknown as KernelAttrs;
  const E = new ExprBuilder();
  const fused = { inputs: a.expr.inputs, outputs: deserialise(a.expr.forward, a.expr.inputs, E) };
  const slotExprs = deserialise(a.expr.backward.program, a.expr.inputs, E);
  const backward: Backward = { slots: a.expr.backward.slots.map((s, i) => ({ ...s, expr: slotExprs[i] })), grads: a.expr.backward.grads, usesOutputs: a.expr.backward.program.nodes.some((n) => n[0] === 'out') };
  const r = rng(seed);
  const xs = fused.inputs.map((kind) => Float32Array.from(randomArray(kind === 'vec' ? cols : rows * cols, r)));
  const dys = fused.outputs.map(() => Float32Array.from(randomArray(rows * cols, r)));
  const prior = backward.slots.map((s) => Float32Array.from(randomArray(s.reduce === 'cols' ? cols : rows * cols, r)));

  const fb = a.bindings.forward;
  const fdata = new Map<number, Float32Array>();
  for (const b of fb) if (b.role === 'input') fdata.set(b.binding, xs[b.index]);
  for (const b of fb) if (b.role === 'output') fdata.set(b.binding, new Float32Array(rows * cols));
  const fout = await dispatch(k.wgsl!.forward, a.entryPoints.forward[0], fb, fdata, [rows, cols, 0, 0], rows, cols);
  const ys = fb.filter((b) => b.role === 'output').map((b) => fout.get(b.binding)!);

  const bb = a.bindings.backward;
  const bdata = new Map<number, Float32Array>();
  for (const b of bb) {
    if (b.role === 'input') bdata.set(b.binding, xs[b.index]);
    if (b.role === 'saved_output') bdata.set(b.binding, ys[b.index]);
    if (b.role === 'dy') bdata.set(b.binding, dys[b.index]);
    if (b.role === 'grad') bdata.set(b.binding, backward.slots[b.index].reduce === 'cols' ? new Float32Array(rows * cols) : prior[b.index].slice());
    if (b.role === 'grad_reduced') bdata.set(b.binding, prior[b.index].slice());
  }
  const params = [rows, cols, gradMask, accumMask];
  const gmain = await dispatch(k.wgsl!.backward, a.entryPoints.backward[0], bb, bdata, params, rows, cols);
  for (const [n, v] of gmain) bdata.set(n, v);
  const reduce = a.entryPoints.backward.find((e) => e.name === 'reduce_cols');
  const gred = reduce ? await dispatch(k.wgsl!.backward, reduce, bb, bdata, params, rows, cols) : new Map<number, Float32Array>();
  const slotOut = backward.slots.map((s, i) => {
    const role = s.reduce === 'cols' ? 'grad_reduced' : 'grad';
    const b = bb.find((x) => x.role === role && x.index === i)!;
    return (gred.get(b.binding) ?? gmain.get(b.binding))!;
  });

  const wantY = evaluateForward(fused, { rows, cols, inputs: xs });
  const wantG = evaluateBackward(fused, backward, { rows, cols, inputs: xs, dys });
  return { ys, wantY, slotOut, wantG, backward, prior };
}

const opened = await openDevice();
const device: GPUDevice = 'device' in opened ? opened.device : undefined;
const skip = 'skip' in opened ? opened.skip : undefined;
if (skip) console.warn(`wgsl-dawn.test.ts skipped: ${skip}`);
// CI installs Mesa and Dawn (.ci/run): there a missing WebGPU device is a failure, not a skip.
if (skip && process.env.CI) throw new Error(`WebGPU over llvmpipe is required in CI: ${skip}`);

const files = pipelineFiles();
const kernelsByFile = new Map(skip ? [] : files.map((f) => [f, fusedKernels(f)]));
const medcare = skip ? [] : fusedKernels('pipelines/medcare.mcp');

describe.skipIf(!!skip)('generated WGSL on Dawn (llvmpipe)', () => {
  afterAll(() => {
    device?.destroy();
    // Keeps the instance reachable until the device is gone (see openDevice).
    if ('instance' in opened) expect(opened.instance).toBeTruthy();
  });

  it.each(files)('%s: every fused kernel compiles, with a pipeline per entry point', async (file) => {
    for (const k of kernelsByFile.get(file)!) {
      const a = k.attrs as unknown as KernelAttrs;
      expect(await compileErrors(k.wgsl!.forward, a.entryPoints.forward), `${k.id} forward`).toEqual([]);
      expect(await compileErrors(k.wgsl!.backward, a.entryPoints.backward), `${k.id} backward`).toEqual([]);
    }
  });

  describe('MedCare kernels compute what the interpreter computes', () => {
    const kernels = medcare;
    const cases = ['rmsnorm', 'add2_rmsnorm', 'add3_rmsnorm', 'add2_swiglu', 'add2'];
    // 5 x 300: the row layout loops twice over a row of 256-wide strides; 1500 elements are not a multiple of 256.
    it.each(cases)('%s, forward and backward (5 x 300 and 3 x 17)', async (name) => {
      const k = kernels.find((x) => x.id.startsWith(`fused.${name}.`))!;
      expect(k, name).toBeDefined();
      for (const [rows, cols, seed] of [
        [5, 300, 1],
        [3, 17, 2],
      ]) {
        const { ys, wantY, slotOut, wantG, backward } = await runKernel(k, rows, cols, seed);
        expect(maxRelError(ys, wantY)).toBeLessThan(1e-4);
        backward.slots.forEach((s, i) => expect(maxRelError([slotOut[i]], [wantG[s.inputs[0]]]), `slot ${i}`).toBeLessThan(1e-4));
      }
    });

    it('grad_mask leaves unwanted gradients alone; accum_mask adds to what is there', async () => {
      const k = kernels.find((x) => x.id.startsWith('fused.add2_rmsnorm.'))!;
      const { slotOut, wantG, backward, prior } = await runKernel(k, 4, 40, 3, 0b10, 0b10);
      const elem = backward.slots.findIndex((s) => s.reduce === 'none');
      const vec = backward.slots.findIndex((s) => s.reduce === 'cols');
      expect(slotOut[elem]).toEqual(prior[elem]); // masked off: untouched
      const want = wantG[backward.slots[vec].inputs[0]].map((g, c) => g + prior[vec][c]);
      expect(maxRelError([slotOut[vec]], [want])).toBeLessThan(1e-4);
    });
  });
});
