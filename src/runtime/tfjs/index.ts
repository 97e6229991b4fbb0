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
export async function initBackend(name: BackendName = 'cpu'): Promise<void> {
  tf.enableProdMode();
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
