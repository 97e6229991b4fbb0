/** applyOverrides (src/plan/pipeline.ts): what `withOverrides` of an emitted module and the runtime use. */
import { resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { version } from '../../src/cli/version.js';
import { compileFile, nodeHost } from '../../src/compiler/index.js';
import { applyOverrides, OverrideError, OVERRIDABLE_SETTINGS } from '../../src/plan/pipeline.js';
import type { Plan } from '../../src/plan/types.js';
import { validatePlan } from '../../src/plan/validate.js';
import { compilePlan, ROOT } from './pipelines.js';

/** medcare.mcp compiled with its source edited by `edit`. */
function compileEdited(edit: (text: string) => string, optLevel: 0 | 1 = 1): Plan {
  const host = nodeHost(ROOT, ROOT);
  const target = resolve(ROOT, 'pipelines/medcare.mcp');
  const read = host.readFile.bind(host);
  host.readFile = (abs) => {
    const r = read(abs);
    return abs === target && 'text' in r ? { text: edit(r.text) } : r;
  };
  const res = compileFile('pipelines/medcare.mcp', host, {}, { optLevel, compilerVersion: version });
  if (!res.plan) throw new Error(res.diagnostics.map((d) => d.message).join('\n'));
  return res.plan;
}

/** The align stage's `batch 16` (the second one in the file) set to `n`. */
const alignBatch = (n: number) => (text: string) => {
  const at = text.indexOf('batch 16', text.indexOf('stage align'));
  return text.slice(0, at) + `batch ${n}` + text.slice(at + 'batch 16'.length);
};

describe('applyOverrides', () => {
  const plan = compilePlan('pipelines/medcare.mcp');
  const before = JSON.stringify(plan);

  it('changes the named stages only, in a copy, and the result still validates', () => {
    const out = applyOverrides(plan, { align: { lr: 1e-4, epochs: 2, seed: 7, schedule: { kind: 'linear', warmup: { steps: 10 }, minLr: 1e-6 } } });
    expect(JSON.stringify(plan)).toBe(before);
    const align = out.stages.find((s) => s.name === 'align')!;
    expect(align.settings).toMatchObject({ lr: 1e-4, epochs: 2, seed: 7, schedule: { kind: 'linear', warmup: { steps: 10 }, minLr: 1e-6 } });
    expect(out.stages[0]).toEqual(plan.stages[0]);
    expect(validatePlan(out)).toEqual({ ok: true, errors: [] });
    expect(applyOverrides(plan, {})).toEqual(plan);
  });

  it.each([0, 1] as const)('a batch override gives the estimates a recompilation gives (-O%i)', (o) => {
    const compiled = compilePlan('pipelines/medcare.mcp', o);
    for (const batch of [8, 32, 64]) {
      const recompiled = compileEdited(alignBatch(batch), o);
      const overridden = applyOverrides(compiled, { align: { batch } });
      expect(overridden.stages, `batch ${batch}`).toEqual(recompiled.stages);
    }
  });

  it('lists every problem: unknown stages and settings, values out of range, a batch off the micro-batch', () => {
    const bad = { algn: { lr: 1 }, align: { lr: 0, epochs: 1.5, batch: 12, maxLen: 512, shuffle: 'yes', schedule: { kind: 'cosine', warmup: { percent: 300 }, minLr: 0 } } };
    let err: unknown;
    try {
      applyOverrides(plan, bad as never);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(OverrideError);
    expect((err as OverrideError).problems).toEqual([
      "unknown stage 'algn' (the stages of medcare: aggregate, align)",
      'align.lr: must be a number > 0, not 0',
      'align.epochs: must be an integer from 1 to 100000, not 1.5',
      'align.batch: 12 is not a multiple of the micro-batch (8); recompile to change micro_batch',
      `align.maxLen: not a setting that can be overridden without recompiling (these can: ${OVERRIDABLE_SETTINGS.join(', ')})`,
      'align.shuffle: must be true or false, not "yes"',
      'align.schedule: warmup must be { percent: 0..100 } or { steps: integer >= 0 }, not {"kind":"cosine","warmup":{"percent":300},"minLr":0}',
    ]);
    expect(JSON.stringify(plan)).toBe(before);
  });
});
