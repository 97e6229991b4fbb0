/**
 * `npx tsx bench/backends.ts [--steps N] [--quick] [--no-webgpu]`: one training step of the MedCare pipeline's
 * stage 1 (the demo model of pipelines/pretrain.mcp, random weights: speed does not depend on them) on each
 * backend, side by side in one process: tfjs `cpu` (pure JavaScript, the reference), `wasm` (XNNPACK +
 * mcpc's SIMD GEMM) and `webgpu` (the WGSL kernel table on Dawn: a GPU, or Mesa's llvmpipe on a CPU, with
 * `EGL_PLATFORM=surfaceless`). `mcpc run --backend auto` picks the fastest CPU backend when there is no GPU.
 * Prints ms per step (median of N after a warm-up; `cpu` at most 2 steps, `webgpu` 1 step when its adapter is
 * software, where a step is slow), tokens/s and the ratio to `cpu`; `webgpu` is left out when Dawn finds no
 * adapter.
 *
 * The executor reads every value asynchronously (`await data()`), the only reads tfjs-webgpu has under Node,
 * so it trains on `webgpu`; ../shared/CPU.md measured tfjs-webgpu on llvmpipe at about the speed of tfjs-wasm
 * before mcpc's GEMM (7.7 s vs 7.2 s for a 3.3M-parameter step).
 */
import { mkdtempSync, readFileSync, writeFileSync, mkdirSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { compileFile, nodeHost } from '../src/compiler/index.js';
import type { MicroBatch } from '../src/runtime/data/batch.js';
import { createStageRunner } from '../src/runtime/executor.js';
import { openDawn } from '../src/runtime/webgpu/device.js';

const ROOT = resolve(fileURLToPath(new URL('..', import.meta.url)));
const { values } = parseArgs({ options: { steps: { type: 'string', default: '5' }, quick: { type: 'boolean', default: false }, 'no-webgpu': { type: 'boolean', default: false } } });
const steps = values.quick ? 2 : Number(values.steps);

// The MedCare pipeline on the demo model's shape with random weights, in a scratch project that sees the data.
const dir = mkdtempSync(join(tmpdir(), 'mcpc-bench-'));
mkdirSync(join(dir, 'pipelines'));
symlinkSync(join(ROOT, 'data'), join(dir, 'data'));
const model = /model base = (builtin\([^)]*\))/.exec(readFileSync(join(ROOT, 'pipelines/pretrain.mcp'), 'utf8'))![1]!;
writeFileSync(join(dir, 'pipelines/medcare.mcp'), readFileSync(join(ROOT, 'pipelines/medcare.mcp'), 'utf8').replace(/model base = hf\("[^"]*"\)/, `model base = ${model}`));
const res = compileFile('pipelines/medcare.mcp', nodeHost(dir, dir), {}, { optLevel: 1 });
if (!res.plan) throw new Error(res.diagnostics.map((d) => d.message).join('; '));
const plan = res.plan;
const stage = plan.stages[0]!;
const rows = stage.settings.microBatch;
const seqLen = 224; // about the longest example of a micro-batch of data/medcare/stage1.jsonl

function batch(seed: number): MicroBatch {
  let x = seed;
  const rnd = () => ((x = (Math.imul(x, 1103515245) + 12345) >>> 0) / 2 ** 32);
  const T = rows * seqLen;
  const tokens = Int32Array.from({ length: T }, () => 32 + Math.floor(rnd() * 90));
  const labels = Int32Array.from({ length: T }, () => 32 + Math.floor(rnd() * 90));
  const mask = Float32Array.from({ length: T }, (_, i) => (i % seqLen > seqLen / 2 ? 1 : 0));
  const positions = Int32Array.from({ length: T }, (_, i) => i % seqLen);
  const segments = new Int32Array(T).fill(1);
  return { rows, seqLen, tokens, labels, mask, positions, segments, packed: false, examples: [], lossTokens: mask.reduce((a, b) => a + b, 0) };
}
const mbs = [batch(1), batch(2)];
const tokensPerStep = mbs.length * rows * seqLen;

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const results: { backend: string; ms: number; note?: string }[] = [];
process.env.EGL_PLATFORM ??= 'surfaceless';
const gpu = values['no-webgpu'] ? { unavailable: '--no-webgpu' } : await openDawn();
const backends: { name: 'cpu' | 'wasm' | 'webgpu'; steps: number; note?: string }[] = [
  { name: 'cpu', steps: Math.min(steps, 2) },
  { name: 'wasm', steps },
];
if ('unavailable' in gpu) console.log(`webgpu not timed: ${gpu.unavailable}`);
else backends.push({ name: 'webgpu', steps: gpu.software ? 1 : steps, note: gpu.software ? `software adapter (${gpu.info.description || gpu.info.device || 'llvmpipe'})` : gpu.info.description || gpu.info.device });
for (const { name: backend, steps: n, note } of backends) {
  const runner = await createStageRunner(plan, stage.name, { backend, root: dir, totalSteps: 100 });
  await runner.step(mbs); // warm-up
  const times: number[] = [];
  for (let i = 0; i < n; i++) {
    const t = performance.now();
    await runner.step(mbs);
    times.push(performance.now() - t);
  }
  runner.dispose();
  results.push({ backend, ms: median(times), ...(note ? { note } : {}) });
}
const cpu = results.find((r) => r.backend === 'cpu')!.ms;
console.log(`training step of medcare stage ${stage.name} (${plan.model.config.hidden} hidden, ${plan.model.config.layers} layers; ${tokensPerStep} tokens: ${mbs.length} micro-batches of ${rows} x ${seqLen}), -O1:`);
for (const r of results) console.log(`  ${r.backend.padEnd(6)} ${r.ms.toFixed(0).padStart(7)} ms/step  ${Math.round(tokensPerStep / (r.ms / 1000)).toString().padStart(6)} tok/s  ${(cpu / r.ms).toFixed(2)}x cpu${r.note ? `  (${r.note})` : ''}`);
const best = results.filter((r) => r.backend !== 'webgpu').reduce((a, b) => (b.ms < a.ms ? b : a));
console.log(`fastest CPU backend: ${best.backend} (mcpc run --backend auto picks wasm without a GPU)`);
process.exitCode = best.backend === 'wasm' ? 0 : 1;
