import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { DataLoader, loadDataSource, type BatchingOptions, type Example, type Layout, type MicroBatch, type TrainStep } from '../../../src/runtime/data/index.js';
import { ByteTokenizer } from '../../../src/runtime/tokenizer/index.js';

/** Synthetic examples: example i has length lens[i], tokens 1000*i + t, and a response mask on its last third. */
function examples(lens: number[]): Example[] {
  return lens.map((n, i) => {
    const tokens = Int32Array.from({ length: n }, (_, t) => 1000 * i + t);
    const labels = Int32Array.from({ length: n }, (_, t) => 1000 * i + t + 1);
    const mask = Uint8Array.from({ length: n }, (_, t) => (t >= Math.floor((2 * n) / 3) ? 1 : 0));
    return { tokens, labels, mask, source: { file: 'syn', line: i + 1 }, truncated: 'none' as const };
  });
}

const opts = (o: Partial<BatchingOptions>): BatchingOptions => ({ microBatch: 2, accumulation: 2, maxLen: 16, layout: 'pad-longest', seed: 1, padId: -7, ...o });

/** What a step feeds the model, comparable with toEqual. */
const content = (s: TrainStep) => ({
  epoch: s.epoch,
  stepInEpoch: s.stepInEpoch,
  start: s.start,
  next: s.next,
  micro: s.microBatches.map((m) => ({ ex: m.examples, seqLen: m.seqLen, tokens: Array.from(m.tokens), mask: Array.from(m.mask), segments: Array.from(m.segments) })),
});

const arbConfig = fc.record({
  lens: fc.array(fc.integer({ min: 1, max: 16 }), { minLength: 1, maxLength: 60 }),
  seed: fc.nat(),
  microBatch: fc.integer({ min: 1, max: 4 }),
  accumulation: fc.integer({ min: 1, max: 3 }),
  layout: fc.constantFrom<Layout>('pad-longest', 'pad-max', 'pack'),
  lastBatch: fc.constantFrom<'drop' | 'keep'>('drop', 'keep'),
  epochs: fc.integer({ min: 1, max: 3 }),
});

describe('DataLoader: resume', () => {
  it('from any step boundary yields exactly the rest of the uninterrupted run (property)', () => {
    fc.assert(
      fc.property(arbConfig, fc.nat(), (c, pick) => {
        const o = opts(c);
        const exs = examples(c.lens);
        const loader = new DataLoader(exs, o);
        let all: TrainStep[];
        try {
          all = [...loader.steps({ epoch: 0, index: 0 }, c.epochs)];
        } catch (e) {
          // Too few examples for one step with drop: refused up front, whatever the cursor.
          expect(String(e)).toMatch(/has no complete step/);
          return;
        }
        const k = pick % (all.length + 1);
        const cursor = k === 0 ? { epoch: 0, index: 0 } : all[k - 1]!.next;
        // A fresh loader, as after a restart: nothing carried over but the cursor.
        const resumed = [...new DataLoader(exs, o).steps(cursor, c.epochs)];
        expect(resumed.map(content)).toEqual(all.slice(k).map(content));
        // `start` of each step is the previous `next`: one chain, no gap, no overlap.
        for (let i = 1; i < all.length; i++) expect(all[i]!.start).toEqual(all[i - 1]!.next);
      }),
      { numRuns: 300 },
    );
  });

  it('within an epoch, uses each record at most once, and every record unless it was in the dropped tail (property)', () => {
    fc.assert(
      fc.property(arbConfig, (c) => {
        const loader = new DataLoader(examples(c.lens), opts(c));
        const plan = loader.plan(0);
        if (plan.steps.length === 0) return;
        const used = [...loader.steps({ epoch: 0, index: 0 }, 1)].flatMap((s) => s.microBatches.flatMap((m) => m.examples));
        expect(new Set(used).size).toBe(used.length);
        expect(used.length + plan.dropped).toBe(c.lens.length);
        // In the epoch's order, as a prefix of it.
        expect(used).toEqual(Array.from(plan.order.subarray(0, used.length)));
        if (c.lastBatch === 'keep') expect(plan.dropped).toBe(0);
      }),
      { numRuns: 300 },
    );
  });

  it('refuses a cursor that is not a step boundary (data or batch settings changed)', () => {
    const loader = new DataLoader(examples(new Array(20).fill(4)), opts({ layout: 'pad-max' }));
    expect(() => [...loader.steps({ epoch: 0, index: 3 }, 1)]).toThrow(/not a step boundary .*did the data or the batch settings change/);
    expect([...loader.steps({ epoch: 0, index: 4 }, 1)]).toHaveLength(4);
    // The end of an epoch is the start of the next one.
    expect([...loader.steps({ epoch: 0, index: 20 }, 2)].map((s) => s.start)).toEqual([0, 4, 8, 12, 16].map((index) => ({ epoch: 1, index })));
    expect(() => [...loader.steps({ epoch: -1, index: 0 })]).toThrow(RangeError);
  });

  it('is deterministic across loaders and differs between epochs', () => {
    const exs = examples(Array.from({ length: 40 }, (_, i) => 1 + (i % 16)));
    const a = [...new DataLoader(exs, opts({ seed: 5 })).steps({ epoch: 0, index: 0 }, 2)].map(content);
    const b = [...new DataLoader(exs, opts({ seed: 5 })).steps({ epoch: 0, index: 0 }, 2)].map(content);
    expect(a).toEqual(b);
    const perEpoch = a.length / 2;
    expect(a.slice(0, perEpoch).map((s) => s.micro)).not.toEqual(a.slice(perEpoch).map((s) => s.micro));
  });
});

