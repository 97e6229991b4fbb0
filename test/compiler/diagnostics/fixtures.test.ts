/**
 * The diagnostics fixtures: for each examples/broken/<code>.mcp, fixtures/<code>.txt holds exactly what
 * `mcpc lint` prints for it (text format, no colour). These files are what users read; review them as the
 * product. `UPDATE_SNAPSHOTS=1 npx vitest run test/compiler/diagnostics` rewrites them.
 *
 * Three codes have no example file (see examples/broken/README.md); their fixtures come from a missing
 * path, a bad mcpc.yaml in a temporary project, and an oversized pipeline generated in memory.
 */
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { renderDiagnostics } from '../../../src/cli/report/index.js';
import { MAX_FILE_BYTES } from '../../../src/compiler/1-parse/index.js';
import { checkFile, type CheckHost } from '../../../src/compiler/index.js';
import { brokenExamples, codeOf, mcpc, root } from '../../examples/helpers.js';

const dir = new URL('./fixtures/', import.meta.url).pathname;
const update = !!process.env.UPDATE_SNAPSHOTS;
const written = new Set<string>();

function compare(name: string, actual: string): void {
  const path = join(dir, `${name}.txt`);
  written.add(`${name}.txt`);
  if (update || !existsSync(path)) writeFileSync(path, actual);
  expect(actual).toBe(readFileSync(path, 'utf8'));
}

describe('diagnostic fixtures of examples/broken (UPDATE_SNAPSHOTS=1 rewrites them)', () => {
  for (const file of brokenExamples()) {
    const code = codeOf(file);
    it(code, async () => {
      const r = await mcpc(['lint', file]);
      // stderr adds "N warning(s), more than --max-warnings 0" for the warning examples.
      compare(code, r.out + r.err);
    });
  }
});

describe('diagnostic fixtures of codes no example file triggers', () => {
  const tmp: string[] = [];
  afterAll(() => {
    for (const d of tmp) rmSync(d, { recursive: true, force: true });
  });

  it('unreadable_file', async () => {
    const r = await mcpc(['lint', 'examples/broken/no-such-file.mcp']);
    compare('unreadable_file', r.out + r.err);
  });

  it('project_file_invalid', async () => {
    const d = mkdtempSync(join(tmpdir(), 'mcpc-project-'));
    tmp.push(d);
    writeFileSync(join(d, 'mcpc.yaml'), 'pipelines:\n  - pipelines/**/*.mcp\nlint:\n  max_warning: 0\n');
    const r = await mcpc(['lint'], d);
    compare('project_file_invalid', r.out + r.err);
  });

  it('file_too_large', () => {
    const text = 'pipeline huge\n' + '// padding\n'.repeat(Math.ceil(MAX_FILE_BYTES / 11) + 1);
    const host: CheckHost = { root, cwd: root, allowOutsideRoot: false, readFile: () => ({ text }), exists: () => false };
    const res = checkFile('huge.mcp', host);
    compare('file_too_large', renderDiagnostics('text', res.diagnostics, res.sources, { color: false, cwd: root }));
  });
});

describe('diagnostic fixtures', () => {
  it('has no fixture without an example or a test above', () => {
    if (update) return;
    const stale = readdirSync(dir).filter((f) => f.endsWith('.txt') && !written.has(f));
    expect(stale, 'delete fixtures whose example is gone').toEqual([]);
  });

  it('gives every diagnostic a hint: what to do, not only what is wrong', () => {
    const missing: string[] = [];
    for (const f of readdirSync(dir).filter((x) => x.endsWith('.txt'))) {
      // A diagnostic runs from its `error[...]` / `warning[...]` line to the next one (notes belong to it).
      const blocks = readFileSync(join(dir, f), 'utf8').split(/^(?=(?:error|warning)\[)/m).filter((b) => /^(?:error|warning)\[/.test(b));
      for (const b of blocks) if (!/^\s*= hint: \S/m.test(b)) missing.push(`${f}: ${b.split('\n')[0]}`);
    }
    expect(missing).toEqual([]);
  });
});
