/**
 * `npx tsx bench/kernels.ts [--quick] [--reps N]`: each WGSL kernel of src/runtime/webgpu/{gemm,moe-lora}.ts
 * against its reference (the tfjs op composition of src/runtime/kernels/reference.ts) on the same WebGPU
 * device, in the same process, alternating, forward and forward+backward; prints both medians and the ratio
 * `speedup ours/reference`. On llvmpipe (a CPU) the figures only say that the kernels run: they mean
 * nothing for a GPU (bench/gpu.ts is the GPU benchmark). Exits 1 if WebGPU is unavailable or a result
 * differs from the reference.
 */
import { parseArgs } from 'node:util';
import { reference, type KernelContext, type KernelStep } from '../src/runtime/kernels/reference.js';
import { initBackend, tf, type Tensor } from '../src/runtime/tfjs/index.js';
import { describeDevice, openDawn } from '../src/runtime/webgpu/device.js';
import { gpuSync, linear, tunePending } from '../src/runtime/webgpu/gemm.js';
import { moeLoraLinear } from '../src/runtime/webgpu/moe-lora.js';

const { values } = parseArgs({ options: { quick: { type: 'boolean', default: false }, reps: { type: 'string' } } });
process.env.EGL_PLATFORM ??= 'surfaceless';
const gpu = await openDawn();
if ('unavailable' in gpu) {
  // Under CI llvmpipe is installed, so no adapter is a failure; elsewhere it is a skip.
  console.log(`bench/kernels: ${process.env.CI ? 'FAILED' : 'skipped'}: ${gpu.unavailable}`);
  process.exit(process.env.CI ? 1 : 0);
}
await initBackend('webgpu');
console.log(`device: ${describeDevice(gpu)}`);
if (gpu.software) console.log('note: a software adapter (llvmpipe on the CPU): these timings mean nothing for a GPU');
const quick = values.quick || false;
const reps = Number(values.reps ?? (quick ? 3 : 5));

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
let seed = 1;
const rnd = (shape: number[], scale = 1) => {
  const n = shape.reduce((a, b) => a * b, 1);
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
    a[i] = ((seed / 2 ** 32) * 2 - 1) * scale;
  }
  return tf.tensor(a, shape);
};

/** Median ms of `f` (GPU work included: each run ends with a GPU sync). */
async function time(f: () => Tensor[]): Promise<{ ms: number; out: Float32Array[] }> {
  const first = f();
  const out = await Promise.all(first.map(async (t) => Float32Array.from(await t.data())));
  tf.dispose(first);
  const ts: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    const r = f();
    await gpuSync();
    ts.push(performance.now() - t0);
    tf.dispose(r);
  }
  return { ms: median(ts), out };
}

function maxRel(a: Float32Array[], b: Float32Array[]): number {
  let d = 0;
  let s = 1e-6;
  a.forEach((x, i) => x.forEach((v, j) => ((d = Math.max(d, Math.abs(v - b[i]![j]!))), (s = Math.max(s, Math.abs(b[i]![j]!))))));
  return d / s;
}

let failed = false;
async function compare(name: string, ours: () => Tensor[], ref: () => Tensor[]): Promise<void> {
  // Alternate so both see the same machine state.
  const o1 = await time(ours);
  const r1 = await time(ref);
  const o2 = await time(ours);
  const r2 = await time(ref);
  const ms = Math.min(o1.ms, o2.ms);
  const rms = Math.min(r1.ms, r2.ms);
  const err = maxRel(o1.out, r1.out);
  const ok = err < 1e-3;
  failed ||= !ok;
  console.log(`${name}: ours ${ms.toFixed(2)} ms, reference ${rms.toFixed(2)} ms, speedup ours/reference ${(rms / ms).toFixed(2)}x (max rel diff ${err.toExponential(1)}${ok ? '' : ' MISMATCH'})`);
}

