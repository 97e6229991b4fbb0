/**
 * runPlan (src/runtime/run.ts) over run folders that a kill, a lost file or tampering left behind: leftovers of a
 * checkpoint write are removed (said), a stage end without its record is taken as the stage's end, a damaged
 * stage end or record is named (and, with --resume, not needed), state.json and the checkpoint's tensors are
 * checked (a bad checkpoint is skipped for an older one), settings that cannot change the weights do not force
 * retraining, a plain run over an interrupted stage says so and keeps the checkpoint, metrics.jsonl is replaced
 * atomically.
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { compileFile, nodeHost } from '../../src/compiler/index.js';
import type { Plan } from '../../src/plan/types.js';
import { encodeSafetensors, SafetensorsReader } from '../../src/runtime/io/safetensors.js';
import { runPlan, type RunOptions } from '../../src/runtime/run.js';
import { TWO_STAGES as PIPELINE } from './executor/helpers.js';

const record = (i: number) => JSON.stringify({ messages: [{ role: 'user', content: `Q${i}?` }, { role: 'assistant', content: `A${i * 3}.` }] });
const sha = (b: string | Uint8Array) => createHash('sha256').update(b).digest('hex');
const step = (n: number) => `step-${String(n).padStart(6, '0')}`;

/** A pid that no process has: a child that has exited. */
function deadPid(): number {
  const r = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))']);
  return Number(r.stdout.toString());
}

