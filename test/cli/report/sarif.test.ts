import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import Ajv2020 from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';
import { describe, expect, it } from 'vitest';
import { pascalCase, renderSarif, sarifRules, toSarif, type SarifLog } from '../../../src/cli/report/sarif.js';
import { catalogue, codes } from '../../../src/compiler/diagnostics/catalogue.js';
import type { Diagnostic } from '../../../src/compiler/diagnostics/diagnostic.js';
import { SourceFile } from '../../../src/compiler/source.js';
import { diag, fixture, sourcesOf, spanOf } from './helpers.js';

// The official schema, vendored from @microsoft/sarif-multitool-linux (see test/fixtures/sarif/README.md).
// That copy declares JSON Schema 2020-12, hence ajv's 2020 entry; ajv-formats checks its uri/uri-reference
// formats (the URIs this renderer writes). strictRequired is off because the schema names required
// properties in `anyOf` branches that only the parent schema defines, which is valid JSON Schema.
const schema = JSON.parse(readFileSync(fileURLToPath(new URL('../../fixtures/sarif/sarif-2.1.0.json', import.meta.url)), 'utf8'));
const ajv = new Ajv2020.default({ allErrors: true, strict: true, strictRequired: false });
addFormats.default(ajv);
const validateSchema = ajv.compile(schema);

function expectValid(text: string): SarifLog {
  const log = JSON.parse(text);
  const ok = validateSchema(log);
  expect(validateSchema.errors ?? [], JSON.stringify(validateSchema.errors, null, 2)).toEqual([]);
  expect(ok).toBe(true);
  return log as SarifLog;
}

const ROOT = '/work/proj';
const opts = { root: ROOT, cwd: ROOT, toolVersion: '1.2.3' };
const x = fixture('x.mcp', 'pipelines/x.mcp');

const useAfterDrop = diag('use_after_drop', spanOf(x, 'noise', 3), 'adapter `noise` is used after it was dropped', {
  hint: 'remove the use, or drop the adapter later',
  notes: [{ message: 'dropped here', span: spanOf(x, 'drop noise') }, { message: 'the drop is unconditional' }],
});

describe('the vendored schema and validator', () => {
  it('rejects logs that break the schema (so passing means something)', () => {
    const log = JSON.parse(renderSarif([useAfterDrop], opts));
    log.runs[0].results[0].level = 'fatal';
    expect(validateSchema(log)).toBe(false);
    const log2 = JSON.parse(renderSarif([useAfterDrop], opts));
    log2.runs[0].results[0].locations[0].physicalLocation.artifactLocation.uri = 'pipelines/has space.mcp';
    expect(validateSchema(log2)).toBe(false);
    const log3 = JSON.parse(renderSarif([], opts));
    log3.runs[0].tool.driver.rules[0].unknownProperty = true;
    expect(validateSchema(log3)).toBe(false);
  });
});

