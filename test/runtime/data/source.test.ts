import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { concatDatasets, DataError, loadDataSource, type DataSpec } from '../../../src/runtime/data/index.js';
import { ByteTokenizer } from '../../../src/runtime/tokenizer/index.js';
import { line } from './helpers.js';

const tokenizer = new ByteTokenizer();
const spec = (path: string, o: Partial<DataSpec> = {}): DataSpec => ({ name: 'd', kind: 'jsonl', path, format: 'chat', ...o });

function project(files: Record<string, string>): string {
  const root = mkdtempSync(join(tmpdir(), 'mcpc-src-'));
  for (const [name, text] of Object.entries(files)) writeFileSync(join(root, name), text);
  return root;
}

describe('loadDataSource', () => {
  it('loads the MedCare corpus as text windows with loss everywhere', async () => {
    const d = await loadDataSource(spec('data/medcare/corpus.txt', { kind: 'text', format: 'text' }), { root: '.', tokenizer, maxLen: 256 });
    expect(d.records).toBe(Math.ceil((37627 - 1) / 256));
    expect(d.tokens).toBe(37627 - 1);
    expect(d.lossTokens).toBe(d.tokens);
    expect(d.examples[0]!.source).toEqual({ file: 'data/medcare/corpus.txt', line: 1 });
  });

  it('counts records, truncations and loss tokens of a chat file', async () => {
    const d = await loadDataSource(spec('data/medcare/stage2.jsonl', { maxRecords: 10 }), { root: '.', tokenizer, maxLen: 64 });
    expect(d.records).toBe(10);
    expect(d.examples).toHaveLength(10);
    expect(d.truncated).toBeGreaterThan(0);
    expect(d.skipped).toBe(0);
    expect(d.lossTokens).toBe(d.examples.reduce((a, e) => a + e.mask.reduce((x, y) => x + y, 0), 0));
  });

  it('a max_len that leaves no response token in the loss is an error, not a run of loss-0 steps; examples that keep none are counted', async () => {
    // The byte tokenizer's assistant marker alone is longer than 2 positions: every example keeps markers only.
    await expect(loadDataSource(spec('data/medcare/stage2.jsonl', { maxRecords: 4 }), { root: '.', tokenizer, maxLen: 2 })).rejects.toThrow(
      /^data\/medcare\/stage2\.jsonl: no example has a token in the loss at max_len 2 \(4 of 4 were cut to fit, and what was kept of each is prompt or turn markers\); raise the stage's max_len$/,
    );
    const ok = await loadDataSource(spec('data/medcare/stage2.jsonl', { maxRecords: 10 }), { root: '.', tokenizer, maxLen: 64 });
    expect(ok.noLoss).toBe(ok.examples.filter((e) => e.mask.every((m) => m === 0)).length);
    // Loss on every target: even two positions train.
    expect((await loadDataSource(spec('data/medcare/stage2.jsonl', { maxRecords: 4 }), { root: '.', tokenizer, maxLen: 2, lossOn: 'all' })).lossTokens).toBe(8);
  });

  it('names the file and line of a bad record; with skipBadRecords counts reading and encoding problems', async () => {
    const root = project({ 'd.jsonl': [line('q', 'a'), '{nope', line('q', 'bad \u0003 eos'), line('q', 'a')].join('\n') });
    await expect(loadDataSource(spec('d.jsonl'), { root, tokenizer, maxLen: 64 })).rejects.toThrow(/^d\.jsonl:2: invalid JSON/);
    const d = await loadDataSource(spec('d.jsonl'), { root, tokenizer, maxLen: 64, skipBadRecords: true });
    expect(d.examples).toHaveLength(2);
    expect(d.skipped).toBe(2);
    expect(d.warnings.map((w) => w.message)).toEqual([expect.stringMatching(/^d\.jsonl:2: invalid JSON/), expect.stringMatching(/^d\.jsonl:3: messages\[1\]\.content \(assistant\) contains the control byte 0x03/)]);
  });

  it('refuses paths outside the project root unless allowed, and missing or empty files', async () => {
    const root = project({ 'empty.jsonl': '\n\n', 'bad.jsonl': '{x' });
    const outside = project({ 'o.jsonl': line('q', 'a') });
    await expect(loadDataSource(spec('../x.jsonl'), { root, tokenizer, maxLen: 8 })).rejects.toThrow(/^\.\.\/x\.jsonl: the path leaves the project root/);
    await expect(loadDataSource(spec(join(outside, 'o.jsonl')), { root, tokenizer, maxLen: 8 })).rejects.toThrow(DataError);
    expect((await loadDataSource(spec(join(outside, 'o.jsonl')), { root, tokenizer, maxLen: 64, allowOutsideRoot: true })).examples).toHaveLength(1);
    await expect(loadDataSource(spec('nope.jsonl'), { root, tokenizer, maxLen: 8 })).rejects.toThrow(/^nope\.jsonl: cannot open: no such file/);
    await expect(loadDataSource(spec('nope.txt', { kind: 'text', format: 'text' }), { root, tokenizer, maxLen: 8 })).rejects.toThrow(/^nope\.txt: cannot read: no such file/);
    await expect(loadDataSource(spec('empty.jsonl'), { root, tokenizer, maxLen: 8 })).rejects.toThrow(/^empty\.jsonl: no usable records$/);
    await expect(loadDataSource(spec('bad.jsonl'), { root, tokenizer, maxLen: 8, skipBadRecords: true })).rejects.toThrow(/^bad\.jsonl: no usable records \(1 bad record skipped\)$/);
    await expect(loadDataSource(spec('empty.jsonl', { format: 'alpaca' as DataSpec['format'] }), { root, tokenizer, maxLen: 8 })).rejects.toThrow(/unknown record format `alpaca`/);
  });

  it('reads instruction records and concatenates sources in order', async () => {
    const root = project({ 'i.jsonl': JSON.stringify({ instruction: 'Add 2 and 2.', output: '4' }), 'c.jsonl': line('q', 'a') });
    const a = await loadDataSource(spec('i.jsonl', { format: 'instruction' }), { root, tokenizer, maxLen: 64 });
    const b = await loadDataSource(spec('c.jsonl'), { root, tokenizer, maxLen: 64 });
    expect(tokenizer.decode(a.examples[0]!.tokens)).toBe('<|user|>\nAdd 2 and 2.\n<|assistant|>\n4');
    expect(concatDatasets([a, b]).map((e) => e.source.file)).toEqual(['i.jsonl', 'c.jsonl']);
  });
});
