/**
 * Diagnostics are values, never exceptions: every phase reports into a Diagnostics collector and carries on.
 */
import type { Span } from '../source.js';
import { catalogue, type Code, type Level, type Severity } from './catalogue.js';

export interface Note {
  message: string;
  span?: Span;
}

export interface Diagnostic {
  code: Code;
  severity: Severity;
  message: string;
  span: Span;
  hint?: string;
  notes: Note[];
}

export interface ReportOptions {
  hint?: string;
  notes?: Note[];
}

/** Collects diagnostics; applies the project's lint levels as they are reported. */
export class Diagnostics {
  readonly items: Diagnostic[] = [];

  constructor(private readonly levels: Partial<Record<string, Level>> = {}) {}

  report(code: Code, span: Span, message: string, opts: ReportOptions = {}): void {
    const entry = catalogue[code];
    let severity: Severity = entry.level;
    if (entry.kind === 'lint') {
      const level = this.levels[code];
      if (level === 'off') return;
      if (level) severity = level;
    }
    const hint = opts.hint ?? entry.hint;
    this.items.push({ code, severity, message, span, ...(hint ? { hint } : {}), notes: opts.notes ?? [] });
  }

  get errorCount(): number {
    return this.items.filter((d) => d.severity === 'error').length;
  }

  get warningCount(): number {
    return this.items.filter((d) => d.severity === 'warning').length;
  }
}

/** Stable order for output: by file, then position, then code. */
export function sortDiagnostics(ds: Diagnostic[]): Diagnostic[] {
  return [...ds].sort(
    (a, b) =>
      (a.span.file < b.span.file ? -1 : a.span.file > b.span.file ? 1 : 0) ||
      a.span.start.offset - b.span.start.offset ||
      (a.code < b.code ? -1 : a.code > b.code ? 1 : 0),
  );
}
