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
import { ctx, E, gates, k, med, r, T } from './support/moe.js';

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
  const once = (f: (x: Tensor, a: Tensor) => Tensor): [number, number] => {
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    const gs = tf.tidy(() => tf.grads((xx: Tensor, a: Tensor) => f(xx, a))([x, ae], dh));
    const wall = performance.now() - t0;
    const c = process.cpuUsage(c0);
    tf.dispose(gs);
    return [wall, (c.user + c.system) / 1000];
  };
  const res: Record<string, [number[], number[]]> = Object.fromEntries(Object.keys(fns).map((n) => [n, [[], []]]));
  for (let i = 0; i < reps + 2; i++)
    for (const [name, f] of Object.entries(fns)) {
      const [w, c] = once(f);
      if (i >= 2) {
        res[name]![0].push(w);
        res[name]![1].push(c);
      }
    }
  const line = Object.entries(res).map(([n, [w, c]]) => `${n} ${med(w).toFixed(1)} ms wall (${med(c).toFixed(1)} CPU)`);
  const dense = med(res['dense (moe_down_batched)']![0]);
  const topk = med(res['top-k (wasm)']![0]);
  console.log(`T ${T}, ${E} experts r${r} top-${k}, in ${inF}: ${line.join(', ')}; dense / top-k ${(dense / topk).toFixed(2)}x`);
  tf.dispose([x, g, ae, dh]);
}
