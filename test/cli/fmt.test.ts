import { chmodSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { main } from '../../src/cli/main.js';
import { memoryIO } from '../support/memory-io.js';

const repo = new URL('../..', import.meta.url).pathname;
const messy = 'pipeline p\nmodel base=builtin("qwen2-micro") // the model\nstage s { lr 2e-4; epochs 1 }\n';

function dir(files: Record<string, string>): string {
  const d = mkdtempSync(join(tmpdir(), 'mcpc-fmt-'));
  writeFileSync(join(d, 'mcpc.yaml'), 'pipelines: ["*.mcp"]\n');
  for (const [n, t] of Object.entries(files)) writeFileSync(join(d, n), t);
  return d;
}

describe('mcpc fmt', () => {
  it('keeps every pipeline of this repository in canonical layout', async () => {
    const io = memoryIO(repo);
    expect(await main(['fmt', '--check'], io)).toBe(0);
    expect(io.out).toMatch(/already formatted/);
  });

  it('--check exits 1 and names the file, without writing', async () => {
    const d = dir({ 'p.mcp': messy });
    const io = memoryIO(d);
    expect(await main(['fmt', '--check'], io)).toBe(1);
    expect(io.out).toBe('would reformat p.mcp\n');
    expect(readFileSync(join(d, 'p.mcp'), 'utf8')).toBe(messy);
  });

  it('rewrites in place, keeps the comment, and is then clean', async () => {
    const d = dir({ 'p.mcp': messy });
    expect(await main(['fmt', 'p.mcp'], memoryIO(d))).toBe(0);
    const out = readFileSync(join(d, 'p.mcp'), 'utf8');
    expect(out).toBe('pipeline p\n\nmodel base = builtin("qwen2-micro") // the model\nstage s {\n  lr 2e-4\n  epochs 1\n}\n');
    expect(await main(['fmt', '--check', 'p.mcp'], memoryIO(d))).toBe(0);
  });

  it('never rewrites a file with syntax errors and reports them', async () => {
    const broken = 'pipeline p\nstage s { lr }\n';
    const d = dir({ 'p.mcp': broken });
    const io = memoryIO(d);
    expect(await main(['fmt', 'p.mcp'], io)).toBe(1);
    expect(io.err).toContain('p.mcp:2:');
    expect(readFileSync(join(d, 'p.mcp'), 'utf8')).toBe(broken);
  });

  it('--stdout prints instead of writing', async () => {
    const d = dir({ 'p.mcp': messy });
    const io = memoryIO(d);
    expect(await main(['fmt', '--stdout', 'p.mcp'], io)).toBe(0);
    expect(io.out).toContain('stage s {\n  lr 2e-4\n');
    expect(readFileSync(join(d, 'p.mcp'), 'utf8')).toBe(messy);
  });

  it('through a link, rewrites the target and keeps the link; keeps the permissions', async () => {
    const d = dir({ 'p.mcp': messy });
    mkdirSync(join(d, 'real'));
    writeFileSync(join(d, 'real/t.mcp'), messy);
    symlinkSync('real/t.mcp', join(d, 'link.mcp'));
    chmodSync(join(d, 'p.mcp'), 0o640);
    expect(await main(['fmt', 'p.mcp', 'link.mcp'], memoryIO(d))).toBe(0);
    expect(lstatSync(join(d, 'link.mcp')).isSymbolicLink()).toBe(true);
    expect(readFileSync(join(d, 'real/t.mcp'), 'utf8')).toMatch(/^pipeline p\n\nmodel base = builtin/);
    expect(statSync(join(d, 'p.mcp')).mode & 0o777).toBe(0o640);
    expect(readFileSync(join(d, 'p.mcp'), 'utf8')).toMatch(/^pipeline p\n\nmodel base = builtin/);
  });

  it('a file that cannot be written is an error naming it, and is left as it was', async () => {
    const d = dir({ 'p.mcp': messy, 'q.mcp': messy });
    mkdirSync(join(d, `p.mcp.${process.pid}.tmp`)); // in the way of the temporary file
    const io = memoryIO(d);
    expect(await main(['fmt', 'p.mcp', 'q.mcp'], io)).toBe(1);
    expect(io.err).toBe(`mcpc fmt: cannot open p.mcp.${process.pid}.tmp: EEXIST (a file of that name is in the way: move it away); p.mcp was left as it was\n`);
    expect(io.out).toBe('formatted q.mcp\n');
    expect(readFileSync(join(d, 'p.mcp'), 'utf8')).toBe(messy);
    if (process.getuid?.() !== 0) {
      // (root writes anywhere)
      const ro = dir({ 'p.mcp': messy });
      chmodSync(ro, 0o555);
      const io2 = memoryIO(ro);
      expect(await main(['fmt', 'p.mcp'], io2)).toBe(1);
      chmodSync(ro, 0o755);
      expect(io2.err).toMatch(/^mcpc fmt: cannot write p\.mcp: EACCES \(no permission/);
      expect(readdirSync(ro).sort()).toEqual(['mcpc.yaml', 'p.mcp']);
    }
  });

  it('reports broken links and loops in a folder and formats the rest', async () => {
    const d = dir({});
    mkdirSync(join(d, 'p'));
    writeFileSync(join(d, 'p/a.mcp'), messy);
    symlinkSync('nowhere', join(d, 'p/dangling'));
    symlinkSync('loop', join(d, 'p/loop'));
    symlinkSync('..', join(d, 'p/up'));
    symlinkSync('gone.mcp', join(d, 'p/b.mcp'));
    const io = memoryIO(d);
    expect(await main(['fmt', 'p'], io)).toBe(1); // the broken p/b.mcp
    expect(io.err).toContain('mcpc fmt: warning: skipped p/dangling: a link to something that does not exist (ENOENT)\n');
    expect(io.err).toContain('mcpc fmt: warning: skipped p/loop: a loop of links (ELOOP)\n');
    expect(io.err).toContain('mcpc fmt: warning: skipped p/up/p: it is p again, reached through a link\n');
    expect(io.err).toContain('error[unreadable_file]: cannot read p/b.mcp: it does not exist');
    expect(io.out).toBe('formatted p/a.mcp\n');
  });
});