const grads = (f: () => Tensor, xs: Tensor[]) => () => tf.tidy(() => tf.engine().gradients(f as () => tf.Scalar, xs, undefined, true).grads.map((g) => tf.keep(g)));

// --- GEMM: the plan's linear x·Wᵀ -------------------------------------------------------------------------
{
  const [T, din, dout] = quick ? [64, 96, 128] : [256, 256, 512];
  const x = rnd([T, din]);
  const w = rnd([dout, din], 0.1);
  const dy = rnd([T, dout]);
  const refLin = () => tf.matMul(x as tf.Tensor2D, w as tf.Tensor2D, false, true);
  linear(x, w).dispose();
  await tunePending();
  await compare(`gemm x·Wᵀ [${T}x${din}]·[${dout}x${din}]ᵀ forward`, () => [linear(x, w)], () => [refLin()]);
  await compare(
    'gemm forward+backward (dx, dW)',
    grads(() => tf.sum(tf.mul(linear(x, w), dy)), [x, w]),
    grads(() => tf.sum(tf.mul(refLin(), dy)), [x, w]),
  );
  await tunePending();
  tf.dispose([x, w, dy]);
}

// --- Mixture-of-LoRA linear ------------------------------------------------------------------------------
{
  const [T, din, dout] = quick ? [48, 64, 96] : [128, 128, 256];
  const [RS, E, r, k, scale] = [8, 4, 8, 2, 2];
  const x = rnd([T, din]);
  const w = rnd([dout, din], 0.1);
  const sharedA = rnd([RS, din], 0.1);
  const sharedB = rnd([dout, RS], 0.1);
  const routerW = rnd([E, din], 0.3);
  const routerB = rnd([E], 0.1);
  const expertA = rnd([E, r, din], 0.1);
  const expertB = rnd([E, dout, r], 0.1);
  const dy = rnd([T, dout]);
  const trained = [x, sharedA, sharedB, routerW, routerB, expertA, expertB];
  const ours = () => moeLoraLinear(x, { w, sharedA, sharedB, routerW, routerB, expertA, expertB }, { scale, topK: k, renormalize: true }).y;
  const step = (op: KernelStep['op'], attrs: Record<string, unknown>): KernelStep => ({ node: 'bench', op, inputs: [], outputs: [], attrs });
  const ctx = {} as KernelContext;
  const ref = () => {
    const base = reference.linear([x, w], step('linear', {}), ctx)[0]!;
    const sh = reference.lora_up([reference.lora_down([x, sharedA], step('lora_down', {}), ctx)[0]!, sharedB], step('lora_up', { scale }), ctx)[0]!;
    const p = reference.router([x, routerW, routerB], step('router', { activation: 'softmax' }), ctx)[0]!;
    const gates = reference.topk_gate([p], step('topk_gate', { k, renormalize: true }), ctx)[0]!;
    const h = reference.moe_down_batched([x, expertA], step('moe_down_batched', {}), ctx)[0]!;
    const up = reference.moe_up_grouped([h, gates, expertB], step('moe_up_grouped', { sharedRank: 0, rank: r, experts: E, scale }), ctx)[0]!;
    return tf.addN([base, sh, up]);
  };
  const label = `T ${T}, ${din}->${dout}, shared ${RS}, ${E} experts r${r} top-${k}`;
  ours().dispose();
  await tunePending();
  try {
    await compare(`moe-lora linear (${label}) forward`, () => [ours()], () => [ref()]);
    await compare('moe-lora linear forward+backward (x and all adapter weights)', grads(() => tf.sum(tf.mul(ours(), dy)), trained), grads(() => tf.sum(tf.mul(ref(), dy)), trained));
  } catch (e) {
    console.log(`moe-lora linear: the reference does not run on this backend (${(e as Error).message.split('\n')[0]})`);
    failed = true;
  }
  tf.dispose([...trained, w, dy]);
}

process.exitCode = failed ? 1 : 0;