describe('runPlan over damaged or interrupted run folders', () => {
  let dir: string;
  let plan: Plan;
  const opts = (runDir: string, extra: Partial<RunOptions> = {}): RunOptions & { text: () => string } => {
    let text = '';
    return { root: dir, runDir: join(dir, runDir), write: (t) => void (text += t), text: () => text, ...extra };
  };
  const ck = (runDir: string, n: number) => join(dir, runDir, 'checkpoints', step(n));
  const finalParams = (runDir: string) => {
    const rec = JSON.parse(readFileSync(join(dir, runDir, 'stages/two.json'), 'utf8')) as { checkpoint: number };
    return readFileSync(join(ck(runDir, rec.checkpoint), 'params.safetensors'));
  };
  /** Replaces a file of a checkpoint and fixes its COMPLETE manifest up to match (as tampering or a bug would). */
  const rewrite = (ckDir: string, name: string, bytes: Uint8Array | string) => {
    const b = typeof bytes === 'string' ? Buffer.from(bytes) : bytes;
    writeFileSync(join(ckDir, name), b);
    const m = JSON.parse(readFileSync(join(ckDir, 'COMPLETE'), 'utf8')) as { files: { name: string; bytes: number; sha256: string }[] };
    const f = m.files.find((x) => x.name === name)!;
    f.bytes = b.length;
    f.sha256 = sha(b);
    writeFileSync(join(ckDir, 'COMPLETE'), JSON.stringify(m, null, 2) + '\n');
  };
  const editState = (ckDir: string, edit: (s: Record<string, unknown>) => void) => {
    const s = JSON.parse(readFileSync(join(ckDir, 'state.json'), 'utf8')) as Record<string, unknown>;
    edit(s);
    rewrite(ckDir, 'state.json', JSON.stringify(s, null, 1) + '\n');
  };
  const dropTensor = (ckDir: string, file: string, pick: (name: string) => boolean): string => {
    const all = SafetensorsReader.fromBytes(readFileSync(join(ckDir, file)), file).readAll();
    const name = [...all.keys()].find(pick)!;
    all.delete(name);
    rewrite(ckDir, file, encodeSafetensors(all));
    return name;
  };
  /** Stops in stage two after its first step: checkpoints 1 (stage one's end) and 2 (stage two, step 1). */
  const cutInTwo = async (runDir: string) => {
    expect((await runPlan(plan, opts(runDir, { stopAfter: 3 }))).code).toBe(1);
    expect(readdirSync(join(dir, runDir, 'checkpoints')).sort()).toEqual([step(1), step(2)]);
  };

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'mcpc-recovery-'));
    writeFileSync(join(dir, 'p.mcp'), PIPELINE);
    writeFileSync(join(dir, 'd.jsonl'), Array.from({ length: 16 }, (_, i) => record(i)).join('\n') + '\n');
    const res = compileFile(join(dir, 'p.mcp'), nodeHost(dir, dir), {}, { optLevel: 1 });
    if (!res.plan) throw new Error(res.diagnostics.map((d) => d.message).join('\n'));
    plan = res.plan;
    expect((await runPlan(plan, opts('full'))).code).toBe(0);
  });

  it('removes what a killed checkpoint write left (staging, trash, temp files), saying so; a live writer\'s is left alone', async () => {
    await cutInTwo('left');
    const dead = deadPid();
    const staging = `.tmp-step-000003.${dead}.a1b2c3d4`;
    mkdirSync(join(dir, 'left/checkpoints', staging));
    writeFileSync(join(dir, 'left/checkpoints', staging, 'params.safetensors'), Buffer.alloc(2_000_000));
    mkdirSync(join(dir, 'left/checkpoints/.trash-step-000001.0badf00d'));
    const temp = `.tmp-two.json.${dead}.0123456789ab`;
    writeFileSync(join(dir, 'left/stages', temp), '{');
    // A live process's staging folder (this test's parent): another writer, not ours to remove.
    const live = `.tmp-step-000004.${process.ppid}.feedbeef`;
    mkdirSync(join(dir, 'left/checkpoints', live));
    const o = opts('left', { resume: true });
    expect((await runPlan(plan, o)).code).toBe(0);
    expect(o.text()).toContain(`removed ${join(dir, 'left/checkpoints', staging)}: an unfinished checkpoint write of a run that was killed (2.0 MB)`);
    expect(o.text()).toContain(`removed ${join(dir, 'left/checkpoints/.trash-step-000001.0badf00d')}: a checkpoint deletion`);
    expect(o.text()).toContain(`removed ${join(dir, 'left/stages', temp)}: an unfinished write`);
    expect(o.text()).toMatch(new RegExp(`warning: .*${live.replace(/\./g, '\\.')} is a checkpoint being written by process ${process.ppid}, which is running`));
    const names = readdirSync(join(dir, 'left/checkpoints'));
    expect(names.filter((n) => n.startsWith('.'))).toEqual([live]);
    expect(existsSync(join(dir, 'left/stages', temp))).toBe(false);
    expect(finalParams('left').equals(finalParams('full'))).toBe(true);
  });

  it('a stage end whose record was lost is taken as the stage end (the record is written, said), with --resume and without', async () => {
    // Interrupted between the stages: stage one's end is the newest checkpoint; its record is lost.
    const stop = new AbortController();
    const r0 = await runPlan(plan, opts('norec', { signal: stop.signal, afterStep: ({ stage, step: n }) => void (stage === 'one' && n === 2 && stop.abort()) }));
    expect(r0.code).toBe(130);
    rmSync(join(dir, 'norec/stages/one.json'));
    const o = opts('norec', { resume: true });
    expect((await runPlan(plan, o)).code).toBe(0);
    expect(o.text()).toContain(`stage one: no record ${join(dir, 'norec/stages/one.json')}; ${ck('norec', 1)} is its stage end (its state.json says the stage finished, with its current inputs): wrote ${join(dir, 'norec/stages/one.json')}`);
    expect(o.text()).toMatch(/stage one unchanged, reusing/);
    expect(o.text()).not.toMatch(/stage one: 2 steps/);
    expect(existsSync(join(ck('norec', 1), 'COMPLETE'))).toBe(true);
    expect(JSON.parse(readFileSync(join(dir, 'norec/stages/one.json'), 'utf8')).checkpoint).toBe(1);
    expect(finalParams('norec').equals(finalParams('full'))).toBe(true);
    // Without --resume: the last stage's record lost; its end is reused, not retrained.
    rmSync(join(dir, 'norec/stages/two.json'));
    const again = opts('norec');
    expect((await runPlan(plan, again)).code).toBe(0);
    expect(again.text()).toMatch(/stage two: no record .*two\.json; .* is its stage end/);
    expect(again.text()).toMatch(/stage two unchanged, reusing/);
    expect(again.text()).not.toMatch(/stage two: 3 steps/);
    expect(finalParams('norec').equals(finalParams('full'))).toBe(true);
  });

  it('--resume past a stage whose stage end or record is damaged names the file and continues (the later checkpoint holds every tensor)', async () => {
    await cutInTwo('dmg');
    rmSync(join(ck('dmg', 1), 'COMPLETE'));
    const o = opts('dmg', { resume: true });
    const r = await runPlan(plan, o);
    expect(r.code, o.text()).toBe(0);
    expect(o.text()).toContain(`stage one: its stage-end checkpoint ${ck('dmg', 1)} (named by ${join(dir, 'dmg/stages/one.json')}) cannot be used: no completion marker`);
    expect(o.text()).toMatch(/not needed to resume: .*step-000002 \(stage two\) holds every tensor/);
    expect(o.text()).toMatch(/stage two: resuming at step 1\/3/);
    expect(finalParams('dmg').equals(finalParams('full'))).toBe(true);

    await cutInTwo('garbage');
    writeFileSync(join(dir, 'garbage/stages/one.json'), 'not json at all');
    const g = opts('garbage', { resume: true });
    expect((await runPlan(plan, g)).code, g.text()).toBe(0);
    // The record is unreadable, but checkpoint 1 is stage one's end: it stands for it (and the record is rewritten).
    expect(g.text()).toContain(`stage one: its record ${join(dir, 'garbage/stages/one.json')} is unreadable: not JSON`);
    expect(g.text()).toMatch(/step-000001 is its stage end/);
    expect(finalParams('garbage').equals(finalParams('full'))).toBe(true);

    // A plain run over a damaged stage end says so and trains the stage again.
    await cutInTwo('plain');
    const params = join(ck('plain', 1), 'params.safetensors');
    writeFileSync(params, readFileSync(params).subarray(0, 100));
    const p = opts('plain');
    expect((await runPlan(plan, p)).code).toBe(0);
    expect(p.text()).toContain(`stage one: its stage-end checkpoint ${ck('plain', 1)} (named by ${join(dir, 'plain/stages/one.json')}) cannot be used: params.safetensors: is 100 bytes`);
    expect(p.text()).toMatch(/; training it again\n/);
    expect(finalParams('plain').equals(finalParams('full'))).toBe(true);
  });

  it('--resume of a stage whose inputs changed says which input', async () => {
    await cutInTwo('changed');
    const other = JSON.parse(JSON.stringify(plan)) as Plan;
    other.stages[1]!.settings.lr = 2e-2;
    const o = opts('changed', { resume: true });
    await expect(runPlan(other, o)).rejects.toThrow(/^cannot resume from .*step-000002: the plan section of stage two changed \(settings, adapters, transitions or graph\) since it was written; run without --resume to train again \(stages whose inputs did not change are reused\)$/);
    await expect(runPlan(plan, opts('changed', { resume: true, seed: 5 }))).rejects.toThrow(/cannot resume from .*: the model, its parameters or adapters, the model files, --seed or --max-steps changed/);
  });

  for (const [what, edit, says] of [
    ['stepsDone "x", cursor null', (s: Record<string, unknown>) => Object.assign(s, { stepsDone: 'x', cursor: null }), /state\.json: "stepsDone" is "x", not a count/],
    ['stepsDone 99', (s: Record<string, unknown>) => Object.assign(s, { stepsDone: 99, scheduleStep: 99 }), /state\.json: 99 steps done mid-stage, but stage two has 3/],
    ['an unknown stage', (s: Record<string, unknown>) => Object.assign(s, { stage: 'three' }), /state\.json: it is of stage 'three' \(number 2\), which this pipeline does not have there/],
    ['a cursor off the step boundaries', (s: Record<string, unknown>) => Object.assign(s, { cursor: { epoch: 0, index: 3 } }), /state\.json: data cursor \{epoch: 0, index: 3\} is not a step boundary/],
    ['a router load that is no list', (s: Record<string, unknown>) => Object.assign(s, { routerLoad: 3 }), /state\.json: "routerLoad" is not a list/],
    ['a router load of a site the plan has no mixture at', (s: Record<string, unknown>) => Object.assign(s, { routerLoad: [{ adapter: 'm', site: 'layers[0].mlp.up', counts: [1, 2] }] }), /state\.json: "routerLoad"\[0\] names no mixture site of this plan/],
  ] as const) {
    it(`a checkpoint whose state.json has ${what} is skipped with a warning for the one before it`, async () => {
      const name = `state-${what.replace(/\W+/g, '-')}`;
      await cutInTwo(name);
      editState(ck(name, 2), edit);
      const o = opts(name, { resume: true });
      const r = await runPlan(plan, o);
      expect(r.code, o.text()).toBe(0);
      expect(o.text()).toMatch(new RegExp(`warning: skipping checkpoint .*step-000002: ${says.source}`));
      expect(o.text()).not.toMatch(/resuming at step/);
      expect(o.text()).toMatch(/stage one unchanged, reusing .*step-000001/);
      expect(finalParams(name).equals(finalParams('full'))).toBe(true);
    });
  }

  it('a checkpoint missing a trainable tensor or a moment is refused (naming them) and the one before it is used', async () => {
    await cutInTwo('tensor');
    const gone = dropTensor(ck('tensor', 2), 'params.safetensors', (n) => /^b\..*\.A$/.test(n));
    const o = opts('tensor', { resume: true });
    expect((await runPlan(plan, o)).code).toBe(0);
    expect(o.text()).toContain(`warning: skipping checkpoint ${ck('tensor', 2)}: params.safetensors lacks 1 tensor that stage two holds: ${gone}`);
    expect(o.text()).not.toMatch(/resuming at step/);
    expect(finalParams('tensor').equals(finalParams('full'))).toBe(true);

    await cutInTwo('moment');
    const m = dropTensor(ck('moment', 2), 'optimizer.safetensors', (n) => n.startsWith('v.'));
    const mo = opts('moment', { resume: true });
    expect((await runPlan(plan, mo)).code).toBe(0);
    expect(mo.text()).toContain(`warning: skipping checkpoint ${ck('moment', 2)}: optimizer.safetensors lacks 1 moment of stage two's trainable tensors: ${m}`);
    expect(finalParams('moment').equals(finalParams('full'))).toBe(true);
  });

  it('checkpoint_every and the probes a stage measures are not inputs: changing them reuses, and --resume continues', async () => {
    writeFileSync(join(dir, 'pe.mcp'), PIPELINE.replace('adapter a =', 'probe ppl = perplexity(d)\nprobe ppl2 = perplexity(d, max_examples: 4)\nadapter a =').replace('  max_bad_steps 2\n', '  max_bad_steps 2\n  eval ppl, ppl2\n'));
    const withEval = compileFile(join(dir, 'pe.mcp'), nodeHost(dir, dir), {}, { optLevel: 1 }).plan!;
    expect(withEval.stages[0]!.evals).toEqual([{ probes: ['ppl', 'ppl2'] }]);
    const o = opts('evals');
    expect((await runPlan(withEval, o)).code).toBe(0);
    expect(o.text()).toMatch(/stage one eval after step 2: ppl perplexity/);
    // One probe fewer, another checkpoint_every: nothing retrains, the remaining probe's result is still reported.
    const fewer = JSON.parse(JSON.stringify(withEval)) as Plan;
    fewer.stages[0]!.evals = [{ probes: ['ppl2'] }];
    fewer.stages[0]!.settings.checkpointEvery = 1;
    fewer.stages[1]!.settings.checkpointEvery = 2;
    const again = opts('evals');
    const r = await runPlan(fewer, again);
    expect(r.code).toBe(0);
    expect(again.text()).toMatch(/stage one unchanged, reusing/);
    expect(again.text()).toMatch(/stage two unchanged, reusing/);
    expect(again.text()).not.toMatch(/no probe results/);
    expect(r.stages[0]!.evals?.map((e) => e.probe)).toEqual(['ppl2']);
    // A probe added since: said, and the stage is still not retrained.
    const more = JSON.parse(JSON.stringify(fewer)) as Plan;
    more.stages[1]!.evals = [{ probes: ['ppl'] }];
    const third = opts('evals');
    expect((await runPlan(more, third)).code).toBe(0);
    expect(third.text()).toMatch(/stage two unchanged, reusing/);
    expect(third.text()).toMatch(/stage two: no probe results recorded for ppl as the stage now defines it/);

    // Mid-stage: a new checkpoint_every does not block --resume.
    await cutInTwo('every');
    const every = JSON.parse(JSON.stringify(plan)) as Plan;
    every.stages[1]!.settings.checkpointEvery = 2;
    const res = opts('every', { resume: true });
    expect((await runPlan(every, res)).code).toBe(0);
    expect(res.text()).toMatch(/stage two: resuming at step 1\/3/);
    expect(finalParams('every').equals(finalParams('full'))).toBe(true);
  });

  it('a run folder written before checkpoint_every and eval left the hash (records and state without their parts) is still reused and resumed', async () => {
    // The hash as older versions computed it: the whole plan stage, chained.
    const file = join(dir, 'd.jsonl');
    let prev = sha(JSON.stringify({ model: plan.model, parameters: plan.parameters, adapters: plan.adapters, seed: null, maxSteps: null, modelFiles: '' }));
    const legacy = plan.stages.map((stage) => {
      const data = stage.data.map((n) => sha(JSON.stringify(plan.data.find((d) => d.name === n)) + sha(readFileSync(file))));
      prev = sha(JSON.stringify({ prev, stage, data }));
      return prev;
    });
    await cutInTwo('old');
    const rec = JSON.parse(readFileSync(join(dir, 'old/stages/one.json'), 'utf8')) as Record<string, unknown>;
    writeFileSync(join(dir, 'old/stages/one.json'), JSON.stringify({ stage: 'one', hash: legacy[0], checkpoint: rec.checkpoint }));
    for (const [n, i] of [[1, 0], [2, 1]] as const) editState(ck('old', n), (s) => {
      s.stageHash = legacy[i];
      delete s.inputs;
    });
    const o = opts('old', { resume: true });
    expect((await runPlan(plan, o)).code, o.text()).toBe(0);
    expect(o.text()).toMatch(/stage one unchanged, reusing/);
    expect(o.text()).toMatch(/stage two: resuming at step 1\/3/);
    expect(finalParams('old').equals(finalParams('full'))).toBe(true);
    // The record is brought up to date.
    expect(JSON.parse(readFileSync(join(dir, 'old/stages/one.json'), 'utf8')).hash).not.toBe(legacy[0]);
  });

  it('a plain run over a stage interrupted mid-way says so and keeps its furthest checkpoint until it passes it', async () => {
    const long = JSON.parse(JSON.stringify(plan)) as Plan;
    long.stages[1]!.settings.steps = 6;
    // Stage one (2 steps), then stage two's steps 1-4, a checkpoint after each.
    expect((await runPlan(long, opts('mid', { stopAfter: 6 }))).code).toBe(1);
    const before = readdirSync(join(dir, 'mid/checkpoints')).sort();
    const furthest = before[before.length - 1]!;
    expect(JSON.parse(readFileSync(join(dir, 'mid/checkpoints', furthest, 'state.json'), 'utf8')).stepsDone).toBe(4);
    const o = opts('mid', { stopAfter: 3 });
    expect((await runPlan(long, o)).code).toBe(1);
    expect(o.text()).toContain(`stage two: ${join(dir, 'mid/checkpoints', furthest)} holds step 4/6 of this stage from an earlier run, and --resume would continue from it; without --resume the stage starts over (that checkpoint is kept until this run passes step 4)`);
    // Three newer checkpoints of steps 1-3 were written: the step-4 one is still there.
    expect(existsSync(join(dir, 'mid/checkpoints', furthest, 'COMPLETE'))).toBe(true);
    const r = opts('mid', { stopAfter: 1 });
    expect((await runPlan(long, r)).code).toBe(1);
    expect(existsSync(join(dir, 'mid/checkpoints', furthest))).toBe(true);
    // Past step 4 it goes: the newest two periodic checkpoints and the stage ends stay.
    expect((await runPlan(long, opts('mid', { resume: true }))).code).toBe(0);
    expect(existsSync(join(dir, 'mid/checkpoints', furthest))).toBe(false);
  });

  it('metrics.jsonl is replaced atomically (a new file renamed over it), not truncated in place', async () => {
    await cutInTwo('metrics');
    const f = join(dir, 'metrics/metrics.jsonl');
    const ino = statSync(f).ino;
    expect((await runPlan(plan, opts('metrics', { resume: true }))).code).toBe(0);
    expect(statSync(f).ino).not.toBe(ino);
    expect(readdirSync(join(dir, 'metrics')).filter((n) => n.startsWith('.tmp-'))).toEqual([]);
    const lines = readFileSync(f, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { stage: string; step: number });
    expect(lines.map((l) => `${l.stage}${l.step}`)).toEqual(['one0', 'one1', 'two0', 'two1', 'two2']);
  });
});
