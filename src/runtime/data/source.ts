/**
 * A plan's data entry to examples: resolve the path inside the project, read (JSONL records or text),
 * encode with the tokenizer and chat template, and count what happened.
 */

import { readFile } from 'node:fs/promises';
import { isAbsolute, relative, resolve, sep } from 'node:path';
import type { Plan } from '../../plan/types.js';
import type { Tokenizer } from '../tokenizer/types.js';
import { encodeRecord, encodeText, type Example } from './encode.js';
import { DataError } from './errors.js';
import { readJsonl } from './jsonl.js';
import type { RecordFormat } from './records.js';
import { defaultChatTemplate, type ChatTemplate } from './template.js';

export type DataSpec = Plan['data'][number];

export interface LoadDataOptions {
  /** Project root: relative paths resolve against it, and paths must stay inside it. */
  root: string;
  tokenizer: Tokenizer;
  /** Default: {@link defaultChatTemplate} of the tokenizer. */
  template?: ChatTemplate;
  /** The stage's `max_len`. */
  maxLen: number;
  /** The stage's `loss` setting. Default 'response'. */
  lossOn?: 'response' | 'all';
  /** Count bad records as warnings instead of failing (`--skip-bad-records`). */
  skipBadRecords?: boolean;
  /** Allow paths outside the root (mcpc.yaml `allow_outside_root`). */
  allowOutsideRoot?: boolean;
}

export interface Dataset {
  name: string;
  /** The path as the plan gives it (used in messages). */
  file: string;
  examples: Example[];
  /** Records read (JSONL) or windows cut (text). */
  records: number;
  /** Bad records skipped (only with skipBadRecords). */
  skipped: number;
  warnings: DataError[];
  /** Examples cut to fit max_len. */
  truncated: number;
  /** Input positions over all examples. */
  tokens: number;
  /** Targets in the loss over all examples. */
  lossTokens: number;
  /** Examples with no target in the loss (a response cut away by max_len): they train nothing. */
  noLoss: number;
}

/** Loads one data entry of a plan. Throws {@link DataError} naming the file (and line) on bad input. */
export async function loadDataSource(spec: DataSpec, opts: LoadDataOptions): Promise<Dataset> {
  const file = spec.path;
  const path = resolveInside(opts.root, file, opts.allowOutsideRoot ?? false);
  const tok = opts.tokenizer;
  const template = opts.template ?? defaultChatTemplate(tok);
  const examples: Example[] = [];
  const warnings: DataError[] = [];
  let records = 0;

  if (spec.kind === 'text' || spec.format === 'text') {
    let text: string;
    try {
      text = await readFile(path, 'utf8');
    } catch (e) {
      throw new DataError(file, 0, `cannot read: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file (paths are relative to the project root)' : ((e as NodeJS.ErrnoException).code ?? String(e))}`);
    }
    if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    examples.push(...encodeText(text, tok, file, { maxLen: opts.maxLen, maxWindows: spec.maxRecords }));
    records = examples.length;
  } else {
    const format = spec.format as RecordFormat;
    if (format !== 'chat' && format !== 'instruction') throw new DataError(file, 0, `unknown record format \`${spec.format}\`; expected chat or instruction`);
    const read = await readJsonl(path, { format, skipBadRecords: opts.skipBadRecords, maxRecords: spec.maxRecords }, file);
    warnings.push(...read.warnings);
    for (const rec of read.records) {
      try {
        examples.push(encodeRecord(rec, tok, template, { maxLen: opts.maxLen, lossOn: opts.lossOn }));
      } catch (e) {
        if (!(e instanceof DataError) || !opts.skipBadRecords) throw e;
        warnings.push(e);
      }
    }
    records = read.records.length;
    warnings.sort((a, b) => a.line - b.line);
  }
  if (examples.length === 0) {
    const why = warnings.length > 0 ? ` (${warnings.length} bad record${warnings.length === 1 ? '' : 's'} skipped)` : '';
    throw new DataError(file, 0, `no usable records${why}`);
  }
  let tokens = 0;
  let lossTokens = 0;
  let truncated = 0;
  let noLoss = 0;
  for (const ex of examples) {
    tokens += ex.tokens.length;
    let own = 0;
    for (const m of ex.mask) own += m;
    lossTokens += own;
    if (own === 0) noLoss++;
    if (ex.truncated !== 'none') truncated++;
  }
  // Training on it would take steps of loss 0 and move nothing (and report success).
  if (lossTokens === 0) {
    throw new DataError(
      file,
      0,
      `no example has a token in the loss at max_len ${opts.maxLen}` +
        (truncated ? ` (${truncated} of ${examples.length} were cut to fit, and what was kept of each is prompt or turn markers)` : opts.lossOn === 'all' ? '' : ' (the records have no assistant response to learn)') +
        (truncated ? '; raise the stage\'s max_len' : ''),
    );
  }
  return { name: spec.name, file, examples, records, skipped: warnings.length, warnings, truncated, tokens, lossTokens, noLoss };
}

/** The examples of several sources, in the order given (a stage trained on several data entries). */
export function concatDatasets(sets: readonly Dataset[]): Example[] {
  return sets.flatMap((d) => d.examples);
}

/** Resolves `file` against `root`; refuses a path that leaves the root unless allowed. */
export function resolveInside(root: string, file: string, allowOutside: boolean): string {
  const abs = isAbsolute(file) ? file : resolve(root, file);
  if (!allowOutside) {
    const rel = relative(resolve(root), abs);
    if (rel === '..' || rel.startsWith(`..${sep}`) || isAbsolute(rel)) {
      throw new DataError(file, 0, 'the path leaves the project root; move the file into the project or set allow_outside_root: true in mcpc.yaml');
    }
  }
  return abs;
}
