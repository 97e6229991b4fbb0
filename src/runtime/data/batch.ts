/**
 * Micro-batches: examples laid out as `rows x seqLen` arrays, row-major (`[b * seqLen + t]`).
 *
 * Padding: one example per row, padded on the right with the pad id, to the longest example of the
 * micro-batch (`pad-longest`) or to `max_len` (`pad-max`, one shape for every micro-batch).
 *
 * Packing: several whole examples per row, one after another, then padding. An example is never split
 * across rows or micro-batches, and its labels are its own (they were shifted inside the example), so no
 * target ever crosses from one record to the next. Attention would cross records, so each position carries
 * - `segments`: 1, 2, ... for the examples of its row in order, 0 on padding;
 * - `positions`: the position within its own example (restarting at 0), for rotary embeddings.
 * The model must let query i attend key j only when `j <= i` and `segments[i] == segments[j]` (same row).
 * Padding positions (segment 0) have mask 0; a model may let them attend to themselves only, which keeps
 * their softmax finite without touching any real position.
 *
 * The same two arrays are filled without packing (one segment per row), so a model can use one code path;
 * `packed` says whether a row can hold more than one segment.
 */

import type { Example } from './encode.js';

export interface MicroBatch {
  rows: number;
  seqLen: number;
  /** Inputs, [rows * seqLen]. */
  tokens: Int32Array;
  /** Targets (already shifted), [rows * seqLen]; the pad id where there is no target. */
  labels: Int32Array;
  /** 1 where the target is in the loss, 0 elsewhere (padding included), [rows * seqLen]. */
  mask: Float32Array;
  /** Position of each token within its example, 0 on padding, [rows * seqLen]. */
  positions: Int32Array;
  /** Example number within the row (1, 2, ...), 0 on padding, [rows * seqLen]. */
  segments: Int32Array;
  /** Whether rows may hold several examples (packing). */
  packed: boolean;
  /** Dataset indices of the examples, in layout order (row by row). */
  examples: number[];
  /** Sum of `mask`: the targets in the loss. */
  lossTokens: number;
}

/**
 * Lays out rows of examples. `rowsOfExamples[r]` lists the dataset indices placed in row r (at most `rows`
 * rows; missing rows are all padding). Throws RangeError if a row's examples exceed `seqLen`.
 */
export function collate(examples: readonly Example[], rowsOfExamples: readonly (readonly number[])[], rows: number, seqLen: number, padId: number, packed: boolean): MicroBatch {
  if (rowsOfExamples.length > rows) throw new RangeError(`collate: ${rowsOfExamples.length} rows given for a micro-batch of ${rows}`);
  const size = rows * seqLen;
  const tokens = new Int32Array(size).fill(padId);
  const labels = new Int32Array(size).fill(padId);
  const mask = new Float32Array(size);
  const positions = new Int32Array(size);
  const segments = new Int32Array(size);
  const order: number[] = [];
  let lossTokens = 0;
  for (let r = 0; r < rowsOfExamples.length; r++) {
    let at = r * seqLen;
    const rowEnd = at + seqLen;
    let seg = 0;
    for (const idx of rowsOfExamples[r]!) {
      const ex = examples[idx]!;
      const n = ex.tokens.length;
      if (at + n > rowEnd) throw new RangeError(`collate: row ${r} holds more than ${seqLen} tokens`);
      seg++;
      tokens.set(ex.tokens, at);
      labels.set(ex.labels, at);
      for (let t = 0; t < n; t++) {
        mask[at + t] = ex.mask[t]!;
        lossTokens += ex.mask[t]!;
        positions[at + t] = t;
        segments[at + t] = seg;
      }
      at += n;
      order.push(idx);
    }
  }
  return { rows, seqLen, tokens, labels, mask, positions, segments, packed, examples: order, lossTokens };
}
