/**
 * The runtime's WebGPU device: Dawn (npm package `webgpu`) opened by us, with the features and limits our
 * kernels want, then handed to tfjs-backend-webgpu, so tfjs ops and our WGSL kernels share one device.
 *
 *   const gpu = await openDawn();            // { device, adapter, info, features, limits } or { unavailable }
 *   await registerWebGpuBackend(gpu);        // tf.setBackend('webgpu') now runs on that device
 *
 * Adapter choice: a hardware adapter first (Vulkan, Metal or D3D12, with the Dawn toggles that unlock
 * `shader-f16` and `chromium-experimental-subgroup-matrix` on NVIDIA); without one, Mesa's llvmpipe through
 * Dawn's OpenGL ES backend (`featureLevel: 'compatibility'`, EGL_PLATFORM=surfaceless), which is how CI runs
 * the kernels on a CPU. See ../shared/gpu/README.md.
 *
 * The Dawn instance and adapter stay referenced for the life of the process: with webgpu 0.6.2 a
 * garbage-collected instance crashes the process later (InstanceBase::ProcessEvents).
 */
import { tf } from '../tfjs/index.js';
import { shareSavedTensors } from '../tfjs/share.js';
import { watchDevice } from './faults.js';

/* eslint-disable @typescript-eslint/no-explicit-any -- WebGPU types come from the optional native package. */
export type GPUDeviceLike = any;

/** Features requested when the adapter offers them. */
export const WANTED_FEATURES = ['subgroups', 'subgroup-size-control', 'shader-f16', 'timestamp-query', 'chromium-experimental-subgroup-matrix'] as const;

/** Limits raised to the adapter's maximum. */
const WANTED_LIMITS = [
  'maxComputeWorkgroupStorageSize',
  'maxComputeWorkgroupsPerDimension',
  'maxStorageBufferBindingSize',
  'maxBufferSize',
  'maxComputeWorkgroupSizeX',
  'maxComputeWorkgroupSizeY',
  'maxComputeInvocationsPerWorkgroup',
  'maxStorageBuffersPerShaderStage',
] as const;

export interface DawnDevice {
  device: GPUDeviceLike;
  adapter: unknown;
  /** Vendor / architecture / description of the adapter, as Dawn reports them. */
  info: { vendor: string; architecture: string; device: string; description: string };
  /** Which Dawn backend found it. */
  backend: 'default' | 'opengles';
  /** True for a software adapter (llvmpipe, SwiftShader). */
  software: boolean;
  features: string[];
  limits: Record<string, number>;
}

export type OpenResult = DawnDevice | { unavailable: string };

const keepAlive: unknown[] = [];
let opened: Promise<OpenResult> | undefined;

/** Open (once per process) the best Dawn device there is, or say why there is none. */
export function openDawn(): Promise<OpenResult> {
  opened ??= open();
  return opened;
}

/**
 * Dawn toggles for a hardware adapter: unsafe APIs (subgroup matrices), f16 on NVIDIA, and no robustness
 * transform nor workgroup-memory zeroing: every kernel of ours bounds-checks its own reads and writes, and
 * on an H100 Dawn's clamping cost the memory-bound mixture-of-LoRA forward 22% (4.15 → 3.22 ms, BENCHMARKS.md).
 * `MCPC_DAWN_ROBUSTNESS=1` keeps Dawn's checks (to tell a kernel bug from a driver one);
 * `MCPC_DAWN_FEATURES` adds toggles (comma-separated) for experiments.
 */
export function hardwareToggles(env: NodeJS.ProcessEnv = process.env): string[] {
  const fast = env.MCPC_DAWN_ROBUSTNESS === '1' ? [] : ['disable_robustness', 'disable_workgroup_init'];
  return ['allow_unsafe_apis', 'vulkan_enable_f16_on_nvidia', ...fast, ...(env.MCPC_DAWN_FEATURES ?? '').split(',').filter(Boolean)];
}

function isSoftware(info: DawnDevice['info']): boolean {
  return /llvmpipe|swiftshader|softpipe|lavapipe/i.test(`${info.vendor} ${info.architecture} ${info.device} ${info.description}`);
}

