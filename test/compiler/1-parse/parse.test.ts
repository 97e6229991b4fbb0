import { readdirSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from '../../../src/compiler/1-parse/index.js';
import { Diagnostics } from '../../../src/compiler/diagnostics/diagnostic.js';

const fixtures = new URL('./fixtures/', import.meta.url).pathname;

/** The AST with spans shortened to "line:col-line:col", so fixtures stay readable. */
function compact(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(compact);
  if (v && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    if ('start' in o && 'end' in o && 'file' in o) {
      const s = o.start as { line: number; column: number };
      const e = o.end as { line: number; column: number };
      return `${s.line}:${s.column}-${e.line}:${e.column}`;
    }
    return Object.fromEntries(Object.entries(o).filter(([k]) => k !== 'path').map(([k, x]) => [k, compact(x)]));
  }
  return v;
}

describe('parser fixtures (UPDATE_SNAPSHOTS=1 rewrites ast.json)', () => {
  for (const name of readdirSync(fixtures).sort()) {
    it(name, () => {
      const text = readFileSync(join(fixtures, name, 'input.mcp'), 'utf8');
      const diags = new Diagnostics();
      const res = parse('input.mcp', text, diags);
      const actual = JSON.stringify({ diagnostics: diags.items.map((d) => `${d.code} ${d.span.start.line}:${d.span.start.column} ${d.message}`), ast: compact(res.file) }, null, 1) + '\n';
      const expectedPath = join(fixtures, name, 'ast.json');
      if (process.env.UPDATE_SNAPSHOTS || !existsSync(expectedPath)) writeFileSync(expectedPath, actual);
      expect(actual).toBe(readFileSync(expectedPath, 'utf8'));
    });
  }
});

describe('error recovery', () => {
  it('reports three independent syntax errors as three diagnostics', () => {
    const text = [
      'pipeline p',
      'model base = hf("models/tiny-med-base"', // missing )
      'adapter a = lora(r: 16 alpha: 32) at layers[*].attn.q', // missing comma
      'stage s {',
      '  train a on ;', // missing data name
      '  lr 2e-4',
      '}',
      'export peft "out/x"',
    ].join('\n');
    const diags = new Diagnostics();
    parse('x.mcp', text, diags);
    expect(diags.items.map((d) => [d.code, d.span.start.line])).toEqual([
      ['unexpected_token', 3],
      ['unexpected_token', 3],
      ['unexpected_token', 5],
    ]);
    expect(diags.items[0].message).toBe("expected ')' but found 'adapter'");
  });

  it('keeps the statements around a broken one', () => {
    const diags = new Diagnostics();
    const res = parse('x.mcp', 'pipeline p\ndata a = jsonl("a.jsonl")\nadapter = lora()\ndata b = jsonl("b.jsonl")\n', diags);
    expect(diags.items).toHaveLength(1);
    const names = res.file.items.filter((i) => i.kind === 'decl').map((i) => (i.kind === 'decl' ? i.name.name : ''));
    expect(names).toContain('a');
    expect(names).toContain('b');
  });

  it('refuses nesting deeper than the limit without recursing', () => {
    const diags = new Diagnostics();
    const res = parse('x.mcp', `pipeline p\nmodel m = f(${'['.repeat(100_000)}`, diags);
    expect(res.parsed).toBe(false);
    expect(diags.items.map((d) => d.code)).toEqual(['nesting_too_deep']);
  });

  it('reports an unterminated string once and parses on', () => {
    const diags = new Diagnostics();
    parse('x.mcp', 'pipeline p\ndata a = jsonl("a.jsonl)\ndata b = jsonl("b.jsonl")\n', diags);
    // The string swallowed the `)`: the parser's complaint about it is a consequence, not a second mistake.
    expect(diags.items.map((d) => d.code)).toEqual(['unterminated_string']);
  });

  it('asks for the header', () => {
    const diags = new Diagnostics();
    parse('x.mcp', 'model m = builtin("qwen2-micro")\n', diags);
    expect(diags.items.map((d) => d.code)).toEqual(['missing_pipeline_header']);
  });

  it('says a keyword cannot be a name', () => {
    const diags = new Diagnostics();
    parse('x.mcp', 'pipeline p\nstage train { }\n', diags);
    expect(diags.items[0].message).toContain("the keyword 'train'");
  });
});
