import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { BYTE_CHAT_TEMPLATE, defaultChatTemplate, encodeChat, encodePrompt, renderChat } from '../../../src/runtime/data/template.js';
import type { ChatMessage } from '../../../src/runtime/data/records.js';
import { BYTE_CHAT_TEMPLATE_JINJA, byteToken, byteTokenizerFiles, byteTokenizerJson } from '../../../src/runtime/tokenizer/bytes-hf.js';
import { ByteTokenizer, HfTokenizer, loadHfTokenizer } from '../../../src/runtime/tokenizer/index.js';

const bytes = new ByteTokenizer();

/** The byte tokenizer's Hugging Face files written to a fresh folder, as saveHfCheckpoint writes them. */
function writeFiles(maxPositions = 1024): string {
  const dir = mkdtempSync(join(tmpdir(), 'mcpc-bytes-hf-'));
  for (const [name, json] of Object.entries(byteTokenizerFiles({ maxPositions }))) writeFileSync(join(dir, name), `${JSON.stringify(json, null, 2)}\n`);
  return dir;
}

const hf = loadHfTokenizer(writeFiles());

/** Strings of every kind: ASCII, multi-byte UTF-8, emoji, control characters (NUL and ETX included), empty. */
const anyText = fc.oneof(
  fc.string({ unit: 'binary', maxLength: 120 }),
  fc.string({ unit: 'grapheme', maxLength: 40 }),
  fc.string({ unit: fc.integer({ min: 0, max: 0x1f }).map((c) => String.fromCharCode(c)), maxLength: 40 }),
  fc.string({ unit: fc.constantFrom('a', ' ', '\n', 'é', '日', '😀', '👩‍⚕️', '\u0001', '\u007f', 'ă', 'Ā', '<0x41>', '<|user|>'), maxLength: 40 }),
);

describe('byteTokenizerFiles: the byte tokenizer as Hugging Face tokenizer files', () => {
  it('has a vocabulary of exactly 256 distinct tokens, id = byte, and EOS/PAD as special added tokens', () => {
    const json = byteTokenizerJson() as { model: { vocab: Record<string, number>; merges: unknown[]; byte_fallback: boolean }; added_tokens: { id: number; content: string; special: boolean }[] };
    const vocab = json.model.vocab;
    expect(Object.keys(vocab)).toHaveLength(256);
    expect(new Set(Object.values(vocab)).size).toBe(256);
    for (let b = 0; b < 256; b++) expect(vocab[byteToken(b)]).toBe(b);
    expect(byteToken(0x41)).toBe('A');
    expect(byteToken(0x03)).toBe('\u0003');
    expect(byteToken(0xc4)).toBe('<0xC4>');
    expect(json.model.merges).toEqual([]);
    expect(json.model.byte_fallback).toBe(true);
    // The added tokens' contents are vocabulary tokens with the same ids, so the Rust tokenizers library keeps
    // their ids when it loads the file (it gives a content outside the vocabulary a new id past it).
    expect(json.added_tokens.map((t) => [t.id, t.content, t.special])).toEqual([
      [0, '\u0000', true],
      [3, '\u0003', true],
    ]);
    for (const t of json.added_tokens) expect(vocab[t.content]).toBe(t.id);
  });

  it('names eos, pad, no bos, model_max_length and the fast tokenizer class in tokenizer_config.json', () => {
    const f = byteTokenizerFiles({ maxPositions: 512 });
    const cfg = f['tokenizer_config.json'];
    expect(cfg).toMatchObject({ tokenizer_class: 'PreTrainedTokenizerFast', eos_token: '\u0003', pad_token: '\u0000', bos_token: null, model_max_length: 512, clean_up_tokenization_spaces: false });
    expect(cfg.chat_template).toBe(BYTE_CHAT_TEMPLATE_JINJA);
    expect(f['special_tokens_map.json']).toEqual({
      eos_token: { content: '\u0003', lstrip: false, normalized: false, rstrip: false, single_word: false },
      pad_token: { content: '\u0000', lstrip: false, normalized: false, rstrip: false, single_word: false },
    });
  });

  it('loads as an HfTokenizer with eos 3, pad 0, no bos, vocabulary 256', () => {
    expect(hf).toBeInstanceOf(HfTokenizer);
    expect(hf.eos).toBe(3);
    expect(hf.pad).toBe(0);
    expect(hf.bos).toBeNull();
    expect(hf.vocabSize).toBe(256);
    expect([...hf.specialIds].sort()).toEqual([0, 3]);
    expect(hf.tokenId('\u0003')).toBe(3);
    expect(hf.tokenId('\u0000')).toBe(0);
    // Not ChatML: the pipeline keeps the byte chat template.
    expect(defaultChatTemplate(hf)).toBe(BYTE_CHAT_TEMPLATE);
  });

  it('encodes to exactly the byte tokenizer\'s ids and decodes back (examples)', () => {
    for (const s of ['', 'Hello, world!', 'é', 'naïve café 日本語', '😀 👩‍⚕️ 🇫🇷', 'tab\there\r\nnew', '\u0001\u0002\u0004\u001b\u007f', 'a\u0003b\u0000c', '\u0003', 'ă Ā Ġ', '<0x41> <0xC4>', '<|user|>\nhi\n<|assistant|>\nok\u0003', ' '.repeat(300)]) {
      const ids = hf.encode(s);
      expect(ids).toEqual(bytes.encode(s));
      expect(hf.decode(ids)).toBe(s);
    }
  });

  it('encodes to exactly the byte tokenizer\'s ids and decodes back (property)', () => {
    fc.assert(
      fc.property(anyText, (s) => {
        const ids = hf.encode(s);
        expect(ids).toEqual(bytes.encode(s));
        expect(hf.decode(ids)).toBe(s);
      }),
      { numRuns: 500 },
    );
  });

  it('decodes any byte sequence as the byte tokenizer does, malformed UTF-8 included (property)', () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 0, max: 255 }), { maxLength: 60 }), (ids) => {
        expect(hf.decode(ids)).toBe(bytes.decode(ids));
      }),
      { numRuns: 500 },
    );
  });
});

