import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  BYTE_CHAT_TEMPLATE,
  CHATML_TEMPLATE,
  DataError,
  defaultChatTemplate,
  encodeChat,
  encodePrompt,
  encodeRecord,
  encodeText,
  parseJsonl,
  readJsonl,
  renderChat,
  type ChatMessage,
  type ChatRecord,
  type Example,
} from '../../../src/runtime/data/index.js';
import { ByteTokenizer, loadHfTokenizer } from '../../../src/runtime/tokenizer/index.js';
import { writeSmallTokenizer } from '../tokenizer/fixture.js';

const tok = new ByteTokenizer();
const T = BYTE_CHAT_TEMPLATE;
const rec = (messages: ChatMessage[]): ChatRecord => ({ source: { file: 'x.jsonl', line: 7 }, messages, extra: {} });
const chat = (...turns: string[]): ChatMessage[] => turns.map((content, i) => ({ role: i % 2 === 0 ? 'user' : 'assistant', content }));

/** The decoded targets that are in the loss, in order. */
const lossText = (ex: Example) => tok.decode(ex.labels.filter((_, i) => ex.mask[i] === 1));

/** Checks the example invariants: labels are the inputs shifted by one. */
function expectShifted(ex: Example) {
  expect(ex.labels.length).toBe(ex.tokens.length);
  expect(ex.mask.length).toBe(ex.tokens.length);
  expect(Array.from(ex.labels.subarray(0, ex.labels.length - 1))).toEqual(Array.from(ex.tokens.subarray(1)));
}

describe('byte chat template', () => {
  it('renders conversations as documented', () => {
    expect(renderChat(T, chat('What is 2+2?', '4'))).toBe('<|user|>\nWhat is 2+2?\n<|assistant|>\n4<eos>');
    expect(renderChat(T, [{ role: 'system', content: 'Be brief.' }, ...chat('q', 'a', 'q2', 'a2')])).toBe(
      '<|system|>\nBe brief.\n<|user|>\nq\n<|assistant|>\na<eos><|user|>\nq2\n<|assistant|>\na2<eos>',
    );
    const enc = encodeChat(tok, T, chat('What is 2+2?', '4'));
    if (typeof enc === 'string') throw new Error(enc);
    expect(tok.decode(enc.ids)).toBe('<|user|>\nWhat is 2+2?\n<|assistant|>\n4\u0003');
  });

  it('is chosen for the byte tokenizer; ChatML for tokenizers that have its tokens', () => {
    expect(defaultChatTemplate(tok)).toBe(BYTE_CHAT_TEMPLATE);
    expect(defaultChatTemplate(loadHfTokenizer(writeSmallTokenizer()))).toBe(CHATML_TEMPLATE);
  });

  it('puts the loss on every assistant turn and its EOS, nothing else', () => {
    const ex = encodeRecord(rec([{ role: 'system', content: 'sys' }, ...chat('q1', 'a1', 'q2', 'a22')]), tok, T, { maxLen: 512 });
    expectShifted(ex);
    expect(lossText(ex)).toBe('a1\u0003a22\u0003');
    expect(ex.truncated).toBe('none');
  });

  it('with lossOn all, every target is in the loss', () => {
    const ex = encodeRecord(rec(chat('q', 'a')), tok, T, { maxLen: 512, lossOn: 'all' });
    expect([...ex.mask].every((m) => m === 1)).toBe(true);
    expect(tok.decode(ex.labels)).toBe('<|user|>\nq\n<|assistant|>\na\u0003'.slice(1));
  });

  it('the prompt for generation is the training sequence up to the response', () => {
    const msgs = chat('Which drug?', 'D) aspirin');
    const prompt = encodePrompt(tok, T, msgs.slice(0, 1));
    const enc = encodeChat(tok, T, msgs);
    if (typeof enc === 'string') throw new Error(enc);
    expect(enc.ids.slice(0, prompt.length)).toEqual(prompt);
    expect(enc.loss.slice(0, prompt.length).every((x) => x === 0)).toBe(true);
    expect(enc.loss[prompt.length]).toBe(1);
    expect(tok.decode(prompt)).toBe('<|user|>\nWhich drug?\n<|assistant|>\n');
  });

  it('rejects content holding the EOS or pad byte, naming file:line', () => {
    expect(() => encodeRecord(rec(chat('q', 'early\u0003end')), tok, T, { maxLen: 64 })).toThrow(DataError);
    expect(() => encodeRecord(rec(chat('q', 'early\u0003end')), tok, T, { maxLen: 64 })).toThrow(
      /^x\.jsonl:7: messages\[1\]\.content \(assistant\) contains the control byte 0x03 \(end of sequence\)/,
    );
    expect(() => encodeRecord(rec(chat('nul\u0000', 'a')), tok, T, { maxLen: 64 })).toThrow(/control byte 0x00 \(padding\)/);
  });

  it('treats template markers inside content as plain text: the mask comes from the structure', () => {
    const ex = encodeRecord(rec(chat('<|assistant|>\nfake', 'real <|user|>\n')), tok, T, { maxLen: 512 });
    expect(lossText(ex)).toBe('real <|user|>\n\u0003');
  });
});

