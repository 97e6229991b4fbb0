/**
 * Hugging Face `tokenizer.json` tokenizers (BPE, byte-level BPE as in Qwen2 and Llama 3, WordPiece,
 * Unigram), through `@huggingface/tokenizers` (Tokenizers.js): Hugging Face's own pure JS/TS port of the
 * `tokenizers` crate, no dependencies, no install scripts, nothing fetched at run time. We only read the
 * files and pick the special tokens.
 *
 * Special tokens: eos, pad and bos come from `tokenizer_config.json` beside `tokenizer.json` when it names
 * them (`eos_token` as a string or `{content}`); otherwise eos is the first of `<|endoftext|>`, `<|im_end|>`,
 * `</s>`, `<eos>` that the tokenizer has, and pad falls back to eos (padded positions are never in the loss).
 */

import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { Tokenizer as HfTokenizerImpl } from '@huggingface/tokenizers';
import type { Tokenizer } from './types.js';

/** A tokenizer file that cannot be used; `file` names it. */
export class TokenizerError extends Error {
  constructor(
    readonly file: string,
    readonly problem: string,
  ) {
    super(`${file}: ${problem}`);
    this.name = 'TokenizerError';
  }
}

const EOS_CANDIDATES = ['<|endoftext|>', '<|im_end|>', '</s>', '<eos>', '<|end_of_text|>'];

interface AddedTokenJson {
  id: number;
  content: string;
  special?: boolean;
}

export class HfTokenizer implements Tokenizer {
  readonly kind = 'hf' as const;
  readonly vocabSize: number;
  readonly eos: number;
  readonly pad: number;
  readonly bos: number | null;
  readonly specialIds: ReadonlySet<number>;
  private readonly impl: HfTokenizerImpl;
  private readonly added = new Map<string, number>();

  /**
   * @param json the parsed `tokenizer.json`
   * @param config the parsed `tokenizer_config.json`, or `{}`
   * @param file where `json` came from, for messages
   */
  constructor(json: unknown, config: unknown, file = 'tokenizer.json') {
    if (!isObject(json)) throw new TokenizerError(file, 'not a JSON object');
    if (!isObject(json.model) || (typeof json.model.type !== 'string' && !isObject(json.model.vocab))) {
      throw new TokenizerError(file, 'no `model` with a `type` or `vocab`: is this a Hugging Face tokenizer.json?');
    }
    const cfg = isObject(config) ? config : {};
    try {
      this.impl = new HfTokenizerImpl(json, cfg);
    } catch (e) {
      throw new TokenizerError(file, `cannot build the tokenizer: ${(e as Error).message}`);
    }

    const special = new Set<number>();
    const addedTokens = Array.isArray(json.added_tokens) ? (json.added_tokens as AddedTokenJson[]) : [];
    for (const t of addedTokens) {
      if (!isObject(t) || typeof t.content !== 'string' || !Number.isInteger(t.id)) continue;
      this.added.set(t.content, t.id);
      if (t.special !== false) special.add(t.id);
    }

    let maxId = -1;
    for (const id of this.impl.get_vocab(true).values()) if (id > maxId) maxId = id;
    for (const id of this.added.values()) if (id > maxId) maxId = id;
    if (maxId < 0) throw new TokenizerError(file, 'the vocabulary is empty');
    this.vocabSize = maxId + 1;

    const named = (key: string): number | undefined => {
      const v = cfg[key];
      const text = typeof v === 'string' ? v : isObject(v) && typeof v.content === 'string' ? v.content : undefined;
      if (text === undefined) return undefined;
      const id = this.tokenId(text);
      if (id === undefined) throw new TokenizerError(file, `tokenizer_config.json names ${key} \`${text}\`, which is not in the vocabulary`);
      return id;
    };
    const eos = named('eos_token') ?? EOS_CANDIDATES.map((t) => this.tokenId(t)).find((id) => id !== undefined);
    if (eos === undefined) {
      throw new TokenizerError(file, `no end-of-sequence token: add \`eos_token\` to tokenizer_config.json or one of ${EOS_CANDIDATES.join(', ')} to added_tokens`);
    }
    this.eos = eos;
    this.pad = named('pad_token') ?? eos;
    this.bos = named('bos_token') ?? null;
    special.add(this.eos).add(this.pad);
    if (this.bos !== null) special.add(this.bos);
    this.specialIds = special;
  }

  encode(text: string): number[] {
    return this.impl.encode(text, { add_special_tokens: false }).ids;
  }

  decode(ids: ArrayLike<number>): string {
    if (ids.length === 0) return '';
    return this.impl.decode(Array.from(ids), { skip_special_tokens: false, clean_up_tokenization_spaces: false });
  }

  tokenId(token: string): number | undefined {
    return this.added.get(token) ?? this.impl.token_to_id(token);
  }
}

/**
 * Loads `tokenizer.json` (a file, or a folder holding one) and `tokenizer_config.json` beside it if present.
 * Throws {@link TokenizerError} naming the file on anything unusable.
 */
export function loadHfTokenizer(path: string): HfTokenizer {
  const file = path.endsWith('.json') ? path : join(path, 'tokenizer.json');
  const json = readJson(file);
  const configFile = join(dirname(file), 'tokenizer_config.json');
  const config = existsSync(configFile) ? readJson(configFile) : {};
  return new HfTokenizer(json, config, file);
}

function readJson(file: string): unknown {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new TokenizerError(file, `cannot read: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new TokenizerError(file, `invalid JSON: ${(e as Error).message}`);
  }
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
