/**
 * Phase 1: source text -> AST with spans, plus syntax diagnostics. Never throws.
 */
import { basename } from 'node:path';
import { EOF, type IRecognitionException, type IToken } from './chevrotain.js';
import type { Diagnostics } from '../diagnostics/diagnostic.js';
import { SourceFile } from '../source.js';
import type * as A from './ast.js';
import { MAX_SYNTAX_ERRORS, parser, TooManySyntaxErrors } from './parser.js';
import { layoutChecks } from './layout-checks.js';
import { AstBuilder } from './to-ast.js';
import * as T from './tokens.js';

/** Deeper bracket nesting than this is refused before parsing (recursive descent would overflow). */
export const MAX_NESTING = 64;
/** Larger files are refused: a pipeline is a few kilobytes. */
export const MAX_FILE_BYTES = 4 * 1024 * 1024;

const ruleHints: Record<string, string> = {
  file: 'a pipeline holds `pipeline <name>`, then declarations (model, tokenizer, data, adapter, probe), stages and exports',
  topItem: 'top-level items are `model`, `tokenizer`, `data`, `adapter`, `probe` declarations, `stage NAME { ... }` and `export`',
  decl: 'a declaration reads `adapter NAME = lora(r: 16, alpha: 32) at layers[*].attn.{q, k, v, o}`',
  placement: 'a placement reads `at layers[*].mlp.{gate, up, down}`, optionally followed by `except layers[0].mlp.down`',
  selector: 'selector segments are names (`mlp`), indexed names (`layers[0..3]`), sets (`{q, k}`) or `*`',
  segment: 'selector segments are names (`mlp`), indexed names (`layers[0..3]`), sets (`{q, k}`) or `*`',
  index: 'an index is `[*]`, `[3]`, `[0..5]` (inclusive) or a list such as `[0, 2, 4..7]`; negative counts from the end',
  stage: 'a stage reads `stage NAME { train ... on ...; lr 2e-4; then { ... } }`',
  stageItem: 'a stage holds `train`, `then { ... }`, `constrain`, `eval`, `adapter` declarations and settings such as `lr 2e-4`',
  setting: 'a setting is a name and one value: `lr 2e-4`, `schedule cosine(warmup: 3%)`',
  train: 'write `train ADAPTER[, ADAPTER] on DATA` (or `train base on DATA` for full-parameter training)',
  then: 'a then-block holds `merge X into base`, `drop X [where load < 2%]`, `freeze X`, `unfreeze X`',
  merge: 'write `merge ADAPTER into MODEL`',
  drop: 'write `drop ADAPTER` or `drop ADAPTER.experts where load < 2%`',
  condition: 'a condition reads `load < 2%`',
  constrain: 'write `constrain orthogonal(align.A, knowledge.A) weight 1.0 norm l1`',
  evalItem: 'write `eval PROBE[, PROBE] [every 100]`',
  exportItem: 'write `export peft "out/adapters"`, `export peft ADAPTER "path"` or `export merged "out/model"`',
  refOrCall: 'a call reads `name(arg, key: value)`',
  arg: 'arguments are values or `key: value` pairs separated by commas',
  list: 'a list reads `[a, b, c]`',
  expr: 'values are numbers (2e-4), percentages (3%), sizes (8GB), strings, true/false, names, calls and lists',
};

export interface ParseResult {
  file: A.PipelineFile;
  source: SourceFile;
  /** False when the file could not be parsed at all (too large, too deep, too many syntax errors): `file` is then empty. */
  parsed: boolean;
  /** Number of lexical and syntax errors reported for this file. */
  syntaxErrors: number;
}

function emptyFile(src: SourceFile): A.PipelineFile {
  return { path: src.path, items: [], comments: [], span: src.span(0, src.text.length) };
}

export function parse(path: string, text: string, diags: Diagnostics): ParseResult {
  const before = diags.errorCount;
  const res = parseInner(path, text, diags);
  return { ...res, syntaxErrors: diags.errorCount - before };
}

