/**
 * src/plan/schema.json against the types it is generated from: the file is fresh, it is precise (closed
 * objects, enums, consts), and typed samples (every optional field present; none present) validate.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { generatePlanSchema, generatePlanSchemaText, SCHEMA_PATH, TYPES_PATH } from '../../scripts/gen-plan-schema.js';
import type { Op, ParamRole } from '../../src/compiler/ir/types.js';
import type { PlanOp, PlanParamRole } from '../../src/plan/types.js';
import { planSchema, validatePlan } from '../../src/plan/validate.js';
import { complete, minimal, variants } from './sample.js';

type Equal<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
// The plan's enums are the IR's: a new op or role in the compiler must be added to src/plan/types.ts too.
const opsInStep: Equal<Op, PlanOp> = true;
const rolesInStep: Equal<ParamRole, PlanParamRole> = true;

type Schema = Record<string, unknown>;
const clone = <T>(x: T): T => JSON.parse(JSON.stringify(x)) as T;

/** Every sub-schema with its JSON pointer. */
function* walk(s: unknown, at = '#'): Generator<[string, Schema]> {
  if (!s || typeof s !== 'object') return;
  if (Array.isArray(s)) {
    for (const [i, x] of s.entries()) yield* walk(x, `${at}/${i}`);
    return;
  }
  yield [at, s as Schema];
  for (const [k, v] of Object.entries(s)) if (k !== 'const' && k !== 'enum') yield* walk(v, `${at}/${k}`);
}

describe('src/plan/schema.json', () => {
  it('is what src/plan/types.ts generates (run `npm run schema` when this fails)', () => {
    expect(readFileSync(SCHEMA_PATH, 'utf8')).toBe(generatePlanSchemaText(readFileSync(TYPES_PATH, 'utf8')));
    expect(planSchema).toEqual(generatePlanSchema());
  });

  it('is draft 2020-12 with format and version pinned', () => {
    expect(planSchema.$schema).toBe('https://json-schema.org/draft/2020-12/schema');
    const props = planSchema.properties as Record<string, Schema>;
    expect(props.format).toEqual({ const: 'mcpc-plan' });
    expect(props.version).toEqual({ const: 1 });
    expect(planSchema.required).toEqual(Object.keys(props));
    expect(planSchema.additionalProperties).toBe(false);
  });

  it('closes every fixed-shape object and requires its non-optional keys', () => {
    let objects = 0;
    for (const [at, s] of walk(planSchema)) {
      if (!s.properties || at.endsWith('/if')) continue;
      if (s.allOf) continue; // a tagged union: each `then` is closed
      objects++;
      expect(s.additionalProperties, at).toBe(false);
      expect(Array.isArray(s.required), at).toBe(true);
    }
    expect(objects).toBeGreaterThan(30);
  });

  it('has enums for ops, states, roles and kinds', () => {
    const defs = planSchema.$defs as Record<string, Schema>;
    expect(defs.PlanOp!.enum).toContain('fused_elementwise');
    expect(defs.ParamState!.enum).toEqual(['trainable', 'frozen', 'folded', 'merged', 'dropped', 'absent']);
    expect(defs.PlanParamRole!.enum).toContain('lora_A');
    const value = (defs.PlanValue!.properties as Record<string, Schema>).kind!;
    expect(value.enum).toEqual(['activation', 'param', 'input', 'const']);
    const transition = defs.PlanTransition!;
    expect((transition.properties as Record<string, Schema>).op!.enum).toEqual(['fold', 'merge', 'drop', 'freeze', 'unfreeze']);
    expect(opsInStep && rolesInStep).toBe(true);
  });

  it('accepts the complete sample (every optional field), each union member, and the minimal sample', () => {
    expect(validatePlan(complete)).toEqual({ ok: true, errors: [] });
    for (const v of variants) {
      const p = clone(complete);
      v(p);
      expect(validatePlan(p)).toEqual({ ok: true, errors: [] });
    }
    expect(validatePlan(minimal)).toEqual({ ok: true, errors: [] });
  });

  it('rejects a field the types do not have, anywhere', () => {
    const p = clone(complete) as unknown as { stages: { optimizer: Record<string, unknown>; memory: { buffers: Record<string, unknown>[] } }[] };
    p.stages[0]!.optimizer.extra = 1;
    p.stages[1]!.memory.buffers[0]!.size = 2;
    expect(validatePlan(p).errors).toEqual([
      "/stages/0/optimizer (stage s1): unknown property 'extra'",
      "/stages/1/memory/buffers/0 (stage s2, buffer b0): unknown property 'size'",
    ]);
  });
});

describe('scripts/gen-plan-schema.ts', () => {
  const types = readFileSync(TYPES_PATH, 'utf8');

  it('refuses a type it cannot translate, naming the line', () => {
    const broken = types.replace('export interface PlanValue {\n', 'export interface PlanValue {\n  when: Date | Map<string, number>;\n');
    expect(() => generatePlanSchema(broken)).toThrow(/types\.ts:\d+: the type reference `(Date|Map<string, number>)` has no translation/);
  });

  it('refuses a refinement whose path no longer exists', () => {
    const renamed = types.replace(/\btrainableParams: number;/, 'trainableTensors: number;');
    expect(renamed).not.toBe(types);
    expect(() => generatePlanSchema(renamed)).toThrow(/refinements for paths that no longer exist .*PlanStage\.estimates\.trainableParams/);
  });

  it('translates a new optional field with no further work', () => {
    const added = types.replace('export interface PlanBackwardStep {\n', 'export interface PlanBackwardStep {\n  /** Why. */\n  note?: string;\n');
    const def = (generatePlanSchema(added).$defs as Record<string, Schema>).PlanBackwardStep!;
    expect((def.properties as Record<string, Schema>).note).toEqual({ description: 'Why.', type: 'string' });
    expect(def.required).not.toContain('note');
  });
});
