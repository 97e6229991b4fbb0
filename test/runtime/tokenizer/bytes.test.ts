import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { BYTE_EOS, BYTE_PAD, ByteTokenizer, createTokenizer, TokenizerError } from '../../../src/runtime/tokenizer/index.js';

const tok = new ByteTokenizer();

describe('ByteTokenizer', () => {
  it('encodes UTF-8 bytes, one id per byte', () => {
    expect(tok.encode('Hi!')).toEqual([72, 105, 33]);
    expect(tok.encode('é')).toEqual([0xc3, 0xa9]);
    expect(tok.encode('😀')).toEqual([0xf0, 0x9f, 0x98, 0x80]);
    expect(tok.encode('')).toEqual([]);
  });

  it('round-trips ASCII, accents, CJK, emoji (with ZWJ sequences and flags)', () => {
    for (const s of ['plain ASCII', 'café naïve', '日本語のテキスト', '👩‍⚕️ doctor 🇫🇷 flag 😀', 'tab\tnew\nline\r\n', '\u{10FFFF}']) {
      expect(tok.decode(tok.encode(s))).toBe(s);
    }
  });

  it('round-trips any well-formed string (property)', () => {
    fc.assert(fc.property(fc.string({ unit: 'binary', maxLength: 200 }), (s) => tok.decode(tok.encode(s)) === s));
  });

  it('decodes a cut multi-byte character to U+FFFD rather than failing', () => {
    expect(tok.decode([0xf0, 0x9f])).toBe('\ufffd');
  });

  it('rejects ids that are not bytes', () => {
    expect(() => tok.decode([256])).toThrow(RangeError);
    expect(() => tok.decode([-1])).toThrow(RangeError);
    expect(() => tok.decode([1.5])).toThrow(RangeError);
  });

  it('marks end of sequence with byte 0x03 and pads with 0x00', () => {
    expect(tok.vocabSize).toBe(256);
    expect(tok.eos).toBe(BYTE_EOS);
    expect(BYTE_EOS).toBe(3);
    expect(tok.pad).toBe(BYTE_PAD);
    expect(BYTE_PAD).toBe(0);
    expect(tok.bos).toBeNull();
    expect([...tok.specialIds].sort()).toEqual([0, 3]);
    expect(tok.tokenId('<eos>')).toBe(3);
    expect(tok.tokenId('<|user|>')).toBeUndefined();
  });

  it('is what a plan with tokenizer kind bytes gets', () => {
    expect(createTokenizer({ kind: 'bytes' })).toBeInstanceOf(ByteTokenizer);
    expect(() => createTokenizer({ kind: 'unspecified' })).toThrow(TokenizerError);
  });
});
