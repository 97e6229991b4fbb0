/**
 * The formatter against fixture folders `fixtures/<case>/{input.mcp,expected.mcp}`: each input formats to its
 * expected text, and each expected text is a fixed point. `UPDATE_SNAPSHOTS=1 npx vitest run
 * test/compiler/format` rewrites the expected files (review the diff before committing).
 */
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { parse } from '../../../src/compiler/1-parse/index.js';
import { Diagnostics } from '../../../src/compiler/diagnostics/diagnostic.js';
import { formatSource } from '../../../src/compiler/format/index.js';
import { stripSpans } from '../../../src/compiler/format/verify.js';

const fixtures = fileURLToPath(new URL('./fixtures/', import.meta.url));
const update = process.env.UPDATE_SNAPSHOTS === '1';
const cases = readdirSync(fixtures)
  .filter((d) => statSync(join(fixtures, d)).isDirectory())
  .sort();

function fmt(text: string, path = 'test.mcp'): string {
  const r = formatSource(path, text);
  expect(r.diagnostics.filter((d) => d.severity === 'error').map((d) => `${d.span.start.line}:${d.span.start.column} ${d.message}`)).toEqual([]);
  expect(r.output).toBeTypeOf('string');
  return r.output!;
}

const parsed = (text: string) => parse('test.mcp', text, new Diagnostics()).file;

describe('formatter fixtures', () => {
  it('has at least 8 cases', () => {
    expect(cases.length).toBeGreaterThanOrEqual(8);
  });

  describe.each(cases)('%s', (name) => {
    const dir = join(fixtures, name);
    const input = readFileSync(join(dir, 'input.mcp'), 'utf8');
    const expectedPath = join(dir, 'expected.mcp');

    it('formats input.mcp to expected.mcp', () => {
      const out = fmt(input, `${name}/input.mcp`);
      if (update || !existsSync(expectedPath)) writeFileSync(expectedPath, out);
      expect(out).toBe(readFileSync(expectedPath, 'utf8'));
    });

    it('leaves expected.mcp unchanged', () => {
      const expected = readFileSync(expectedPath, 'utf8');
      expect(fmt(expected, `${name}/expected.mcp`)).toBe(expected);
    });

    it('keeps the AST and every comment', () => {
      const out = fmt(input);
      expect(stripSpans(parsed(out))).toEqual(stripSpans(parsed(input)));
      expect(parsed(out).comments.map((c) => c.text)).toEqual(parsed(input).comments.map((c) => c.text));
    });
  });
});

describe('formatSource', () => {
  it('returns diagnostics and no output for a file with syntax errors', () => {
    const r = formatSource('bad.mcp', 'pipeline p\nstage s { lr }\n');
    expect(r.output).toBeUndefined();
    expect(r.diagnostics.some((d) => d.severity === 'error')).toBe(true);
  });

  it('does not format a file without a header, an unterminated comment or string, or an empty file', () => {
    for (const text of ['model base = builtin("x")\n', 'pipeline p /* open', 'pipeline p extends "x\n', '', '   \n']) {
      const r = formatSource('bad.mcp', text);
      expect(r.output, JSON.stringify(text)).toBeUndefined();
      expect(r.diagnostics.length).toBeGreaterThan(0);
    }
  });

  it('drops the spaces after a line comment (own-line, trailing and dangling), keeping block comments verbatim', () => {
    const out = fmt('pipeline p   \n// own line   \nmodel base = builtin("qwen2-micro") // trailing \t \n/* block   \n   kept   */\n// last  \n');
    expect(out).toBe('pipeline p\n\n// own line\nmodel base = builtin("qwen2-micro") // trailing\n/* block   \n   kept   */\n// last\n');
    expect(out.split('\n').filter((l) => /[ \t]$/.test(l) && !l.includes('block') && !l.includes('kept'))).toEqual([]);
    expect(fmt(out)).toBe(out);
  });

  it('prints a header-only file as one line', () => {
    expect(fmt('pipeline p')).toBe('pipeline p\n');
    expect(fmt('\n\n  pipeline   p   extends   "b.mcp"  \n\n\n')).toBe('pipeline p extends "b.mcp"\n');
  });

  it('ends with exactly one newline and uses LF for CRLF input', () => {
    const out = fmt('pipeline p\r\n\r\n\r\nmodel base = builtin("x")\r\n// c\r\n\r\n');
    expect(out).toBe('pipeline p\n\nmodel base = builtin("x")\n// c\n');
  });

  it('separates statements that shared a line and drops semicolons', () => {
    expect(fmt('pipeline p; stage s { lr 1; epochs 2 batch 3 };')).toBe('pipeline p\n\nstage s {\n  lr 1\n  epochs 2\n  batch 3\n}\n');
  });

  it('keeps `constrain f` and `constrain f()` as written, dotted names included', () => {
    const out = fmt('pipeline p\nstage s { constrain orth constrain orth() constrain a.b weight 2 }');
    expect(out).toBe('pipeline p\n\nstage s {\n  constrain orth\n  constrain orth()\n  constrain a.b weight 2\n}\n');
  });

  it('re-escapes strings so they read back to the same value', () => {
    const out = fmt('pipeline p\nmodel m = hf("a\\"b\\\\c\\td\\ne\\rf\\qg")');
    expect(out).toBe('pipeline p\n\nmodel m = hf("a\\"b\\\\c\\td\\ne\\rfqg")\n');
  });

  it('prints comments next to the `{` and `}` of an empty block', () => {
    expect(fmt('pipeline p\nstage s { /* a */ }')).toBe('pipeline p\n\nstage s { /* a */\n}\n');
    expect(fmt('pipeline p\nstage s {\n// a\n}')).toBe('pipeline p\n\nstage s {\n  // a\n}\n');
    expect(fmt('pipeline p\nstage s { then { } // t\n}')).toBe('pipeline p\n\nstage s {\n  then {} // t\n}\n');
  });

  it('never throws on odd values', () => {
    for (const text of ['\u0000', '\uFEFFpipeline p', 'pipeline p\n' + '['.repeat(200), 'pipeline p\n' + 'x 1\n'.repeat(5), '"'.repeat(10), '/*/']) {
      expect(() => formatSource('odd.mcp', text)).not.toThrow();
    }
  });
});
