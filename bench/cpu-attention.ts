/**
 * `npx tsx bench/cpu-attention.ts [--reps N] [--rows R] [--seq S]`: the CPU table's attention op, forward
 * and forward+backward (the gradients of q, k and v for a given dO), on the `wasm` backend at the training
 * bench's shape (8 rows x 256 tokens, 4 query / 2 KV heads, head dim 16, causal; rows packed as
 * bench/train-step.ts packs them: two examples per row, 3 padding positions): the tfjs composition
 * (MCPC_ATTENTION_WASM=0: GQA scores GEMM, additive mask, softmax, PV GEMM) against the fused kernel over the
 * visible keys (src/runtime/kernels/cpu-attention.ts, src/runtime/tfjs/attention.wat), alternating in one
 * process, the mask and the key ranges made beforehand (once per micro-batch in training, shared by the
 * layers). Median wall ms and process CPU ms, with the load average.
 *
 * Then the fused kernel alone (src/runtime/tfjs/attention.ts on typed arrays, no tfjs around it), forward and
 * backward, with the backward taking the P the forward saved and recomputing it (MCPC_ATTENTION_SAVE_P=0's
 * path), alternating: median CPU ms and GMAC/s, counting the multiply-adds over the visible keys only
 * (2·keys·d per query head forward: q·k and P·v; 5 backward when P is recomputed: q·k, dO·v, dV, dK, dQ; 4 from
 * the saved P).
 */
import { loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import { cpuKernels } from '../src/runtime/kernels/cpu.js';
import type { KernelContext, KernelStep } from '../src/runtime/kernels/reference.js';
import { initBackend, tf, type Tensor } from '../src/runtime/tfjs/index.js';
import { attentionBackward, attentionForward, savedProbsSize } from '../src/runtime/tfjs/attention.js';
import { attentionRanges } from '../src/runtime/kernels/cpu-attention.js';

const { values } = parseArgs({ options: { reps: { type: 'string', default: '15' }, rows: { type: 'string', default: '8' }, seq: { type: 'string', default: '256' } } });
const reps = Number(values.reps);
const rows = Number(values.rows);
const S = Number(values.seq);
const [H, KV, d] = [4, 2, 16];
await initBackend('wasm');

const T = rows * S;
const ctx: KernelContext = { rows, seqLen: S, positions: new Int32Array(T), segments: new Int32Array(T), cache: new Map() };
const split = Math.floor((S - 3) / 2);
for (let r = 0; r < rows; r++)
  for (let t = 0; t < S - 3; t++) {
    ctx.segments[r * S + t] = t < split ? 1 : 2;
    ctx.positions[r * S + t] = t < split ? t : t - split;
  }
const step: KernelStep = { node: 'n', op: 'attention', inputs: ['q', 'k', 'v'], outputs: ['o'], attrs: { heads: H, kvHeads: KV, headDim: d, causal: true } };
const attention = cpuKernels({ kernels: [] }).attention;
const xs = [tf.randomNormal([T, H * d]), tf.randomNormal([T, KV * d]), tf.randomNormal([T, KV * d])];
const dO = tf.randomNormal([T, H * d]);

const med = (a: number[]) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)]!;
function time(f: () => void): [number, number] {
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  f();
  const wall = performance.now() - t0;
  const c = process.cpuUsage(c0);
  return [wall, (c.user + c.system) / 1000];
}
// The mask (composition) and the key ranges (fused) are made once per micro-batch and shared by the layers:
// made here once, outside the timed calls, as in a training step after its first layer.
for (const env of ['0', '1']) {
  process.env.MCPC_ATTENTION_WASM = env;
  tf.dispose(attention(xs, step, ctx));
}
const fwd = () => tf.tidy(() => void attention(xs, step, ctx));
// The kernels run synchronously on wasm; no read-back (dataSync would add ~5 ms per MB to both).
const fwdBwd = () => tf.tidy(() => void tf.grads((...x: Tensor[]) => tf.sum(tf.mul(attention(x, step, ctx)[0]!, dO)) as tf.Scalar)(xs));

