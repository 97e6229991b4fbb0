/**
 * Next-token logits from a stage runner, for the probes: sequences in, the logits at chosen positions out.
 *
 * Each call is one forward of the stage's graph over a micro-batch of the given sequences, one per row,
 * padded on the right to the longest (positions 0.., one segment per row; causal attention, so padding never
 * reaches a real position). The logits are `x.final · Wᵀ` with W the LM head the stage's `lm_head_xent` step
 * reads (the embedding when the model is tied), or the `logits` value when adapters sit on the head. The
 * loss the graph also computes is ignored (no position is in its mask).
 */
import type { MicroBatch } from '../data/batch.js';
import type { StageRunner } from '../executor.js';

export interface LogitsModel {
  readonly vocab: number;
  /** Most sequences per call. */
  readonly rows: number;
  /** `out[r][k]`: the logits (length `vocab`) after reading `seqs[r][0..at[r][k]]`, i.e. predicting position `at[r][k] + 1` (asynchronous: the runner's reads are). */
  logits(seqs: readonly (readonly number[])[], at: readonly (readonly number[])[]): Promise<Float32Array[][]>;
}

/** Thrown when the stage's graph has no LM head the probes can read (a plan the runtime does not know). */
export class ProbeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ProbeError';
  }
}

/** The runner's model as a {@link LogitsModel}: `rows` sequences per forward, padded with `padId`. */
export function runnerLogits(runner: StageRunner, rows: number, padId: number): LogitsModel {
  const head = runner.stage.forward.find((s) => s.op === 'lm_head_xent');
  if (!head) throw new ProbeError(`stage ${runner.stage.name}: the graph has no lm_head_xent step, so the probes cannot read logits`);
  const given = head.attrs?.logitsGiven === true || head.inputs.length === 3;
  const vocab = runner.plan.model.config.vocab;
  const [xId, wId] = [head.inputs[0]!, head.inputs[1]!];
  return {
    vocab,
    rows,
    async logits(seqs, at) {
      if (seqs.length > rows) throw new RangeError(`logits: ${seqs.length} sequences for ${rows} rows`);
      const seqLen = Math.max(1, ...seqs.map((s) => s.length));
      const mb = layout(seqs, seqLen, padId);
      const vals = await runner.forward(mb, given ? [xId] : [xId, wId]);
      const x = vals.get(xId)!;
      const w = given ? undefined : vals.get(wId)!;
      const hidden = given ? vocab : x.length / (seqs.length * seqLen);
      return seqs.map((_, r) =>
        at[r]!.map((t) => {
          const row = x.subarray((r * seqLen + t) * hidden, (r * seqLen + t + 1) * hidden);
          if (!w) return Float32Array.from(row);
          const out = new Float32Array(vocab);
          for (let v = 0; v < vocab; v++) {
            let acc = 0;
            const o = v * hidden;
            for (let h = 0; h < hidden; h++) acc += row[h]! * w[o + h]!;
            out[v] = acc;
          }
          return out;
        }),
      );
    },
  };
}

/** One sequence per row, right-padded; no position in the loss. */
function layout(seqs: readonly (readonly number[])[], seqLen: number, padId: number): MicroBatch {
  const rows = seqs.length;
  const size = rows * seqLen;
  const tokens = new Int32Array(size).fill(padId);
  const positions = new Int32Array(size);
  const segments = new Int32Array(size);
  seqs.forEach((s, r) => {
    for (let t = 0; t < s.length; t++) {
      tokens[r * seqLen + t] = s[t]!;
      positions[r * seqLen + t] = t;
      segments[r * seqLen + t] = 1;
    }
  });
  return { rows, seqLen, tokens, labels: new Int32Array(size).fill(padId), mask: new Float32Array(size), positions, segments, packed: false, examples: [], lossTokens: 0 };
}

/** Index of the largest value (the first on ties). */
export function argmax(a: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < a.length; i++) if (a[i]! > a[best]!) best = i;
  return best;
}
