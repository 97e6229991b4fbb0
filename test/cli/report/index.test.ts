import { describe, expect, it } from 'vitest';
import { isReportFormat, renderDiagnostics, reportFormats } from '../../../src/cli/report/index.js';
import { renderJson } from '../../../src/cli/report/json.js';
import { renderSarif } from '../../../src/cli/report/sarif.js';
import { renderText } from '../../../src/cli/report/text.js';
import { sortDiagnostics } from '../../../src/compiler/diagnostics/diagnostic.js';
import { SourceFile } from '../../../src/compiler/source.js';
import { diag, fixture, sourcesOf, spanOf } from './helpers.js';

const x = fixture('x.mcp', 'pipelines/x.mcp');
const a = new SourceFile('pipelines/a.mcp', 'pipeline a\n');
const sources = sourcesOf(x, a);
// Deliberately out of order: later position first, another file, same position with two codes.
const ds = [
  diag('use_after_drop', spanOf(x, 'noise', 3), 'late'),
  diag('unknown_name', spanOf(x, 'tiny'), 'same place, u'),
  diag('invalid_value', spanOf(x, 'tiny'), 'same place, i'),
  diag('missing_pipeline_header', spanOf(a, 'pipeline'), 'other file', { severity: 'error' }),
  diag('data_never_used', spanOf(x, 'mixed'), 'warning', { severity: 'warning' }),
];

describe('renderDiagnostics', () => {
  it('knows its formats', () => {
    expect(reportFormats).toEqual(['text', 'json', 'sarif']);
    expect(isReportFormat('sarif')).toBe(true);
    expect(isReportFormat('xml')).toBe(false);
  });

  it('sorts by file, position and code before rendering', () => {
    const json = JSON.parse(renderDiagnostics('json', ds, sources));
    expect(json.map((d: { message: string }) => d.message)).toEqual(['other file', 'same place, i', 'same place, u', 'warning', 'late']);
  });

  it('does not reorder the caller’s array', () => {
    const copy = [...ds];
    renderDiagnostics('text', ds, sources);
    expect(ds).toEqual(copy);
  });

  it('dispatches to the text renderer with colour off unless asked', () => {
    const sorted = sortDiagnostics(ds);
    expect(renderDiagnostics('text', ds, sources)).toBe(renderText(sorted, sources, { color: false }));
    expect(renderDiagnostics('text', ds, sources, { color: true })).toBe(renderText(sorted, sources, { color: true }));
  });

  it('dispatches to the JSON renderer with the root', () => {
    const sorted = sortDiagnostics(ds);
    expect(renderDiagnostics('json', ds, sources, { root: '/p', cwd: '/p/sub' })).toBe(renderJson(sorted, { root: '/p', cwd: '/p/sub' }));
  });

  it('dispatches to the SARIF renderer with root, version and snippets from the sources', () => {
    const sorted = sortDiagnostics(ds);
    const out = renderDiagnostics('sarif', ds, sources, { root: '/p', cwd: '/p', toolVersion: '9.9.9' });
    expect(out).toBe(renderSarif(sorted, { root: '/p', cwd: '/p', toolVersion: '9.9.9', sources }));
    const log = JSON.parse(out);
    expect(log.runs[0].tool.driver.version).toBe('9.9.9');
    expect(log.runs[0].results[0].locations[0].physicalLocation.region.snippet).toEqual({ text: 'pipeline' });
  });

  it('defaults the SARIF root to the cwd', () => {
    const log = JSON.parse(renderDiagnostics('sarif', ds, sources, { cwd: '/p' }));
    expect(log.runs[0].originalUriBaseIds['%SRCROOT%'].uri).toBe('file:///p/');
    expect(log.runs[0].results[0].locations[0].physicalLocation.artifactLocation.uri).toBe('pipelines/a.mcp');
  });
});
