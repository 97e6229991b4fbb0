/**
 * The stage runner on WebGPU: `createStageRunner(plan, stage, { backend: 'webgpu' })` runs the WGSL kernel
 * table (src/runtime/kernels/webgpu.ts) and the one-dispatch AdamW, and trains a tiny stage (LoRA on
 * attention, a mixture with top-k routing and load balancing on the MLP, an orthogonality constraint) to the
 * gradients and losses the reference table gives on the cpu backend, at -O0 (rmsnorm, swiglu, add as their
 * own steps) and -O1 (fused elementwise groups, batched penalty). Every read of the runner is asynchronous
 * (`await data()`: tfjs-backend-webgpu has no synchronous read under Node), and no step leaks tensors.
 * Then `runPlan` (what `mcpc run --backend webgpu` calls) trains a two-stage pipeline with a merge on webgpu
 * to the cpu run's losses.
 */
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { compileFile, nodeHost } from '../../../src/compiler/index.js';
import type { Plan } from '../../../src/plan/types.js';
import type { MicroBatch } from '../../../src/runtime/data/batch.js';
import { createStageRunner } from '../../../src/runtime/executor.js';
import { wgslOps } from '../../../src/runtime/kernels/webgpu.js';
import { runPlan } from '../../../src/runtime/run.js';
import { initBackend, tf } from '../../../src/runtime/tfjs/index.js';
import { compileInline, syntheticBatch, TINY, TWO_STAGES } from '../executor/helpers.js';
import { describeGpu, relErr } from './kernels-support.js';

const PIPELINE = `pipeline gpu
model base = ${TINY}
data d = jsonl("d.jsonl")

adapter know = lora(r: 4, alpha: 8) at layers[*].mlp.{gate, up, down}
adapter attn = lora(r: 4, alpha: 8) at layers[*].attn.{q, k, v, o}
adapter mix  = moe_lora(experts: 4, top_k: 2, r: 4, alpha: 8, shared: 1, load_balance: 0.01) at layers[*].mlp.{gate, up, down}

stage one {
  train know, attn, mix on d
  steps 2
  lr 1e-2
  schedule constant
  weight_decay 0.01
  grad_clip 0.5
  batch 2
  micro_batch 2
  max_len 24
  constrain orthogonal(mix.A, know.A) weight 1.0 norm l1
}
`;

interface Trace {
  losses: number[];
  gradNorms: number[];
  grads: Map<string, Float32Array>;
  load: number[][];
  tensors: number[];
}

/** The first gradients, then two optimizer steps of the plan's first stage through the runner on `backend`. */
async function train(plan: Plan, backend: 'cpu' | 'webgpu', mb: MicroBatch): Promise<Trace> {
  const runner = await createStageRunner(plan, plan.stages[0]!.name, { backend, seed: 3 });
  try {
    const { grads } = await runner.gradients([mb]);
    const trace: Trace = { losses: [], gradNorms: [], grads, load: [], tensors: [] };
    for (let i = 0; i < 2; i++) {
      const r = await runner.step([mb]);
      expect(r.applied).toBe(true);
      trace.losses.push(r.loss);
      trace.gradNorms.push(r.gradNorm);
      trace.tensors.push(tf.memory().numTensors);
    }
    trace.load = runner.routerLoad().map((r) => r.counts);
    return trace;
  } finally {
    runner.dispose();
  }
}

