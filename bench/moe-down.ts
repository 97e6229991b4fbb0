/**
 * `npx tsx bench/moe-down.ts [--reps N]`: the routed experts' A projections, forward + backward (dx and dA_e for
 * a given dh), on the `wasm` backend at MedCare's shape (T 2048 tokens, 8 experts r16, top-2 gates, in 64 and
 * 176): `moe_down_batched` (the dense x·[A_0 ; … ; A_7]ᵀ that -O1 ran before route-expert-down, as a part of
 * the site's concat_linear), the reference `moe_down_routed` (that product times the top-k mask) and the CPU
 * table's top-k-only kernel (src/runtime/kernels/cpu-moe.ts McpcMoeDown*, src/runtime/tfjs/moe-down.ts),
 * alternating in one process. Median wall ms and process CPU ms per fwd+bwd (no read-back, as bench/moe-up.ts).
 */
import { parseArgs } from 'node:util';
import { moeDownRoutedOp } from '../src/runtime/kernels/cpu-moe.js';
import { reference } from '../src/runtime/kernels/reference.js';
import { initBackend, tf, type Tensor } from '../src/runtime/tfjs/index.js';
import { ctx, E, gates, k, r, T, timeGradients } from './support/moe.js';

const { values } = parseArgs({ options: { reps: { type: 'string', default: '15' } } });
const reps = Number(values.reps);
await initBackend('wasm');

const stepOf = (op: string, attrs: Record<string, unknown>) => ({ node: 'n', op, kernel: '', inputs: [], outputs: ['h'], attrs, flops: 0 }) as never;

for (const inF of [64, 176]) {
  const attrs = { in: inF, rank: r, experts: E, k };
  const x = tf.randomNormal([T, inF]);
  const g = gates();
  const ae = tf.randomNormal([E, r, inF]);
  const dh = tf.randomNormal([T, E * r]);
  const fns: Record<string, (x: Tensor, a: Tensor) => Tensor> = {
    'dense (moe_down_batched)': (xx, a) => reference.moe_down_batched([xx, a], stepOf('moe_down_batched', { sharedRank: 0 }), ctx)[0]!,
    'reference moe_down_routed': (xx, a) => reference.moe_down_routed([xx, g, a], stepOf('moe_down_routed', attrs), ctx)[0]!,
    'top-k (wasm)': (xx, a) => moeDownRoutedOp([xx, g, a], attrs),
  };
  const res = timeGradients(Object.fromEntries(Object.entries(fns).map(([n, f]) => [n, () => tf.grads((xx: Tensor, a: Tensor) => f(xx, a))([x, ae], dh)])), reps);
  const line = Object.entries(res).map(([n, t]) => `${n} ${t.wall.toFixed(1)} ms wall (${t.cpu.toFixed(1)} CPU)`);
  const dense = res['dense (moe_down_batched)']!.wall;
  const topk = res['top-k (wasm)']!.wall;
  console.log(`T ${T}, ${E} experts r${r} top-${k}, in ${inF}: ${line.join(', ')}; dense / top-k ${(dense / topk).toFixed(2)}x`);
  tf.dispose([x, g, ae, dh]);
}
