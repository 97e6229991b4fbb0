/**
 * `mcpc lint --format json`: a pretty-printed JSON array, one object per diagnostic.
 *
 * Lines and columns are 1-based; columns count UTF-16 code units; `endLine`/`endColumn` point just past the
 * span (exclusive), so an empty span has `endColumn === column`.
 *
 * With `root`, files inside it are written relative to it with '/' separators, files outside it as absolute
 * paths; without `root`, paths are written as the diagnostics carry them.
 */
import type { Diagnostic } from '../../compiler/diagnostics/diagnostic.js';
import type { Span } from '../../compiler/source.js';
import { rootPath } from './paths.js';

export interface JsonOptions {
  /** Project root; paths are made relative to it. */
  root?: string;
  /** Directory that relative paths in diagnostics are relative to (default: process.cwd()). */
  cwd?: string;
}

export interface JsonNote {
  message: string;
  file?: string;
  line?: number;
  column?: number;
  endLine?: number;
  endColumn?: number;
}

export interface JsonDiagnostic {
  file: string;
  line: number;
  column: number;
  endLine: number;
  endColumn: number;
  severity: 'error' | 'warning';
  code: string;
  message: string;
  hint?: string;
  notes: JsonNote[];
}

export function toJsonDiagnostics(diags: Diagnostic[], opts: JsonOptions = {}): JsonDiagnostic[] {
  const cwd = opts.cwd ?? process.cwd();
  const file = (f: string): string => {
    if (opts.root === undefined) return f;
    const p = rootPath(f, opts.root, cwd);
    return p.inside ? p.rel : p.abs;
  };
  const where = (s: Span) => ({ file: file(s.file), line: s.start.line, column: s.start.column, endLine: s.end.line, endColumn: s.end.column });
  return diags.map((d) => ({
    ...where(d.span),
    severity: d.severity,
    code: d.code,
    message: d.message,
    ...(d.hint !== undefined ? { hint: d.hint } : {}),
    notes: d.notes.map((n) => ({ message: n.message, ...(n.span ? where(n.span) : {}) })),
  }));
}

export function renderJson(diags: Diagnostic[], opts: JsonOptions = {}): string {
  return JSON.stringify(toJsonDiagnostics(diags, opts), null, 2) + '\n';
}
