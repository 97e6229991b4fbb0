/**
 * `npx tsx bench/cpu-xent.ts [--reps N]`: the CPU table's `lm_head_xent` (LM head GEMM + softmax
 * cross-entropy over chunks of rows, src/runtime/kernels/cpu-xent.ts) on the `wasm` backend, with the rows'
 * exponentials in JavaScript (MCPC_XENT_WASM=0, f64 Math.exp per logit) against WebAssembly SIMD
 * (src/runtime/tfjs/xent.wat), alternating in one process: the forward, and forward + dx (what MedCare's
 * stages run: the head is frozen) at the training bench's shape (8 x 256 tokens, hidden 64, byte vocabulary
 * 256) and at a larger vocabulary (512 tokens, hidden 256, V 32000; at most 3 repetitions). Median wall ms, the ratio, and the
 * largest relative difference of the loss and dx between the two paths.
 */
import { loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import { cpuKernels } from '../src/runtime/kernels/cpu.js';
import type { KernelContext, KernelStep } from '../src/runtime/kernels/reference.js';
import { initBackend, tf, type Tensor } from '../src/runtime/tfjs/index.js';

const { values } = parseArgs({ options: { reps: { type: 'string', default: '15' } } });
const reps = Number(values.reps);
await initBackend('wasm');

const step: KernelStep = { node: 'loss', op: 'lm_head_xent', inputs: ['x', 'W', 'labels', 'mask'], outputs: ['loss'], attrs: {} };
const ctx: KernelContext = { rows: 1, seqLen: 1, positions: new Int32Array(1), segments: new Int32Array(1), cache: new Map() };
const xent = cpuKernels({ kernels: [] }).lm_head_xent;
const med = (a: number[]) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)]!;

console.log(`lm_head_xent on wasm, rows' exponentials in JavaScript (MCPC_XENT_WASM=0) vs WebAssembly SIMD, median of ${reps}, load avg ${loadavg()[0]!.toFixed(2)}`);
for (const [T, d, V] of [
  [2048, 64, 256],
  [512, 256, 32000],
]) {
  const x = tf.mul(tf.randomNormal([T!, d!]), 0.5);
  const W = tf.mul(tf.randomNormal([V!, d!]), 0.5);
  const labels = tf.tensor1d(Int32Array.from({ length: T! }, (_, t) => (t * 7919) % V!), 'int32');
  const mask = tf.tensor1d(Float32Array.from({ length: T! }, (_, t) => (t % 10 < 7 ? 1 : 0)));
  const fwd = () => tf.tidy(() => xent([x, W, labels, mask], step, ctx)[0]!.dataSync()[0]!);
  // Read after tf.tidy, not inside: tidy walks a returned typed array element by element looking for tensors.
  const bwd = () => {
    const g = tf.tidy(() => tf.grad((a: Tensor) => xent([a, W, labels, mask], step, ctx)[0]! as tf.Scalar)(x));
    const data = g.dataSync() as Float32Array;
    g.dispose();
    return data;
  };
  const times: Record<string, number[]> = { f0: [], f1: [], b0: [], b1: [] };
  const out: Record<string, [number, Float32Array]> = {};
  const n = V! > 4096 ? Math.min(reps, 3) : reps;
  for (let r = 0; r < n + 2; r++)
    for (const mode of r % 2 ? ['1', '0'] : ['0', '1']) {
      process.env.MCPC_XENT_WASM = mode;
      let t = performance.now();
      const loss = fwd();
      const tf_ = performance.now() - t;
      t = performance.now();
      const dx = bwd();
      const tb = performance.now() - t;
      if (r >= 2) {
        times[`f${mode}`]!.push(tf_);
        times[`b${mode}`]!.push(tb);
      }
      out[mode] = [loss, dx];
    }
  delete process.env.MCPC_XENT_WASM;
  let dmax = 0;
  let scale = 1e-12;
  out['0']![1].forEach((v, i) => {
    dmax = Math.max(dmax, Math.abs(v - out['1']![1][i]!));
    scale = Math.max(scale, Math.abs(v));
  });
  const lossDiff = Math.abs(out['0']![0] - out['1']![0]) / Math.abs(out['0']![0]);
  const [f0, f1, b0, b1] = [med(times.f0!), med(times.f1!), med(times.b0!), med(times.b1!)];
  console.log(
    `  T=${T} d=${d} V=${V}: forward ${f0.toFixed(2)} -> ${f1.toFixed(2)} ms (${(f0 / f1).toFixed(2)}x), forward+dx ${b0.toFixed(2)} -> ${b1.toFixed(2)} ms (${(b0 / b1).toFixed(2)}x); loss rel diff ${lossDiff.toExponential(1)}, dx max rel diff ${(dmax / scale).toExponential(1)}`,
  );
  tf.dispose([x, W, labels, mask]);
}
