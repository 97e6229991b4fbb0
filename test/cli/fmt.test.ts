import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
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
});