async function open(): Promise<OpenResult> {
  let mod: any;
  try {
    const name = 'webgpu';
    mod = await import(name);
  } catch (e) {
    return { unavailable: `the npm package \`webgpu\` (Dawn) could not be loaded: ${(e as Error).message.split('\n')[0]}` };
  }
  Object.assign(globalThis, mod.globals);
  const tries: { backend: DawnDevice['backend']; flags: string[]; options: Record<string, unknown> }[] = [
    { backend: 'default', flags: [`enable-dawn-features=${hardwareToggles().join(',')}`], options: { powerPreference: 'high-performance' } },
    { backend: 'opengles', flags: ['backend=opengles'], options: { featureLevel: 'compatibility' } },
  ];
  const why: string[] = [];
  for (const t of tries) {
    try {
      if (t.backend === 'opengles') process.env.EGL_PLATFORM ??= 'surfaceless';
      const gpu = mod.create(t.flags);
      keepAlive.push(gpu);
      const adapter = await gpu.requestAdapter(t.options);
      if (!adapter) {
        why.push(`${t.backend}: no adapter`);
        continue;
      }
      keepAlive.push(adapter);
      const ai = adapter.info ?? {};
      const info = { vendor: String(ai.vendor ?? ''), architecture: String(ai.architecture ?? ''), device: String(ai.device ?? ''), description: String(ai.description ?? '') };
      // A software Vulkan adapter under the default backend: the GLES path is the tested one for llvmpipe.
      if (t.backend === 'default' && isSoftware(info)) {
        why.push(`default: only a software adapter (${info.description || info.device})`);
        continue;
      }
      const features = WANTED_FEATURES.filter((f) => adapter.features.has(f));
      const requiredLimits: Record<string, number> = {};
      for (const l of WANTED_LIMITS) if (typeof adapter.limits[l] === 'number') requiredLimits[l] = adapter.limits[l];
      const device = await adapter.requestDevice({ requiredFeatures: features, requiredLimits });
      keepAlive.push(device);
      // Out-of-memory, validation and internal errors and a device loss are recorded (./faults.ts): the run
      // stops on one instead of training on what an invalid buffer reads back.
      watchDevice(device);
      // tfjs-backend-webgpu checks for navigator.gpu (Node 20 has no navigator).
      const g = globalThis as any;
      g.navigator ??= {};
      g.navigator.gpu ??= gpu;
      const limits: Record<string, number> = {};
      for (const l of WANTED_LIMITS) limits[l] = device.limits[l];
      return { device, adapter, info, backend: t.backend, software: isSoftware(info), features: [...features], limits };
    } catch (e) {
      why.push(`${t.backend}: ${(e as Error).message.split('\n')[0]}`);
    }
  }
  return { unavailable: `Dawn found no usable WebGPU adapter (${why.join('; ')}); on Linux without a GPU install mesa-vulkan-drivers libegl1 libegl-mesa0 libgles2 for llvmpipe` };
}

let registered: DawnDevice | undefined;

/**
 * Register tfjs's `webgpu` backend on our device (replacing the package's own factory, which would open a
 * second device with fewer features). Idempotent.
 */
export async function registerWebGpuBackend(gpu: DawnDevice): Promise<void> {
  if (registered) return;
  const { WebGPUBackend } = await import('@tensorflow/tfjs-backend-webgpu');
  if (tf.findBackendFactory('webgpu')) tf.removeBackend('webgpu');
  tf.registerBackend('webgpu', () => new WebGPUBackend(gpu.device, gpu.adapter && (gpu.adapter as any).info), 3);
  // Tensors saved for a gradient share their buffer instead of going through an Identity kernel each
  // (../tfjs/share.ts; initBackend installs it too).
  shareSavedTensors();
  registered = gpu;
}

/** One line saying which device runs the kernels. */
export function describeDevice(gpu: DawnDevice): string {
  const name = gpu.info.description || [gpu.info.vendor, gpu.info.architecture, gpu.info.device].filter(Boolean).join(' ') || 'unknown adapter';
  return `${name} via Dawn ${gpu.backend === 'opengles' ? 'OpenGL ES' : 'native'}${gpu.software ? ' (software)' : ''}; features: ${gpu.features.join(', ') || 'none'}`;
}
