/**
 * `mcpc compile --emit ts`: the module type-checks, exports the typed pipeline, rejects a wrong stage or
 * setting at compile time, and its withOverrides / run work when imported.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { main } from '../../../src/cli/main.js';
import { defaultPlanModuleSpecifier, emitTypeScript, typeCheckModule } from '../../../src/compiler/5-emit/typescript.js';
import { OverrideError } from '../../../src/plan/pipeline.js';
import type { Plan } from '../../../src/plan/types.js';
import { validatePlan } from '../../../src/plan/validate.js';
import { memoryIO } from '../../support/memory-io.js';
import { compilePlan, ROOT } from '../../plan/pipelines.js';

const dir = mkdtempSync(join(tmpdir(), 'mcpc-emit-ts-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const plan = compilePlan('pipelines/medcare.mcp');
const file = join(dir, 'medcare.plan.ts');
const spec = defaultPlanModuleSpecifier(dir);
let text = '';

/** What the generated module exports, as the test uses it. */
interface Emitted {
  pipeline: string;
  stages: readonly string[];
  adapters: readonly string[];
  exportTargets: readonly { format: string; adapters: readonly string[]; path: string }[];
  plan: Plan;
  settings: Record<string, Plan['stages'][number]['settings']>;
  stage(name: string): Plan['stages'][number];
  withOverrides(o: Record<string, Record<string, unknown>>): Plan;
  run<R>(runner: (p: Plan) => R | Promise<R>, o?: Record<string, Record<string, unknown>>): Promise<R>;
}
let mod: Emitted;

beforeAll(async () => {
  text = emitTypeScript(plan, { file, source: 'pipelines/medcare.mcp' }).text;
  writeFileSync(file, text);
  mod = (await import(pathToFileURL(file).href)) as Emitted;
});

/** Type-check `snippet` written beside the generated module. */
const check = (snippet: string) => typeCheckModule(snippet, join(dir, 'use.ts'), spec, { [file]: text });