function parseInner(path: string, text: string, diags: Diagnostics): Omit<ParseResult, 'syntaxErrors'> {
  const src = new SourceFile(path, text);
  if (text.length > MAX_FILE_BYTES) {
    diags.report('file_too_large', src.span(0, 0), `the file has ${text.length} characters; a pipeline may have at most ${MAX_FILE_BYTES} (${MAX_FILE_BYTES / 2 ** 20} MiB)`);
    return { file: emptyFile(src), source: src, parsed: false };
  }

  const lexed = T.lexer.tokenize(text);
  for (const err of lexed.errors.slice(0, MAX_SYNTAX_ERRORS)) {
    const ch = text.slice(err.offset, err.offset + err.length);
    const shown = ch.length > 20 ? ch.slice(0, 20) + '…' : ch;
    const hint = invalidCharHint(ch);
    diags.report('invalid_character', src.span(err.offset, err.offset + Math.max(1, Math.min(err.length, 20))), `unexpected ${[...ch].length > 1 ? 'characters' : 'character'} ${showChars(shown)}`, hint ? { hint } : {});
  }

  const comments: A.Comment[] = [];
  for (const c of (lexed.groups.comments ?? []) as IToken[]) {
    if (c.tokenType === T.UnterminatedComment) {
      diags.report('unterminated_comment', src.span(c.startOffset, c.startOffset + 2), 'this block comment is never closed');
    }
    comments.push({ text: c.image, span: src.span(c.startOffset, c.endOffset! + 1) });
  }

  // The token after an unterminated string: the string swallowed the rest of its line (often a `)`), so a
  // syntax error right there is a consequence of the missing quote, not a second mistake.
  const afterOpenString = new Set<number>();
  const tokens = lexed.tokens.map((t, i) => {
    if (t.tokenType !== T.UnterminatedString) return t;
    diags.report('unterminated_string', src.span(t.startOffset, t.endOffset! + 1), 'this string is missing its closing quote');
    const next = lexed.tokens[i + 1];
    afterOpenString.add(next ? next.startOffset : text.length);
    // Parse it as a string so one missing quote does not cascade into more errors.
    return { ...t, tokenType: T.StringLit, tokenTypeIdx: T.StringLit.tokenTypeIdx! };
  });

  let depth = 0;
  for (const t of tokens) {
    const k = t.tokenType;
    if (k === T.LParen || k === T.LBracket || k === T.LBrace) {
      if (++depth > MAX_NESTING) {
        diags.report('nesting_too_deep', src.span(t.startOffset, t.endOffset! + 1), `brackets nest deeper than ${MAX_NESTING} levels here`);
        return { file: emptyFile(src), source: src, parsed: false };
      }
    } else if (k === T.RParen || k === T.RBracket || k === T.RBrace) depth = Math.max(0, depth - 1);
  }

  parser.input = tokens;
  let cst;
  try {
    cst = parser.file();
  } catch (err) {
    if (err instanceof TooManySyntaxErrors) {
      // The parser stopped at the error after the last one reported: report those, build nothing.
      const seen = new Set<number>(afterOpenString);
      for (const e of parser.errors) reportSyntaxError(e, src, tokens, diags, seen);
      return { file: emptyFile(src), source: src, parsed: false };
    }
    // Chevrotain recovery should never throw; if it does (e.g. a stack overflow on pathological input),
    // keep the promise that parsing never throws and report what we can.
    diags.report('unexpected_token', src.span(0, 0), `the parser gave up on this file (${(err as Error).message ?? err})`);
    return { file: emptyFile(src), source: src, parsed: false };
  }

  const seen = new Set<number>(afterOpenString);
  for (const e of parser.errors.slice(0, MAX_SYNTAX_ERRORS)) reportSyntaxError(e, src, tokens, diags, seen);

  const file = new AstBuilder(src).file(cst, comments);
  layoutChecks(file, tokens, src, diags);
  if (!file.header && parser.errors.length === 0) {
    const first = tokens[0];
    const name = basename(path).replace(/\.mcp$/, '').replace(/[^A-Za-z0-9_]/g, '_').replace(/^(?=[0-9])/, '_') || 'my_pipeline';
    diags.report('missing_pipeline_header', first ? src.span(first.startOffset, first.endOffset! + 1) : src.span(0, 0), 'the file does not start with `pipeline <name>`', {
      hint: `add \`pipeline ${name}\` as the first line`,
    });
  }
  return { file, source: src, parsed: true };
}

