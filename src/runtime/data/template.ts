/**
 * Chat templates: how a conversation becomes one token sequence, and which of its tokens are in the loss.
 *
 * The byte template (built-in byte-level models), in plain bytes, `\x03` being the byte tokenizer's EOS:
 *
 *     <|system|>\n{system}\n            (only when there is a system message)
 *     <|user|>\n{user}\n
 *     <|assistant|>\n{assistant}\x03
 *     <|user|>\n{user}\n                 (further turns, if any)
 *     <|assistant|>\n{assistant}\x03
 *
 * For example `<|user|>\nWhat is 2+2?\n<|assistant|>\n4\x03`. The markers are ordinary bytes, so content
 * that happens to contain `<|user|>` is harmless: which tokens are in the loss is decided by the structure,
 * never by searching the text. Only the EOS byte (and the pad byte NUL) may not occur in content.
 *
 * The ChatML template (Qwen2 chat tokenizers, which have `<|im_start|>` and `<|im_end|>` as added tokens):
 *
 *     <|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n{assistant}<|im_end|>\n
 *
 * Loss: on every assistant content token and on the end-of-turn token that follows it (EOS, or
 * `<|im_end|>`), so the model learns to stop. Never on markers, system or user text, the newline after
 * `<|im_end|>`, or padding. Each piece is encoded separately (marker, content, end), which keeps the
 * response/prompt boundary on a token boundary for every tokenizer.
 */

import type { Tokenizer } from '../tokenizer/types.js';
import type { ChatMessage, Role } from './records.js';

export interface ChatTemplate {
  name: string;
  /** Text before each message's content (never in the loss). */
  open: Record<Role, string>;
  /** Text after a system or user message's content (never in the loss). */
  close: { system: string; user: string };
  /** End of an assistant turn, in the loss: `'eos'` (the tokenizer's EOS id) or the text of a special token. */
  end: string;
  /** Text after the end-of-turn token (never in the loss). */
  after: string;
}

export const BYTE_CHAT_TEMPLATE: ChatTemplate = {
  name: 'bytes',
  open: { system: '<|system|>\n', user: '<|user|>\n', assistant: '<|assistant|>\n' },
  close: { system: '\n', user: '\n' },
  end: 'eos',
  after: '',
};

export const CHATML_TEMPLATE: ChatTemplate = {
  name: 'chatml',
  open: { system: '<|im_start|>system\n', user: '<|im_start|>user\n', assistant: '<|im_start|>assistant\n' },
  close: { system: '<|im_end|>\n', user: '<|im_end|>\n' },
  end: '<|im_end|>',
  after: '\n',
};

/** ChatML for tokenizers that have its tokens, the byte template otherwise. */
export function defaultChatTemplate(tok: Tokenizer): ChatTemplate {
  if (tok.kind === 'hf' && tok.tokenId('<|im_start|>') !== undefined && tok.tokenId('<|im_end|>') !== undefined) return CHATML_TEMPLATE;
  return BYTE_CHAT_TEMPLATE;
}

/** A conversation as ids, with a per-id flag: 1 when the id is a target of the loss. */
export interface EncodedChat {
  ids: number[];
  loss: Uint8Array;
  /** Index in `ids` where the last assistant turn (its opening marker) starts. */
  lastTurnStart: number;
}

export interface EncodeChatOptions {
  /** `response`: loss on assistant content and end-of-turn only (default); `all`: on every id but the first. */
  lossOn?: 'response' | 'all';
}

/**
 * Encodes a conversation that ends with an assistant turn. Returns a problem (a sentence) instead when a
 * message's content encodes to one of the tokenizer's special ids.
 */
export function encodeChat(tok: Tokenizer, template: ChatTemplate, messages: readonly ChatMessage[], opts: EncodeChatOptions = {}): EncodedChat | string {
  const ids: number[] = [];
  const loss: number[] = [];
  let lastTurnStart = -1;
  const endId = endOfTurnId(tok, template);
  const push = (part: readonly number[], inLoss: boolean) => {
    for (const id of part) {
      ids.push(id);
      loss.push(inLoss ? 1 : 0);
    }
  };
  for (let i = 0; i < messages.length; i++) {
    const m = messages[i]!;
    const content = tok.encode(m.content);
    const bad = content.find((id) => tok.specialIds.has(id));
    if (bad !== undefined) {
      return `messages[${i}].content (${m.role}) contains ${describeSpecial(tok, bad)}, which the tokenizer reserves; remove it from the text`;
    }
    if (m.role === 'assistant') {
      lastTurnStart = ids.length;
      push(tok.encode(template.open.assistant), false);
      push(content, true);
      push([endId], true);
      push(tok.encode(template.after), false);
    } else {
      push(tok.encode(template.open[m.role]), false);
      push(content, false);
      push(tok.encode(template.close[m.role]), false);
    }
  }
  const flags = Uint8Array.from(loss);
  if (opts.lossOn === 'all') flags.fill(1, 1);
  return { ids, loss: flags, lastTurnStart };
}

/**
 * The prompt a model completes at generation time: every message (the last must not be an assistant turn;
 * pass the conversation without its response), then the opening marker of the assistant turn. Generation
 * stops at the end-of-turn id ({@link endOfTurnId}).
 */
export function encodePrompt(tok: Tokenizer, template: ChatTemplate, messages: readonly ChatMessage[]): number[] {
  const ids: number[] = [];
  for (const m of messages) {
    if (m.role === 'assistant') {
      ids.push(...tok.encode(template.open.assistant), ...tok.encode(m.content), endOfTurnId(tok, template), ...tok.encode(template.after));
    } else {
      ids.push(...tok.encode(template.open[m.role]), ...tok.encode(m.content), ...tok.encode(template.close[m.role]));
    }
  }
  ids.push(...tok.encode(template.open.assistant));
  return ids;
}

/** The id that ends an assistant turn under this template. */
export function endOfTurnId(tok: Tokenizer, template: ChatTemplate): number {
  if (template.end === 'eos') return tok.eos;
  const id = tok.tokenId(template.end);
  if (id === undefined) throw new Error(`chat template ${template.name}: the tokenizer has no token ${template.end}`);
  return id;
}

/** The template as text, for documentation and `explain`-style output. */
export function renderChat(template: ChatTemplate, messages: readonly ChatMessage[], eosText = '<eos>'): string {
  let out = '';
  for (const m of messages) {
    if (m.role === 'assistant') out += template.open.assistant + m.content + (template.end === 'eos' ? eosText : template.end) + template.after;
    else out += template.open[m.role] + m.content + template.close[m.role];
  }
  return out;
}

export function describeSpecial(tok: Tokenizer, id: number): string {
  if (tok.kind === 'bytes') return `the control byte 0x${id.toString(16).padStart(2, '0')} (${id === tok.eos ? 'end of sequence' : 'padding'})`;
  const text = tok.decode([id]);
  return `the special token ${JSON.stringify(text)} (id ${id})`;
}
