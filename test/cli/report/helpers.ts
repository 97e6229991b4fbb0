import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { Code, Severity } from '../../../src/compiler/diagnostics/catalogue.js';
import type { Diagnostic, Note } from '../../../src/compiler/diagnostics/diagnostic.js';
import { SourceFile, type Span } from '../../../src/compiler/source.js';

/** A fixture under test/cli/report/fixtures/, loaded as a SourceFile under the path `as`. */
export function fixture(name: string, as: string): SourceFile {
  const text = readFileSync(fileURLToPath(new URL(`./fixtures/${name}`, import.meta.url)), 'utf8');
  return new SourceFile(as, text);
}

/** The span of the `nth` occurrence of `needle` in the file (or `length` units from its start). */
export function spanOf(src: SourceFile, needle: string, nth = 0, length = needle.length): Span {
  let at = -1;
  for (let i = 0; i <= nth; i++) {
    at = src.text.indexOf(needle, at + 1);
    if (at < 0) throw new Error(`${needle} #${nth} not in ${src.path}`);
  }
  return src.span(at, at + length);
}

export function diag(
  code: Code,
  span: Span,
  message: string,
  extra: { severity?: Severity; hint?: string; notes?: Note[] } = {},
): Diagnostic {
  return {
    code,
    severity: extra.severity ?? 'error',
    message,
    span,
    ...(extra.hint !== undefined ? { hint: extra.hint } : {}),
    notes: extra.notes ?? [],
  };
}

export function sourcesOf(...files: SourceFile[]): Map<string, SourceFile> {
  return new Map(files.map((f) => [f.path, f]));
}

// eslint-disable-next-line no-control-regex
export const stripAnsi = (s: string): string => s.replace(/\x1b\[[0-9;]*m/g, '');
