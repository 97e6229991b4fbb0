/**
 * What bench/moe-up.ts and bench/moe-down.ts share: MedCare's mixture shape (T 2048 tokens, 8 routed experts
 * of rank 16, top-2), a kernel context for it, random gates as topk_gate leaves them (each token's top-2 of
 * random scores, renormalised, zero elsewhere), the median, and the alternating timing of gradient runs.
 */
import type { KernelContext } from '../../src/runtime/kernels/reference.js';
import { tf, type Tensor } from '../../src/runtime/tfjs/index.js';

export const T = 2048;
export const E = 8;
export const r = 16;
export const k = 2;
export const ctx: KernelContext = { rows: 1, seqLen: T, positions: new Int32Array(T), segments: new Int32Array(T).fill(1), cache: new Map() };

export function gates(): Tensor {
  const g = new Float32Array(T * E);
  for (let t = 0; t < T; t++) {
    const p = Array.from({ length: E }, () => Math.random());
    const top = p.map((v, e) => [v, e] as const).sort((a, b) => b[0] - a[0]).slice(0, k);
    const s = top.reduce((a, [v]) => a + v, 0);
    for (const [v, e] of top) g[t * E + e] = v / s;
  }
  return tf.tensor2d(g, [T, E]);
}

export const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

/**
 * Each of `runs` (a forward + backward returning the gradients) timed 2 + `reps` times, alternating, the first
 * two left out: median wall ms and process CPU ms per run, by name.
 */
export function timeGradients(runs: Record<string, () => Tensor[]>, reps: number): Record<string, { wall: number; cpu: number }> {
  const ts: Record<string, [number[], number[]]> = Object.fromEntries(Object.keys(runs).map((n) => [n, [[], []]]));
  for (let i = 0; i < reps + 2; i++)
    for (const [name, f] of Object.entries(runs)) {
      const c0 = process.cpuUsage();
      const t0 = performance.now();
      const gs = tf.tidy(f);
      const wall = performance.now() - t0;
      const c = process.cpuUsage(c0);
      tf.dispose(gs);
      if (i >= 2) {
        ts[name]![0].push(wall);
        ts[name]![1].push((c.user + c.system) / 1000);
      }
    }
  return Object.fromEntries(Object.entries(ts).map(([n, [w, c]]) => [n, { wall: med(w), cpu: med(c) }]));
}

