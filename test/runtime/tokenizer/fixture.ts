/**
 * A small byte-level BPE `tokenizer.json` in the layout of Qwen2's (ByteLevel pre-tokenizer and decoder,
 * 256 byte symbols, a few merges, ChatML added tokens), written for the tests.
 */

import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** GPT-2's byte-to-unicode table: every byte as a printable character. */
export function bytesToUnicode(): string[] {
  const bs: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) bs.push(b);
  for (let b = 0xa1; b <= 0xac; b++) bs.push(b);
  for (let b = 0xae; b <= 0xff; b++) bs.push(b);
  const cs = [...bs];
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n);
      n++;
    }
  }
  const table: string[] = new Array(256);
  bs.forEach((b, i) => (table[b] = String.fromCodePoint(cs[i]!)));
  return table;
}

export const MERGES = ['Ġ t', 'h e', 'Ġt he', 'i n', 'Ġ a', 'o n', 'Ġa n', 'Ġan d'];

export function smallTokenizerJson(): { json: object; ids: Record<string, number> } {
  const table = bytesToUnicode();
  const vocab: Record<string, number> = {};
  for (let b = 0; b < 256; b++) vocab[table[b]!] = b;
  let next = 256;
  for (const m of MERGES) vocab[m.replace(' ', '')] = next++;
  const added = ['<|endoftext|>', '<|im_start|>', '<|im_end|>'].map((content) => ({ id: next++, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }));
  const json = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: null,
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: '', end_of_word_suffix: '', fuse_unk: false, byte_fallback: false, ignore_merges: false, vocab, merges: MERGES },
  };
  const ids: Record<string, number> = { ...vocab };
  for (const a of added) ids[a.content] = a.id;
  return { json, ids };
}

/** Writes the tokenizer (and optionally a tokenizer_config.json) into a fresh temp folder. */
export function writeSmallTokenizer(config?: object): string {
  const dir = mkdtempSync(join(tmpdir(), 'mcpc-tok-'));
  writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(smallTokenizerJson().json));
  if (config) writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify(config));
  return dir;
}
