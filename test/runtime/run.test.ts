/**
 * runPlan (src/runtime/run.ts) directly: a resume across a stage boundary is bit-identical, NaN steps stop the
 * run at max_bad_steps keeping the last good checkpoint, changed data retrains, a terminal gets `\r` progress.
 */
import { appendFileSync, existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { compileFile, nodeHost } from '../../src/compiler/index.js';
import type { Plan } from '../../src/plan/types.js';
import { runPlan, type RunOptions } from '../../src/runtime/run.js';
import { TWO_STAGES as PIPELINE } from './executor/helpers.js';


const record = (i: number) => JSON.stringify({ messages: [{ role: 'user', content: `Q${i}?` }, { role: 'assistant', content: `A${i * 3}.` }] });

describe('runPlan', () => {
  let dir: string;
  let plan: Plan;
  let dropoutPlan: Plan;
  let noisePlans: Plan[];
  const opts = (runDir: string, extra: Partial<RunOptions> = {}): RunOptions & { text: () => string } => {
    let text = '';
    return { root: dir, runDir: join(dir, runDir), write: (t) => void (text += t), text: () => text, ...extra };
  };
  const finalParams = (runDir: string) => {
    const rec = JSON.parse(readFileSync(join(dir, runDir, 'stages/two.json'), 'utf8')) as { checkpoint: number };
    return readFileSync(join(dir, runDir, 'checkpoints', `step-${String(rec.checkpoint).padStart(6, '0')}`, 'params.safetensors'));
  };

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'mcpc-runplan-'));
    writeFileSync(join(dir, 'p.mcp'), PIPELINE);
    writeFileSync(join(dir, 'd.jsonl'), Array.from({ length: 16 }, (_, i) => record(i)).join('\n') + '\n');
    const res = compileFile(join(dir, 'p.mcp'), nodeHost(dir, dir), {}, { optLevel: 1 });
    if (!res.plan) throw new Error(res.diagnostics.map((d) => d.message).join('\n'));
    plan = res.plan;
    // The same pipeline with LoRA dropout on both adapters (masks drawn from seed, step, micro-batch, site).
    writeFileSync(join(dir, 'pd.mcp'), PIPELINE.replace('lora(r: 4, alpha: 8)', 'lora(r: 4, alpha: 8, dropout: 0.2)').replace('lora(r: 2, alpha: 4)', 'lora(r: 2, alpha: 4, dropout: 0.3)'));
    const resD = compileFile(join(dir, 'pd.mcp'), nodeHost(dir, dir), {}, { optLevel: 1 });
    if (!resD.plan) throw new Error(resD.diagnostics.map((d) => d.message).join('\n'));
    dropoutPlan = resD.plan;
    // Stage two trains a mixture instead, with and without router noise (drawn from seed, step, micro-batch, site).
    noisePlans = [0.5, 0].map((sigma, i) => {
      writeFileSync(join(dir, `pn${i}.mcp`), PIPELINE.replace('lora(r: 2, alpha: 4)', `moe_lora(experts: 3, top_k: 2, r: 2, alpha: 4, router_noise: ${sigma})`));
      const resN = compileFile(join(dir, `pn${i}.mcp`), nodeHost(dir, dir), {}, { optLevel: 1 });
      if (!resN.plan) throw new Error(resN.diagnostics.map((d) => d.message).join('\n'));
      return resN.plan;
    });
  });

  it('a run stopped in the second stage and resumed ends bit-identical to an uninterrupted one', async () => {
    const full = opts('full', { tty: true });
    expect((await runPlan(plan, full)).code).toBe(0);
    // On a terminal: one line rewritten with \r, a bar, stage, step/total, loss, tokens/s, ETA.
    expect(full.text()).toMatch(/\r\[#{6,7}\.{13,14}\] two 1\/3 loss \d+\.\d+ \d+ tok\/s ETA/);
    expect(full.text()).toMatch(/\r\[#{20}\] two 3\/3 loss \d+\.\d+ \d+ tok\/s ETA/);
    const stopped = await runPlan(plan, opts('cut', { stopAfter: 3 }));
    expect(stopped.code).toBe(1);
    const resumed = opts('cut', { resume: true });
    const r = await runPlan(plan, resumed);
    expect(r.code).toBe(0);
    expect(resumed.text()).toMatch(/stage one unchanged, reusing/);
    expect(resumed.text()).toMatch(/stage two: resuming at step 1\/3/);
    expect(finalParams('cut').equals(finalParams('full'))).toBe(true);
  });

  it('an aborted signal (Ctrl-C) stops after the step in flight with a checkpoint of it, or before the next stage; --resume ends bit-identical', async () => {
    expect((await runPlan(plan, opts('full2'))).code).toBe(0);
    // Mid-stage, in stage one, which writes no periodic checkpoints: the interrupt writes one of step 1.
    const stop = new AbortController();
    const mid = await runPlan(plan, opts('int', { signal: stop.signal, afterStep: ({ stage, step }) => void (stage === 'one' && step === 1 && stop.abort()) }));
    expect(mid.code).toBe(130);
    expect(mid.message).toMatch(/^interrupted in stage one after step 1\/2: checkpoint .*step-000001 written; the same command with --resume continues$/);
    expect(existsSync(join(dir, 'int/checkpoints/step-000001/COMPLETE'))).toBe(true);
    // At a stage's last step: the stage ends (its checkpoint, exit transitions), the next one does not start.
    const late = new AbortController();
    const resumed = opts('int', { resume: true, signal: late.signal, afterStep: ({ stage, step }) => void (stage === 'one' && step === 2 && late.abort()) });
    const between = await runPlan(plan, resumed);
    expect(between.code).toBe(130);
    expect(between.message).toMatch(/^interrupted before stage two: the last checkpoint is .*step-000002; the same command with --resume continues$/);
    expect(existsSync(join(dir, 'int/stages/one.json'))).toBe(true);
    expect(existsSync(join(dir, 'int/stages/two.json'))).toBe(false);
    const done = await runPlan(plan, opts('int', { resume: true }));
    expect(done.code).toBe(0);
    expect(finalParams('int').equals(finalParams('full2'))).toBe(true);
  });

  it('with LoRA dropout, a resumed run is still bit-identical (the masks are a pure function of the step)', async () => {
    expect(dropoutPlan.adapters.map((a) => a.dropout)).toEqual([0.2, 0.3]);
    expect((await runPlan(dropoutPlan, opts('dfull'))).code).toBe(0);
    expect((await runPlan(dropoutPlan, opts('dcut', { stopAfter: 3 }))).code).toBe(1);
    const resumed = opts('dcut', { resume: true });
    expect((await runPlan(dropoutPlan, resumed)).code).toBe(0);
    expect(resumed.text()).toMatch(/stage two: resuming at step 1\/3/);
    expect(finalParams('dcut').equals(finalParams('dfull'))).toBe(true);
    // Dropout changed the training: the weights differ from the run without it.
    if (!existsSync(join(dir, 'full/stages/two.json'))) expect((await runPlan(plan, opts('full'))).code).toBe(0);
    expect(finalParams('dfull').equals(finalParams('full'))).toBe(false);
  });

  it('with router noise, a resumed run is still bit-identical (the noise is a pure function of the step)', async () => {
    const [noisy, quiet] = noisePlans;
    expect(noisy.adapters.map((a) => a.routerNoise)).toEqual([0, 0.5]);
    expect((await runPlan(noisy, opts('nfull'))).code).toBe(0);
    expect((await runPlan(noisy, opts('ncut', { stopAfter: 3 }))).code).toBe(1);
    const resumed = opts('ncut', { resume: true });
    expect((await runPlan(noisy, resumed)).code).toBe(0);
    expect(resumed.text()).toMatch(/stage two: resuming at step 1\/3/);
    expect(finalParams('ncut').equals(finalParams('nfull'))).toBe(true);
    // The noise changed the training: the weights differ from the run without it.
    expect((await runPlan(quiet, opts('nquiet'))).code).toBe(0);
    expect(finalParams('nfull').equals(finalParams('nquiet'))).toBe(false);
  });

  it('precision bf16 off WebGPU says it is computed in f32, and trains as f32 does', async () => {
    writeFileSync(join(dir, 'pb.mcp'), PIPELINE.replace('  max_bad_steps 2\n', '  max_bad_steps 2\n  precision bf16\n'));
    const res = compileFile(join(dir, 'pb.mcp'), nodeHost(dir, dir), {}, { optLevel: 1 });
    const bf16 = res.plan!;
    expect(bf16.stages[0]!.settings.precision).toBe('bf16');
    const o = opts('bf16');
    expect((await runPlan(bf16, o)).code).toBe(0);
    expect(o.text()).toMatch(/stage one: precision bf16 computed in f32 \(the f16 path needs a WebGPU adapter with f16 subgroup matrices\)/);
    expect(o.text()).not.toMatch(/stage two: precision/);
  });

  it('changed data retrains the stages that read it', async () => {
    const o = opts('changed');
    expect((await runPlan(plan, o)).code).toBe(0);
    appendFileSync(join(dir, 'd.jsonl'), record(99) + '\n');
    const again = opts('changed');
    expect((await runPlan(plan, again)).code).toBe(0);
    expect(again.text()).not.toMatch(/unchanged/);
  });

  it('max_bad_steps consecutive NaN steps stop the run, keeping the last good checkpoint', async () => {
    const bad: Plan = JSON.parse(JSON.stringify(plan));
    bad.stages[0].settings.lr = 3e38;
    bad.stages[0].settings.steps = 6;
    bad.stages[0].settings.checkpointEvery = 1;
    const o = opts('nan');
    const r = await runPlan(bad, o);
    expect(r.code).toBe(1);
    expect(r.message).toMatch(/2 consecutive NaN\/Inf steps in stage one \(max_bad_steps 2\); the last good checkpoint is .*step-000001/);
    expect(existsSync(join(dir, 'nan/checkpoints/step-000001/COMPLETE'))).toBe(true);
    const metrics = readFileSync(join(dir, 'nan/metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { skipped: boolean });
    expect(metrics.map((m) => m.skipped)).toEqual([false, true, true]);
  });
});
