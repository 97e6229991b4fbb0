/**
 * Syntax checks the grammar cannot express because the language is free-form (newlines are not tokens):
 * tokens glued together (`1lr`), a setting whose value is missing (it would swallow the next line's
 * name), and non-integer selector indices.
 */
import type { IToken } from './chevrotain.js';
import type { Diagnostics } from '../diagnostics/diagnostic.js';
import type { SourceFile } from '../source.js';
import type * as A from './ast.js';
import { MAX_SYNTAX_ERRORS } from './parser.js';
import * as T from './tokens.js';

const numeric = new Set([T.NumberLit, T.Percent, T.Size]);

export function layoutChecks(file: A.PipelineFile, tokens: IToken[], src: SourceFile, all: Diagnostics): void {
  // Like the parser, report at most MAX_SYNTAX_ERRORS: a generated file can glue a number to a name a
  // million times, and a million diagnostics help nobody.
  let left = MAX_SYNTAX_ERRORS;
  const diags: Reporter = { report: (...args) => void (left-- > 0 && all.report(...args)) };
  for (let i = 0; i + 1 < tokens.length; i++) {
    const a = tokens[i];
    const b = tokens[i + 1];
    if (numeric.has(a.tokenType) && b.startOffset === a.endOffset! + 1 && (b.tokenType === T.Ident || T.keywords.includes(b.tokenType))) {
      diags.report('unexpected_token', src.span(a.startOffset, b.endOffset! + 1), `\`${a.image}\` runs into \`${b.image}\`: a number and a name need a space between them`, {
        hint: `write \`${a.image} ${b.image}\` (sizes are written 8GB or 512MiB, percentages 3%)`,
      });
    }
  }
  for (const item of file.items) {
    if (item.kind === 'stage') {
      for (const s of item.items) {
        if (s.kind === 'setting' && s.value && s.value.span.start.line > s.name.span.start.line) {
          diags.report('unexpected_token', s.name.span, `\`${s.name.name}\` has no value on its line`, {
            hint: `a setting and its value share a line: \`${s.name.name} VALUE\`; without it, the next line's first word would be taken as the value`,
          });
        }
        if (s.kind === 'decl' && s.placement) checkIndices(s.placement, diags);
      }
    } else if (item.kind === 'decl' && item.placement) checkIndices(item.placement, diags);
  }
}

type Reporter = Pick<Diagnostics, 'report'>;

function checkIndices(p: A.Placement, diags: Reporter): void {
  for (const sel of [...p.include, ...p.exclude]) {
    for (const seg of sel.segments) {
      if (seg.kind !== 'name' || !seg.index || seg.index.kind !== 'items') continue;
      for (const it of seg.index.items) {
        if (!Number.isInteger(it.from) || (it.to !== undefined && !Number.isInteger(it.to))) {
          diags.report('invalid_value', it.span, 'layer indices are whole numbers', { hint: 'write `3`, `0..5` (inclusive) or `-1` (the last)' });
        }
      }
    }
  }
}
