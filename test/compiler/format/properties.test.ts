/**
 * Properties of the formatter on random valid pipelines (see arbitrary.ts):
 *  1. idempotence: format(format(x)) === format(x);
 *  2. the AST is unchanged modulo spans: parse(format(x)) equals parse(x) once spans are stripped;
 *  3. no comment is lost: the comments of format(x) are those of x, same texts, same order, so each text
 *     appears as many times;
 * and on arbitrary text and on mutated real pipelines: formatSource returns (never throws), and whatever it
 * does format satisfies 1-3 as well.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { commentText } from '../../../src/compiler/format/items.js';
import { parse } from '../../../src/compiler/1-parse/index.js';
import { Diagnostics } from '../../../src/compiler/diagnostics/diagnostic.js';
import { formatSource } from '../../../src/compiler/format/index.js';
import { stripSpans } from '../../../src/compiler/format/verify.js';
import { pipelineText } from './arbitrary.js';

/** `FMT_RUNS=5000` for a longer hunt. */
const RUNS = Number(process.env.FMT_RUNS) || 300;

function parseClean(text: string) {
  const diags = new Diagnostics();
  const r = parse('p.mcp', text, diags);
  return { file: r.file, errors: diags.items.filter((d) => d.severity === 'error').map((d) => `${d.span.start.line}:${d.span.start.column} ${d.message}`) };
}

function format(text: string): string {
  const r = formatSource('p.mcp', text);
  if (r.output === undefined) throw new Error(`not formatted: ${r.diagnostics.map((d) => d.message).join('; ')}\n${text}`);
  return r.output;
}

const occurrences = (hay: string, needle: string): number => {
  let n = 0;
  for (let i = hay.indexOf(needle); i >= 0; i = hay.indexOf(needle, i + 1)) n++;
  return n;
};

/** Checks 1-3 for a text that formats. */
function checkFormatted(input: string, out: string): void {
  expect(format(out)).toBe(out);
  const before = parseClean(input).file;
  const after = parseClean(out);
  expect(after.errors).toEqual([]);
  expect(stripSpans(after.file)).toEqual(stripSpans(before));
  // As printed: a line comment loses the spaces after it, nothing else.
  expect(after.file.comments.map((c) => c.text)).toEqual(before.comments.map(commentText));
  for (const c of before.comments) {
    expect(occurrences(out, commentText(c))).toBeGreaterThanOrEqual(before.comments.filter((d) => commentText(d) === commentText(c)).length);
  }
  expect(out.endsWith('\n') && !out.endsWith('\n\n')).toBe(true);
  expect(out.startsWith('\n')).toBe(false);
}

describe('formatter properties on random valid pipelines', () => {
  it('the generator makes pipelines the parser accepts', () => {
    fc.assert(
      fc.property(pipelineText, (x) => {
        expect(parseClean(x).errors, x).toEqual([]);
      }),
      { numRuns: RUNS },
    );
  });

  it('is idempotent', () => {
    fc.assert(
      fc.property(pipelineText, (x) => {
        const once = format(x);
        expect(format(once)).toBe(once);
      }),
      { numRuns: RUNS },
    );
  });

  it('keeps the AST (modulo spans)', () => {
    fc.assert(
      fc.property(pipelineText, (x) => {
        expect(stripSpans(parseClean(format(x)).file)).toEqual(stripSpans(parseClean(x).file));
      }),
      { numRuns: RUNS },
    );
  });

  it('keeps every comment, in order, as many times as written', () => {
    fc.assert(
      fc.property(pipelineText, (x) => {
        const out = format(x);
        // As printed: a line comment loses the spaces after it, nothing else.
        const comments = parseClean(x).file.comments.map(commentText);
        expect(parseClean(out).file.comments.map((c) => c.text)).toEqual(comments);
        for (const t of new Set(comments)) expect(occurrences(out, t)).toBeGreaterThanOrEqual(comments.filter((c) => c === t).length);
      }),
      { numRuns: RUNS },
    );
  });
});

