import { mkdtempSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { Diagnostics } from '../../src/compiler/diagnostics/diagnostic.js';
import { globToRegExp, loadProject, projectPipelines } from '../../src/cli/project.js';

function project(yaml: string) {
  const dir = mkdtempSync(join(tmpdir(), 'mcpc-proj-'));
  writeFileSync(join(dir, 'mcpc.yaml'), yaml);
  const diags = new Diagnostics();
  const cfg = loadProject(dir, diags);
  return { dir, cfg, diags: diags.items.map((d) => `${d.code} ${d.span.start.line}:${d.span.start.column} ${d.message}${d.hint ? ` (${d.hint})` : ''}`) };
}

describe('mcpc.yaml', () => {
  it('reads every key', () => {
    const { cfg, diags } = project('pipeline: p/a.mcp\npipelines: [p/*.mcp]\nexclude: p/broken\nout: build\nbackend: cpu\nallow_outside_root: true\nlint:\n  max_warnings: 3\n  rules:\n    data_never_used: off\n    lr_out_of_range: warning\n');
    expect(diags).toEqual([]);
    expect(cfg).toMatchObject({ pipeline: 'p/a.mcp', pipelines: ['p/*.mcp'], exclude: ['p/broken'], out: 'build', backend: 'cpu', allowOutsideRoot: true, lint: { maxWarnings: 3, rules: { data_never_used: 'off', lr_out_of_range: 'warning' } } });
  });

  it('rejects unknown keys with the line and a suggestion', () => {
    expect(project('pipeline: a.mcp\nbackedn: cpu\n').diags).toEqual(['project_file_invalid 2:1 unknown key `backedn` (did you mean `backend`?)']);
    expect(project('lint:\n  max_warning: 1\n').diags).toEqual(['project_file_invalid 2:3 unknown key `lint.max_warning` (did you mean `max_warnings`?)']);
  });

  it('rejects custom tags', () => {
    const { diags } = project('pipeline: !!js/function "x"\n');
    expect(diags.length).toBeGreaterThan(0);
    expect(diags[0]).toMatch(/^project_file_invalid 1:/);
  });

  it('rejects duplicate keys', () => {
    expect(project('out: a\nout: b\n').diags[0]).toMatch(/^project_file_invalid 2:1 .*[Mm]ap keys must be unique/);
  });

  it('rejects wrong types and values, and errors that cannot be downgraded', () => {
    const { diags } = project('backend: gpu\nallow_outside_root: yes\nlint:\n  max_warnings: -1\n  rules:\n    unknown_name: off\n    no_such_rule: off\n    data_never_used: loud\n');
    expect(diags).toEqual([
      'project_file_invalid 1:10 `backend` must be one of auto, webgpu, cpu, wasm, tensorflow',
      'project_file_invalid 2:21 `allow_outside_root` must be true or false',
      'project_file_invalid 4:17 `max_warnings` must be a whole number, 0 or more',
      'project_file_invalid 6:5 `unknown_name` is an error, not a lint rule; its level cannot be changed',
      expect.stringMatching(/^project_file_invalid 7:5 unknown rule `no_such_rule`/),
      'project_file_invalid 8:22 a rule level is `error`, `warning` or `off`',
    ]);
  });

  it('does not let __proto__ reach the config object', () => {
    const { cfg, diags } = project('__proto__:\n  polluted: true\n');
    expect(diags[0]).toMatch(/unknown key `__proto__`/);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    expect((cfg as unknown as Record<string, unknown>).polluted).toBeUndefined();
  });

  it('expands pipeline globs and exclusions', () => {
    const { dir } = project('pipelines: ["pipes/**/*.mcp"]\nexclude: [pipes/broken]\n');
    mkdirSync(join(dir, 'pipes/broken'), { recursive: true });
    mkdirSync(join(dir, 'pipes/sub'), { recursive: true });
    for (const f of ['pipes/a.mcp', 'pipes/sub/b.mcp', 'pipes/broken/c.mcp', 'pipes/notes.txt']) writeFileSync(join(dir, f), '');
    const cfg = loadProject(dir, new Diagnostics());
    expect(projectPipelines(cfg)).toEqual(['pipes/a.mcp', 'pipes/sub/b.mcp']);
  });

  it('turns globs into anchored patterns', () => {
    expect(globToRegExp('a/*.mcp').test('a/x.mcp')).toBe(true);
    expect(globToRegExp('a/*.mcp').test('a/b/x.mcp')).toBe(false);
    expect(globToRegExp('a/**/*.mcp').test('a/x.mcp')).toBe(true);
    expect(globToRegExp('a/**/*.mcp').test('a/b/c/x.mcp')).toBe(true);
    expect(globToRegExp('examples/broken').test('examples/broken/x.mcp')).toBe(true);
    expect(globToRegExp('examples/broken').test('examples/brokenx.mcp')).toBe(false);
  });
});
