/**
 * The output formats of `mcpc lint`. The command collects diagnostics and sources, picks a format and
 * writes what {@link renderDiagnostics} returns (always ending in a newline) to stdout.
 */
import { sortDiagnostics, type Diagnostic } from '../../compiler/diagnostics/diagnostic.js';
import type { SourceFile } from '../../compiler/source.js';
import { renderJson } from './json.js';
import { renderSarif } from './sarif.js';
import { renderText } from './text.js';

export { renderJson, toJsonDiagnostics, type JsonDiagnostic, type JsonNote, type JsonOptions } from './json.js';
export { renderSarif, sarifRules, toSarif, pascalCase, type SarifLog, type SarifOptions } from './sarif.js';
export { renderText, useColor, type TextOptions } from './text.js';

export const reportFormats = ['text', 'json', 'sarif'] as const;
export type ReportFormat = (typeof reportFormats)[number];

export function isReportFormat(s: string): s is ReportFormat {
  return (reportFormats as readonly string[]).includes(s);
}

export interface RenderOptions {
  /** text: ANSI colour (see `useColor`). Default false. */
  color?: boolean;
  /** json, sarif: project root that paths are made relative to. json default: paths as given; sarif default: cwd. */
  root?: string;
  /** sarif: `tool.driver.version`. Default 'unknown'. */
  toolVersion?: string;
  /** Directory that relative paths in diagnostics are relative to. Default process.cwd(). */
  cwd?: string;
}

/** Sort the diagnostics (file, position, code) and render them in one of the formats. */
export function renderDiagnostics(
  format: ReportFormat,
  diags: Diagnostic[],
  sources: Map<string, SourceFile>,
  opts: RenderOptions = {},
): string {
  const sorted = sortDiagnostics(diags);
  switch (format) {
    case 'text':
      return renderText(sorted, sources, { color: opts.color ?? false });
    case 'json':
      return renderJson(sorted, { root: opts.root, cwd: opts.cwd });
    case 'sarif': {
      const cwd = opts.cwd ?? process.cwd();
      return renderSarif(sorted, { root: opts.root ?? cwd, toolVersion: opts.toolVersion ?? 'unknown', cwd, sources });
    }
    default: {
      const never: never = format;
      throw new Error(`unknown report format: ${String(never)}`);
    }
  }
}
