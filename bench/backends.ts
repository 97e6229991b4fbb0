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
import { parseArgs } from 'node:util';
import { createStageRunner } from '../src/runtime/executor.js';
import { openDawn } from '../src/runtime/webgpu/device.js';
import { medcarePlan, syntheticBatch } from './support/medcare.js';

const { values } = parseArgs({ options: { steps: { type: 'string', default: '5' }, quick: { type: 'boolean', default: false }, 'no-webgpu': { type: 'boolean', default: false } } });
const steps = values.quick ? 2 : Number(values.steps);

const { plan, dir } = medcarePlan(1);
const stage = plan.stages[0]!;
const rows = stage.settings.microBatch;
const seqLen = 224; // about the longest example of a micro-batch of data/medcare/stage1.jsonl
const batch = (seed: number) => syntheticBatch(rows, seqLen, seed);
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