describe('the byte chat template as Jinja', () => {
  const conversations: ChatMessage[][] = [
    [
      { role: 'user', content: 'What is 2+2?' },
      { role: 'assistant', content: '4' },
    ],
    [
      { role: 'system', content: 'You are a careful clinician.' },
      { role: 'user', content: 'Fièvre à 39 °C 🤒, que faire ?' },
      { role: 'assistant', content: 'Hydratez-vous.\nConsultez si elle persiste.' },
      { role: 'user', content: 'Et après\n?' },
      { role: 'assistant', content: '' },
    ],
  ];

  /** Renders the template with Python's jinja2 as transformers does (sandboxed, trim_blocks, lstrip_blocks), one result per case. */
  function renderJinja(cases: { messages: ChatMessage[]; gen: boolean }[]): string[] {
    const script = [
      'import json, sys',
      'from jinja2.sandbox import ImmutableSandboxedEnvironment',
      'def raise_exception(m): raise ValueError(m)',
      'a = json.load(sys.stdin)',
      'env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)',
      'env.globals["raise_exception"] = raise_exception',
      't = env.from_string(a["template"])',
      'out = [t.render(messages=c["messages"], add_generation_prompt=c["gen"], eos_token="\\x03", pad_token="\\x00") for c in a["cases"]]',
      'sys.stdout.write(json.dumps(out))',
    ].join('\n');
    const r = spawnSync('python3', ['-c', script], { input: JSON.stringify({ template: BYTE_CHAT_TEMPLATE_JINJA, cases }), encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`python3: ${r.stderr}`);
    return JSON.parse(r.stdout) as string[];
  }

  const jinja2 = spawnSync('python3', ['-c', 'import jinja2'], { encoding: 'utf8' }).status === 0;

  it.skipIf(!jinja2)('renders what the runtime encodes (jinja2, as transformers renders chat templates)', () => {
    const prompts = conversations.map((m) => m.slice(0, -1));
    const out = renderJinja([...conversations.map((messages) => ({ messages, gen: false })), ...prompts.map((messages) => ({ messages, gen: true }))]);
    conversations.forEach((messages, i) => {
      const text = out[i]!;
      expect(text).toBe(renderChat(BYTE_CHAT_TEMPLATE, messages, '\u0003'));
      // apply_chat_template tokenizes the rendered text in one go: the same ids as the runtime's encodeChat.
      const enc = encodeChat(bytes, BYTE_CHAT_TEMPLATE, messages);
      if (typeof enc === 'string') throw new Error(enc);
      expect(hf.encode(text)).toEqual(enc.ids);
      // The generation prompt: everything but the last answer, then the assistant marker.
      expect(hf.encode(out[conversations.length + i]!)).toEqual(encodePrompt(bytes, BYTE_CHAT_TEMPLATE, prompts[i]!));
    });
  });

  it.skipIf(!jinja2)('refuses a role the byte template does not know', () => {
    expect(() => renderJinja([{ messages: [{ role: 'tool' as ChatMessage['role'], content: 'x' }], gen: false }])).toThrow(/knows the roles system, user and assistant, not tool/);
  });
});
