/**
 * Shared by the WGSL kernel tests: the WebGPU device (Dawn; llvmpipe on a CPU), fail-or-skip when there is
 * none, and a harness that runs a kernel and its reference on the same data (the reference on the `cpu`
 * backend, ours on `webgpu`) and compares the outputs and the gradients of Σ y·dy for a random dy.
 */
import { describe, it } from 'vitest';
import { openDawn } from '../../../src/runtime/webgpu/device.js';
import { initBackend, tf, type Tensor } from '../../../src/runtime/tfjs/index.js';
import { f16BitsToFloat32, float32ToF16Bits } from '../../../src/runtime/io/float16.js';

process.env.EGL_PLATFORM ??= 'surfaceless';

const opened = await openDawn();
/** Why there is no WebGPU device, or undefined when there is one. */
export const unavailable: string | undefined = 'unavailable' in opened ? opened.unavailable : undefined;

/** The opened Dawn device and its limits (inside `describeGpu`, where there is one). */
export function dawn(): { device: GPUDevice; limits: Record<string, number> } {
  if ('unavailable' in opened) throw new Error(opened.unavailable);
  return { device: opened.device as GPUDevice, limits: opened.limits };
}

/**
 * `describe` for tests that need WebGPU: skipped (saying why) without an adapter, except under CI, where a
 * missing adapter is a failure (CI installs Mesa so llvmpipe is always there).
 */
export function describeGpu(name: string, fn: () => void): void {
  if (unavailable && process.env.CI) {
    describe(name, () => {
      it('has a WebGPU adapter (required under CI)', () => {
        throw new Error(unavailable);
      });
    });
    return;
  }
  describe.skipIf(!!unavailable)(unavailable ? `${name} (skipped: ${unavailable})` : name, fn);
}

/** A deterministic generator in [-1, 1). */
export function rand(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return (s / 2 ** 32) * 2 - 1;
  };
}

export interface Arg {
  data: Float32Array | Int32Array;
  shape: number[];
  /** Take the gradient with respect to this argument (float only). */
  diff?: boolean;
}

export const randn = (seed: number, shape: number[], scale = 1, diff = true): Arg => {
  const r = rand(seed);
  const n = shape.reduce((a, b) => a * b, 1);
  return { data: Float32Array.from({ length: n }, () => r() * scale), shape, diff };
};

export interface Result {
  outs: Float32Array[];
  grads: Float32Array[];
  ms: number;
}

/**
 * Runs `fn` on `backend` over the args; returns its outputs and the gradients of Σ_o Σ y_o·dy_o (dy_o
 * random, fixed by `seed`) with respect to every `diff` arg. `ms` is the wall time of `reps` forward+backward
 * runs after one warm-up (read back included).
 */
export async function run(backend: 'cpu' | 'webgpu', fn: (xs: Tensor[]) => Tensor[], args: Arg[], seed = 7, reps = 0): Promise<Result> {
  await initBackend(backend);
  const once = async (): Promise<Result> => {
    // Reads are asynchronous: tfjs-backend-webgpu's readSync needs OffscreenCanvas, which Node lacks.
    const kept = tf.tidy(() => {
      const xs = args.map((a) => tf.tensor(a.data, a.shape, a.data instanceof Int32Array ? 'int32' : 'float32'));
      const diffIdx = args.map((a, i) => (a.diff ? i : -1)).filter((i) => i >= 0);
      let outs: Tensor[] = [];
      const objective = (...ds: Tensor[]) => {
        const all = xs.slice();
        diffIdx.forEach((k, j) => (all[k] = ds[j]!));
        outs = fn(all).map((o) => tf.keep(o));
        const r = rand(seed);
        const terms = outs.map((o) => tf.sum(tf.mul(o, tf.tensor(Float32Array.from({ length: o.size }, () => r()), o.shape as number[]))));
        return (terms.length === 1 ? terms[0]! : tf.addN(terms)) as tf.Scalar;
      };
      if (!diffIdx.length) {
        objective();
        return { outs, grads: [] as Tensor[] };
      }
      const { grads } = tf.engine().gradients(() => objective(...diffIdx.map((k) => xs[k]!)), diffIdx.map((k) => xs[k]!), undefined, true);
      // An argument the objective does not reach gets zeros, as the executor gives it (a mask's gates, which
      // a kernel may leave off the tape where the reference returns zeros for them).
      return { outs, grads: diffIdx.map((k, j) => grads[j] ?? tf.zerosLike(xs[k]!)) };
    });
    const read = (ts: Tensor[]) => Promise.all(ts.map(async (t) => Float32Array.from(await t.data())));
    const res = { outs: await read(kept.outs), grads: await read(kept.grads), ms: 0 };
    tf.dispose([...kept.outs, ...kept.grads]);
    return res;
  };
  const first = await once();
  if (reps > 0) {
    const t0 = performance.now();
    for (let i = 0; i < reps; i++) await once();
    first.ms = (performance.now() - t0) / reps;
  }
  return first;
}

/** max |a − b| / max(max |b|, floor). */
export function relErr(a: ArrayLike<number>, b: ArrayLike<number>, floor = 1e-6): number {
  if (a.length !== b.length) return Infinity;
  let diff = 0;
  let scale = floor;
  for (let i = 0; i < a.length; i++) {
    if (!Number.isFinite(a[i])) return Infinity;
    diff = Math.max(diff, Math.abs(a[i] - b[i]));
    scale = Math.max(scale, Math.abs(b[i]));
  }
  return diff / scale;
}

/** Runs both sides and returns the worst relative error over outputs and gradients (with names for messages). */
export async function compare(ours: (xs: Tensor[]) => Tensor[], ref: (xs: Tensor[]) => Tensor[], args: Arg[], seed = 7): Promise<{ worst: number; what: string; ref: Result; gpu: Result }> {
  const r = await run('cpu', ref, args, seed);
  const g = await run('webgpu', ours, args, seed);
  let worst = 0;
  let what = '';
  const check = (a: Float32Array, b: Float32Array, name: string) => {
    const e = relErr(a, b, 1e-3);
    if (e > worst || !Number.isFinite(e)) {
      worst = Number.isFinite(e) ? e : Infinity;
      what = name;
    }
  };
  // Errors are relative to each tensor's scale, with a floor of 1e-3 (the tests' tensors are of order 1): a gradient that is zero in exact
  // arithmetic (dq of a one-token attention) is summation-order noise on both sides.
  r.outs.forEach((o, i) => check(g.outs[i] ?? new Float32Array(), o, `output ${i}`));
  r.grads.forEach((o, i) => check(g.grads[i] ?? new Float32Array(), o, `gradient ${i}`));
  if (g.outs.length !== r.outs.length) return { worst: Infinity, what: 'output count', ref: r, gpu: g };
  return { worst, what, ref: r, gpu: g };
}

/**
 * x rounded to float32, then to the nearest f16 value (ties to even, subnormals, ±Infinity past the range), as a
 * number: the reference for the f16 path's operands (the project's binary16 conversion, src/runtime/io/float16.ts).
 */
export const roundToF16 = (x: number): number => f16BitsToFloat32(float32ToF16Bits(x));
