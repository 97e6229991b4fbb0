import { mkdtempSync, writeFileSync, mkdirSync, symlinkSync } from 'node:fs';
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
      'project_file_invalid 1:10 `backend` must be one of auto, webgpu, cpu, wasm, tensorflow (did you mean `webgpu`?)',
      'project_file_invalid 2:21 `allow_outside_root` must be true or false (write `true` or `false`: yes, no, on and off are strings in mcpc.yaml)',
      'project_file_invalid 4:17 `max_warnings` must be a whole number, 0 or more (e.g. `max_warnings: 0` to fail on any warning; leave it out for no limit)',
      'project_file_invalid 6:5 `unknown_name` is an error, not a lint rule; its level cannot be changed (remove the line: only lint rules take a level; docs/reference.md lists them)',
      'project_file_invalid 7:5 unknown rule `no_such_rule` (docs/reference.md lists the lint rules)',
      'project_file_invalid 8:22 a rule level is `error`, `warning` or `off` (e.g. `data_never_used: off`)',
    ]);
  });

  it('gives every problem of the project file a hint, and names a key that is not a name', () => {
    const cases = [
      'pipeline: [a, b]\n',
      'pipelines: {a: 1}\n',
      'pipelines: [1]\n',
      'out: 3\n',
      'memory: lots\n',
      'lint: 3\n',
      'lint:\n  rules: [a]\n',
      'lint:\n  rules:\n    data_never_used: of\n',
      '- a\n',
      'out: a\n\tbackend: cpu\n',
      'out: [a\n',
      'a: 1\n---\nb: 2\n',
    ];
    for (const yaml of cases) {
      const { diags } = project(yaml);
      expect(diags.length, yaml).toBeGreaterThan(0);
      for (const d of diags) expect(d, yaml).toMatch(/^project_file_invalid \d+:\d+ .+ \(.+\)$/);
    }
    expect(project('lint:\n  rules:\n    data_never_used: of\n').diags).toEqual(['project_file_invalid 3:22 a rule level is `error`, `warning` or `off` (did you mean `off`?)']);
    expect(project('[a, b]: 1\n').diags).toEqual(['project_file_invalid 1:1 a key of mcpc.yaml must be a plain name, not a list or a mapping (known keys: pipeline, pipelines, exclude, out, backend, allow_outside_root, memory, lint)']);
    expect(project('lint:\n  {a: 1}: 2\n').diags[0]).toMatch(/^project_file_invalid 2:3 a key of `lint` must be a plain name/);
  });

  it('says what to do when --project cannot be read', () => {
    const dir = mkdtempSync(join(tmpdir(), 'mcpc-proj-'));
    const diags = new Diagnostics();
    loadProject(dir, diags, 'nope.yaml');
    expect(diags.items).toHaveLength(1);
    expect(diags.items[0]).toMatchObject({ code: 'unreadable_file', message: 'cannot read nope.yaml: it does not exist' });
    expect(diags.items[0]!.hint).toMatch(/check the --project path/);
    const folder = new Diagnostics();
    loadProject(dir, folder, '.');
    expect(folder.items[0]).toMatchObject({ code: 'unreadable_file', hint: 'give --project the mcpc.yaml file inside that folder' });
  });

  it('searches a folder reached twice through links once, and a loop of links ends', () => {
    const { dir } = project('pipelines: ["**/*.mcp"]\n');
    mkdirSync(join(dir, 'p'));
    writeFileSync(join(dir, 'p/a.mcp'), '');
    symlinkSync('..', join(dir, 'p/up'));
    symlinkSync('self', join(dir, 'p/self'));
    symlinkSync('nowhere.mcp', join(dir, 'p/gone.mcp'));
    symlinkSync('nowhere', join(dir, 'p/dangling'));
    const cfg = loadProject(dir, new Diagnostics());
    expect(projectPipelines(cfg)).toEqual(['p/a.mcp', 'p/gone.mcp']);
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
