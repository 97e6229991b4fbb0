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


/**
 * `--kernels` (bench/moe-up.ts): each of the six top-k kernels (McpcMoeUp/UpDh/UpDbe, McpcMoeDown/DownDx/DownDa)
 * called alone at MedCare's widths, with caches as in a training step: 12 distinct input sets in turn (h, x,
 * the weights cold), the upstream tensor (h for the forward, dY / dh for the gradients) produced by an op just
 * before (hot). Min / median ms per kernel, and their sum weighted by MedCare's sites (4 layers: up out 176 x 8,
 * out 64 x 4; down in 64 x 8, in 176 x 4).
 */
export function timeKernelsStepLike(reps: number, ops: { up: (xs: Tensor[], a: object) => Tensor; down: (xs: Tensor[], a: object) => Tensor }): string[] {
  const rk = (n: string, xs: Tensor[], attrs: object): Tensor[] => {
    const o = tf.engine().runKernel(n, xs as unknown as tf.NamedTensorMap, attrs as tf.NamedAttrMap) as Tensor | Tensor[];
    return Array.isArray(o) ? o : [o];
  };
  const C = 12;
  const res: Record<string, number[]> = {};
  const time = (name: string, hot: Tensor, run: (x: Tensor) => Tensor[]) => {
    const x = tf.mul(hot, 1) as Tensor;
    const t0 = performance.now();
    const o = run(x);
    (res[name] ??= []).push(performance.now() - t0);
    tf.dispose([...o, x]);
  };
  const ua = { sharedRank: 0, rank: r, experts: E, scale: 2 };
  const da = { rank: r, experts: E };
  const up = [176, 64].map((out) => Array.from({ length: C }, () => ({ out, g: gates(), h: tf.randomNormal([T, E * r]), be: tf.randomNormal([E, out, r]), dy: tf.randomNormal([T, out]) })));
  const dn = [64, 176].map((inF) => Array.from({ length: C }, () => ({ inF, g: gates(), x: tf.randomNormal([T, inF]), ae: tf.randomNormal([E, r, inF]), dh: tf.randomNormal([T, E * r]) })));
  for (const s of up) tf.dispose(ops.up([s[0]!.h, s[0]!.g, s[0]!.be], ua)); // registers the kernels
  for (const s of dn) tf.dispose(ops.down([s[0]!.x, s[0]!.g, s[0]!.ae], da));
  for (let k = 0; k < reps; k++)
    for (let c = 0; c < C; c++) {
      for (const s of up) {
        const u = s[c]!;
        time(`up${u.out} fwd`, u.h, (h) => rk('McpcMoeUp', [h, u.g, u.be], ua));
        time(`up${u.out} dh`, u.dy, (dy) => rk('McpcMoeUpDh', [dy, u.h, u.g, u.be], ua));
        time(`up${u.out} dbe`, u.dy, (dy) => rk('McpcMoeUpDbe', [dy, u.h, u.g], ua));
      }
      for (const s of dn) {
        const d = s[c]!;
        time(`down${d.inF} fwd`, d.x, (x) => rk('McpcMoeDown', [x, d.g, d.ae], da));
        time(`down${d.inF} dx`, d.dh, (dh) => rk('McpcMoeDownDx', [dh, d.g, d.ae], da));
        time(`down${d.inF} da`, d.dh, (dh) => rk('McpcMoeDownDa', [dh, d.x, d.g], da));
      }
    }
  const sites: Record<string, number> = { up176: 8, up64: 4, down64: 8, down176: 4 };
  let sMin = 0;
  let sMed = 0;
  const lines = Object.entries(res).map(([n, ts]) => {
    ts.sort((a, b) => a - b);
    const w = sites[n.split(' ')[0]!]!;
    sMin += w * ts[0]!;
    sMed += w * med(ts);
    return `${n} ${ts[0]!.toFixed(2)}/${med(ts).toFixed(2)}`;
  });
  tf.dispose([...up.flat().flatMap((u) => [u.g, u.h, u.be, u.dy]), ...dn.flat().flatMap((d) => [d.g, d.x, d.ae, d.dh])]);
  return [`min/median ms per kernel: ${lines.join(', ')}`, `MedCare stage 1 step (4 layers, 24 routed sites' kernels): min-sum ${sMin.toFixed(1)} ms, median-sum ${sMed.toFixed(1)} ms`];
}
