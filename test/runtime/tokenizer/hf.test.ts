import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { createTokenizer, HfTokenizer, loadHfTokenizer, TokenizerError } from '../../../src/runtime/tokenizer/index.js';
import { smallTokenizerJson, writeSmallTokenizer } from './fixture.js';

const { json, ids } = smallTokenizerJson();

describe('HfTokenizer (tokenizer.json through @huggingface/tokenizers)', () => {
  const tok = loadHfTokenizer(writeSmallTokenizer());

  it('applies the BPE merges in rank order after the ByteLevel pre-tokenizer', () => {
    // "the" -> t + he (no merge t+he); " the" -> Ġthe; " and" -> Ġand; " in" -> Ġ + in (no Ġ+in merge).
    expect(tok.encode('the and in')).toEqual([ids['t'], ids['he'], ids['Ġand'], ids['Ġ'], ids['in']]);
    expect(tok.encode(' the')).toEqual([ids['Ġthe']]);
    expect(tok.encode('on')).toEqual([ids['on']]);
  });

  it('maps every byte through the byte-level alphabet (no unknown tokens)', () => {
    expect(tok.encode('é')).toEqual([0xc3, 0xa9]);
    expect(tok.encode('\n')).toEqual([10]);
    expect(tok.encode('')).toEqual([]);
    expect(tok.decode([])).toBe('');
  });

  it('round-trips UTF-8 text including emoji (property)', () => {
    for (const s of ['Hello, world!', 'the theory and in', '😀 👩‍⚕️ 日本', '  two  spaces\n\nand lines\t']) expect(tok.decode(tok.encode(s))).toBe(s);
    fc.assert(fc.property(fc.string({ unit: 'binary', maxLength: 100 }).filter((s) => !s.includes('<|')), (s) => tok.decode(tok.encode(s)) === s));
  });

  it('recognises added special tokens in text and keeps them on decode', () => {
    const e = tok.encode('<|im_start|>user\nhi<|im_end|>\n');
    expect(e[0]).toBe(ids['<|im_start|>']);
    expect(e).toContain(ids['<|im_end|>']);
    expect(tok.decode(e)).toBe('<|im_start|>user\nhi<|im_end|>\n');
  });

  it('picks eos, pad and the vocabulary size', () => {
    expect(tok.vocabSize).toBe(256 + 8 + 3);
    expect(tok.eos).toBe(ids['<|endoftext|>']);
    expect(tok.pad).toBe(tok.eos);
    expect(tok.bos).toBeNull();
    expect(tok.specialIds.has(ids['<|im_end|>']!)).toBe(true);
    expect(tok.tokenId('<|im_start|>')).toBe(ids['<|im_start|>']);
  });

  it('takes eos and pad from tokenizer_config.json when it names them', () => {
    const t = loadHfTokenizer(writeSmallTokenizer({ eos_token: '<|im_end|>', pad_token: { content: '<|endoftext|>' } }));
    expect(t.eos).toBe(ids['<|im_end|>']);
    expect(t.pad).toBe(ids['<|endoftext|>']);
  });

  it('accepts the folder or the file, and plans with kind hf', () => {
    const dir = writeSmallTokenizer();
    expect(loadHfTokenizer(join(dir, 'tokenizer.json')).vocabSize).toBe(267);
    expect(createTokenizer({ kind: 'hf', path: 'tokenizer.json' }, dir)).toBeInstanceOf(HfTokenizer);
  });

  it('gives a TokenizerError naming the file for unusable input', () => {
    const dir = mkdtempSync(join(tmpdir(), 'mcpc-tok-bad-'));
    const write = (name: string, text: string) => (writeFileSync(join(dir, name), text), join(dir, name));
    const cases: [string, RegExp][] = [
      [join(dir, 'missing.json'), /missing\.json: cannot read: ENOENT/],
      [write('broken.json', '{"model": '), /broken\.json: invalid JSON/],
      [write('array.json', '[1, 2]'), /array\.json: not a JSON object/],
      [write('nomodel.json', '{"added_tokens": []}'), /nomodel\.json: no `model`/],
    ];
    for (const [file, msg] of cases) {
      expect(() => loadHfTokenizer(file)).toThrow(TokenizerError);
      expect(() => loadHfTokenizer(file)).toThrow(msg);
    }
    const noEos = structuredClone(json) as { added_tokens: unknown[] };
    noEos.added_tokens = [];
    expect(() => new HfTokenizer(noEos, {}, 'x.json')).toThrow(/x\.json: no end-of-sequence token/);
    expect(() => new HfTokenizer(json, { eos_token: '<nope>' }, 'y.json')).toThrow(/eos_token `<nope>`, which is not in the vocabulary/);
  });
});
