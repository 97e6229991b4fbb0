/**
 * `mcpc lint --format sarif`: a SARIF 2.1.0 log (one run) for code-scanning tools.
 *
 * - `tool.driver.rules` lists every catalogue code, in catalogue order, whether or not it occurs, so a
 *   result's `ruleIndex` is the code's index in the catalogue and viewers can show every rule's help.
 * - Files inside `root` are given as relative URIs against the base id `%SRCROOT%`, which
 *   `originalUriBaseIds` maps to the root's `file://` URI; files outside it as absolute `file://` URIs.
 * - Columns are UTF-16 code units (`columnKind: "utf16CodeUnits"`), 1-based, `endColumn` exclusive: the
 *   same convention as the compiler's spans, so they are copied as they are.
 * - Notes with a span become `relatedLocations` (ids 0, 1, ...); notes without one are added to the
 *   message text, as is the hint.
 */
import { resolve } from 'node:path';
import { catalogue, codes, type CatalogueEntry } from '../../compiler/diagnostics/catalogue.js';
import type { Diagnostic, Note } from '../../compiler/diagnostics/diagnostic.js';
import type { SourceFile, Span } from '../../compiler/source.js';
import { fileUri, relativeUri, rootPath } from './paths.js';

export const SARIF_SCHEMA = 'https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json';
export const INFORMATION_URI = 'https://github.com/mcpc/mcpc';
export const SRCROOT = '%SRCROOT%';
/** Longer snippets and context regions are left out (both are optional): a 1 MB line copied into every result ran out of memory. */
export const MAX_SNIPPET = 1000;

export interface SarifOptions {
  /** Project root: paths inside it are written relative to it. */
  root: string;
  /** `tool.driver.version`. */
  toolVersion: string;
  /** Directory that relative paths (in diagnostics and `root`) are relative to (default: process.cwd()). */
  cwd?: string;
  /** When given, regions carry a `snippet` with the text they cover. */
  sources?: Map<string, SourceFile>;
}

// Only the parts of the SARIF object model that mcpc writes.
export interface SarifLog {
  $schema: string;
  version: '2.1.0';
  runs: SarifRun[];
}

export interface SarifRun {
  tool: { driver: SarifDriver };
  originalUriBaseIds: Record<string, { uri: string; description?: { text: string } }>;
  artifacts: SarifArtifact[];
  results: SarifResult[];
  columnKind: 'utf16CodeUnits';
}

export interface SarifDriver {
  name: string;
  version: string;
  informationUri: string;
  rules: SarifRule[];
}

export interface SarifRule {
  id: string;
  name: string;
  shortDescription: { text: string };
  fullDescription: { text: string };
  help: { text: string };
  defaultConfiguration: { level: 'error' | 'warning' };
  properties: { category: 'syntax-or-semantic error' | 'lint' };
}

export interface SarifArtifact {
  location: SarifArtifactLocation;
  /** Every file mcpc reports on is one it read and analysed. */
  roles: ['analysisTarget'];
  sourceLanguage?: string;
}

export interface SarifArtifactLocation {
  uri: string;
  uriBaseId?: string;
  index?: number;
}

export interface SarifRegion {
  startLine: number;
  startColumn: number;
  endLine: number;
  endColumn: number;
  snippet?: { text: string };
}

/** Whole lines around a region (SARIF: no columns means from the start of startLine to the end of endLine). */
export interface SarifContextRegion {
  startLine: number;
  endLine: number;
  snippet: { text: string };
}

export interface SarifPhysicalLocation {
  artifactLocation: SarifArtifactLocation;
  region: SarifRegion;
  contextRegion?: SarifContextRegion;
}

export interface SarifResult {
  ruleId: string;
  ruleIndex: number;
  level: 'error' | 'warning';
  message: { text: string };
  locations: { physicalLocation: SarifPhysicalLocation }[];
  relatedLocations?: { id: number; message: { text: string }; physicalLocation: SarifPhysicalLocation }[];
}

/** `use_after_drop` -> `UseAfterDrop` (SARIF's `reportingDescriptor.name`). */
export function pascalCase(code: string): string {
  return code
    .split('_')
    .filter((w) => w !== '')
    .map((w) => w[0].toUpperCase() + w.slice(1))
    .join('');
}

export function sarifRules(): SarifRule[] {
  return codes.map((code) => {
    const c: CatalogueEntry = catalogue[code];
    return {
      id: code,
      name: pascalCase(code),
      shortDescription: { text: c.title },
      fullDescription: { text: c.description },
      help: { text: c.hint ?? c.description },
      defaultConfiguration: { level: c.level },
      properties: { category: c.kind === 'error' ? 'syntax-or-semantic error' : 'lint' },
    };
  });
}