/** Characters shown in a message: in backticks, with invisible ones spelt as code points. */
function showChars(s: string): string {
  const visible = [...s].every((c) => /[\p{L}\p{N}\p{P}\p{S}]/u.test(c));
  return visible ? `\`${s}\`` : [...s].map((c) => (c === '…' ? c : `U+${c.codePointAt(0)!.toString(16).toUpperCase().padStart(4, '0')}`)).join(' ');
}

/** Hints for characters people commonly carry over from other languages or from documents. */
function invalidCharHint(ch: string): string | undefined {
  const c = ch[0];
  if (c === '#') return 'comments start with `//` (or `/* ... */`), not `#`';
  if (c === '\\') return 'a statement may run over several lines as it is; no `\\` is needed at the end of a line';
  if ('\u201C\u201D\u201E'.includes(c)) return 'typographic quotes (from a word processor or a PDF) are not string quotes: use straight `"`';
  if ('\u2018\u2019'.includes(c) || c === "'") return 'strings use double quotes: `"data/train.jsonl"`';
  if ('\u2212\u2013\u2014'.includes(c)) return 'this is a typographic dash, not a minus sign: use `-`';
  return undefined;
}

function reportSyntaxError(e: IRecognitionException, src: SourceFile, tokens: IToken[], diags: Diagnostics, seen: Set<number>): void {
  let tok = e.token;
  const atEnd = !tok || tok.tokenType === EOF || !Number.isFinite(tok.startOffset);
  if (atEnd) {
    // Point just after the last real token, where the missing part belongs.
    const last = tokens[tokens.length - 1];
    tok = last ?? tok;
  }
  const start = atEnd ? (tok && Number.isFinite(tok.endOffset) ? tok.endOffset! + 1 : src.text.length) : tok.startOffset;
  if (seen.has(start)) return;
  seen.add(start);
  const end = atEnd ? start : tok.endOffset! + 1;
  const stack = e.context?.ruleStack ?? [];
  const rule = stack[stack.length - 1] ?? 'file';
  // `lr: 2e-4` and `epochs = 3` (YAML and Python habits) deserve a hint about settings, not about values.
  let hint = ruleHints[rule];
  if (!atEnd && rule === 'expr' && stack.includes('setting') && (tok.tokenType === T.Colon || tok.tokenType === T.Equals)) {
    const i = tokens.indexOf(e.token);
    const name = tokens[i - 1]?.image ?? 'lr';
    const next = tokens[i + 1];
    const rest = next ? src.lineText(src.position(next.startOffset).line).slice(src.position(next.startOffset).column - 1).replace(/\s*\/\/.*$/, '').trim() : '';
    hint = `a setting is its name and its value, with no \`${tok.image}\` between them: \`${name} ${rest || 'VALUE'}\``;
  }
  // At the end of the file, the innermost bracket left open is usually the one whose closer is missing.
  const open = atEnd ? unclosedBracket(tokens) : undefined;
  const notes = open ? [{ message: `this \`${open.image}\` is never closed`, span: src.span(open.startOffset, open.endOffset! + 1) }] : [];
  diags.report(atEnd ? 'unexpected_end' : 'unexpected_token', src.span(start, end), e.message, { ...(hint ? { hint } : {}), notes });
}

function unclosedBracket(tokens: IToken[]): IToken | undefined {
  const closer = new Map([[T.RParen, T.LParen], [T.RBracket, T.LBracket], [T.RBrace, T.LBrace]]);
  const stack: IToken[] = [];
  for (const t of tokens) {
    if (t.tokenType === T.LParen || t.tokenType === T.LBracket || t.tokenType === T.LBrace) stack.push(t);
    else if (closer.has(t.tokenType) && stack[stack.length - 1]?.tokenType === closer.get(t.tokenType)) stack.pop();
  }
  return stack[stack.length - 1];
}
