/**
 * The data loader: examples to optimizer steps, resumable at any step boundary.
 *
 * Each epoch's order is {@link epochOrder}(n, seed, epoch). A step is `accumulation` micro-batches of
 * `microBatch` rows. The position in the data is a cursor `{epoch, index}`: the number of records of
 * `epoch`'s order consumed so far. Steps are planned from the example lengths alone, so the plan of an
 * epoch is a pure function of (examples' lengths, options, seed, epoch); starting at a cursor recomputes it
 * and continues with exactly the steps an uninterrupted run would have taken from there.
 *
 * The last partial batch of an epoch (fewer records than a full step; with packing, a step in which some
 * row got no example because the epoch ran out) is dropped by default (`lastBatch: 'drop'`): every step has the same shape
 * and the same number of examples, and because the order changes each epoch, different records fall off
 * each time. `lastBatch: 'keep'` keeps it, filling missing rows with padding (mask 0).
 *
 * Layouts (`batch.ts`): `pad-longest` (pad each micro-batch to its longest example), `pad-max` (pad every
 * row to `maxLen`), `pack` (several examples per `maxLen` row, greedily in order: an example goes into the
 * current row if it fits, else the next row; the micro-batch ends when no row is left).
 */

import { collate, type MicroBatch } from './batch.js';
import type { Example } from './encode.js';
import { epochOrder } from './shuffle.js';

export type Layout = 'pad-longest' | 'pad-max' | 'pack';

export interface BatchingOptions {
  /** Rows per micro-batch (the stage's `micro_batch`). */
  microBatch: number;
  /** Micro-batches per optimizer step (`batch / micro_batch`). */
  accumulation: number;
  /** Row length for `pad-max` and `pack`; every example must be at most this long. */
  maxLen: number;
  layout: Layout;
  /** What to do with the records left at the end of an epoch. Default 'drop'. */
  lastBatch?: 'drop' | 'keep';
  seed: number;
  /** Default true; false keeps file order every epoch. */
  shuffle?: boolean;
  /** Id written on padded positions (never in the loss). */
  padId: number;
}

/** Where the loader stands: records of `epoch`'s order consumed so far. Save it in checkpoints. */
export interface DataCursor {
  epoch: number;
  index: number;
}

export interface TrainStep {
  epoch: number;
  /** 0-based step number within the epoch. */
  stepInEpoch: number;
  /** Cursor before this step; resuming there yields this step again. */
  start: DataCursor;
  /** Cursor after this step; resuming there yields the next step. At an epoch's end, `{epoch + 1, 0}`. */
  next: DataCursor;
  microBatches: MicroBatch[];
  /** Examples in the step. */
  records: number;
  /** Targets in the loss over all micro-batches (divide the summed loss by it for the step mean). */
  lossTokens: number;
}

/** One micro-batch of a plan: indices into the epoch order, split into rows. */
interface PlannedMicro {
  rows: { start: number; end: number }[];
}

interface PlannedStep {
  start: number;
  end: number;
  micro: PlannedMicro[];
}

export interface EpochPlan {
  epoch: number;
  order: Uint32Array;
  steps: PlannedStep[];
  /** Records of the order not used this epoch (the dropped partial batch). */
  dropped: number;
}

export class DataLoader {
  private readonly lastBatch: 'drop' | 'keep';
  private cached: EpochPlan | undefined;

  constructor(
    readonly examples: readonly Example[],
    readonly opts: BatchingOptions,
  ) {
    for (const [k, v] of [['microBatch', opts.microBatch], ['accumulation', opts.accumulation], ['maxLen', opts.maxLen]] as const) {
      if (!Number.isInteger(v) || v < 1) throw new RangeError(`${k} must be a positive integer, got ${v}`);
    }
    this.lastBatch = opts.lastBatch ?? 'drop';
    examples.forEach((ex, i) => {
      if (ex.tokens.length > opts.maxLen || ex.tokens.length < 1) {
        throw new RangeError(`example ${i} (${ex.source.file}:${ex.source.line}) has ${ex.tokens.length} tokens; expected 1..${opts.maxLen}`);
      }
    });
  }

  /** Examples per full step in the padding layouts. */
  get batchSize(): number {
    return this.opts.microBatch * this.opts.accumulation;
  }

  /** The plan of one epoch (pure function of the lengths, options and epoch). */
  plan(epoch: number): EpochPlan {
    if (this.cached?.epoch === epoch) return this.cached;
    const order = epochOrder(this.examples.length, this.opts.seed, epoch, this.opts.shuffle ?? true);
    const plan = this.opts.layout === 'pack' ? this.planPacked(epoch, order) : this.planPadded(epoch, order);
    this.cached = plan;
    return plan;
  }

  /** Optimizer steps in `epoch`. */
  stepsInEpoch(epoch: number): number {
    return this.plan(epoch).steps.length;
  }

  /** Optimizer steps in epochs 0..epochs-1 (for the learning-rate schedule). */
  totalSteps(epochs: number): number {
    let n = 0;
    for (let e = 0; e < epochs; e++) n += this.stepsInEpoch(e);
    return n;
  }

