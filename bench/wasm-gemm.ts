/**
 * `npx tsx bench/wasm-gemm.ts [--quick]`: the products of a training step on the `wasm` backend, tfjs-wasm's
 * own BatchMatMul against mcpc's SIMD GEMM (src/runtime/tfjs/gemm.wat) side by side in one process, GFLOP/s
 * each and the ratio. Shapes: the demo model's linear layers at 2 x 8 x 224 tokens (x·Wᵀ forward, dY·W and
 * dYᵀ·X backward) and attention's batched products. Exits 1 if ours is slower on any shape. Then the GEMM
 * itself on one thread against `--threads N` (default 2; src/runtime/tfjs/gemm-threads.ts, what MCPC_THREADS=N
 * runs) on a [2048,256]·[256,256] product, alternating, median ms. Last, products whose B outgrows the caches,
 * in one pass against in blocks of B (what gemm.ts does past 4 MiB of B). Before those, the products of the
 * training step in place on the heap (gemm-heap.ts) against the copying path, alternating.
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import '@tensorflow/tfjs-backend-wasm';
import { tf } from '../src/runtime/tfjs/index.js';
import { matmulInto, registerWasmGemm, setGemmBlocking } from '../src/runtime/tfjs/gemm.js';
import { threadedGemm } from '../src/runtime/tfjs/gemm-threads.js';
import { registerWasmExtras } from '../src/runtime/tfjs/wasm-extra.js';

const { values } = parseArgs({ options: { quick: { type: 'boolean', default: false }, threads: { type: 'string', default: '2' } } });
const reps = values.quick ? 3 : 10;
tf.enableProdMode();
registerWasmExtras();
await tf.setBackend('wasm');
await tf.ready();

interface Case { name: string; a: number[]; b: number[]; tA: boolean; tB: boolean; flops: number }
const T = 3584;
const cases: Case[] = [
  { name: 'x·Wᵀ   [3584,64]·[176,64]ᵀ', a: [T, 64], b: [176, 64], tA: false, tB: true, flops: 2 * T * 64 * 176 },
  { name: 'dY·W   [3584,176]·[176,64]', a: [T, 176], b: [176, 64], tA: false, tB: false, flops: 2 * T * 64 * 176 },
  { name: 'dYᵀ·X  [3584,176]ᵀ·[3584,64]', a: [T, 176], b: [T, 64], tA: true, tB: false, flops: 2 * T * 64 * 176 },
  { name: 'q·kᵀ   [64,224,16]·[64,224,16]ᵀ', a: [64, 224, 16], b: [64, 224, 16], tA: false, tB: true, flops: 2 * 64 * 224 * 224 * 16 },
  { name: 'p·v    [64,224,224]·[64,224,16]', a: [64, 224, 224], b: [64, 224, 16], tA: false, tB: false, flops: 2 * 64 * 224 * 224 * 16 },
];

function time(c: Case): number {
  const a = tf.randomNormal(c.a);
  const b = tf.randomNormal(c.b);
  // Not tf.tidy(() => ...dataSync()): tidy walks a returned typed array element by element looking for tensors.
  const run = () => {
    const y = tf.matMul(a as tf.Tensor2D, b as tf.Tensor2D, c.tA, c.tB);
    y.dataSync();
    y.dispose();
  };
  run();
  const ts: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t = performance.now();
    run();
    ts.push(performance.now() - t);
  }
  tf.dispose([a, b]);
  return ts.sort((x, y) => x - y)[Math.floor(ts.length / 2)]!;
}

const theirs = cases.map(time);
registerWasmGemm();
const ours = cases.map(time);
let slower = 0;
console.log('wasm backend matrix products, median ms (GFLOP/s), tfjs-wasm BatchMatMul vs mcpc SIMD GEMM:');
cases.forEach((c, i) => {
  const g = (ms: number) => (c.flops / ms / 1e6).toFixed(1);
  const ratio = theirs[i]! / ours[i]!;
  if (ratio < 1) slower++;
  console.log(`  ${c.name.padEnd(34)} ${theirs[i]!.toFixed(2).padStart(8)} ms (${g(theirs[i]!).padStart(5)})  ${ours[i]!.toFixed(2).padStart(8)} ms (${g(ours[i]!).padStart(5)})  ${ratio.toFixed(2)}x`);
});

// In place on tfjs-wasm's heap (gemm-heap.ts: operands read where the tensors lie, C written into the output, a
// transposed A in panels of 128 rows of K) against the copying path (the same product on plain arrays: packed
// into the GEMM's own memory, C copied out), at the training step's 2048 tokens, alternating.
{
  const Tk = 2048;
  const heapCases: Case[] = [
    { name: 'x·Wᵀ   [2048,64]·[176,64]ᵀ', a: [Tk, 64], b: [176, 64], tA: false, tB: true, flops: 2 * Tk * 64 * 176 },
    { name: 'dY·W   [2048,176]·[176,64]', a: [Tk, 176], b: [176, 64], tA: false, tB: false, flops: 2 * Tk * 64 * 176 },
    { name: 'dYᵀ·X  [2048,176]ᵀ·[2048,64]', a: [Tk, 176], b: [Tk, 64], tA: true, tB: false, flops: 2 * Tk * 64 * 176 },
    { name: 'dYᵀ·X  [2048,64]ᵀ·[2048,176]', a: [Tk, 64], b: [Tk, 176], tA: true, tB: false, flops: 2 * Tk * 64 * 176 },
  ];
  const backend = tf.backend() as unknown as { typedArrayFromHeap(t: tf.TensorInfo): Float32Array };
  console.log('in place on the heap vs the copying path, median ms (GFLOP/s), alternating:');
  for (const c of heapCases) {
    const [a, b] = [tf.randomNormal(c.a), tf.randomNormal(c.b)];
    const M = c.tA ? c.a[1]! : c.a[0]!;
    const N = c.tB ? c.b[0]! : c.b[1]!;
    const K = c.tA ? c.a[0]! : c.a[1]!;
    const out = tf.zeros([M, N]);
    const shape = { batchA: 1, batchB: 1, M, N, K, transposeA: c.tA, transposeB: c.tB };
    const plain = [a, b].map((t) => Float32Array.from(t.dataSync()));
    const plainOut = new Float32Array(M * N);
    const ts: number[][] = [[], []];
    for (let r = 0; r < 3 * reps + 2; r++) {
      for (const [j, run] of [
        () => matmulInto(backend.typedArrayFromHeap(a), backend.typedArrayFromHeap(b), backend.typedArrayFromHeap(out), shape),
        () => matmulInto(plain[0]!, plain[1]!, plainOut, shape),
      ].entries()) {
        const t = performance.now();
        run();
        if (r >= 2) ts[j]!.push(performance.now() - t);
      }
    }
    const [inPlace, copying] = ts.map((x) => x.sort((p, q) => p - q)[Math.floor(x.length / 2)]!) as [number, number];
    const g = (ms: number) => (c.flops / ms / 1e6).toFixed(1);
    console.log(`  ${c.name.padEnd(34)} copying ${copying.toFixed(2)} ms (${g(copying)})  in place ${inPlace.toFixed(2)} ms (${g(inPlace)})  ${(copying / inPlace).toFixed(2)}x`);
    tf.dispose([a, b, out]);
  }
}

// One thread against N on the same packed operands (the engines' own memories; the row-block split is
// bit-identical, test/runtime/tfjs/gemm-threads.test.ts).
const [M, N, K] = [2048, 256, 256];
const threaded = threadedGemm(Number(values.threads));
const single = new WebAssembly.Instance(new WebAssembly.Module(readFileSync(new URL('../src/runtime/tfjs/gemm.wasm', import.meta.url))), {}).exports as unknown as { memory: WebAssembly.Memory; gemm: (...a: number[]) => void };
const runs = [
  { name: '1 thread', memory: single.memory, run: () => single.gemm(0, 4 * M * K, 4 * (M * K + K * N), 1, M, N, K) },
  ...(threaded ? [{ name: `${threaded.threads} threads`, memory: threaded.memory, run: () => threaded.run(false, 0, 4 * M * K, 4 * (M * K + K * N), 1, M, N, K) }] : []),
];
const gemmMs: number[][] = runs.map(() => []);
for (const r of runs) {
  const need = 4 * (M * K + K * N + M * N);
  if (r.memory.buffer.byteLength < need) r.memory.grow(Math.ceil((need - r.memory.buffer.byteLength) / 65536));
  new Float32Array(r.memory.buffer).fill(0.5, 0, M * K + K * N);
  r.run();
}
for (let i = 0; i < reps * 3; i++)
  runs.forEach((r, j) => {
    const t = performance.now();
    r.run();
    gemmMs[j]!.push(performance.now() - t);
  });
const medMs = gemmMs.map((ts) => ts.sort((x, y) => x - y)[Math.floor(ts.length / 2)]!);
console.log(`GEMM [${M},${K}]·[${K},${N}], median ms (GFLOP/s): ${runs.map((r, j) => `${r.name} ${medMs[j]!.toFixed(2)} (${((2 * M * N * K) / medMs[j]! / 1e6).toFixed(1)})`).join(', ')}${runs.length > 1 ? `: ${(medMs[0]! / medMs[1]!).toFixed(2)}x` : ' (no threads here)'}`);

// Products whose B outgrows the caches (a Qwen2-0.5B-sized MLP, an LM head over a 32,000-token vocabulary):
// one pass (the micro-kernel reads all of B for every 4 rows of C) against blocks of B (gemm.ts, past 4 MiB).
const big: [number, number, number, boolean, boolean][] = [
  [2048, 896, 4864, false, true],
  [2048, 4864, 896, false, false],
  [896, 2048, 4864, true, false],
  [32, 256, 32000, false, false],
  [32, 32000, 256, false, false],
];
const bigReps = values.quick ? 2 : 5;
console.log(`large B, one pass vs blocks of B, median ms (GFLOP/s), ${bigReps} reps alternating:`);
for (const [m, k, n, tA, tB] of big) {
  const A = Float32Array.from({ length: m * k }, (_, i) => ((i * 7) % 13) / 13 - 0.5);
  const B = Float32Array.from({ length: k * n }, (_, i) => ((i * 5) % 11) / 11 - 0.5);
  const C = new Float32Array(m * n);
  const shape = { batchA: 1, batchB: 1, M: m, N: n, K: k, transposeA: tA, transposeB: tB };
  const modes = [{ blockFrom: 2 ** 40, blockBytes: 256 << 10 }, { blockFrom: 4 << 20, blockBytes: 256 << 10 }];
  const ts: number[][] = [[], []];
  for (let r = 0; r < bigReps + 1; r++)
    modes.forEach((mode, j) => {
      const prev = setGemmBlocking(mode);
      const t = performance.now();
      matmulInto(A, B, C, shape);
      if (r > 0) ts[j]!.push(performance.now() - t);
      setGemmBlocking(prev);
    });
  const [one, blk] = ts.map((x) => x.sort((a, b) => a - b)[Math.floor(x.length / 2)]!) as [number, number];
  const gf = (ms: number) => ((2 * m * n * k) / ms / 1e6).toFixed(1);
  console.log(`  ${`${tA ? `[${k},${m}]ᵀ` : `[${m},${k}]`}·${tB ? `[${n},${k}]ᵀ` : `[${k},${n}]`}`.padEnd(30)} B ${((4 * k * n) / 2 ** 20).toFixed(1)} MB: ${one.toFixed(1)} ms (${gf(one)}) -> ${blk.toFixed(1)} ms (${gf(blk)}), ${(one / blk).toFixed(2)}x`);
}
process.exitCode = slower ? 1 : 0;