describe('loss mask on the MedCare data', () => {
  it('covers exactly the assistant bytes and the EOS on every line of stage1.jsonl', async () => {
    const { records } = await readJsonl('data/medcare/stage1.jsonl');
    let checked = 0;
    for (const r of records) {
      const ex = encodeRecord(r, tok, T, { maxLen: 4096 });
      expectShifted(ex);
      const response = r.messages[1]!.content;
      expect(lossText(ex)).toBe(`${response}\u0003`);
      // The masked targets are one contiguous run at the very end.
      const n = ex.mask.length;
      const k = Buffer.byteLength(response) + 1;
      expect(ex.mask.subarray(n - k).every((m) => m === 1) && ex.mask.subarray(0, n - k).every((m) => m === 0)).toBe(true);
      expect(tok.decode(ex.tokens) + '\u0003').toBe(`<|user|>\n${r.messages[0]!.content}\n<|assistant|>\n${response}\u0003`);
      checked++;
    }
    expect(checked).toBe(800);
  });
});

describe('truncation to max_len', () => {
  const long = rec(chat('P'.repeat(100), 'R'.repeat(20)));

  it('keeps examples that fit untouched (max_len inputs cover max_len + 1 ids)', () => {
    const full = encodeRecord(long, tok, T, { maxLen: 4096 });
    const exact = encodeRecord(long, tok, T, { maxLen: full.tokens.length });
    expect(exact.truncated).toBe('none');
    expect(Array.from(exact.tokens)).toEqual(Array.from(full.tokens));
  });

  it('drops the oldest prompt ids when the response fits', () => {
    const ex = encodeRecord(long, tok, T, { maxLen: 60 });
    expect(ex.truncated).toBe('left');
    expect(ex.tokens.length).toBe(60);
    expectShifted(ex);
    expect(lossText(ex)).toBe(`${'R'.repeat(20)}\u0003`);
    expect(tok.decode(ex.tokens).endsWith(`P\n<|assistant|>\n${'R'.repeat(20)}`)).toBe(true);
  });

  it('starts at the response and cuts its end when even the response does not fit', () => {
    const ex = encodeRecord(long, tok, T, { maxLen: 20 });
    expect(ex.truncated).toBe('right');
    expect(ex.tokens.length).toBe(20);
    expect(tok.decode(ex.tokens).startsWith('<|assistant|>\nRRRRRR')).toBe(true);
    expect(lossText(ex)).toBe('R'.repeat(20 - '<|assistant|>\n'.length + 1));
    expect(lossText(ex)).not.toContain('\u0003');
  });

  it('always keeps some loss, never exceeds max_len, and keeps labels shifted (property)', () => {
    fc.assert(
      fc.property(fc.string({ minLength: 1, maxLength: 80 }), fc.string({ minLength: 1, maxLength: 80 }), fc.integer({ min: 1, max: 200 }), (q, a, maxLen) => {
        fc.pre(q.trim() !== '' && a.trim() !== '' && !/[\u0000\u0003]/.test(q + a));
        const ex = encodeRecord(rec(chat(q, a)), tok, T, { maxLen });
        expect(ex.tokens.length).toBeLessThanOrEqual(maxLen);
        expectShifted(ex);
        if (ex.truncated !== 'right' || maxLen >= '<|assistant|>\n'.length) expect(ex.mask.some((m) => m === 1)).toBe(true);
        if (ex.truncated !== 'right') expect(lossText(ex)).toBe(`${a}\u0003`);
      }),
    );
  });
});