describe('renderSarif', () => {
  it('writes a valid log for an empty result set', () => {
    const log = expectValid(renderSarif([], opts));
    expect(log.$schema).toMatch(/sarif-schema-2\.1\.0\.json$/);
    expect(log.version).toBe('2.1.0');
    expect(log.runs).toHaveLength(1);
    const run = log.runs[0];
    expect(run.results).toEqual([]);
    expect(run.artifacts).toEqual([]);
    expect(run.columnKind).toBe('utf16CodeUnits');
    expect(run.originalUriBaseIds['%SRCROOT%'].uri).toBe('file:///work/proj/');
    expect(run.tool.driver).toMatchObject({ name: 'mcpc', version: '1.2.3', informationUri: 'https://github.com/mcpc/mcpc' });
  });

  it('lists one rule per catalogue code, in catalogue order, with the catalogue texts', () => {
    const { rules } = expectValid(renderSarif([], opts)).runs[0].tool.driver;
    expect(rules.map((r) => r.id)).toEqual(codes);
    expect(new Set(rules.map((r) => r.id)).size).toBe(rules.length);
    for (const rule of rules) {
      const entry = catalogue[rule.id as keyof typeof catalogue];
      expect(rule).toEqual({
        id: rule.id,
        name: pascalCase(rule.id),
        shortDescription: { text: entry.title },
        fullDescription: { text: entry.description },
        help: { text: entry.hint ?? entry.description },
        defaultConfiguration: { level: entry.level },
        properties: { category: entry.kind === 'error' ? 'syntax-or-semantic error' : 'lint' },
      });
      expect(rule.name).toMatch(/^[A-Z][A-Za-z0-9]*$/);
    }
    expect(rules.find((r) => r.id === 'use_after_drop')?.properties.category).toBe('lint');
    expect(rules.find((r) => r.id === 'unknown_name')?.properties.category).toBe('syntax-or-semantic error');
    expect(sarifRules()).toEqual(rules);
  });

  it('turns snake_case codes into PascalCase names', () => {
    expect(pascalCase('use_after_drop')).toBe('UseAfterDrop');
    expect(pascalCase('top_k_exceeds_experts')).toBe('TopKExceedsExperts');
    expect(pascalCase('lr_out_of_range')).toBe('LrOutOfRange');
  });

  it('writes a valid log with a result for every catalogue code, each ruleIndex pointing at its rule', () => {
    const ds: Diagnostic[] = codes.map((code, i) =>
      diag(code, x.span(i, i + 3), `message for ${code}`, { severity: catalogue[code].level, hint: catalogue[code].hint }),
    );
    const log = expectValid(renderSarif(ds, { ...opts, sources: sourcesOf(x) }));
    const { results, tool } = log.runs[0];
    expect(results).toHaveLength(codes.length);
    results.forEach((r, i) => {
      expect(r.ruleId).toBe(codes[i]);
      expect(tool.driver.rules[r.ruleIndex].id).toBe(r.ruleId);
      expect(r.level).toBe(catalogue[codes[i]].level);
    });
  });

  it('writes a result with its location, region, snippet, message and hint', () => {
    const log = expectValid(renderSarif([useAfterDrop], { ...opts, sources: sourcesOf(x) }));
    const [r] = log.runs[0].results;
    expect(r).toMatchObject({ ruleId: 'use_after_drop', ruleIndex: codes.indexOf('use_after_drop'), level: 'error' });
    expect(r.message.text).toBe(
      'adapter `noise` is used after it was dropped. Note: the drop is unconditional. Hint: remove the use, or drop the adapter later.',
    );
    expect(r.locations[0].physicalLocation).toEqual({
      artifactLocation: { uri: 'pipelines/x.mcp', uriBaseId: '%SRCROOT%', index: 0 },
      region: { startLine: 12, startColumn: 9, endLine: 12, endColumn: 14, snippet: { text: 'noise' } },
      contextRegion: { startLine: 12, endLine: 12, snippet: { text: '  train noise on mixed' } },
    });
  });

  it('writes notes with spans as relatedLocations with ids and messages', () => {
    const base = new SourceFile('pipelines/base.mcp', 'pipeline base\nadapter noise = lora(rank: 8) at attn.q\n');
    const d = diag('redeclared_from_base', spanOf(x, 'noise', 1), 'adapter `noise` is already declared', {
      notes: [
        { message: 'declared here in the base', span: spanOf(base, 'noise') },
        { message: 'dropped here', span: spanOf(x, 'drop noise') },
      ],
    });
    const log = expectValid(renderSarif([d], { ...opts, sources: sourcesOf(x, base) }));
    const run = log.runs[0];
    const [r] = run.results;
    expect(r.relatedLocations).toEqual([
      {
        id: 0,
        message: { text: 'declared here in the base.' },
        physicalLocation: {
          artifactLocation: { uri: 'pipelines/base.mcp', uriBaseId: '%SRCROOT%', index: 1 },
          region: { startLine: 2, startColumn: 9, endLine: 2, endColumn: 14, snippet: { text: 'noise' } },
          contextRegion: { startLine: 2, endLine: 2, snippet: { text: 'adapter noise = lora(rank: 8) at attn.q' } },
        },
      },
      {
        id: 1,
        message: { text: 'dropped here.' },
        physicalLocation: {
          artifactLocation: { uri: 'pipelines/x.mcp', uriBaseId: '%SRCROOT%', index: 0 },
          region: { startLine: 9, startColumn: 10, endLine: 9, endColumn: 20, snippet: { text: 'drop noise' } },
          contextRegion: { startLine: 9, endLine: 9, snippet: { text: '  then { drop noise }' } },
        },
      },
    ]);
    expect(run.artifacts.map((a) => a.location)).toEqual([
      { uri: 'pipelines/x.mcp', uriBaseId: '%SRCROOT%' },
      { uri: 'pipelines/base.mcp', uriBaseId: '%SRCROOT%' },
    ]);
    expect(run.artifacts[0]).toMatchObject({ roles: ['analysisTarget'], sourceLanguage: 'mcp' });
  });

  it('leaves out relatedLocations when no note has a span', () => {
    const d = diag('unknown_name', spanOf(x, 'base'), 'x', { notes: [{ message: 'only text' }] });
    const [r] = expectValid(renderSarif([d], opts)).runs[0].results;
    expect('relatedLocations' in r).toBe(false);
    expect(r.message.text).toBe('x. Note: only text.');
  });

  it('makes paths repo-relative with forward slashes, and gives files outside the root absolute file URIs', () => {
    const span = spanOf(x, 'base');
    const ds = [
      diag('unknown_name', { ...span, file: '/work/proj/pipelines/abs.mcp' }, 'absolute inside the root'),
      diag('unknown_name', { ...span, file: 'nested/rel.mcp' }, 'relative to the cwd'),
      diag('extends_not_found', { ...span, file: '/elsewhere/my base.mcp' }, 'absolute outside the root', {
        notes: [{ message: 'extended from here', span: { ...span, file: '../pipelines/abs.mcp' } }],
      }),
      diag('unknown_name', { ...span, file: '../../outside.mcp' }, 'relative outside the root'),
      diag('unknown_name', { ...span, file: '/work/proj/data/ä ü#1.yaml' }, 'needs percent-encoding'),
    ];
    const log = expectValid(renderSarif(ds, { root: '..', cwd: '/work/proj/sub', toolVersion: '1.2.3' }));
    const run = log.runs[0];
    const locs = run.results.map((r) => r.locations[0].physicalLocation.artifactLocation);
    expect(locs).toEqual([
      { uri: 'pipelines/abs.mcp', uriBaseId: '%SRCROOT%', index: 0 },
      { uri: 'sub/nested/rel.mcp', uriBaseId: '%SRCROOT%', index: 1 },
      { uri: 'file:///elsewhere/my%20base.mcp', index: 2 },
      { uri: 'file:///work/outside.mcp', index: 3 },
      { uri: 'data/%C3%A4%20%C3%BC%231.yaml', uriBaseId: '%SRCROOT%', index: 4 },
    ]);
    expect(run.results[2].relatedLocations?.[0].physicalLocation.artifactLocation).toEqual({
      uri: 'pipelines/abs.mcp',
      uriBaseId: '%SRCROOT%',
      index: 0,
    });
    expect(run.originalUriBaseIds['%SRCROOT%'].uri).toBe('file:///work/proj/');
    expect(run.artifacts.map((a) => a.location)).toEqual(locs.map(({ index: _, ...l }) => l));
    expect(run.artifacts[4].sourceLanguage).toBe('yaml');
  });

  it('keeps every artifact index consistent with the artifacts list', () => {
    const span = spanOf(x, 'base');
    const ds = ['a.mcp', 'b.mcp', 'a.mcp', '/tmp/c.mcp', 'b.mcp'].map((f) => diag('unknown_name', { ...span, file: f }, f));
    const run = expectValid(renderSarif(ds, opts)).runs[0];
    expect(run.artifacts).toHaveLength(3);
    for (const r of run.results) {
      const loc = r.locations[0].physicalLocation.artifactLocation;
      expect(run.artifacts[loc.index!].location).toEqual({ uri: loc.uri, ...(loc.uriBaseId ? { uriBaseId: loc.uriBaseId } : {}) });
    }
  });

  it('writes empty and multi-line regions as they are, without an empty snippet', () => {
    const eof = diag('unexpected_end', x.span(x.text.length, x.text.length), 'unexpected end of file');
    const multi = diag('unknown_name', x.span(x.text.indexOf('stage main'), x.text.indexOf('mixed\n}') + 5), 'm');
    const run = expectValid(renderSarif([eof, multi], { ...opts, sources: sourcesOf(x) })).runs[0];
    expect(run.results[0].locations[0].physicalLocation.region).toEqual({ startLine: 14, startColumn: 1, endLine: 14, endColumn: 1 });
    expect(run.results[0].locations[0].physicalLocation.contextRegion).toBeUndefined();
    expect(run.results[1].locations[0].physicalLocation.region).toEqual({
      startLine: 11,
      startColumn: 1,
      endLine: 12,
      endColumn: 23,
      snippet: { text: 'stage main {\n  train noise on mixed' },
    });
  });

  it('uses UTF-16 columns, matching columnKind', () => {
    const src = new SourceFile('u.mcp', 'data "😀" x\n');
    const run = expectValid(renderSarif([diag('unexpected_token', spanOf(src, 'x'), 'x')], { ...opts, sources: sourcesOf(src) })).runs[0];
    expect(run.results[0].locations[0].physicalLocation.region).toMatchObject({ startColumn: 11, endColumn: 12 });
  });

  it('writes a diagnostic without a file (e.g. about the command line) with no location', () => {
    const d = diag('unreadable_file', { file: '', start: { offset: 0, line: 1, column: 1 }, end: { offset: 0, line: 1, column: 1 } }, 'no input');
    const run = expectValid(renderSarif([d], opts)).runs[0];
    expect(run.results[0].locations).toEqual([]);
    expect(run.artifacts).toEqual([]);
  });

  it('is pretty-printed and ends in a newline; toSarif gives the same object', () => {
    const text = renderSarif([useAfterDrop], opts);
    expect(text.endsWith('}\n')).toBe(true);
    expect(text.split('\n')[1]).toMatch(/^ {2}"\$schema"/);
    expect(JSON.parse(text)).toEqual(toSarif([useAfterDrop], opts));
  });
});
