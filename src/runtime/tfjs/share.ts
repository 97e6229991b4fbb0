/**
 * Saving for the gradient without Identity kernels. tfjs saves what a gradient reads by cloning each tensor
 * (engine.saveTensorsForBackwardMode: one `Identity` kernel per tensor, and one more tape node each, through the
 * whole engine: scopes, profiling, tape). On webgpu, cpu and wasm (./wasm-extra.ts's Identity) Identity only
 * adds a reference to the buffer, so `share` makes the same reference directly: a new tensor on the buffer,
 * without a kernel. `shareSavedTensors` makes tfjs's own saving (every tfjs op whose gradient reads its inputs or
 * outputs, tf.customGrad's `save`, registered kernels' inputsToSave / outputsToSave) do that: `engine.clone`,
 * which only saving calls, becomes `share` on those backends. What is left out is the clone's tape node, which
 * would connect the saved copy to its source for a gradient of a gradient (nothing in mcpc takes one). On a
 * MedCare stage-1 step that was ~850 kernels on webgpu and ~1,200 on wasm (2 micro-batches), ~20-30 µs of host
 * time each.
 */
import { tf, type Tensor } from './index.js';

/* eslint-disable @typescript-eslint/no-explicit-any -- tfjs engine internals. */

const eng = (): any => tf.engine();

/** The backends whose Identity is a reference to the same buffer (so sharing changes nothing but the cost). */
const SHARING = new Set(['webgpu', 'wasm', 'cpu']);

/** A new tensor on `t`'s buffer (what those backends' Identity returns), without running a kernel. */
export function share(t: Tensor): Tensor {
  const e = eng();
  const backend = e.state.tensorInfo.get(t.dataId)?.backend ?? e.backend;
  backend.incRef(t.dataId);
  return e.makeTensorFromTensorInfo({ dataId: t.dataId, shape: t.shape, dtype: t.dtype }, backend);
}

/**
 * A copy of `t` to read later (outside the scope that made it): a shared buffer where the backend's Identity is a
 * reference anyway (no kernel, no tape node inside a gradient's forward), else tf.clone.
 */
export function readableCopy(t: Tensor): Tensor {
  return SHARING.has(eng().backendName) ? share(t) : tf.clone(t);
}

let sharing = false;

/** Installs sharing in tfjs's saving (see the header). Idempotent; ./index.ts `initBackend` calls it. */
export function shareSavedTensors(): void {
  if (sharing) return;
  sharing = true;
  const e = eng();
  const clone = e.clone.bind(e);
  e.clone = (x: Tensor): Tensor => (SHARING.has(e.backendName) ? share(x) : clone(x));
}

/**
 * Values a kernel keeps for its gradient by the dataId of one of its outputs (attention's P, the loss's dlogits,
 * a fused kernel's sigmoid): the gradient gets that output back as its saved copy, which shares the dataId
 * (`share` above), and looks the value up there. Not an extra output: autodiff would hand an output no gradient
 * reaches a zero-filled dy of its size. A value whose backward never comes (a layer below every trainable
 * parameter) is released by `sweep`, which the next forward calls, once the output's data is gone: waiting for
 * garbage collection would leave one block per step behind.
 */
export class KeptForGradient<V> {
  private readonly kept = new Map<object, V>();
  constructor(private readonly release: (v: V) => void) {}

  set(id: object, v: V): void {
    this.kept.set(id, v);
  }
  get(id: object): V | undefined {
    return this.kept.get(id);
  }
  /** The value, no longer kept (the caller releases it). */
  take(id: object): V | undefined {
    const v = this.kept.get(id);
    this.kept.delete(id);
    return v;
  }
  get size(): number {
    return this.kept.size;
  }
  /** Releases the values whose output's data is gone. */
  sweep(): void {
    if (!this.kept.size) return;
    const live = eng().state.tensorInfo as WeakMap<object, unknown>;
    for (const [id, v] of this.kept)
      if (!live.has(id)) {
        this.kept.delete(id);
        this.release(v);
      }
  }
}
