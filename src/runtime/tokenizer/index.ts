/**
 * Tokenizers: the interface, the byte tokenizer of built-in models (and its Hugging Face files, for exports)
 * and Hugging Face `tokenizer.json`.
 */

import { isAbsolute, resolve } from 'node:path';
import type { Plan } from '../../plan/types.js';
import { ByteTokenizer } from './bytes.js';
import { loadHfTokenizer, TokenizerError } from './hf.js';
import type { Tokenizer } from './types.js';

export type { Tokenizer } from './types.js';
export { ByteTokenizer, BYTE_EOS, BYTE_PAD } from './bytes.js';
export { BYTE_CHAT_TEMPLATE_JINJA, byteTokenizerFiles, byteTokenizerJson } from './bytes-hf.js';
export { HfTokenizer, loadHfTokenizer, TokenizerError } from './hf.js';

/**
 * The tokenizer a plan's model names. `root` resolves relative paths (the project root). An `hf` path may be
 * a folder holding `tokenizer.json` or the file itself. `unspecified` is refused: the runtime never guesses.
 */
export function createTokenizer(spec: Plan['model']['tokenizer'], root = '.'): Tokenizer {
  switch (spec.kind) {
    case 'bytes':
      return new ByteTokenizer();
    case 'hf':
      return loadHfTokenizer(isAbsolute(spec.path) ? spec.path : resolve(root, spec.path));
    case 'unspecified':
      throw new TokenizerError('(plan)', 'the plan names no tokenizer: give the model a tokenizer.json or use a built-in byte-level model');
  }
}