/** UTF-16 length of lines a..b of a file (inclusive), without the last line's terminator. */
function lines(src: SourceFile, a: number, b: number): number {
  const from = src.lineStarts[a - 1];
  const lastStart = src.lineStarts[b - 1];
  return lastStart - from + src.lineText(b).length;
}

/** SARIF `artifact.sourceLanguage` for the files mcpc reads. */
function sourceLanguage(file: string): string | undefined {
  if (/\.mcp$/i.test(file)) return 'mcp';
  if (/\.ya?ml$/i.test(file)) return 'yaml';
  if (/\.json$/i.test(file)) return 'json';
  return undefined;
}

/** A note with a span into a named file; others are written into the message text. */
function located(n: Note): n is Note & { span: Span } {
  return n.span !== undefined && n.span.file !== '';
}

/** End a text with a full stop unless it already ends a sentence. */
function sentence(text: string): string {
  const t = text.trimEnd();
  return /[.!?]$/.test(t) ? t : `${t}.`;
}

export function toSarif(diags: Diagnostic[], opts: SarifOptions): SarifLog {
  const cwd = opts.cwd ?? process.cwd();
  const root = resolve(cwd, opts.root);
  const ruleIndex = new Map(codes.map((c, i) => [c, i]));
  const artifacts: SarifArtifact[] = [];
  const artifactIndex = new Map<string, number>();

  const artifactLocation = (file: string): SarifArtifactLocation => {
    const p = rootPath(file, root, cwd);
    const loc: SarifArtifactLocation = p.inside ? { uri: relativeUri(p.rel), uriBaseId: SRCROOT } : { uri: fileUri(p.abs) };
    const key = `${loc.uriBaseId ?? ''}|${loc.uri}`;
    let index = artifactIndex.get(key);
    if (index === undefined) {
      index = artifacts.length;
      artifactIndex.set(key, index);
      const lang = sourceLanguage(file);
      artifacts.push({ location: { ...loc }, roles: ['analysisTarget'], ...(lang ? { sourceLanguage: lang } : {}) });
    }
    return { ...loc, index };
  };

  const physicalLocation = (span: Span): SarifPhysicalLocation => {
    const region: SarifRegion = {
      startLine: span.start.line,
      startColumn: span.start.column,
      endLine: span.end.line,
      endColumn: span.end.column,
    };
    const src = opts.sources?.get(span.file);
    const text = src?.text.slice(span.start.offset, span.end.offset);
    if (text && text.length <= MAX_SNIPPET) region.snippet = { text };
    const loc: SarifPhysicalLocation = { artifactLocation: artifactLocation(span.file), region };
    if (src) {
      const from = src.lineStarts[span.start.line - 1];
      const endLine = Math.min(span.end.line, src.lineStarts.length);
      const length = from === undefined ? 0 : lines(src, span.start.line, endLine);
      const context = length > MAX_SNIPPET ? '' : src.text.slice(from, from + length);
      if (context.trim()) loc.contextRegion = { startLine: span.start.line, endLine, snippet: { text: context } };
    }
    return loc;
  };

  const results: SarifResult[] = diags.map((d) => {
    let text = sentence(d.message);
    for (const n of d.notes) if (!located(n)) text += ` Note: ${sentence(n.message)}`;
    if (d.hint) text += ` Hint: ${sentence(d.hint)}`;
    const index = ruleIndex.get(d.code);
    if (index === undefined) throw new Error(`diagnostic code not in the catalogue: ${d.code}`);
    const result: SarifResult = {
      ruleId: d.code,
      ruleIndex: index,
      level: d.severity,
      message: { text },
      locations: d.span.file === '' ? [] : [{ physicalLocation: physicalLocation(d.span) }],
    };
    const related = d.notes
      .filter(located)
      .map((n, id) => ({ id, message: { text: sentence(n.message) }, physicalLocation: physicalLocation(n.span) }));
    if (related.length) result.relatedLocations = related;
    return result;
  });

  return {
    $schema: SARIF_SCHEMA,
    version: '2.1.0',
    runs: [
      {
        tool: {
          driver: { name: 'mcpc', version: opts.toolVersion, informationUri: INFORMATION_URI, rules: sarifRules() },
        },
        originalUriBaseIds: { [SRCROOT]: { uri: fileUri(root, true), description: { text: 'The project root.' } } },
        artifacts,
        results,
        columnKind: 'utf16CodeUnits',
      },
    ],
  };
}

export function renderSarif(diags: Diagnostic[], opts: SarifOptions): string {
  return JSON.stringify(toSarif(diags, opts), null, 2) + '\n';
}
