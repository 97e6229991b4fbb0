/**
 * The byte tokenizer (src/runtime/tokenizer/bytes.ts) as Hugging Face tokenizer files, so that a merged export of a byte-level
 * model loads in `transformers` (`AutoTokenizer.from_pretrained(dir)`) and encodes text to the ids it was
 * trained on: `tokenizer.json`, `tokenizer_config.json` (with the byte chat template as Jinja) and
 * `special_tokens_map.json`.
 *
 * The `tokenizer.json` model is a BPE with no merges and `byte_fallback`, the layout Llama and other
 * SentencePiece-derived tokenizers use for raw bytes; no normalizer, no pre-tokenizer, no post-processor:
 *
 *   - ids 0..127 are the ASCII characters themselves (id = code point = byte): an ASCII character is in the
 *     vocabulary, so it maps to its byte;
 *   - ids 128..255 are the byte tokens `<0x80>`..`<0xFF>`: every other character is not in the vocabulary and
 *     falls back to one `<0xNN>` token per byte of its UTF-8 encoding (always bytes 0x80..0xFF);
 *   - the decoder turns runs of `<0xNN>` tokens back into UTF-8 text (ByteFallback) and joins (Fuse).
 *
 * So every string encodes to exactly its UTF-8 bytes, as `ByteTokenizer.encode` does. The end-of-sequence
 * token is the character U+0003 (id 3) and padding U+0000 (id 0), both also declared as special added tokens:
 * text containing them encodes to the same ids 3 and 0 (as the byte tokenizer's does), and `transformers`
 * knows them as `eos_token` and `pad_token`.
 *
 * Why not the GPT-2 byte-level alphabet (ByteLevel pre-tokenizer, `ă` U+0103 for byte 0x03)? The special tokens must
 * be the texts U+0003 and U+0000 (a chat template appends `eos_token` as text, and only those texts encode to
 * ids 3 and 0 everywhere); under ByteLevel those texts are not in the model vocabulary, and the Rust
 * `tokenizers` library gives an added token that is not in the vocabulary a *new* id (256, 257) whatever id
 * `tokenizer.json` states, past the model's 256 embeddings. Here U+0003 and U+0000 are vocabulary tokens, so
 * the added tokens keep ids 3 and 0, and the vocabulary has exactly 256 entries.
 *
 * Pure data (no file system, no tensors): it lives in the plan module because both the runtime's merged export
 * (src/runtime/weights/hf.ts) and the torch emitter (src/compiler/5-emit/torch, which embeds the files in the
 * program it writes) need exactly these files, and compiler and runtime share only src/plan.
 */

import type { PlanModelConfig } from './types.js';

/** The byte tokenizer's end-of-sequence id: byte 0x03 (ASCII ETX, "end of text"). */
export const BYTE_EOS = 0x03;
/** The byte tokenizer's padding id: byte 0x00 (NUL). */
export const BYTE_PAD = 0x00;

/** The byte chat template (src/runtime/data/template.ts BYTE_CHAT_TEMPLATE) as a transformers Jinja chat template. */
export const BYTE_CHAT_TEMPLATE_JINJA = [
  '{%- for message in messages -%}',
  "{%- if message['role'] == 'assistant' -%}",
  "{{ '<|assistant|>\\n' + message['content'] + eos_token }}",
  "{%- elif message['role'] == 'user' or message['role'] == 'system' -%}",
  "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '\\n' }}",
  '{%- else -%}',
  "{{ raise_exception('the byte chat template knows the roles system, user and assistant, not ' + message['role']) }}",
  '{%- endif -%}',
  '{%- endfor -%}',
  '{%- if add_generation_prompt -%}',
  "{{ '<|assistant|>\\n' }}",
  '{%- endif -%}',
].join('\n');

const EOS_TEXT = String.fromCharCode(BYTE_EOS);
const PAD_TEXT = String.fromCharCode(BYTE_PAD);

/** The vocabulary token of byte `b`: the ASCII character itself below 0x80, `<0xNN>` from 0x80 up. */
export function byteToken(b: number): string {
  if (!Number.isInteger(b) || b < 0 || b > 255) throw new RangeError(`byteToken: ${b} is not a byte`);
  return b < 0x80 ? String.fromCharCode(b) : `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`;
}

function addedToken(id: number, content: string) {
  return { id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true };
}

/** The byte tokenizer as a Hugging Face `tokenizer.json` (see the file comment). */
export function byteTokenizerJson(): Record<string, unknown> {
  const vocab: Record<string, number> = {};
  for (let b = 0; b < 256; b++) vocab[byteToken(b)] = b;
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [addedToken(BYTE_PAD, PAD_TEXT), addedToken(BYTE_EOS, EOS_TEXT)],
    normalizer: null,
    pre_tokenizer: null,
    post_processor: null,
    decoder: { type: 'Sequence', decoders: [{ type: 'ByteFallback' }, { type: 'Fuse' }] },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: true,
      ignore_merges: false,
      vocab,
      merges: [],
    },
  };
}

function specialTokenJson(content: string) {
  return { content, lstrip: false, normalized: false, rstrip: false, single_word: false };
}

/** The names of the byte tokenizer's Hugging Face files, in the order they are written. */
export type ByteTokenizerFile = 'tokenizer.json' | 'tokenizer_config.json' | 'special_tokens_map.json';

/**
 * The files a Hugging Face checkpoint folder of a byte-level model holds for its tokenizer, by file name:
 * `tokenizer.json`, `tokenizer_config.json` (PreTrainedTokenizerFast, eos U+0003, pad U+0000, no bos,
 * `model_max_length` = the model's max positions, the byte chat template) and `special_tokens_map.json`.
 */
export function byteTokenizerFiles(config: Pick<PlanModelConfig, 'maxPositions'>): Record<ByteTokenizerFile, Record<string, unknown>> {
  const added = Object.fromEntries(
    [
      [BYTE_PAD, PAD_TEXT],
      [BYTE_EOS, EOS_TEXT],
    ].map(([id, content]) => [String(id), { ...specialTokenJson(content as string), special: true }]),
  );
  return {
    'tokenizer.json': byteTokenizerJson(),
    'tokenizer_config.json': {
      tokenizer_class: 'PreTrainedTokenizerFast',
      added_tokens_decoder: added,
      bos_token: null,
      eos_token: EOS_TEXT,
      pad_token: PAD_TEXT,
      unk_token: null,
      model_max_length: config.maxPositions,
      clean_up_tokenization_spaces: false,
      model_input_names: ['input_ids', 'attention_mask'],
      chat_template: BYTE_CHAT_TEMPLATE_JINJA,
    },
    'special_tokens_map.json': { eos_token: specialTokenJson(EOS_TEXT), pad_token: specialTokenJson(PAD_TEXT) },
  };
}

/**
 * The byte tokenizer's files as the text a merged export writes (2-space-indented JSON and a final newline,
 * as src/runtime/weights/json.ts writeJsonAtomic writes them), by file name: what the TypeScript runtime and
 * the PyTorch program (`--target torch`) both write, byte for byte.
 */
export function byteTokenizerFileTexts(config: Pick<PlanModelConfig, 'maxPositions'>): Record<ByteTokenizerFile, string> {
  const files = byteTokenizerFiles(config);
  return Object.fromEntries(Object.entries(files).map(([name, json]) => [name, `${JSON.stringify(json, null, 2)}\n`])) as Record<ByteTokenizerFile, string>;
}
