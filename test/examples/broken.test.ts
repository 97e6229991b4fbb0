/**
 * examples/broken/ holds one pipeline per diagnostic code, named after the code. Each must fail `mcpc lint`
 * with exactly that code, at a line of the file; every code of the catalogue must have such a file or be
 * listed in examples/broken/README.md as one no pipeline file can trigger (and be tested here instead).
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { checkFile, type CheckHost } from '../../src/compiler/index.js';
import { MAX_FILE_BYTES } from '../../src/compiler/1-parse/index.js';
import { codes } from '../../src/compiler/diagnostics/catalogue.js';
import type { JsonDiagnostic } from '../../src/cli/report/index.js';
import { baseFiles, brokenDir, brokenExamples, codeOf, mcpc, root } from './helpers.js';

const readme = readFileSync(join(brokenDir, 'README.md'), 'utf8');

/** Codes in the README's table of codes that no pipeline file triggers. */
function untriggerable(): string[] {
  const section = readme.split(/^## /m).find((s) => s.startsWith('Codes no pipeline file'));
  if (!section) return [];
  return [...section.matchAll(/^\| `([a-z_]+)` \|/gm)].map((m) => m[1]);
}

describe('examples/broken: each file fails lint with the code it is named after', () => {
  for (const file of brokenExamples()) {
    const code = codeOf(file);
    it(code, async () => {
      const r = await mcpc(['lint', file, '--format', 'json']);
      expect(r.err).not.toContain('internal error');
      expect(r.code).toBe(1);
      const items = JSON.parse(r.out) as JsonDiagnostic[];
      const lines = readFileSync(join(root, file), 'utf8').split(/\r\n|\r|\n/).length;
      const promised = items.filter((d) => d.code === code);
      expect(promised.length, `${file} should report ${code}; it reported ${items.map((d) => d.code).join(', ') || 'nothing'}`).toBeGreaterThan(0);
      for (const d of promised) {
        expect(d.file).toBe(file);
        expect(d.line).toBeGreaterThanOrEqual(1);
        expect(d.line).toBeLessThanOrEqual(lines);
      }
      // One mistake, one diagnostic: anything else is a cascade to fix in the checker (or a second mistake).
      expect(items.map((d) => d.code)).toEqual([code]);
    });
  }
});

describe('examples/broken/bases: the bases of the composition examples lint clean', () => {
  for (const file of baseFiles()) {
    it(file, async () => {
      const r = await mcpc(['lint', file, '--format', 'json']);
      expect(JSON.parse(r.out)).toEqual([]);
      expect(r.code).toBe(0);
    });
  }
});

describe('examples/broken covers the catalogue', () => {
  const files = brokenExamples().map(codeOf);
  const listed = untriggerable();

  it('names every file after a catalogue code', () => {
    expect(files.filter((f) => !(codes as string[]).includes(f))).toEqual([]);
  });

  it('has a file for every code, or lists the code in README.md as not triggerable from a file', () => {
    const missing = codes.filter((c) => !files.includes(c) && !listed.includes(c));
    expect(missing, 'add examples/broken/<code>.mcp, or a row in the README table with the reason and the test').toEqual([]);
  });

  it('lists in README.md only catalogue codes that have no file', () => {
    expect(listed.length).toBeGreaterThan(0);
    expect(listed.filter((c) => !(codes as string[]).includes(c) || files.includes(c))).toEqual([]);
  });

  it('describes every file in README.md', () => {
    for (const f of files) expect(readme, f).toContain(`| \`${f}.mcp\` |`);
  });
});

describe('codes no pipeline file triggers', () => {
  const tmp: string[] = [];
  afterAll(() => {
    for (const d of tmp) rmSync(d, { recursive: true, force: true });
  });

  it('unreadable_file: a path that does not exist', async () => {
    const r = await mcpc(['lint', 'examples/broken/no-such-file.mcp', '--format', 'json']);
    expect(r.code).toBe(1);
    expect(JSON.parse(r.out)).toMatchObject([{ code: 'unreadable_file', file: 'examples/broken/no-such-file.mcp', line: 1 }]);
  });

  it('project_file_invalid: a bad mcpc.yaml stops lint with exit 2', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'mcpc-project-'));
    tmp.push(dir);
    writeFileSync(join(dir, 'mcpc.yaml'), 'pipelines:\n  - pipelines/**/*.mcp\nlint:\n  max_warning: 0\n');
    const text = await mcpc(['lint'], dir);
    expect(text.code).toBe(2);
    expect(text.err).toContain('error[project_file_invalid]: unknown key `lint.max_warning`');
    expect(text.err).toContain('--> mcpc.yaml:4:3');
    // With --format json the problem is the document on stdout (a CI upload is never empty), exit 2 still.
    const r = await mcpc(['lint', '--format', 'json'], dir);
    expect(r.code).toBe(2);
    expect(JSON.parse(r.out)).toMatchObject([{ code: 'project_file_invalid', file: 'mcpc.yaml', line: 4, column: 3 }]);
  });

  it('file_too_large: a pipeline over the size limit, generated in memory', () => {
    const text = 'pipeline huge\n' + '// padding\n'.repeat(Math.ceil(MAX_FILE_BYTES / 11) + 1);
    const host: CheckHost = {
      root,
      cwd: root,
      allowOutsideRoot: false,
      readFile: (abs) => (abs === join(root, 'huge.mcp') ? { text } : { error: 'ENOENT' }),
      exists: () => false,
    };
    const res = checkFile('huge.mcp', host);
    expect(res.diagnostics.map((d) => [d.code, d.span.start.line])).toEqual([['file_too_large', 1]]);
  });
});
