/**
 * Evaluates AST expressions against the schema tables: constructor calls become `{ctor, args}` with
 * defaults filled, settings become typed values. Problems are reported; the result then holds `undefined`
 * for the bad value so checking can go on.
 */
import type * as A from '../1-parse/ast.js';
import type { Diagnostics } from '../diagnostics/diagnostic.js';
import type { Span } from '../source.js';
import { didYouMean } from '../util/suggest.js';
import { constructors, findCtor, type CtorSpec, type Family, type ParamSpec, type ValueType } from './schema.js';

export type Warmup = { percent: number } | { steps: number };
export interface NameRef {
  ref: string;
  span: Span;
}
export interface PathValue {
  path: string;
  span: Span;
}
export interface CtorValue {
  ctor: string;
  args: Record<string, unknown>;
  /** Where each argument was written (absent for defaults). */
  spans: Record<string, Span>;
  span: Span;
}

export function describeExpr(e: A.Expr): string {
  switch (e.kind) {
    case 'number':
    case 'percent':
    case 'size':
      return e.text;
    case 'string':
      return JSON.stringify(e.value);
    case 'bool':
      return String(e.value);
    case 'list':
      return 'a list';
    case 'ref':
      return e.path.map((p) => p.name).join('.');
    case 'call':
      return `${e.callee.name}(...)`;
  }
}

function describeType(t: ValueType): string {
  switch (t.t) {
    case 'int':
      return t.min !== undefined && t.max !== undefined ? `a whole number from ${t.min} to ${t.max}` : t.min !== undefined ? `a whole number >= ${t.min}` : 'a whole number';
    case 'number':
      return t.min !== undefined && t.max !== undefined ? `a number from ${t.min} to ${t.max}` : t.min !== undefined ? `a number ${t.exclusiveMin ? '>' : '>='} ${t.min}` : 'a number';
    case 'bool':
      return '`true` or `false`';
    case 'string':
      return 'a string';
    case 'path':
      return 'a path string';
    case 'enum':
      return `one of ${t.values.map((v) => `\`${v}\``).join(', ')}`;
    case 'warmup':
      return 'a percentage (3%) or a whole number of steps';
    case 'fraction':
      return 'a percentage or a number from 0 to 1';
    case 'size':
      return 'a size such as 8GB or 512MiB';
    case 'ref':
      return `the name of a ${t.kind} declaration`;
    case 'ctor':
      return constructors[t.family].map((c) => `\`${c.name}\``).join(', ');
  }
}

/** `jsonl("x", "chat")`: when exactly one unnamed parameter is an enum holding the value, name it in a hint. */
function guessName(e: A.Expr, params: ParamSpec[]): string | undefined {
  const s = e.kind === 'string' ? e.value : e.kind === 'ref' && e.path.length === 1 ? e.path[0].name : undefined;
  const fits = params.filter((p) => p.type.t === 'enum' && s !== undefined && p.type.values.includes(s));
  return fits.length === 1 ? `write \`${fits[0].name}: ${describeExpr(e)}\`` : undefined;
}

const bareName = (e: A.Expr): string | undefined => (e.kind === 'ref' && e.path.length === 1 ? e.path[0].name : undefined);

export class Evaluator {
  constructor(private readonly diags: Diagnostics) {}

  /** Evaluate `e` as type `t`; `what` names the slot in messages (`\`r\` of lora`). */
  value(e: A.Expr, t: ValueType, what: string): unknown {
    const bad = (hint?: string): undefined => {
      if (e.kind === 'ref' && e.path[0]?.name === '') return undefined; // already a syntax error
      this.diags.report('invalid_value', e.span, `${what} must be ${describeType(t)}, found ${describeExpr(e)}`, hint ? { hint } : {});
      return undefined;
    };
    switch (t.t) {
      case 'int':
      case 'number': {
        if (e.kind !== 'number') return bad(e.kind === 'string' && e.value.trim() !== '' && Number.isFinite(Number(e.value)) ? `write the number without quotes: ${e.value.trim()}` : undefined);
        const v = e.value;
        if (!Number.isFinite(v)) return bad('write a finite number');
        // The nearest value the slot takes, as the hint of a number out of range or not whole.
        const near = (x: number) => Math.min(t.max ?? Infinity, Math.max(t.min ?? -Infinity, x));
        if (t.t === 'int' && !Number.isInteger(v)) return bad(`write a whole number, e.g. ${near(Math.round(v))}`);
        if (t.min !== undefined && (v < t.min || (t.t === 'number' && t.exclusiveMin && v === t.min))) return bad(t.t === 'number' && t.exclusiveMin ? `write a number above ${t.min}` : `the smallest value it takes is ${t.min}`);
        if (t.max !== undefined && v > t.max) return bad(`the largest value it takes is ${near(v)}`);
        return v;
      }
      case 'bool':
        return e.kind === 'bool' ? e.value : bad();
      case 'string':
        return e.kind === 'string' ? e.value : bad();
      case 'path':
        return e.kind === 'string' ? ({ path: e.value, span: e.span } satisfies PathValue) : bad('write paths as strings: "data/train.jsonl"');
      case 'enum': {
        const s = e.kind === 'string' ? e.value : bareName(e);
        if (s === undefined) return bad();
        if (!t.values.includes(s)) return bad(didYouMean(s, t.values));
        return s;
      }
      case 'warmup':
        if (e.kind === 'percent') return e.value >= 0 && Number.isFinite(e.value) ? ({ percent: e.value } satisfies Warmup) : bad('a share of the stage\'s steps, e.g. `3%`, or a number of steps');
        if (e.kind === 'number' && Number.isInteger(e.value) && e.value >= 0) return { steps: e.value } satisfies Warmup;
        return bad();
      case 'fraction':
        if (e.kind === 'percent' && e.value >= 0 && e.value <= 100) return e.value / 100;
        if (e.kind === 'number' && e.value >= 0 && e.value <= 1) return e.value;
        return bad('a share from 0 to 1, or a percentage such as `25%`');
      case 'size':
        return e.kind === 'size' && Number.isFinite(e.bytes) ? e.bytes : bad();
      case 'ref': {
        const n = bareName(e);
        return n !== undefined ? ({ ref: n, span: e.span } satisfies NameRef) : bad();
      }
      case 'ctor': {
        if (e.kind === 'call') return this.call(e, t.family, what);
        const n = bareName(e);
        if (n === undefined) return bad();
        return this.call({ kind: 'call', callee: { name: n, span: e.span }, args: [], span: e.span }, t.family, what);
      }
    }
  }

