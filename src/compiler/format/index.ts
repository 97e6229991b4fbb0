/**
 * The canonical formatter (`mcpc fmt`). It parses the file and prints the AST in one layout; a file with
 * syntax errors is never formatted (its diagnostics come back and no output). It never throws.
 *
 * The layout:
 * - `pipeline NAME [extends "..."]` first, then one blank line.
 * - One declaration or statement per line, indented by two spaces per level of `{ }`. No semicolons (they
 *   are optional separators in the language). No line is ever wrapped, however long.
 * - Stages: `[override] stage NAME [after OTHER] {`, each statement on its own line (`lr 2e-4`, `train ...`,
 *   `constrain ...`, `eval ...`), then `}`. A then-block prints `then {`, one transition per line, `}`;
 *   an empty stage or then-block prints as `stage NAME {}` / `then {}`.
 * - Spacing inside a statement: one space between words, `f(a, key: v)`, `[a, b]`, `x = v`, `, ` between
 *   list items, names and selectors; selectors print as `layers[*].mlp.{gate, up}`, `layers[0..3, -1]`,
 *   `at SEL, SEL except SEL`; a condition as `where load < 2%`.
 * - Numbers, percentages and sizes print exactly as written; strings are re-escaped (`\"`, `\\`, `\n`,
 *   `\t`, `\r`; every other character prints as itself).
 * - A run of declarations of one kind with no blank line between them (own-line comments do not break a
 *   run) aligns its `=`; when two or more of the run have a placement, their `at` is aligned too.
 * - Blank lines the author left between items (or comments) are kept, a run of them becomes one; there is
 *   never a blank line right after `{`, right before `}` or at the start or end of the file.
 * - Comments are never lost and keep their order and text (verbatim, also multi-line block comments, whose
 *   later lines are not re-indented). A comment on its own line stays above the item it precedes, at that
 *   item's indent. A comment after code on a line stays at the end of that item's line, one space after it
 *   (after the `}` for a stage or then-block; after the `{` when it follows the `{`); on consecutive one-line
 *   items that all carry one (no blank line or own-line comment between), these comments start in one
 *   column, one space after the longest line. A comment between the tokens of one statement (in an argument
 *   list, in a stage header before `{`) moves to its own line just above that statement. Comments after the
 *   last item stay at the end of their block (before `}`, or at the end of the file).
 * - `constrain f` and `constrain f()` share one AST; the formatter keeps whichever was written.
 * - Output uses `\n` line breaks (except inside block comments, kept verbatim) and ends with exactly one.
 *
 * Before returning, the output is parsed again and must give the same AST (spans aside) and the same
 * comments; if it does not (a formatter bug), no output is returned and the file stays as it is.
 */
import type { Diagnostic } from '../diagnostics/diagnostic.js';
import { Diagnostics } from '../diagnostics/diagnostic.js';
import { parse } from '../1-parse/index.js';
import type { Span } from '../source.js';
import { layoutFile } from './comments.js';
import { ItemPrinter } from './items.js';
import { sameProgram } from './verify.js';

export interface FormatResult {
  /** The formatted text; absent when the file has errors (see `diagnostics`). */
  output?: string;
  diagnostics: Diagnostic[];
}

export function formatSource(path: string, text: string): FormatResult {
  try {
    const diags = new Diagnostics();
    const parsed = parse(path, text, diags);
    if (!parsed.parsed || diags.errorCount > 0) return { diagnostics: diags.items };

    const printer = new ItemPrinter(parsed.source.text);
    printer.block(layoutFile(parsed.file, parsed.source), '', true);
    const output = printer.lines.length ? `${printer.lines.join('\n')}\n` : '';

    const againDiags = new Diagnostics();
    const again = parse(path, output, againDiags);
    if (!again.parsed || againDiags.errorCount > 0 || !sameProgram(parsed.file, again.file)) {
      return { diagnostics: [...diags.items, internalError(path, 'the formatted text would not parse back to the same pipeline')] };
    }
    return { output, diagnostics: diags.items };
  } catch (err) {
    return { diagnostics: [internalError(path, err instanceof Error ? err.message : String(err))] };
  }
}

/**
 * A formatter bug, reported instead of writing a wrong file. The catalogue has no code for internal errors
 * yet, so this borrows `unexpected_token`; the message says what happened.
 */
function internalError(path: string, why: string): Diagnostic {
  const start = { offset: 0, line: 1, column: 1 };
  const span: Span = { file: path, start, end: start };
  return {
    code: 'unexpected_token',
    severity: 'error',
    message: `internal formatter error (${why}); the file was left unchanged`,
    span,
    hint: 'this is a bug in mcpc fmt: please report it with the file',
    notes: [],
  };
}
