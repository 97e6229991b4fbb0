import { describe, expect, it } from 'vitest';
import { renderJson } from '../../../src/cli/report/json.js';
import { SourceFile } from '../../../src/compiler/source.js';
import { diag, fixture, spanOf } from './helpers.js';

const x = fixture('x.mcp', 'pipelines/x.mcp');

const useAfterDrop = diag('use_after_drop', spanOf(x, 'noise', 3), 'adapter `noise` is used after it was dropped', {
  hint: 'remove the use, or drop the adapter later',
  notes: [{ message: 'dropped here', span: spanOf(x, 'drop noise') }, { message: 'a note without a span' }],
});
const neverUsed = diag('data_never_used', spanOf(x, 'mixed'), 'data `mixed` is never used', { severity: 'warning' });

describe('renderJson', () => {
  it('writes an empty array for no diagnostics', () => {
    expect(renderJson([])).toBe('[]\n');
  });

  it('writes one object per diagnostic with position, severity, code, message, hint and notes', () => {
    const out = renderJson([useAfterDrop, neverUsed]);
    expect(JSON.parse(out)).toEqual([
      {
        file: 'pipelines/x.mcp',
        line: 12,
        column: 9,
        endLine: 12,
        endColumn: 14,
        severity: 'error',
        code: 'use_after_drop',
        message: 'adapter `noise` is used after it was dropped',
        hint: 'remove the use, or drop the adapter later',
        notes: [
          { message: 'dropped here', file: 'pipelines/x.mcp', line: 9, column: 10, endLine: 9, endColumn: 20 },
          { message: 'a note without a span' },
        ],
      },
      {
        file: 'pipelines/x.mcp',
        line: 5,
        column: 6,
        endLine: 5,
        endColumn: 11,
        severity: 'warning',
        code: 'data_never_used',
        message: 'data `mixed` is never used',
        notes: [],
      },
    ]);
  });

  it('omits `hint` when there is none and keeps the documented key order', () => {
    const [obj] = JSON.parse(renderJson([neverUsed]));
    expect('hint' in obj).toBe(false);
    expect(Object.keys(obj)).toEqual(['file', 'line', 'column', 'endLine', 'endColumn', 'severity', 'code', 'message', 'notes']);
  });

  it('is pretty-printed with two spaces and ends in a newline', () => {
    const out = renderJson([neverUsed]);
    expect(out.endsWith('}\n]\n')).toBe(true);
    expect(out.split('\n')[1]).toBe('  {');
    expect(out.split('\n')[2]).toBe('    "file": "pipelines/x.mcp",');
  });

  it('reports empty and multi-line spans with exclusive ends', () => {
    const eof = diag('unexpected_end', x.span(x.text.length, x.text.length), 'eof');
    const multi = diag('unknown_name', x.span(x.text.indexOf('stage main'), x.text.indexOf('mixed\n}') + 5), 'm');
    const [a, b] = JSON.parse(renderJson([eof, multi]));
    expect([a.line, a.column, a.endLine, a.endColumn]).toEqual([14, 1, 14, 1]);
    expect([b.line, b.column, b.endLine, b.endColumn]).toEqual([11, 1, 12, 23]);
  });

  it('counts columns in UTF-16 code units', () => {
    const src = new SourceFile('u.mcp', 'data "😀" x\n');
    const [obj] = JSON.parse(renderJson([diag('unexpected_token', spanOf(src, 'x'), 'x')]));
    expect([obj.column, obj.endColumn]).toEqual([11, 12]);
  });

  it('keeps paths as given without a root', () => {
    const abs = diag('unknown_name', { ...spanOf(x, 'base'), file: '/proj/pipelines/x.mcp' }, 'x');
    const [obj] = JSON.parse(renderJson([abs]));
    expect(obj.file).toBe('/proj/pipelines/x.mcp');
  });

  it('makes paths relative to the root, with forward slashes; files outside it stay absolute', () => {
    const span = spanOf(x, 'base');
    const ds = [
      diag('unknown_name', { ...span, file: '/proj/pipelines/a.mcp' }, 'absolute inside'),
      diag('unknown_name', { ...span, file: 'pipelines/b.mcp' }, 'relative to the cwd'),
      diag('unknown_name', { ...span, file: '../../other/c.mcp' }, 'relative, outside', {
        notes: [{ message: 'n', span: { ...span, file: '/proj/mcpc.yaml' } }],
      }),
      diag('unknown_name', { ...span, file: '/elsewhere/d.mcp' }, 'absolute, outside'),
    ];
    const out = JSON.parse(renderJson(ds, { root: '/proj', cwd: '/proj/sub' }));
    expect(out.map((o: { file: string }) => o.file)).toEqual(['pipelines/a.mcp', 'sub/pipelines/b.mcp', '/other/c.mcp', '/elsewhere/d.mcp']);
    expect(out[2].notes[0].file).toBe('mcpc.yaml');
  });

  it('does not treat a sibling directory sharing the root as a prefix as inside it', () => {
    const [obj] = JSON.parse(renderJson([diag('unknown_name', { ...spanOf(x, 'base'), file: '/project-b/x.mcp' }, 'x')], { root: '/project', cwd: '/' }));
    expect(obj.file).toBe('/project-b/x.mcp');
  });
});
