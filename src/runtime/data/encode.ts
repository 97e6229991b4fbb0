/**
 * Records and text to training examples.
 *
 * An example is next-token prediction over one sequence of ids `x[0..L)`: inputs `tokens = x[0..L-1)`,
 * targets `labels = x[1..L)` (already shifted: `labels[t]` is what the model should predict after reading
 * `tokens[0..t]`), and `mask[t] = 1` when `labels[t]` is in the loss. `max_len` bounds the inputs, so an
 * example holds at most `max_len` positions and covers at most `max_len + 1` ids.
 *
 * Truncation of a conversation longer than that (counted in the dataset statistics):
 * 1. if the last assistant turn (its marker, content and end-of-turn) fits, the oldest ids are dropped
 *    (left truncation): the response stays whole and the model keeps the end of the prompt, the part next
 *    to the answer;
 * 2. otherwise the example starts at the last assistant turn and is cut on the right: the response keeps
 *    its beginning and loses its end-of-turn token, so the model is never taught to stop early.
 *
 * Text sources: the whole file is one id stream cut into consecutive windows of `max_len + 1` ids that
 * overlap by one id, so every id but the first is a target exactly once; loss on every position.
 */

import type { Tokenizer } from '../tokenizer/types.js';
import { DataError } from './errors.js';
import type { ChatRecord } from './records.js';
import { describeSpecial, encodeChat, type ChatTemplate } from './template.js';

export interface Example {
  /** Inputs, length n with 1 <= n <= max_len. */
  tokens: Int32Array;
  /** Targets, the ids after each input (same length). */
  labels: Int32Array;
  /** 1 where the target is in the loss. */
  mask: Uint8Array;
  /** File and line (for text windows, the line where the window starts). */
  source: { file: string; line: number };
  /** How the example was cut to fit `max_len`. */
  truncated: 'none' | 'left' | 'right';
}

export interface EncodeOptions {
  /** Most inputs per example (the stage's `max_len`), at least 1. */
  maxLen: number;
  /** `response` (default): loss on assistant turns only; `all`: on every target. */
  lossOn?: 'response' | 'all';
}

/** A chat record as an example; throws {@link DataError} naming the record's line when it cannot be encoded. */
export function encodeRecord(rec: ChatRecord, tok: Tokenizer, template: ChatTemplate, opts: EncodeOptions): Example {
  checkMaxLen(opts.maxLen);
  const enc = encodeChat(tok, template, rec.messages, { lossOn: opts.lossOn });
  if (typeof enc === 'string') throw new DataError(rec.source.file, rec.source.line, enc);
  const { ids, loss, lastTurnStart } = enc;
  const span = opts.maxLen + 1;
  let from = 0;
  let to = ids.length;
  let truncated: Example['truncated'] = 'none';
  if (ids.length > span) {
    if (lastTurnStart >= 0 && ids.length - lastTurnStart <= span) {
      from = ids.length - span;
      truncated = 'left';
    } else {
      from = Math.max(0, lastTurnStart);
      to = from + span;
      truncated = 'right';
    }
  }
  return makeExample(ids, loss, from, to, rec.source, truncated);
}

/**
 * Text as examples: consecutive windows of `maxLen` inputs, loss everywhere. `file` names the source in
 * messages. Throws {@link DataError} when the text contains one of the tokenizer's special ids.
 */
export function encodeText(text: string, tok: Tokenizer, file: string, opts: EncodeOptions & { maxWindows?: number }): Example[] {
  checkMaxLen(opts.maxLen);
  const ids = tok.encode(text);
  const badAt = ids.findIndex((id) => tok.specialIds.has(id));
  if (badAt >= 0) {
    const { line, id } = locateSpecial(text, tok);
    throw new DataError(file, line, `the text contains ${describeSpecial(tok, id ?? ids[badAt]!)}, which the tokenizer reserves; remove it`);
  }
  const out: Example[] = [];
  const ones = new Uint8Array(ids.length).fill(1);
  const max = opts.maxWindows ?? Infinity;
  // Line of each window start (for messages): newlines in the decoded ids before it. Exact even when a
  // window starts inside a multi-byte character, since a newline byte is never part of one.
  let line = 1;
  let counted = 0;
  for (let s = 0; s + 1 < ids.length && out.length < max; s += opts.maxLen) {
    if (s > counted) {
      line += countNewlines(tok.decode(ids.slice(counted, s)));
      counted = s;
    }
    out.push(makeExample(ids, ones, s, Math.min(s + opts.maxLen + 1, ids.length), { file, line }, 'none'));
  }
  return out;
}

function makeExample(ids: readonly number[], loss: Uint8Array, from: number, to: number, source: Example['source'], truncated: Example['truncated']): Example {
  const n = to - from - 1;
  const tokens = new Int32Array(n);
  const labels = new Int32Array(n);
  const mask = new Uint8Array(n);
  for (let t = 0; t < n; t++) {
    tokens[t] = ids[from + t]!;
    labels[t] = ids[from + t + 1]!;
    mask[t] = loss[from + t + 1]!;
  }
  return { tokens, labels, mask, source, truncated };
}

function checkMaxLen(maxLen: number): void {
  if (!Number.isInteger(maxLen) || maxLen < 1) throw new RangeError(`max_len must be a positive integer, got ${maxLen}`);
}

function countNewlines(s: string): number {
  let n = 0;
  for (let i = s.indexOf('\n'); i >= 0; i = s.indexOf('\n', i + 1)) n++;
  return n;
}

function locateSpecial(text: string, tok: Tokenizer): { line: number; id?: number } {
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const id = tok.encode(lines[i]!).find((x) => tok.specialIds.has(x));
    if (id !== undefined) return { line: i + 1, id };
  }
  return { line: 0 };
}
