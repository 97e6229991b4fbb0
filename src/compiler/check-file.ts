/**
 * Front end entry: 1-parse -> 2-check for one file. Kept apart from compile.ts so that `mcpc lint` loads
 * the front end only. Nothing here throws on user input; every problem is a diagnostic.
 */
import { resolve } from 'node:path';
import type { Level } from './diagnostics/catalogue.js';
import { Diagnostics, sortDiagnostics, type Diagnostic } from './diagnostics/diagnostic.js';
import { check, type CheckResult } from './2-check/index.js';
import { describeReadError, displayPath, type CheckHost } from './2-check/host.js';
import { SourceFile } from './source.js';

export interface CheckFileResult extends Partial<CheckResult> {
  diagnostics: Diagnostic[];
  sources: Map<string, SourceFile>;
}

/** Parse and check one pipeline file (and the files it extends). */
export function checkFile(path: string, host: CheckHost, levels: Partial<Record<string, Level>> = {}): CheckFileResult {
  const abs = resolve(host.cwd, path);
  const diags = new Diagnostics(levels);
  const read = host.readFile(abs);
  const shown = displayPath(host, abs);
  if ('error' in read) {
    const src = new SourceFile(shown, '');
    diags.report('unreadable_file', src.span(0, 0), `cannot read ${shown}: ${describeReadError(read.error)}`, { hint: 'check the path (relative to the current folder) and that the file is readable' });
    return { diagnostics: diags.items, sources: new Map([[shown, src]]) };
  }
  const res = check(abs, read.text, host, diags);
  return { ...res, diagnostics: sortDiagnostics(diags.items) };
}

