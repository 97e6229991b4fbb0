/**
 * Every pipeline outside examples/broken/ is meant to be valid: `mcpc lint` must exit 0 with no diagnostic
 * at all (warnings included: mcpc.yaml sets max_warnings 0), one file at a time and as the project's
 * default lint set.
 */
import { describe, expect, it } from 'vitest';
import type { JsonDiagnostic } from '../../src/cli/report/index.js';
import { mcpc, mcpFilesUnder } from './helpers.js';

const files = [...mcpFilesUnder('pipelines'), ...mcpFilesUnder('examples', (dir) => dir === 'examples/broken')];

describe('pipelines and examples lint clean', () => {
  it('finds the pipelines', () => {
    expect(files).toContain('pipelines/medcare.mcp');
  });

  for (const file of files) {
    it(file, async () => {
      const r = await mcpc(['lint', file, '--format', 'json']);
      const items = JSON.parse(r.out) as JsonDiagnostic[];
      expect(items.map((d) => `${d.file}:${d.line}:${d.column} ${d.code}: ${d.message}`)).toEqual([]);
      expect(r.code).toBe(0);
    });
  }

  it('`mcpc lint` with no files (the project set from mcpc.yaml) exits 0', async () => {
    const r = await mcpc(['lint']);
    expect(r.err).toBe('');
    expect(r.out).toBe('no problems\n');
    expect(r.code).toBe(0);
  });
});