const fixtures = fileURLToPath(new URL('./fixtures/', import.meta.url));
const realPipelines = readdirSync(fixtures).flatMap((d) =>
  ['input.mcp', 'expected.mcp'].flatMap((f) => {
    try {
      return [readFileSync(join(fixtures, d, f), 'utf8')];
    } catch {
      return [];
    }
  }),
);

const insertions = [
  '{', '}', ';', '\n', '\n\n', '\r\n', '\r', ' ', '//c\n', '// tail', '/* c */', '/*', '*/', '"', '"s"', '(', ')', '[', ']', ',', '.', '..', ':',
  '-', '=', '<', '%', '*', '0', '2e-4', '8GB', 'x', 'stage s {', 'then {', 'train a on b', 'lr 1', 'at layers[*].x', 'except y',
  'override', 'model m = f()', 'export peft "o"', 'pipeline q', '\uFEFF', 'é', '\t', '\u0000',
];
const mutation = fc.oneof(
  fc.record({ kind: fc.constant('delete' as const), at: fc.nat(), len: fc.integer({ min: 1, max: 12 }) }),
  fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), text: fc.constantFrom(...insertions) }),
  fc.record({ kind: fc.constant('copy' as const), at: fc.nat(), from: fc.nat(), len: fc.integer({ min: 1, max: 40 }) }),
  // Mutations that mostly keep the pipeline valid, so the formatter runs on odd but legal layouts.
  fc.record({ kind: fc.constant('at-space' as const), at: fc.nat(), text: fc.constantFrom('//c\n', '/* c */', '/*\n c */', '\n', '\n\n\n', ';', ' ', '\r\n//x\r\n') }),
  fc.record({ kind: fc.constant('copy-line' as const), at: fc.nat(), from: fc.nat() }),
);
type Mutation = typeof mutation extends fc.Arbitrary<infer M> ? M : never;

function mutate(text: string, ms: Mutation[]): string {
  let t = text;
  for (const m of ms) {
    const at = t.length ? m.at % (t.length + 1) : 0;
    if (m.kind === 'delete') t = t.slice(0, at) + t.slice(at + m.len);
    else if (m.kind === 'insert') t = t.slice(0, at) + m.text + t.slice(at);
    else if (m.kind === 'at-space') {
      const spaces = [...t.matchAll(/\s/g)].map((x) => x.index);
      const pos = spaces.length ? spaces[m.at % spaces.length] : 0;
      t = t.slice(0, pos) + m.text + t.slice(pos);
    } else if (m.kind === 'copy-line') {
      const lines = t.split('\n');
      lines.splice(m.at % (lines.length + 1), 0, lines[m.from % lines.length]);
      t = lines.join('\n');
    } else {
      const from = t.length ? m.from % t.length : 0;
      t = t.slice(0, at) + t.slice(from, from + m.len) + t.slice(at);
    }
  }
  return t;
}

describe('formatter robustness', () => {
  it('never throws on arbitrary text', () => {
    fc.assert(
      fc.property(fc.oneof(fc.string({ unit: 'binary', maxLength: 200 }), fc.string({ unit: fc.constantFrom(...insertions), maxLength: 60 }).map((s) => `pipeline p\n${s}`)), (x) => {
        const r = formatSource('p.mcp', x);
        expect(Array.isArray(r.diagnostics)).toBe(true);
        if (r.output !== undefined) checkFormatted(x, r.output);
      }),
      { numRuns: RUNS },
    );
  });

  it('never throws on mutated real pipelines, and formats correctly whatever still parses', () => {
    let formatted = 0;
    fc.assert(
      fc.property(fc.constantFrom(...realPipelines), fc.array(mutation, { minLength: 1, maxLength: 4 }), (base, ms) => {
        const x = mutate(base, ms);
        const r = formatSource('p.mcp', x);
        expect(Array.isArray(r.diagnostics)).toBe(true);
        if (r.output !== undefined) {
          formatted++;
          checkFormatted(x, r.output);
        } else expect(r.diagnostics.some((d) => d.severity === 'error')).toBe(true);
      }),
      { numRuns: RUNS },
    );
    // Enough mutants stay valid (comments, blank lines, duplicated items) for the second half to mean something.
    expect(formatted).toBeGreaterThan(RUNS / 10);
  });
});