describe('the emitted module', () => {
  it('imports the plan module by a relative path from the output folder, and no runtime', () => {
    expect(spec).toMatch(/^(\.\.\/)+.*src\/plan\/index\.js$/);
    expect(text).toContain(`from '${spec}';`);
    expect(text).not.toMatch(/runtime\//);
    expect(text.split('\n').filter((l) => /^import /.test(l))).toHaveLength(1);
  });

  it('type-checks (strict, noUncheckedIndexedAccess, exactOptionalPropertyTypes, no unused names)', () => {
    expect(typeCheckModule(text, file, spec)).toEqual([]);
  });

  it('has the typed exports', () => {
    for (const name of ['StageName', 'AdapterName', 'Overrides', 'StageOverrides', 'Plan', 'PlanRunner']) expect(text).toMatch(new RegExp(`export (type|\\{)[^\\n]*\\b${name}\\b`));
    expect(Object.keys(mod).sort()).toEqual(['adapters', 'exportTargets', 'pipeline', 'plan', 'run', 'settings', 'stage', 'stages', 'withOverrides']);
    expect(mod.pipeline).toBe('medcare');
    expect(mod.stages).toEqual(['aggregate', 'align']);
    expect(mod.adapters).toEqual(['attn', 'knowledge', 'noise', 'align']);
    expect(mod.exportTargets).toEqual(plan.exports);
    expect(mod.plan).toStrictEqual(plan);
    expect(mod.settings.align).toEqual(plan.stages[1]!.settings);
    expect(mod.stage('align').name).toBe('align');
  });

  it('types the stage names and the overrides: mistakes do not type-check', () => {
    const ok = check(`import { withOverrides, stage, type StageName } from './medcare.plan.js';
const s: StageName = 'align';
export const p = withOverrides({ align: { lr: 1e-4, epochs: 2, batch: 32, shuffle: false, schedule: { kind: 'cosine', warmup: { percent: 3 }, minLr: 0 } }, aggregate: {} });
export const q = stage(s);
`);
    expect(ok).toEqual([]);
    const wrongStage = check(`import { withOverrides } from './medcare.plan.js';\nexport const p = withOverrides({ algn: { lr: 1e-4 } });\n`);
    expect(wrongStage.join('\n')).toMatch(/use\.ts:2: .*'algn' does not exist in type 'Overrides'/);
    const wrongSetting = check(`import { withOverrides } from './medcare.plan.js';\nexport const p = withOverrides({ align: { learningRate: 1e-4 } });\n`);
    expect(wrongSetting.join('\n')).toMatch(/use\.ts:2: .*'learningRate' does not exist in type 'StageOverrides'/);
    const wrongType = check(`import { withOverrides } from './medcare.plan.js';\nexport const p = withOverrides({ align: { lr: '1e-4' } });\n`);
    expect(wrongType.join('\n')).toMatch(/use\.ts:2: Type 'string' is not assignable to type 'number'/);
    const wrongStageName = check(`import { stage } from './medcare.plan.js';\nexport const s = stage('stage3');\n`);
    expect(wrongStageName.join('\n')).toMatch(/use\.ts:2: .*'"stage3"' is not assignable to parameter of type '"aggregate" \| "align"'/);
  });

  it('withOverrides returns a new plan with the overrides applied and checked', () => {
    const p = mod.withOverrides({ align: { lr: 1e-4, epochs: 2 } });
    expect(p.stages[1]!.settings.lr).toBe(1e-4);
    expect(p.stages[1]!.settings.epochs).toBe(2);
    expect(mod.plan.stages[1]!.settings.lr).toBe(plan.stages[1]!.settings.lr);
    expect(validatePlan(p).ok).toBe(true);
    expect(() => mod.withOverrides({ algn: { lr: 1 } })).toThrow(OverrideError);
    expect(() => mod.withOverrides({ align: { lr: -1 } })).toThrow(/align\.lr: must be a number > 0, not -1/);
  });

  it('run hands the overridden plan to the runner it is given', async () => {
    await expect(mod.run((p) => p.stages[1]!.settings.lr, { align: { lr: 3e-4 } })).resolves.toBe(3e-4);
    await expect(mod.run(async (p) => p.pipeline)).resolves.toBe('medcare');
    await expect(mod.run(() => 1, { nope: {} })).rejects.toThrow(OverrideError);
  });

  it('takes a package specifier for the plan module (--plan-module)', () => {
    const other = emitTypeScript(plan, { file, planModule: 'mcpc/plan' });
    expect(other.text).toContain(`from 'mcpc/plan';`);
    expect(other.text.replace(`'mcpc/plan'`, `'${spec}'`)).toBe(text.replace(' from pipelines/medcare.mcp', ''));
  });

  it('is not written when it does not type-check (a compiler bug), and says why', () => {
    const dup = JSON.parse(JSON.stringify(plan)) as Plan;
    dup.stages[1]!.name = 'aggregate';
    expect(() => emitTypeScript(dup, { file: join(dir, 'dup.plan.ts') })).toThrow(/the generated module dup\.plan\.ts does not type-check, so it was not written:\n {2}dup\.plan\.ts:\d+: Duplicate identifier 'aggregate'/);
  });
});

describe('mcpc compile --emit ts', () => {
  const cli = async (...argv: string[]) => {
    const io = memoryIO(ROOT);
    return { code: await main(argv, io), out: io.out, err: io.err };
  };

  it('writes the module beside the plan', async () => {
    const out = mkdtempSync(join(tmpdir(), 'mcpc-emit-cli-'));
    try {
      const r = await cli('compile', 'pipelines/medcare.mcp', '-o', out, '--emit', 'ts');
      expect(r.err).toBe('');
      expect(r.code).toBe(0);
      expect(r.out).toMatch(/compiled medcare -> .*medcare\.plan\.json, .*medcare\.plan\.ts \(/);
      const written = readFileSync(join(out, 'medcare.plan.ts'), 'utf8');
      expect(written).toContain(`from '${defaultPlanModuleSpecifier(out)}';`);
      expect(typeCheckModule(written, join(out, 'medcare.plan.ts'), defaultPlanModuleSpecifier(out))).toEqual([]);
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  });

  it('refuses unknown targets and unusable plan-module specifiers (usage errors, nothing written)', async () => {
    const out = join(dir, 'refused');
    expect(await cli('compile', 'pipelines/medcare.mcp', '-o', out, '--emit', 'py')).toMatchObject({ code: 2, err: "mcpc compile: --emit takes ts, not 'py'\n" });
    expect(await cli('compile', 'pipelines/medcare.mcp', '-o', out, '--emit', 'ts', '--plan-module', '../src/plan')).toMatchObject({ code: 2, err: expect.stringMatching(/--plan-module: .* must name the file/) });
    expect(await cli('compile', 'pipelines/medcare.mcp', '-o', out, '--plan-module', 'mcpc/plan')).toMatchObject({ code: 2, err: 'mcpc compile: --plan-module goes with --emit ts\n' });
    expect(existsSync(out)).toBe(false);
  });
});