describe('DataLoader: steps per epoch and the last partial batch', () => {
  it('drops the records that do not fill a step (default), or keeps them padded', () => {
    const exs = examples(new Array(10).fill(3));
    const drop = new DataLoader(exs, opts({ microBatch: 2, accumulation: 2 }));
    expect(drop.stepsInEpoch(0)).toBe(2);
    expect(drop.plan(0).dropped).toBe(2);
    expect(drop.totalSteps(3)).toBe(6);
    const keep = new DataLoader(exs, opts({ microBatch: 2, accumulation: 2, lastBatch: 'keep' }));
    expect(keep.stepsInEpoch(0)).toBe(3);
    const last = [...keep.steps({ epoch: 0, index: 0 }, 1)][2]!;
    expect(last.records).toBe(2);
    expect(last.microBatches).toHaveLength(1);
    expect(last.next).toEqual({ epoch: 1, index: 0 });
    const keep3 = [...new DataLoader(examples(new Array(9).fill(3)), opts({ lastBatch: 'keep' })).steps({ epoch: 0, index: 0 }, 1)][2]!;
    // One record left: its micro-batch keeps its shape with an all-padding row.
    expect(keep3.microBatches[0]!.rows).toBe(2);
    expect(Array.from(keep3.microBatches[0]!.segments.subarray(keep3.microBatches[0]!.seqLen))).toEqual(new Array(keep3.microBatches[0]!.seqLen).fill(0));
  });

  it('the MedCare stage 1 settings: 800 records, batch 16 = 8 x 2 -> 50 steps per epoch', async () => {
    const d = await loadDataSource({ name: 'mixed', kind: 'jsonl', path: 'data/medcare/stage1.jsonl', format: 'chat' }, { root: '.', tokenizer: new ByteTokenizer(), maxLen: 256 });
    const loader = new DataLoader(d.examples, { microBatch: 8, accumulation: 2, maxLen: 256, layout: 'pad-longest', seed: 42, padId: 0 });
    expect(loader.stepsInEpoch(0)).toBe(50);
    const first = loader.steps().next().value!;
    expect(first.microBatches).toHaveLength(2);
    expect(first.microBatches[0]!.tokens.length).toBe(8 * first.microBatches[0]!.seqLen);
    expect(first.lossTokens).toBeGreaterThan(0);
  });

  it('refuses to run when no epoch has a complete step', () => {
    expect(() => [...new DataLoader(examples([3, 3, 3]), opts({ microBatch: 2, accumulation: 2 })).steps()]).toThrow(/epoch 0 has no complete step: 3 examples do not fill one step/);
  });

  it('checks its options and the example lengths', () => {
    expect(() => new DataLoader(examples([3]), opts({ microBatch: 0 }))).toThrow(/microBatch must be a positive integer/);
    expect(() => new DataLoader(examples([17]), opts({ maxLen: 16 }))).toThrow(/example 0 \(syn:1\) has 17 tokens; expected 1\.\.16/);
  });
});

