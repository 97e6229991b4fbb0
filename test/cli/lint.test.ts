import { mkdtempSync, mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { main } from '../../src/cli/main.js';
import { mcpcIn, memoryIO } from '../support/memory-io.js';

const repo = new URL('../..', import.meta.url).pathname;

/** A throwaway project: mcpc.yaml plus files. */
function project(files: Record<string, string>): string {
  const dir = mkdtempSync(join(tmpdir(), 'mcpc-lint-'));
  for (const [name, text] of Object.entries(files)) {
    mkdirSync(join(dir, name, '..'), { recursive: true });
    writeFileSync(join(dir, name), text);
  }
  return dir;
}

const clean = 'pipeline p\nmodel base = builtin("qwen2-micro")\ndata d = text("d.txt")\nadapter a = lora(r: 4) at layers[*].attn.q\nstage s {\n  train a on d\n}\nexport peft "out/a"\n';
const unusedData = clean.replace('data d = text("d.txt")', 'data d = text("d.txt")\ndata extra = text("d.txt")');
const broken = clean.replace('train a on d', 'train a on d\n  then { drop a }\n}\nstage t {\n  train a on d');

const lint = (cwd: string, ...args: string[]) => mcpcIn(cwd, ['lint', ...args]);

describe('mcpc lint', () => {
  it('exits 0 on a clean pipeline and prints "no problems"', async () => {
    const dir = project({ 'mcpc.yaml': 'pipelines: [p.mcp]\n', 'p.mcp': clean, 'd.txt': 'x' });
    const r = await lint(dir, 'p.mcp');
    expect(r).toMatchObject({ code: 0 });
    expect(r.out).toContain('no problems');
  });

  it('exits 1 on errors, with a code frame, the hint and the related note', async () => {
    const dir = project({ 'mcpc.yaml': '', 'p.mcp': broken, 'd.txt': 'x' });
    const r = await lint(dir, 'p.mcp');
    expect(r.code).toBe(1);
    expect(r.out).toContain('error[use_after_drop]: adapter `a` is trained after it was dropped');
    expect(r.out).toContain('--> p.mcp:10:9');
    expect(r.out).toContain('error[unreachable_export]'); // the export of the dropped adapter
    expect(r.out).toContain('note: dropped here');
    expect(r.out).not.toMatch(/\x1b\[/); // not a TTY: no colour
  });

  it('lints the project pipelines when given no files', async () => {
    const dir = project({ 'mcpc.yaml': 'pipelines: ["ok/*.mcp"]\n', 'ok/p.mcp': clean, 'bad/q.mcp': broken, 'd.txt': 'x' });
    expect((await lint(dir)).code).toBe(0);
    const sub = join(dir, 'ok');
    expect((await lint(sub)).code).toBe(0); // mcpc.yaml is found in a parent folder
  });

  it('counts warnings against --max-warnings and lint.max_warnings', async () => {
    const dir = project({ 'mcpc.yaml': '', 'p.mcp': unusedData, 'd.txt': 'x' });
    expect((await lint(dir, 'p.mcp')).code).toBe(0);
    expect((await lint(dir, 'p.mcp', '--max-warnings', '0')).code).toBe(1);
    expect((await lint(dir, 'p.mcp', '--max-warnings', '1')).code).toBe(0);
    const strict = project({ 'mcpc.yaml': 'lint:\n  max_warnings: 0\n', 'p.mcp': unusedData, 'd.txt': 'x' });
    expect((await lint(strict, 'p.mcp')).code).toBe(1);
    const off = project({ 'mcpc.yaml': 'lint:\n  max_warnings: 0\n  rules:\n    data_never_used: off\n', 'p.mcp': unusedData, 'd.txt': 'x' });
    expect((await lint(off, 'p.mcp')).code).toBe(0);
    const raised = project({ 'mcpc.yaml': 'lint:\n  rules:\n    data_never_used: error\n', 'p.mcp': unusedData, 'd.txt': 'x' });
    const r = await lint(raised, 'p.mcp');
    expect(r.code).toBe(1);
    expect(r.out).toContain('error[data_never_used]');
  });

  it('prints JSON with file, line, column, severity, code and message', async () => {
    const dir = project({ 'mcpc.yaml': '', 'p.mcp': broken, 'd.txt': 'x' });
    const r = await lint(dir, 'p.mcp', '--format', 'json');
    const items = JSON.parse(r.out) as Record<string, unknown>[];
    expect(items.map((i) => i.code)).toEqual(['use_after_drop', 'unreachable_export']);
    expect(items[0]).toMatchObject({ file: 'p.mcp', line: 10, column: 9, severity: 'error', code: 'use_after_drop', message: 'adapter `a` is trained after it was dropped' });
  });

  it('prints SARIF with repo-relative URIs', async () => {
    const dir = project({ 'mcpc.yaml': '', 'sub/p.mcp': broken, 'd.txt': 'x' });
    const r = await lint(dir, 'sub/p.mcp', '--format', 'sarif');
    const log = JSON.parse(r.out);
    expect(log.version).toBe('2.1.0');
    expect(log.runs[0].results[0].locations[0].physicalLocation.artifactLocation).toEqual({ uri: 'sub/p.mcp', uriBaseId: '%SRCROOT%', index: 0 });
  });

  it('colours a TTY unless NO_COLOR is set', async () => {
    const dir = project({ 'mcpc.yaml': '', 'p.mcp': broken, 'd.txt': 'x' });
    const tty = memoryIO(dir, { isTTY: true });
    await main(['lint', 'p.mcp'], tty);
    expect(tty.out).toMatch(/\x1b\[/);
    const nc = memoryIO(dir, { isTTY: true, env: { NO_COLOR: '1' } });
    await main(['lint', 'p.mcp'], nc);
    expect(nc.out).not.toMatch(/\x1b\[/);
  });

  it('shows the sites each selector matched', async () => {
    const r = await lint(repo, 'pipelines/medcare.mcp', '--show-sites');
    expect(r.code).toBe(0);
    expect(r.out).toContain('adapter attn (lora r16) at layers[*].attn.{q, k, v, o}: 16 sites');
    expect(r.out).toContain('adapter noise (moe_lora 8 experts top-2 r16) at layers[*].mlp.{gate, up, down}: 12 sites');
    expect(r.out).toMatch(/layers\[3\]\.mlp\.down\s+\[176 -> 64\]\s+model\.layers\.3\.mlp\.down_proj/);
  });

  it('reports an unreadable file as a diagnostic, not a crash', async () => {
    const dir = project({ 'mcpc.yaml': '' });
    const r = await lint(dir, 'missing.mcp', '--format', 'json');
    expect(r.code).toBe(1);
    expect(JSON.parse(r.out)[0]).toMatchObject({ code: 'unreadable_file', file: 'missing.mcp' });
  });

  it('exits 2 on usage errors and a broken project file', async () => {
    const dir = project({ 'mcpc.yaml': 'bogus: 1\n', 'p.mcp': clean });
    expect((await lint(dir, 'p.mcp')).code).toBe(2);
    const ok = project({ 'mcpc.yaml': '', 'p.mcp': clean, 'd.txt': 'x' });
    expect((await lint(ok, '--format', 'xml')).code).toBe(2);
    expect((await lint(ok, '--max-warnings', 'many')).code).toBe(2);
    expect((await lint(ok, '--nope')).code).toBe(2);
    const io = memoryIO(ok);
    expect(await main(['frobnicate'], io)).toBe(2);
    expect(io.err).toContain("unknown command 'frobnicate'");
  });

  it('with a broken project file, --format sarif and json still print a document carrying its problems (exit 2)', async () => {
    const dir = project({ 'mcpc.yaml': 'pipelines: [p.mcp]\nbackedn: cpu\n', 'p.mcp': clean, 'd.txt': 'x' });
    const sarif = await lint(dir, '--format', 'sarif');
    expect(sarif.code).toBe(2);
    const log = JSON.parse(sarif.out);
    expect(log.version).toBe('2.1.0');
    expect(log.runs[0].results).toHaveLength(1);
    const res = log.runs[0].results[0];
    expect(res).toMatchObject({ ruleId: 'project_file_invalid', level: 'error', message: { text: 'unknown key `backedn`. Hint: did you mean `backend`?' } });
    expect(res.locations[0].physicalLocation).toMatchObject({ artifactLocation: { uri: 'mcpc.yaml', uriBaseId: '%SRCROOT%' }, region: { startLine: 2, startColumn: 1 } });
    const json = await lint(dir, '--format', 'json');
    expect(json.code).toBe(2);
    expect(JSON.parse(json.out)).toEqual([expect.objectContaining({ file: 'mcpc.yaml', line: 2, code: 'project_file_invalid' })]);
    // A --project that cannot be read, too.
    const missing = await lint(dir, '--format', 'sarif', '--project', 'nope.yaml');
    expect(missing.code).toBe(2);
    expect(JSON.parse(missing.out).runs[0].results[0]).toMatchObject({ ruleId: 'unreadable_file' });
    // text: on stderr, as before.
    const text = await lint(dir);
    expect(text).toMatchObject({ code: 2, out: '' });
    expect(text.err).toContain('error[project_file_invalid]: unknown key `backedn`');
  });

  it('reports broken links and loops in a folder as warnings and lints the rest', async () => {
    const dir = project({ 'mcpc.yaml': '', 'p/a.mcp': clean, 'd.txt': 'x' });
    symlinkSync('nowhere', join(dir, 'p/dangling'));
    symlinkSync('loop', join(dir, 'p/loop'));
    symlinkSync('.', join(dir, 'p/again'));
    const r = await lint(dir, 'p', '--format', 'json');
    expect(r.code).toBe(0);
    expect(JSON.parse(r.out)).toEqual([]);
    expect(r.err).toBe(
      'mcpc lint: warning: skipped p/again: it is p again, reached through a link\n' +
        'mcpc lint: warning: skipped p/dangling: a link to something that does not exist (ENOENT)\n' +
        'mcpc lint: warning: skipped p/loop: a loop of links (ELOOP)\n',
    );
  });

  it('says what to do when no pipeline is named', async () => {
    const empty = project({ 'mcpc.yaml': 'pipelines: []\n' });
    expect(await lint(empty)).toEqual({ code: 2, out: '', err: 'mcpc lint: `pipelines` in mcpc.yaml is empty: give files or folders on the command line, or list globs under it\n' });
    const none = project({ 'mcpc.yaml': 'pipelines: [x/*.mcp]\n' });
    expect((await lint(none)).err).toBe('mcpc lint: no pipelines match x/*.mcp (from mcpc.yaml): give files or folders on the command line, or change `pipelines` there\n');
  });

  it('mcpc models takes no arguments or unknown flags', async () => {
    for (const args of [['--bogus'], ['qwen2-micro']]) {
      const io = memoryIO(repo);
      expect(await main(['models', ...args], io), args.join(' ')).toBe(2);
      expect(io.out).toBe('');
      expect(io.err).toMatch(/^mcpc models: /);
    }
    const io = memoryIO(repo);
    expect(await main(['models', '--help'], io)).toBe(0);
    expect(io.out).toMatch(/^usage: mcpc models/);
  });
});
