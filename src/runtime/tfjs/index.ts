/**
 * The runtime's one door to TensorFlow.js: tfjs-core (ops, autodiff, memory), its gradients, and the
 * backends. Every runtime module imports `tf` from here, never from the packages, so the gradients are
 * always registered before the first op runs.
 *
 * - `@tensorflow/tfjs-core` (CommonJS Node entry) first: it creates the global engine.
 * - `./gradients.generated.js`: the gradient of every kernel (see scripts/vendor-tfjs-gradients.ts for why
 *   it is a generated bundle and not `@tensorflow/tfjs-core/dist/register_all_gradients`).
 * - `@tensorflow/tfjs-backend-cpu`: the pure-JS reference backend, registered on import.
 *
 * Chained ops (`t.add(u)`) are not registered by tfjs-core's entry: write `tf.add(t, u)`.
 */
import * as tf from '@tensorflow/tfjs-core';
import './gradients.generated.js';
import '@tensorflow/tfjs-backend-cpu';

export { tf };
export type { Tensor, Scalar, Tensor1D, Tensor2D, Tensor3D, Variable, Rank } from '@tensorflow/tfjs-core';

/** Backends the reference path knows how to start. `cpu` is always present; others are registered by their own modules. */
export type BackendName = 'cpu' | (string & {});

/**
 * Select a tfjs backend (default `cpu`) and wait until it is ready. Also turns on tfjs "production mode",
 * which only silences tfjs's console hints (e.g. the one asking to install tfjs-node).
 */
/** Which of mcpc's kernel tables a backend runs: the CPU one (cpu, wasm, tensorflow) or the WebGPU one. */
export type KernelFamily = 'cpu' | 'webgpu';
const familyOf = (backend: string): KernelFamily => (backend === 'webgpu' ? 'webgpu' : 'cpu');
const familyGradients: Record<KernelFamily, Map<string, tf.GradConfig>> = { cpu: new Map(), webgpu: new Map() };
/** The family whose gradient tfjs holds for each of mcpc's kernel names. */
const gradientHolder = new Map<string, KernelFamily>();
let activeFamily: KernelFamily | undefined;

/**
 * Registers the gradient of one of mcpc's kernels for the backends of `family`. tfjs keeps one gradient per
 * kernel name for all backends, and the CPU table and the WebGPU kernels share some names (McpcMoeUp,
 * McpcTopkGate, ...) with different saved tensors: whichever registered last served both, so a process that
 * trained on wasm and then on webgpu (or back) crashed in the backward. The family in use holds the name;
 * initBackend hands it over on a switch.
 */
export function registerFamilyGradient(family: KernelFamily, config: tf.GradConfig): void {
  familyGradients[family].set(config.kernelName, config);
  if (!gradientHolder.has(config.kernelName) || activeFamily === family) {
    tf.registerGradient(config);
    gradientHolder.set(config.kernelName, family);
  }
}

function activateFamily(family: KernelFamily): void {
  activeFamily = family;
  for (const c of familyGradients[family].values()) {
    if (gradientHolder.get(c.kernelName) === family) continue;
    tf.registerGradient(c);
    gradientHolder.set(c.kernelName, family);
  }
}

export async function initBackend(name: BackendName = 'cpu'): Promise<void> {
  tf.enableProdMode();
  activateFamily(familyOf(name));
  if (tf.getBackend() === name) return;
  if (name === 'webgpu') {
    const { openDawn, registerWebGpuBackend } = await import('../webgpu/device.js');
    const gpu = await openDawn();
    if ('unavailable' in gpu) throw new Error(gpu.unavailable);
    await registerWebGpuBackend(gpu);
  }
  if (name === 'wasm') {
    await import('@tensorflow/tfjs-backend-wasm');
    (await import('./wasm-extra.js')).registerWasmExtras();
    (await import('./gemm.js')).registerWasmGemm();
  }
  if (name === 'tensorflow') {
    // Optional: @tensorflow/tfjs-node-gpu (or -node) registers the `tensorflow` backend on import, on the
    // same tfjs-core when npm dedupes it (same version). Never a dependency: its installer downloads
    // libtensorflow, which offline machines cannot.
    let loaded = false;
    for (const pkg of ['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node']) {
      try {
        await import(pkg);
        loaded = true;
        break;
      } catch {
        // try the next one
      }
    }
    if (!loaded) throw new Error("the tensorflow backend needs @tensorflow/tfjs-node-gpu (or @tensorflow/tfjs-node), which is not installed: `npm install @tensorflow/tfjs-node-gpu@4.22` (its installer downloads libtensorflow), or use --backend auto");
  }
  // Tensors saved for a gradient share their buffer instead of going through an Identity kernel each (./share.ts).
  (await import('./share.js')).shareSavedTensors();
  const ok = await tf.setBackend(name);
  if (!ok) throw new Error(`the tfjs backend '${name}' is not available (registered: ${Object.keys(tf.engine().registryFactory).join(', ')})`);
  await tf.ready();
}
