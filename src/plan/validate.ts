/**
 * Validates a document against the plan schema (schema.json beside this file, generated from types.ts by
 * `npm run schema`). The runtime validates every plan it reads; the compiler's tests validate every plan it
 * writes. Errors name the place in the plan by JSON pointer and by the names found on the way
 * (`/stages/1/forward/3/op (stage align, node L0.q)`), one line each.
 */
import { readFileSync } from 'node:fs';
import Ajv2020Module, { type ErrorObject, type ValidateFunction } from 'ajv/dist/2020.js';
import type { Plan } from './types.js';

export interface PlanValidation {
  ok: boolean;
  /** One line per problem: `<pointer> (<names>): <message>`. Empty when ok. */
  errors: string[];
}

/** The plan schema (draft 2020-12) as an object. */
export const planSchema: Record<string, unknown> = JSON.parse(readFileSync(new URL('./schema.json', import.meta.url), 'utf8'));

// ajv is CommonJS: under NodeNext its default export arrives as the module object.
const Ajv2020 = ((Ajv2020Module as unknown as { default?: unknown }).default ?? Ajv2020Module) as unknown as typeof Ajv2020Module.default;

let compiled: ValidateFunction | undefined;
function validator(): ValidateFunction {
  compiled ??= new Ajv2020({ allErrors: true, strict: true, strictTypes: false }).compile(planSchema);
  return compiled;
}

/** Whether `x` is a well-formed plan of this version; `errors` says what is wrong where. */
export function validatePlan(x: unknown): PlanValidation {
  const validate = validator();
  if (validate(x)) return { ok: true, errors: [] };
  return { ok: false, errors: describeErrors(validate.errors ?? [], x) };
}

/** Type guard form of `validatePlan`. */
export function isPlan(x: unknown): x is Plan {
  return validatePlan(x).ok;
}

/** Validate or throw one Error listing every problem (for readers of plan files). */
export function assertPlan(x: unknown, what = 'plan'): asserts x is Plan {
  const { ok, errors } = validatePlan(x);
  if (!ok) throw new Error(`${what} is not a valid mcpc plan:\n${errors.map((e) => `  ${e}`).join('\n')}`);
}

function describeErrors(errors: ErrorObject[], data: unknown): string[] {
  const lines: string[] = [];
  for (const e of errors) {
    // `if`/`then` and `oneOf` failures restate the errors reported inside them.
    if (e.keyword === 'if' || e.keyword === 'oneOf' || e.keyword === 'anyOf') continue;
    const line = `${e.instancePath || '/'}${names(e.instancePath, data)}: ${message(e)}`;
    if (!lines.includes(line)) lines.push(line);
  }
  return lines;
}

function message(e: ErrorObject): string {
  const p = e.params as Record<string, unknown>;
  switch (e.keyword) {
    case 'additionalProperties':
      return `unknown property '${String(p.additionalProperty)}'`;
    case 'required':
      return `missing required property '${String(p.missingProperty)}'`;
    case 'enum':
      return `must be one of ${(p.allowedValues as unknown[]).map((v) => JSON.stringify(v)).join(', ')}`;
    case 'const':
      return `must be ${JSON.stringify(p.allowedValue)}`;
    default:
      return e.message ?? e.keyword;
  }
}

/** The names of the named things on the way to `pointer`: ` (stage align, node L0.q)`. */
function names(pointer: string, data: unknown): string {
  const found: string[] = [];
  let at: unknown = data;
  let parentKey = '';
  for (const raw of pointer.split('/').slice(1)) {
    const key = raw.replace(/~1/g, '/').replace(/~0/g, '~');
    if (at === null || typeof at !== 'object') break;
    at = (at as Record<string, unknown>)[key];
    if (Array.isArray((at as unknown) ?? null)) parentKey = key;
    else if (/^\d+$/.test(key) && at && typeof at === 'object') {
      const o = at as Record<string, unknown>;
      const label = ['name', 'id', 'node', 'adapter'].map((k) => o[k]).find((v) => typeof v === 'string');
      if (label !== undefined) found.push(`${singular(parentKey)} ${label as string}`);
    }
  }
  return found.length ? ` (${found.join(', ')})` : '';
}

function singular(key: string): string {
  const words: Record<string, string> = { stages: 'stage', forward: 'node', backward: 'node', parameters: 'parameter', kernels: 'kernel', values: 'value', adapters: 'adapter', buffers: 'buffer', passes: 'pass', entry: 'adapter', exit: 'adapter' };
  return words[key] ?? key;
}
