/**
 * `npx tsx bench/moe-up.ts [--reps N] [--kernels]`: moe_up_grouped forward+backward (the gradient of every input: h,
 * gates, B_sh, B_e, for a given dY) on the `wasm` backend at MedCare's shape (T 2048 tokens, 8 experts r16, top-2 renormalised
 * gates, out 176 and 64, without and with a shared part), the reference kernel (one dense GEMM over all
 * experts) against the CPU table's top-k-only kernel (src/runtime/kernels/cpu-moe.ts, src/runtime/tfjs/moe.wat),
 * alternating in one process. Median wall ms and process CPU ms per fwd+bwd (no read-back: the wasm backend's
 * kernels run synchronously, and a dataSync there costs ~5 ms per MB, which would swamp the ops).
 * `--kernels`: instead, each of the six top-k kernels (both sides) alone, with a training step's caches
 * (support/moe.ts timeKernelsStepLike), and their sum over MedCare's sites.
 */
import { parseArgs } from 'node:util';
import { moeDownRoutedOp, moeUpGroupedOp } from '../src/runtime/kernels/cpu-moe.js';
import { reference } from '../src/runtime/kernels/reference.js';
import { initBackend, tf, type Tensor } from '../src/runtime/tfjs/index.js';
import { ctx, E, gates, k, r, T, timeGradients, timeKernelsStepLike } from './support/moe.js';

const { values } = parseArgs({ options: { reps: { type: 'string', default: '15' }, kernels: { type: 'boolean', default: false } } });
const reps = Number(values.reps);
await initBackend('wasm');

if (values.kernels) {
  // Each top-k kernel alone (up and down sides) with a training step's caches: see support/moe.ts.
  for (const l of timeKernelsStepLike(reps, { up: (xs, a) => moeUpGroupedOp(xs, a as never), down: (xs, a) => moeDownRoutedOp(xs, a as never) })) console.log(l);
  process.exit(0);
}

for (const [out, R] of [[176, 0], [176, 32], [64, 0], [64, 32]] as const) {
  const attrs = { sharedRank: R, rank: r, experts: E, scale: 2 };
  const step = { node: 'n', op: 'moe_up_grouped', kernel: '', inputs: [], outputs: ['y'], attrs, flops: 0 } as never;
  const ins = [tf.randomNormal([T, R + E * r]), gates(), ...(R > 0 ? [tf.randomNormal([out, R])] : []), tf.randomNormal([E, out, r])];
  const dy = tf.randomNormal([T, out]);
  const fns = {
    reference: (xs: Tensor[]) => reference.moe_up_grouped(xs, step, ctx)[0]!,
    'top-k': (xs: Tensor[]) => moeUpGroupedOp(xs, attrs),
  };
  const res = timeGradients(Object.fromEntries(Object.entries(fns).map(([n, f]) => [n, () => tf.grads((...xs: Tensor[]) => f(xs))(ins, dy)])), reps);
  const [rw, rc] = [res.reference!.wall, res.reference!.cpu];
  const [ow, oc] = [res['top-k']!.wall, res['top-k']!.cpu];
  console.log(`T ${T}, ${E} experts r${r} top-${k}, out ${out}, sharedRank ${R}: reference ${rw.toFixed(1)} ms wall (${rc.toFixed(1)} CPU), top-k ${ow.toFixed(1)} ms wall (${oc.toFixed(1)} CPU): ${(rw / ow).toFixed(2)}x`);
  tf.dispose([...ins, dy]);
}
