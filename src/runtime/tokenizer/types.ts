/**
 * The tokenizer interface the data pipeline and the trainer see. Two implementations: the byte tokenizer of
 * the built-in models (`bytes.ts`) and Hugging Face `tokenizer.json` files (`hf.ts`).
 */

export interface Tokenizer {
  /** 'bytes' for the built-in byte tokenizer, 'hf' for a loaded `tokenizer.json`. */
  readonly kind: 'bytes' | 'hf';
  /** Number of ids the model's embedding must cover (highest id + 1). */
  readonly vocabSize: number;
  /** End of sequence: ends every assistant turn, and generation stops on it. */
  readonly eos: number;
  /** Filler id for padded positions (never in the loss). */
  readonly pad: number;
  /** Beginning of sequence, where the tokenizer has one; the chat templates do not use it. */
  readonly bos: number | null;
  /**
   * Ids that carry structure (eos, pad, bos, a tokenizer's added special tokens). Record content that encodes
   * to any of them is rejected by the data encoder: a record must never be able to end a turn early.
   */
  readonly specialIds: ReadonlySet<number>;
  /** Text to ids. Adds no bos/eos of its own: the chat template decides where they go. */
  encode(text: string): number[];
  /** Ids to text. Ids that are not whole UTF-8 sequences decode to U+FFFD. */
  decode(ids: ArrayLike<number>): string;
  /** Id of a special token by its text (e.g. `<|im_end|>`), if the tokenizer has it. */
  tokenId(token: string): number | undefined;
}
