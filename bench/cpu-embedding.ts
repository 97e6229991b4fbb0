/**
 * `npx tsx bench/cpu-embedding.ts [--reps N]`: the CPU table's `embedding` (src/runtime/kernels/cpu-embedding.ts:
 * row copies, dW a scatter-add) against the reference (tf.gather: tfjs-wasm's GatherV2, and its gradient) on the
 * `wasm` backend at the training bench's shape (8 x 256 tokens, hidden 64, byte vocabulary 256) and a larger
 * table (32,000 x 896), alternating in one process; median ms of the forward and of forward + dW, and the ratio.
 */
import { loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import { cpuKernels } from '../src/runtime/kernels/cpu.js';
import { reference, type KernelContext, type KernelStep } from '../src/runtime/kernels/reference.js';
import { initBackend, tf, type Tensor } from '../src/runtime/tfjs/index.js';

const { values } = parseArgs({ options: { reps: { type: 'string', default: '21' } } });
const reps = Number(values.reps);
await initBackend('wasm');
const step: KernelStep = { node: 'x', op: 'embedding', inputs: ['tokens', 'W'], outputs: ['x'], attrs: {} };
const ctx: KernelContext = { rows: 1, seqLen: 1, positions: new Int32Array(1), segments: new Int32Array(1), cache: new Map() };
const ours = cpuKernels({ kernels: [] }).embedding;
const med = (a: number[]) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)]!;

console.log(`embedding on wasm, reference (tf.gather) vs the CPU table, median of ${reps}, load avg ${loadavg()[0]!.toFixed(2)}`);
for (const [T, V, d] of [
  [2048, 256, 64],
  [2048, 32000, 896],
]) {
  const W = tf.randomNormal([V!, d!]);
  const tokens = tf.tensor1d(Int32Array.from({ length: T! }, (_, t) => (t * 7919) % V!), 'int32');
  const c = tf.randomNormal([T!, d!]);
  const kernels = [reference.embedding, ours];
  const fwd = (k: typeof ours) => {
    const x = k([tokens, W], step, ctx)[0]!;
    x.dataSync();
    x.dispose();
  };
  const bwd = (k: typeof ours) => {
    const g = tf.tidy(() => tf.grad((w: Tensor) => tf.sum(tf.mul(k([tokens, w], step, ctx)[0]!, c)) as tf.Scalar)(W));
    g.dataSync();
    g.dispose();
  };
  const ts: number[][] = [[], [], [], []];
  for (let r = 0; r < reps + 2; r++)
    kernels.forEach((k, i) => {
      let t = performance.now();
      fwd(k);
      const f = performance.now() - t;
      t = performance.now();
      bwd(k);
      const b = performance.now() - t;
      if (r >= 2) {
        ts[i]!.push(f);
        ts[2 + i]!.push(b);
      }
    });
  const [f0, f1, b0, b1] = ts.map(med) as [number, number, number, number];
  console.log(`  T=${T} V=${V} d=${d}: forward ${f0.toFixed(3)} -> ${f1.toFixed(3)} ms (${(f0 / f1).toFixed(1)}x), forward+dW ${b0.toFixed(2)} -> ${b1.toFixed(2)} ms (${(b0 / b1).toFixed(1)}x)`);
  tf.dispose([W, tokens, c]);
}