const variants = { composition: '0', fused: '1' } as const;
const res: Record<string, { fwd: [number, number][]; both: [number, number][] }> = { composition: { fwd: [], both: [] }, fused: { fwd: [], both: [] } };
const load0 = loadavg()[0]!;
for (let i = 0; i < reps + 2; i++)
  for (const [name, env] of Object.entries(variants)) {
    process.env.MCPC_ATTENTION_WASM = env;
    const a = time(fwd);
    const b = time(fwdBwd);
    if (i >= 2) {
      res[name]!.fwd.push(a);
      res[name]!.both.push(b);
    }
  }
delete process.env.MCPC_ATTENTION_WASM;
const fmt = (xs: [number, number][]) => `${med(xs.map((x) => x[0])).toFixed(1)} ms (cpu ${med(xs.map((x) => x[1])).toFixed(1)})`;
console.log(`attention ${rows}x${S}, H ${H} / KV ${KV}, d ${d}, causal, two examples per row; ${reps} reps, load ${load0.toFixed(2)} -> ${loadavg()[0]!.toFixed(2)}`);
for (const name of Object.keys(variants)) console.log(`  ${name.padEnd(12)} fwd ${fmt(res[name]!.fwd)}   fwd+bwd ${fmt(res[name]!.both)}`);
const ratio = med(res.composition!.both.map((x) => x[0])) / med(res.fused!.both.map((x) => x[0]));
console.log(`  fused speedup fwd+bwd: ${ratio.toFixed(2)}x`);

// The kernel alone.
const ranges = attentionRanges(ctx, true)!.dataSync() as Int32Array;
const shape = { rows, S, H, KV, d };
const [qa, ka, va, ga] = [...xs, dO].map((t) => t.dataSync() as Float32Array);
let keys = 0;
for (let t = 0; t < T; t++) keys += ranges[t * 2 + 1]! - ranges[t * 2]!;
const mac = keys * H * d;
const o = new Float32Array(T * H * d);
const st = new Float32Array(T * H);
const [dq, dk, dv] = [new Float32Array(T * H * d), new Float32Array(T * KV * d), new Float32Array(T * KV * d)];
const P = new Float32Array(savedProbsSize(ranges, shape));
const cpuMs = (f: () => void) => time(f)[1];
const k: Record<string, { f: number[]; b: number[] }> = { saved: { f: [], b: [] }, recomputed: { f: [], b: [] } };
for (let i = 0; i < reps + 2; i++)
  for (const name of ['saved', 'recomputed'] as const) {
    const p = name === 'saved' ? P : undefined;
    const f = cpuMs(() => attentionForward(qa!, ka!, va!, ranges, shape, o, st, p));
    const b = cpuMs(() => attentionBackward(qa!, ka!, va!, o, st, ranges, ga!, shape, dq, dk, dv, p));
    if (i >= 2) {
      k[name]!.f.push(f);
      k[name]!.b.push(b);
    }
  }
console.log(`kernel alone (CPU ms, GMAC/s over the visible keys; P ${((P.length * 4) / 2 ** 20).toFixed(1)} MB), load ${loadavg()[0]!.toFixed(2)}`);
for (const name of ['saved', 'recomputed'] as const) {
  const [f, b] = [med(k[name]!.f), med(k[name]!.b)];
  const bm = (name === 'saved' ? 4 : 5) * mac;
  console.log(`  P ${name.padEnd(10)} fwd ${f.toFixed(2)} ms (${((2 * mac) / f / 1e6).toFixed(1)})   bwd ${b.toFixed(2)} ms (${(bm / b / 1e6).toFixed(1)})   fwd+bwd ${(f + b).toFixed(2)} ms (${((2 * mac + bm) / (f + b) / 1e6).toFixed(1)})`);
}
tf.dispose([...xs, dO]);