/** Checks one micro-batch against the examples it holds. */
function checkLayout(m: MicroBatch, exs: Example[], padId: number) {
  const S = m.seqLen;
  let seen = 0;
  let loss = 0;
  for (let r = 0; r < m.rows; r++) {
    let t = 0;
    let seg = 0;
    while (t < S && m.segments[r * S + t]! !== 0) {
      seg++;
      expect(m.segments[r * S + t]).toBe(seg);
      const ex = exs[m.examples[seen++]!]!;
      const n = ex.tokens.length;
      const at = r * S + t;
      expect(t + n).toBeLessThanOrEqual(S);
      // The example's own tokens, labels and mask, whole, in one row, positions from 0.
      expect(Array.from(m.tokens.subarray(at, at + n))).toEqual(Array.from(ex.tokens));
      expect(Array.from(m.labels.subarray(at, at + n))).toEqual(Array.from(ex.labels));
      expect(Array.from(m.mask.subarray(at, at + n))).toEqual(Array.from(ex.mask));
      expect(Array.from(m.positions.subarray(at, at + n))).toEqual(Array.from({ length: n }, (_, i) => i));
      expect(Array.from(m.segments.subarray(at, at + n)).every((s) => s === seg)).toBe(true);
      loss += ex.mask.reduce((a, b) => a + b, 0);
      t += n;
    }
    // The rest of the row is padding: pad id, no loss, segment 0.
    for (; t < S; t++) {
      const i = r * S + t;
      expect([m.tokens[i], m.labels[i], m.mask[i], m.segments[i], m.positions[i]]).toEqual([padId, padId, 0, 0, 0]);
    }
  }
  expect(seen).toBe(m.examples.length);
  expect(m.lossTokens).toBe(loss);
}

describe('DataLoader: layouts', () => {
  it('packing places whole examples, never splits or mixes a loss mask, and fills rows greedily (property)', () => {
    fc.assert(
      fc.property(arbConfig, (c) => {
        const exs = examples(c.lens);
        const loader = new DataLoader(exs, opts({ ...c, layout: 'pack', padId: -7 }));
        if (loader.stepsInEpoch(0) === 0) return;
        for (const step of loader.steps({ epoch: 0, index: 0 }, 1)) {
          for (const m of step.microBatches) {
            expect(m.packed).toBe(true);
            expect(m.seqLen).toBe(16);
            checkLayout(m, exs, -7);
            // Greedy: a row was closed only because the next example did not fit in it.
            let k = 0;
            const rows: number[][] = [];
            for (let r = 0; r < m.rows; r++) {
              const segs = Math.max(0, ...m.segments.subarray(r * 16, r * 16 + 16));
              rows.push(m.examples.slice(k, k + segs));
              k += segs;
            }
            for (let r = 0; r + 1 < rows.length && rows[r + 1]!.length > 0; r++) {
              const used = rows[r]!.reduce((a, i) => a + exs[i]!.tokens.length, 0);
              expect(used + exs[rows[r + 1]![0]!]!.tokens.length).toBeGreaterThan(16);
            }
          }
        }
      }),
      { numRuns: 200 },
    );
  });

  it('padding puts one example per row, to the longest in the micro-batch or to max_len', () => {
    const exs = examples([3, 7, 5, 2, 9, 4, 6, 1]);
    for (const layout of ['pad-longest', 'pad-max'] as const) {
      for (const step of new DataLoader(exs, opts({ layout, padId: 0 })).steps({ epoch: 0, index: 0 }, 1)) {
        for (const m of step.microBatches) {
          expect(m.packed).toBe(false);
          checkLayout(m, exs, 0);
          const longest = Math.max(...m.examples.map((i) => exs[i]!.tokens.length));
          expect(m.seqLen).toBe(layout === 'pad-max' ? 16 : longest);
          expect(m.examples).toHaveLength(2);
        }
      }
    }
  });

  it('packs real MedCare records without a target crossing records', async () => {
    const d = await loadDataSource({ name: 'alignment', kind: 'jsonl', path: 'data/medcare/stage2.jsonl', format: 'chat' }, { root: '.', tokenizer: new ByteTokenizer(), maxLen: 512 });
    const loader = new DataLoader(d.examples, { microBatch: 4, accumulation: 2, maxLen: 512, layout: 'pack', seed: 3, padId: 0 });
    const tok = new ByteTokenizer();
    let records = 0;
    for (const step of loader.steps({ epoch: 0, index: 0 }, 1)) {
      records += step.records;
      for (const m of step.microBatches) {
        checkLayout(m, d.examples, 0);
        // Every run of loss ends with EOS; the next record's first token is never a target.
        const targets = tok.decode(Array.from(m.labels).filter((_, i) => m.mask[i] === 1));
        expect(targets.split('\u0003').slice(0, -1)).toHaveLength(m.examples.length);
      }
    }
    expect(loader.stepsInEpoch(0)).toBeLessThan(300 / 8);
    expect(records + loader.plan(0).dropped).toBe(300);
  });
});
