/**
 * Greedy generation without a KV cache, batched and with draft verification.
 *
 * Exact greedy decoding: each output token is the argmax of the logits after the prompt and the output so
 * far; a row ends at the end-of-turn id (not part of the output), after `maxNew` tokens, or when `stop` says
 * its output so far is decided (the json_format probe stops a row once its answer can no longer match).
 *
 * The cost is forwards, so each forward verifies a draft (Jacobi-style decoding): a row's sequence is
 * prompt + output + draft, and one teacher-forced forward gives the logits at every draft position. The
 * first prediction is the next greedy token; each following one is greedy too as long as the draft token
 * before it equals the prediction at that place, so a row whose greedy output equals its draft finishes in
 * one forward, and every forward adds at least one token. The first draft is the caller's (the reference
 * answer, which a trained model reproduces). Later drafts are looked up (prompt-lookup decoding): the last
 * 3, 2 or 1 output tokens are found in the reference, else earlier in the prompt and output, and what
 * followed them there is the draft (copied with overlap, so a model stuck in a loop is drafted the loop's
 * continuation); without a match, the previous forward's predictions past the accepted ones (Jacobi). A
 * draft is cut to the room left. Drafts change the cost, never the output.
 *
 * Rows are batched `model.rows` at a time, and a finished row's place is given to the next prompt.
 */
import { argmax, type LogitsModel } from './model.js';

export interface GenerateOptions {
  /** The end-of-turn id: generation stops on it. */
  eos: number;
  /** At most this many output tokens per prompt (the end-of-turn id not counted): one for all, or one per prompt. */
  maxNew: number | readonly number[];
  /** First draft of each prompt's output (e.g. its reference answer, end-of-turn included); none: empty. */
  drafts?: readonly (readonly number[])[];
  /** Called after tokens were accepted; true ends the row there (its output is then a prefix of the greedy one). */
  stop?: (index: number, output: readonly number[]) => boolean;
}

export interface Generation {
  /** The output ids, without the end-of-turn id. */
  tokens: number[];
  /** `eos`: ended on the end-of-turn id; `length`: maxNew reached; `stopped`: `stop` said so. */
  end: 'eos' | 'length' | 'stopped';
}

export interface GenerateStats {
  /** Forwards run. */
  forwards: number;
  /** Tokens accepted over all rows. */
  tokens: number;
}

/** Greedy outputs of every prompt (see the file head). */
export async function generateGreedy(model: LogitsModel, prompts: readonly (readonly number[])[], opts: GenerateOptions, stats?: GenerateStats): Promise<Generation[]> {
  const cap = (i: number) => (typeof opts.maxNew === 'number' ? opts.maxNew : opts.maxNew[i]!);
  const out: (Generation | undefined)[] = new Array(prompts.length);
  interface Row {
    index: number;
    output: number[];
    draft: number[];
    reference: readonly number[];
  }
  const active: Row[] = [];
  let next = 0;
  const refill = () => {
    while (active.length < model.rows && next < prompts.length) {
      if (prompts[next]!.length === 0) throw new RangeError(`generateGreedy: prompt ${next} is empty`);
      if (!(cap(next) >= 1)) throw new RangeError(`generateGreedy: maxNew of prompt ${next} must be at least 1`);
      const reference = opts.drafts?.[next] ?? [];
      active.push({ index: next, output: [], draft: [...reference], reference });
      next++;
    }
  };
  refill();
  while (active.length) {
    const seqs: number[][] = [];
    const at: number[][] = [];
    for (const row of active) {
      const p = prompts[row.index]!;
      const room = cap(row.index) - row.output.length;
      // A draft token past the room could never be accepted (the last one needs no prediction after it).
      row.draft.length = Math.min(row.draft.length, room - 1);
      seqs.push([...p, ...row.output, ...row.draft]);
      const from = p.length + row.output.length - 1;
      at.push(Array.from({ length: row.draft.length + 1 }, (_, k) => from + k));
    }
    const logits = await model.logits(seqs, at);
    if (stats) stats.forwards++;
    for (let r = active.length - 1; r >= 0; r--) {
      const row = active[r]!;
      const preds = logits[r]!.map(argmax);
      let end: Generation['end'] | undefined;
      let k = 0;
      for (;;) {
        const g = preds[k]!;
        k++;
        if (stats) stats.tokens++;
        if (g === opts.eos) {
          end = 'eos';
          break;
        }
        row.output.push(g);
        if (row.output.length >= cap(row.index)) {
          end = 'length';
          break;
        }
        if (k >= preds.length || row.draft[k - 1] !== g) break;
      }
      if (!end && opts.stop?.(row.index, row.output)) end = 'stopped';
      if (end) {
        out[row.index] = { tokens: row.output, end };
        active.splice(r, 1);
      } else row.draft = lookupDraft([...prompts[row.index]!, ...row.output], row.reference) ?? preds.slice(k);
    }
    refill();
  }
  return out as Generation[];
}

/**
 * Prompt-lookup draft: the tokens that followed the latest earlier occurrence of the context's last 3 (else
 * 2, else 1) tokens, searched in `reference` first, then in the context itself (the copy may run into the
 * tokens it produces, which continues a repeating pattern). Undefined when nothing matches.
 */
export function lookupDraft(context: readonly number[], reference: readonly number[], max = 256): number[] | undefined {
  const matches = (src: readonly number[], at: number, n: number) => {
    for (let j = 0; j < n; j++) if (src[at + j] !== context[context.length - n + j]) return false;
    return true;
  };
  for (let n = Math.min(3, context.length); n >= 1; n--) {
    for (let i = reference.length - n - 1; i >= 0; i--) if (matches(reference, i, n)) return reference.slice(i + n, i + n + max);
    for (let i = context.length - n - 1; i >= 0; i--) {
      if (!matches(context, i, n)) continue;
      const src = [...context];
      const out: number[] = [];
      for (let j = i + n; out.length < max; j++) {
        out.push(src[j]!);
        src.push(src[j]!);
      }
      return out;
    }
  }
  return undefined;
}