describeGpu('the stage runner on webgpu (WGSL kernel table, one-dispatch AdamW) trains as on cpu', () => {
  afterAll(() => initBackend('cpu'));
  const plans = compileInline(PIPELINE, [0, 1]).plans;
  const mb = syntheticBatch(2, 24, 5, { vocab: 256 });

  it.each([0, 1])('-O%i: same first gradients, same losses over two steps, no leak', async (level) => {
    const plan = plans[level]!;
    const cpu = await train(plan, 'cpu', mb);
    const gpu = await train(plan, 'webgpu', mb);
    expect(tf.getBackend()).toBe('webgpu');
    // The stage does run WGSL kernels (which ones depends on the level: -O1 fuses rmsnorm, swiglu and add).
    expect(wgslOps.filter((op) => plan.stages[0]!.forward.some((f) => f.op === op)).length).toBeGreaterThanOrEqual(5);
    expect(cpu.losses[0]).toBeGreaterThan(1);
    expect(cpu.losses[1]).not.toBe(cpu.losses[0]);
    expect(relErr(gpu.losses, cpu.losses)).toBeLessThan(1e-3);
    // The global norm (read back asynchronously) clips: grad_clip 0.5 is below it.
    expect(cpu.gradNorms[0]).toBeGreaterThan(0.5);
    expect(relErr(gpu.gradNorms, cpu.gradNorms)).toBeLessThan(1e-3);
    for (const [id, g] of cpu.grads) expect(relErr(gpu.grads.get(id)!, g, 1e-3), `gradient of ${id}`).toBeLessThan(2e-3);
    // Routing counts are read back (asynchronously) after each step, as on cpu.
    expect(gpu.load.length).toBeGreaterThan(0);
    expect(gpu.load.flat().reduce((a, b) => a + b, 0)).toBeGreaterThan(0);
    expect(gpu.tensors[1]).toBe(gpu.tensors[0]);
  });

  it('AdamW state kept flat between steps: two micro-batches a step, moments read and loaded per tensor as on cpu', async () => {
    const plan = plans[1]!;
    const mb2 = syntheticBatch(2, 24, 6, { vocab: 256 });
    const steps = async (backend: 'cpu' | 'webgpu') => {
      const runner = await createStageRunner(plan, plan.stages[0]!.name, { backend, seed: 3 });
      try {
        const losses: number[] = [];
        for (let i = 0; i < 2; i++) losses.push((await runner.step([mb, mb2])).loss);
        const state = await runner.optimizerState();
        // Loading the state and stepping again (the flat moments are rebuilt from the per-tensor ones).
        runner.loadOptimizerState(state);
        losses.push((await runner.step([mb, mb2])).loss);
        const n0 = tf.memory().numTensors;
        losses.push((await runner.step([mb, mb2])).loss);
        const after = tf.memory().numTensors;
        const params = await runner.parameters();
        return { losses, state, params, grew: after - n0 };
      } finally {
        runner.dispose();
      }
    };
    const cpu = await steps('cpu');
    const gpu = await steps('webgpu');
    expect(relErr(gpu.losses, cpu.losses)).toBeLessThan(1e-3);
    expect(gpu.state.t).toBe(2);
    expect([...gpu.state.slots.keys()]).toEqual([...cpu.state.slots.keys()]);
    expect(gpu.state.slots.size).toBe(plan.stages[0]!.optimizer.params.length);
    for (const [id, s] of cpu.state.slots) {
      const g = gpu.state.slots.get(id)!;
      expect(g.m.length, id).toBe(s.m.length);
      expect(relErr(g.m, s.m, 1e-4), `first moment of ${id}`).toBeLessThan(5e-3);
      expect(relErr(g.v!, s.v!, 1e-8), `second moment of ${id}`).toBeLessThan(5e-3);
    }
    for (const id of plan.stages[0]!.optimizer.params) expect(relErr(gpu.params.get(id)!, cpu.params.get(id)!, 1e-3), id).toBeLessThan(2e-3);
    // A step on the flat moments leaves as many tensors as there were.
    expect(gpu.grew).toBe(0);
  });

  it('runPlan (mcpc run --backend webgpu): a two-stage pipeline with a merge trains to the cpu losses', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'mcpc-webgpu-run-'));
    writeFileSync(join(dir, 'p.mcp'), TWO_STAGES);
    const record = (i: number) => JSON.stringify({ messages: [{ role: 'user', content: `Q${i}?` }, { role: 'assistant', content: `A${i * 3}.` }] });
    writeFileSync(join(dir, 'd.jsonl'), Array.from({ length: 8 }, (_, i) => record(i)).join('\n') + '\n');
    const res = compileFile(join(dir, 'p.mcp'), nodeHost(dir, dir), {}, { optLevel: 1 });
    if (!res.plan) throw new Error(res.diagnostics.map((d) => d.message).join('\n'));
    const losses = (runDir: string) => readFileSync(join(dir, runDir, 'metrics.jsonl'), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as { loss?: number }).filter((m) => m.loss !== undefined).map((m) => m.loss!);
    let text = '';
    const gpu = await runPlan(res.plan, { root: dir, runDir: join(dir, 'gpu'), backend: 'webgpu', write: (t) => void (text += t) });
    expect(gpu.code, text).toBe(0);
    expect(text).toMatch(/stage one merge check: .* ok/);
    const cpu = await runPlan(res.plan, { root: dir, runDir: join(dir, 'cpu'), backend: 'cpu', write: () => {} });
    expect(cpu.code).toBe(0);
    expect(losses('gpu')).toHaveLength(5);
    expect(relErr(losses('gpu'), losses('cpu'))).toBeLessThan(1e-3);
  });
});
