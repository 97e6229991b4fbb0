/**
 * The byte tokenizer of the built-in models: one id per UTF-8 byte, vocabulary 256.
 *
 * All 256 ids are bytes, so the special tokens are control bytes that never occur in the text the models are
 * trained on:
 *
 * - end of sequence: byte 0x03 (ASCII ETX, "end of text"), written `\u0003`;
 * - padding: byte 0x00 (NUL).
 *
 * There is no beginning-of-sequence token. Text containing U+0000 or U+0003 still encodes (as those bytes),
 * but the data encoder rejects records whose content contains them, so a record can never end a turn early
 * or look like padding.
 */

import { BYTE_EOS, BYTE_PAD } from '../../plan/byte-tokenizer.js';
import type { Tokenizer } from './types.js';

export { BYTE_EOS, BYTE_PAD };

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: false, ignoreBOM: true });

export class ByteTokenizer implements Tokenizer {
  readonly kind = 'bytes' as const;
  readonly vocabSize = 256;
  readonly eos = BYTE_EOS;
  readonly pad = BYTE_PAD;
  readonly bos = null;
  readonly specialIds: ReadonlySet<number> = new Set([BYTE_EOS, BYTE_PAD]);

  encode(text: string): number[] {
    return Array.from(encoder.encode(text));
  }

  decode(ids: ArrayLike<number>): string {
    const bytes = new Uint8Array(ids.length);
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i]!;
      if (!Number.isInteger(id) || id < 0 || id > 255) throw new RangeError(`byte tokenizer: id ${id} is not a byte (0..255)`);
      bytes[i] = id;
    }
    return decoder.decode(bytes);
  }

  tokenId(token: string): number | undefined {
    if (token === '\u0003' || token === '<eos>') return BYTE_EOS;
    if (token === '\u0000' || token === '<pad>') return BYTE_PAD;
    return undefined;
  }
}