  /**
   * Steps from `from` (default the start) to the end of epoch `epochs - 1`. Throws RangeError when the
   * cursor is not a step boundary of this data and these options (a sign they changed since it was saved).
   */
  *steps(from: DataCursor = { epoch: 0, index: 0 }, epochs = Infinity): Generator<TrainStep> {
    if (!Number.isInteger(from.epoch) || from.epoch < 0 || !Number.isInteger(from.index) || from.index < 0) {
      throw new RangeError(`invalid data cursor ${JSON.stringify(from)}`);
    }
    if (this.examples.length === 0) return;
    let { epoch } = from;
    let first = this.stepIndexAt(from);
    for (; epoch < epochs; epoch++, first = 0) {
      const plan = this.plan(epoch);
      if (plan.steps.length === 0) {
        throw new RangeError(`epoch ${epoch} has no complete step: ${this.examples.length} examples do not fill one step (micro_batch ${this.opts.microBatch} x accumulation ${this.opts.accumulation}); lower the batch or keep the last partial batch`);
      }
      for (let s = first; s < plan.steps.length; s++) {
        yield this.materialize(plan, s);
      }
    }
  }

  /** Index of the step that starts at `cursor` in its epoch (the step count when it is the epoch's end). */
  private stepIndexAt(cursor: DataCursor): number {
    const plan = this.plan(cursor.epoch);
    if (cursor.index === 0) return 0;
    const i = plan.steps.findIndex((s) => s.start === cursor.index);
    if (i >= 0) return i;
    const end = plan.steps.length > 0 ? plan.steps[plan.steps.length - 1]!.end : 0;
    if (cursor.index === end || cursor.index === this.examples.length) return plan.steps.length;
    throw new RangeError(
      `data cursor {epoch: ${cursor.epoch}, index: ${cursor.index}} is not a step boundary of this data (${this.examples.length} examples, ` +
        `micro_batch ${this.opts.microBatch}, accumulation ${this.opts.accumulation}, layout ${this.opts.layout}); did the data or the batch settings change since the checkpoint?`,
    );
  }

  private materialize(plan: EpochPlan, s: number): TrainStep {
    const step = plan.steps[s]!;
    const { microBatch, maxLen, padId, layout } = this.opts;
    const microBatches = step.micro.map((m) => {
      const rows = m.rows.map((r) => Array.from(plan.order.subarray(r.start, r.end)));
      let seqLen = maxLen;
      if (layout === 'pad-longest') {
        seqLen = 1;
        for (const row of rows) for (const i of row) seqLen = Math.max(seqLen, this.examples[i]!.tokens.length);
      }
      return collate(this.examples, rows, microBatch, seqLen, padId, layout === 'pack');
    });
    const next = s + 1 < plan.steps.length ? { epoch: plan.epoch, index: step.end } : { epoch: plan.epoch + 1, index: 0 };
    return {
      epoch: plan.epoch,
      stepInEpoch: s,
      start: { epoch: plan.epoch, index: step.start },
      next,
      microBatches,
      records: step.end - step.start,
      lossTokens: microBatches.reduce((a, m) => a + m.lossTokens, 0),
    };
  }

  private planPadded(epoch: number, order: Uint32Array): EpochPlan {
    const n = order.length;
    const { microBatch, accumulation } = this.opts;
    const batch = microBatch * accumulation;
    const steps: PlannedStep[] = [];
    const full = Math.floor(n / batch);
    const stepOf = (start: number, end: number): PlannedStep => {
      const micro: PlannedMicro[] = [];
      for (let m = start; m < end; m += microBatch) {
        const rows = [];
        for (let r = m; r < Math.min(m + microBatch, end); r++) rows.push({ start: r, end: r + 1 });
        micro.push({ rows });
      }
      return { start, end, micro };
    };
    for (let s = 0; s < full; s++) steps.push(stepOf(s * batch, (s + 1) * batch));
    let dropped = n - full * batch;
    if (dropped > 0 && this.lastBatch === 'keep') {
      steps.push(stepOf(full * batch, n));
      dropped = 0;
    }
    return { epoch, order, steps, dropped };
  }

  private planPacked(epoch: number, order: Uint32Array): EpochPlan {
    const n = order.length;
    const { microBatch, accumulation, maxLen } = this.opts;
    const len = (k: number) => this.examples[order[k]!]!.tokens.length;
    const steps: PlannedStep[] = [];
    let k = 0;
    let dropped = 0;
    while (k < n) {
      const start = k;
      const micro: PlannedMicro[] = [];
      let complete = true;
      for (let m = 0; m < accumulation && k < n; m++) {
        const rows: { start: number; end: number }[] = [];
        let rowStart = k;
        let used = 0;
        while (k < n) {
          const l = len(k);
          if (used + l <= maxLen) {
            used += l;
            k++;
          } else if (rows.length + 1 < microBatch) {
            rows.push({ start: rowStart, end: k });
            rowStart = k;
            used = 0;
          } else {
            break;
          }
        }
        if (k > rowStart) rows.push({ start: rowStart, end: k });
        micro.push({ rows });
        if (rows.length < microBatch) complete = false;
      }
      if (micro.length < accumulation) complete = false;
      if (!complete && this.lastBatch === 'drop') {
        dropped = n - start;
        break;
      }
      steps.push({ start, end: k, micro });
    }
    return { epoch, order, steps, dropped };
  }
}
