/**
 * The byte tokenizer (bytes.ts) as Hugging Face tokenizer files: `tokenizer.json`, `tokenizer_config.json`
 * (with the byte chat template as Jinja) and `special_tokens_map.json`. The generator is pure data shared with
 * the torch emitter, so it lives in src/plan/byte-tokenizer.ts (see there for the layout and why); this
 * module re-exports it for the runtime.
 */
export { BYTE_CHAT_TEMPLATE_JINJA, byteToken, byteTokenizerFiles, byteTokenizerFileTexts, byteTokenizerJson, type ByteTokenizerFile } from '../../plan/byte-tokenizer.js';
