/**
 * The plans the compiler writes: every pipeline compiles at -O0 and -O1 to a plan that validates; plans
 * round-trip through JSON and YAML; the same input gives byte-identical output (in process and through
 * `mcpc compile`); broken plans are rejected with errors that say where and what.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { main } from '../../src/cli/main.js';
import { assertPlan, validatePlan } from '../../src/plan/validate.js';
import type { Plan } from '../../src/plan/types.js';
import { memoryIO } from '../support/memory-io.js';
import { compilePlan, PIPELINES, ROOT } from './pipelines.js';

const clone = <T>(x: T): T => JSON.parse(JSON.stringify(x)) as T;
const temps: string[] = [];
const tempDir = () => {
  const d = mkdtempSync(join(tmpdir(), 'mcpc-plan-'));
  temps.push(d);
  return d;
};
afterAll(() => temps.forEach((d) => rmSync(d, { recursive: true, force: true })));

async function cli(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  const io = memoryIO(ROOT);
  const code = await main(argv, io);
  return { code, out: io.out, err: io.err };
}

describe('every pipeline compiles to a plan that validates', () => {
  it('finds the pipelines', () => {
    expect(PIPELINES).toContain('pipelines/medcare.mcp');
    expect(PIPELINES).toContain('pipelines/medcare-3stage.mcp');
    expect(PIPELINES.some((p) => p.startsWith('examples/'))).toBe(true);
    expect(PIPELINES.some((p) => p.startsWith('examples/broken'))).toBe(false);
  });

  for (const file of PIPELINES) {
    it.each([0, 1] as const)(`${file} at -O%i`, (optLevel) => {
      const plan = compilePlan(file, optLevel);
      expect(validatePlan(plan)).toEqual({ ok: true, errors: [] });
      expect(plan.compiler.optLevel).toBe(optLevel);
    });
  }
});

describe('round trips', () => {
  const plan = compilePlan('pipelines/medcare.mcp');

  it('through JSON: nothing undefined, no non-JSON values', () => {
    expect(clone(plan)).toStrictEqual(plan);
  });

  it('through YAML (`--format yaml`) and JSON files written by mcpc compile', async () => {
    const dir = tempDir();
    expect((await cli('compile', 'pipelines/medcare.mcp', '-o', dir, '--format', 'yaml')).code).toBe(0);
    expect((await cli('compile', 'pipelines/medcare.mcp', '-o', dir)).code).toBe(0);
    const fromYaml = parseYaml(readFileSync(join(dir, 'medcare.plan.yaml'), 'utf8')) as unknown;
    const fromJson = JSON.parse(readFileSync(join(dir, 'medcare.plan.json'), 'utf8')) as unknown;
    expect(fromYaml).toStrictEqual(plan);
    expect(fromJson).toStrictEqual(plan);
    expect(validatePlan(fromYaml).ok).toBe(true);
  });
});

describe('determinism', () => {
  it('compiling twice in process gives the same bytes', () => {
    for (const file of ['pipelines/medcare.mcp', 'pipelines/medcare-3stage.mcp'])
      for (const o of [0, 1] as const) expect(JSON.stringify(compilePlan(file, o), null, 1)).toBe(JSON.stringify(compilePlan(file, o), null, 1));
  });

  it('mcpc compile twice into two folders gives byte-identical files (json, yaml and --emit ts)', async () => {
    const [a, b] = [tempDir(), tempDir()];
    for (const dir of [a, b]) {
      const r = await cli('compile', 'pipelines/medcare.mcp', '-o', dir, '--emit', 'ts');
      expect(r.err).toBe('');
      expect(r.code).toBe(0);
      expect((await cli('compile', 'pipelines/medcare-3stage.mcp', '-o', dir, '--format', 'yaml')).code).toBe(0);
    }
    for (const name of ['medcare.plan.json', 'medcare.plan.ts', 'medcare_3stage.plan.yaml']) expect(readFileSync(join(a, name)), name).toEqual(readFileSync(join(b, name)));
  });
});

describe('broken plans are rejected with useful errors', () => {
  const good = compilePlan('pipelines/medcare.mcp');
  const broken = (edit: (p: Plan & Record<string, unknown>) => void) => {
    const p = clone(good) as Plan & Record<string, unknown>;
    edit(p);
    return validatePlan(p);
  };
  const node = good.stages[1]!.forward[3]!.node;

  it.each([
    ['a newer version', (p: Plan) => void ((p as { version: number }).version = 2), ['/version: must be 1']],
    ['another format', (p: Plan) => void ((p as { format: string }).format = 'onnx'), ['/format: must be "mcpc-plan"']],
    ['an unknown top-level key', (p: Plan & Record<string, unknown>) => void (p.extra = true), ["/: unknown property 'extra'"]],
    ['a missing stage key', (p: Plan) => void delete (p.stages[0] as Partial<Plan['stages'][0]>).estimates, ["/stages/0 (stage aggregate): missing required property 'estimates'"]],
    ['an unknown op', (p: Plan) => void ((p.stages[1]!.forward[3] as { op: string }).op = 'conv2d'), [new RegExp(`^/stages/1/forward/3/op \\(stage align, node ${node}\\): must be one of "embedding", `)]],
    ['an unknown parameter state', (p: Plan) => void ((p.parameters[0]!.states as Record<string, string>).align = 'thawed'), [/^\/parameters\/0\/states\/align \(parameter [^)]+\): must be one of "trainable", "frozen"/]],
    ['a transition without its sites', (p: Plan) => void delete (p.stages[0]!.exit[0] as { sites?: string[] }).sites, ["/stages/0/exit/0 (stage aggregate, adapter attn): missing required property 'sites'"]],
    ['a fractional shape', (p: Plan) => void (p.parameters[0]!.shape[0] = 1.5), [/^\/parameters\/0\/shape\/0 \(parameter [^)]+\): must be integer$/]],
    ['a learning rate of 0', (p: Plan) => void (p.stages[1]!.settings.lr = 0), ['/stages/1/settings/lr (stage align): must be > 0']],
    ['a bad source hash', (p: Plan) => void (p.sources[0]!.sha256 = 'xyz'), [/^\/sources\/0\/sha256: must match pattern/]],
    ['a string where a number goes', (p: Plan) => void ((p.stages[0]!.estimates as unknown as Record<string, unknown>).flopsPerStep = '1e12'), ['/stages/0/estimates/flopsPerStep (stage aggregate): must be number']],
  ] as [string, (p: Plan & Record<string, unknown>) => void, (string | RegExp)[]][])('%s', (_what, edit, expected) => {
    const res = broken(edit);
    expect(res.ok).toBe(false);
    expect(res.errors).toHaveLength(expected.length);
    expected.forEach((e, i) => (typeof e === 'string' ? expect(res.errors[i]).toBe(e) : expect(res.errors[i]).toMatch(e)));
  });

  it('reports every problem at once, and assertPlan throws them all', () => {
    const p = clone(good) as Plan & Record<string, unknown>;
    p.extra = 1;
    p.stages[1]!.settings.batch = -1;
    expect(validatePlan(p).errors).toEqual(["/: unknown property 'extra'", '/stages/1/settings/batch (stage align): must be >= 1']);
    expect(() => assertPlan(p, 'out/medcare.plan.json')).toThrow(/^out\/medcare\.plan\.json is not a valid mcpc plan:\n {2}\/: unknown property 'extra'\n {2}\/stages\/1\/settings\/batch/);
    expect(validatePlan(null).errors).toEqual(['/: must be object']);
    expect(validatePlan([]).errors).toEqual(['/: must be object']);
  });
});