  /** Evaluate a constructor call of a family; undefined when the constructor is unknown. */
  call(c: A.CallExpr, family: Family, what: string): CtorValue | undefined {
    const spec = findCtor(family, c.callee.name);
    if (!spec) {
      if (c.callee.name === '') return undefined;
      const names = constructors[family].map((x) => x.name);
      this.diags.report('unknown_constructor', c.callee.span, `${what}: \`${c.callee.name}\` is not ${/^[aeiou]/.test(family) ? 'an' : 'a'} ${family} constructor`, {
        hint: didYouMean(c.callee.name, names) ?? `${family} constructors: ${names.join(', ')}`,
      });
      return undefined;
    }
    return this.args(c, spec);
  }

  private args(c: A.CallExpr, spec: CtorSpec): CtorValue {
    const out: CtorValue = { ctor: spec.name, args: {}, spans: {}, span: c.span };
    const given = new Map<string, A.Arg>();
    let positional = 0;
    let extraReported = false;
    for (const a of c.args) {
      let param: ParamSpec | undefined;
      if (a.name) {
        param = spec.params.find((p) => p.name === a.name!.name);
        if (!param) {
          const names = spec.params.map((p) => p.name);
          this.diags.report('unknown_argument', a.name.span, `\`${spec.name}\` has no argument \`${a.name.name}\``, {
            hint: didYouMean(a.name.name, names) ?? (names.length ? `its arguments: ${names.join(', ')}` : `\`${spec.name}\` takes no arguments`),
          });
          continue;
        }
      } else {
        param = spec.params.find((p) => p.positional === positional);
        positional++;
        if (!param) {
          // One report per call: `lora(16, 32)` is one mistake, not two.
          if (extraReported) continue;
          extraReported = true;
          const pos = spec.params.filter((p) => p.positional !== undefined);
          const named = spec.params.filter((p) => p.positional === undefined && !c.args.some((x) => x.name?.name === p.name));
          this.diags.report('too_many_arguments', a.span,
            pos.length === 0 ? `\`${spec.name}\` takes only named arguments` : `\`${spec.name}\` takes ${pos.length === 1 ? 'one argument' : `${pos.length} arguments`} without a name (${pos.map((p) => p.name).join(', ')}); name the others`,
            { hint: !spec.params.length ? `\`${spec.name}\` takes no arguments` : guessName(a.value, named) ?? (named.length ? `its named arguments: ${named.map((p) => `${p.name}: ...`).join(', ')}` : undefined) },
          );
          continue;
        }
      }
      const prev = given.get(param.name);
      if (prev) {
        this.diags.report('duplicate_argument', a.span, `\`${param.name}\` is given twice`, { notes: [{ message: 'first given here', span: prev.span }], hint: 'keep one of them' });
        continue;
      }
      given.set(param.name, a);
      const v = this.value(a.value, param.type, `\`${param.name}\` of ${spec.name}`);
      if (v !== undefined) {
        out.args[param.name] = v;
        out.spans[param.name] = a.value.span;
      }
    }
    for (const param of spec.params) {
      if (given.has(param.name)) continue;
      if (param.required) {
        this.diags.report('missing_argument', c.span, `\`${spec.name}\` needs \`${param.name}\` (${param.doc})`, {
          hint: param.positional === 0 ? `write ${spec.name}(<${param.name}>)` : `add \`${param.name}: ...\``,
        });
      } else if (param.default !== undefined) out.args[param.name] = param.default;
    }
    return out;
  }
}