describe('text sources', () => {
  it('cuts the text into max_len windows covering every id but the first exactly once, loss everywhere', () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 300 }).filter((s) => !/[\u0000\u0003]/.test(s)), fc.integer({ min: 1, max: 50 }), (text, maxLen) => {
        const ids = tok.encode(text);
        const windows = encodeText(text, tok, 'c.txt', { maxLen });
        expect(windows.length).toBe(ids.length <= 1 ? 0 : Math.ceil((ids.length - 1) / maxLen));
        const labels = windows.flatMap((w) => Array.from(w.labels));
        expect(labels).toEqual(ids.slice(1));
        for (const w of windows) {
          expectShifted(w);
          expect(w.tokens.length).toBeLessThanOrEqual(maxLen);
          expect([...w.mask].every((m) => m === 1)).toBe(true);
        }
      }),
    );
  });

  it('records the line where each window starts', () => {
    const windows = encodeText('aaaa\nbbbb\ncccc\n', tok, 'c.txt', { maxLen: 5 });
    expect(windows.map((w) => w.source)).toEqual([
      { file: 'c.txt', line: 1 },
      { file: 'c.txt', line: 2 },
      { file: 'c.txt', line: 3 },
    ]);
    expect(encodeText('x'.repeat(100), tok, 'c.txt', { maxLen: 10, maxWindows: 3 })).toHaveLength(3);
  });

  it('rejects text holding the EOS byte, naming the line', () => {
    expect(() => encodeText('fine\nalso fine\nbad\u0003\n', tok, 'c.txt', { maxLen: 8 })).toThrow(/^c\.txt:3: the text contains the control byte 0x03/);
  });
});

describe('ChatML with a Hugging Face tokenizer', () => {
  const hf = loadHfTokenizer(writeSmallTokenizer());
  const im_end = hf.tokenId('<|im_end|>')!;

  it('puts the loss on the response tokens and <|im_end|>, not on the newline after it', () => {
    const enc = encodeChat(hf, CHATML_TEMPLATE, chat('Is the sky blue?', 'Yes and no'));
    if (typeof enc === 'string') throw new Error(enc);
    expect(hf.decode(enc.ids)).toBe('<|im_start|>user\nIs the sky blue?<|im_end|>\n<|im_start|>assistant\nYes and no<|im_end|>\n');
    const inLoss = enc.ids.filter((_, i) => enc.loss[i] === 1);
    expect(inLoss.at(-1)).toBe(im_end);
    expect(hf.decode(inLoss)).toBe('Yes and no<|im_end|>');
  });

  it('rejects content that encodes to a special token', () => {
    const { records } = parseJsonl(JSON.stringify({ messages: chat('q', 'a<|im_end|>b') }), 'h.jsonl');
    expect(() => encodeRecord(records[0]!, hf, CHATML_TEMPLATE, { maxLen: 64 })).toThrow(/^h\.jsonl:1: messages\[1\]\.content \(assistant\) contains the special token "<\|im_end\|>"/);
  });
});
