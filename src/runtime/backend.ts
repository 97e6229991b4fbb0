/**
 * Which tfjs backend a run uses: `mcpc run --backend auto|webgpu|wasm|cpu|tensorflow`.
 *
 * `auto` (the default of `mcpc run`) takes a hardware WebGPU adapter when Dawn finds one (Vulkan, Metal,
 * D3D12); otherwise the fastest CPU path. Measured on the training step of the tiny MedCare pipeline on
 * a 2-core x86-64 machine (BENCHMARKS.md, "CPU backends"): `wasm` (XNNPACK plus mcpc's SIMD GEMM) beats
 * WebGPU over Mesa's llvmpipe and the pure-JavaScript `cpu` backend by several times, so `auto` never picks
 * llvmpipe or `cpu` for training. `tensorflow` is @tensorflow/tfjs-node-gpu (or -node) when the user has
 * installed it: optional, never required (its installer downloads libtensorflow).
 *
 * `cpu` is the reference: tests that need bit-identical results across runs (resume) use it, and every
 * other backend is tested against it.
 */
import { existsSync, readdirSync } from 'node:fs';
import { initBackend, type BackendName } from './tfjs/index.js';

/**
 * Whether a GPU may be there for Dawn to find. On Linux a GPU driver makes device nodes (/dev/nvidia0,
 * /dev/dri/renderD128, /dev/kfd); without any, opening Dawn only finds llvmpipe after ~3 s and native
 * warnings on stderr, so `auto` does not try. macOS and Windows always try.
 */
export function gpuDeviceNodes(): string[] {
  if (process.platform !== 'linux') return ['(not Linux: asking Dawn)'];
  const found: string[] = [];
  for (const f of ['/dev/nvidia0', '/dev/kfd']) if (existsSync(f)) found.push(f);
  try {
    for (const f of readdirSync('/dev/dri')) if (f.startsWith('renderD')) found.push(`/dev/dri/${f}`);
  } catch {
    // no /dev/dri
  }
  return found;
}

export const BACKENDS = ['auto', 'webgpu', 'wasm', 'cpu', 'tensorflow'] as const;
export type BackendChoice = (typeof BACKENDS)[number];

export interface ChosenBackend {
  name: BackendName;
  /** One line: what was chosen and why (printed by `mcpc run`). */
  why: string;
}

/** Resolve `auto` and start the backend (throws with a helpful message when a named one cannot start). */
export async function startBackend(choice: BackendChoice): Promise<ChosenBackend> {
  if (choice !== 'auto') {
    await initBackend(choice);
    return { name: choice, why: `${choice} (asked for)` };
  }
  let reason = 'no GPU here (no /dev/nvidia0, /dev/dri/renderD*, /dev/kfd)';
  if (gpuDeviceNodes().length > 0) {
    const { openDawn, describeDevice } = await import('./webgpu/device.js');
    const gpu = await openDawn();
    if (!('unavailable' in gpu) && !gpu.software) {
      await initBackend('webgpu');
      return { name: 'webgpu', why: `webgpu: ${describeDevice(gpu)}` };
    }
    reason = 'unavailable' in gpu ? 'no WebGPU adapter' : `only a software WebGPU adapter (${gpu.info.description || gpu.info.device || 'llvmpipe'})`;
  }
  await initBackend('wasm');
  return { name: 'wasm', why: `wasm: ${reason}; wasm is the fastest CPU path (see BENCHMARKS.md; --backend cpu|webgpu to override)` };
}
