import { readFileSync } from 'node:fs';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { DataError, parseJsonl, readJsonl } from '../../../src/runtime/data/index.js';
import { line, MEDCARE, tempFile } from './helpers.js';

/** The error (DataError) that reading `text` as chat JSONL gives. */
async function errorOf(text: string, name = 'bad.jsonl'): Promise<DataError> {
  const path = tempFile(name, text);
  try {
    await readJsonl(path, {}, name);
  } catch (e) {
    expect(e).toBeInstanceOf(DataError);
    return e as DataError;
  }
  throw new Error('expected a DataError');
}

describe('JSONL reader: the MedCare data', () => {
  it.each(MEDCARE)('loads every line of %s', async (file) => {
    const lines = readFileSync(file, 'utf8').split('\n').filter((l) => l !== '');
    const res = await readJsonl(file);
    expect(res.records).toHaveLength(lines.length);
    expect(res.skipped).toBe(0);
    res.records.forEach((r, i) => {
      expect(r.source).toEqual({ file, line: i + 1 });
      expect(r.messages.map((m) => m.role)).toEqual(['user', 'assistant']);
      expect(r.id).toBe(JSON.parse(lines[i]!).id);
    });
  });

  it('keeps the keys the layout does not use (task, kind, answer, expected)', async () => {
    const { records } = await readJsonl('data/medcare/eval_knowledge.jsonl', { maxRecords: 1 });
    expect(records).toHaveLength(1);
    expect(Object.keys(records[0]!.extra)).toEqual(['id', 'task', 'kind', 'answer']);
    expect(records[0]!.extra.answer).toMatch(/^[A-D]$/);
  });
});

describe('JSONL reader: bad lines name file:line and the problem', () => {
  const good = line('q', 'a');
  const cases: [string, string, RegExp][] = [
    ['invalid JSON', `${good}\n{"messages": [\n`, /^bad\.jsonl:2: invalid JSON: /],
    ['not an object', `${good}\n${good}\n[1,2]\n`, /^bad\.jsonl:3: expected a JSON object, found an array$/],
    ['missing messages', `{"id": "x"}\n`, /^bad\.jsonl:1: missing `messages`$/],
    ['instruction record in chat data', `{"instruction": "x", "output": "y"}\n`, /^bad\.jsonl:1: missing `messages` \(this looks like an instruction record: declare the data with format: instruction\)$/],
    ['messages not an array', `{"messages": "hi"}\n`, /^bad\.jsonl:1: `messages` must be an array of \{role, content\}, found a string "hi"$/],
    ['empty messages', `{"messages": []}\n`, /^bad\.jsonl:1: `messages` is empty$/],
    ['message not an object', `{"messages": [42]}\n`, /^bad\.jsonl:1: messages\[0\] must be an object \{role, content\}, found the number 42$/],
    ['unknown role', `{"messages": [{"role": "bot", "content": "x"}]}\n`, /^bad\.jsonl:1: messages\[0\]\.role is "bot"; expected "system", "user" or "assistant"$/],
    ['no role', `{"messages": [{"content": "x"}]}\n`, /^bad\.jsonl:1: messages\[0\] has no `role`$/],
    ['assistant first', `{"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]}\n`, /^bad\.jsonl:1: wrong role order: messages\[0\] is assistant, expected user/],
    ['two users', `{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "q"}]}\n`, /^bad\.jsonl:1: wrong role order: messages\[1\] is user, expected assistant/],
    ['system in the middle', `{"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "s"}]}\n`, /messages\[1\] is system, expected assistant \(a system message may only come first\)/],
    ['no response', `{"messages": [{"role": "user", "content": "q"}]}\n`, /^bad\.jsonl:1: the last message must be an assistant turn/],
    ['only system', `{"messages": [{"role": "system", "content": "s"}]}\n`, /only a system message/],
    ['empty content', `{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]}\n`, /^bad\.jsonl:1: messages\[1\]\.content \(assistant\) is empty$/],
    ['non-string content', `{"messages": [{"role": "user", "content": ["q"]}, {"role": "assistant", "content": "a"}]}\n`, /^bad\.jsonl:1: messages\[0\]\.content \(user\) must be a string, found an array$/],
    ['null content', `{"messages": [{"role": "user", "content": null}, {"role": "assistant", "content": "a"}]}\n`, /content \(user\) must be a string, found null/],
    ['missing content', `{"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]}\n`, /^bad\.jsonl:1: messages\[0\] \(user\) has no `content`$/],
    ['invalid UTF-8', `${good}\n{"messages": "\xff"}\n`, /^bad\.jsonl:2: invalid UTF-8 at byte 14 of the line/],
  ];

  it.each(cases)('%s', async (_name, text, msg) => {
    // Invalid UTF-8 must reach the file as raw bytes.
    const err = await errorOf(text.includes('\xff') ? (Buffer.from(text, 'latin1') as unknown as string) : text);
    expect(err.message).toMatch(msg);
    expect(err.file).toBe('bad.jsonl');
  });

  it('counts lines exactly: blank lines, CRLF endings, a BOM and no final newline', async () => {
    const text = `\ufeff${line('a', 'b')}\r\n\r\n   \n${line('c', 'd')}\n\n{oops}`;
    const err = await errorOf(text);
    expect(err.line).toBe(6);
    const res = parseJsonl(text, 'f.jsonl', { skipBadRecords: true });
    expect(res.records.map((r) => r.source.line)).toEqual([1, 4]);
    expect(res.records[0]!.messages[1]!.content).toBe('b');
    expect(res.lines).toBe(6);
  });

  it('counts lines exactly across read chunks (lines longer than the 64 KiB chunk)', async () => {
    const long = line('x'.repeat(100_000), 'y');
    const text = [long, long, line('q', 'a'), '{bad', long].join('\n');
    const path = tempFile('big.jsonl', text);
    await expect(readJsonl(path, {}, 'big.jsonl')).rejects.toThrow(/^big\.jsonl:4: invalid JSON/);
    const res = await readJsonl(path, { skipBadRecords: true });
    expect(res.records.map((r) => r.source.line)).toEqual([1, 2, 3, 5]);
  });

  it('refuses a line over maxLineBytes without holding it', async () => {
    const text = [line('q', 'a'), line('x'.repeat(5000), 'y'), line('q', 'a')].join('\n');
    const res = await readJsonl(tempFile('l.jsonl', text), { maxLineBytes: 1000, skipBadRecords: true }, 'l.jsonl');
    expect(res.records.map((r) => r.source.line)).toEqual([1, 3]);
    expect(res.warnings[0]!.message).toMatch(/^l\.jsonl:2: line is 50\d\d bytes, over the limit of 1000/);
  });

  it('with skipBadRecords, counts bad lines as warnings and keeps the good ones', async () => {
    const text = [line('q1', 'a1'), '{', line('q3', 'a3'), '{"messages": []}', '"str"', line('q6', 'a6')].join('\n');
    const res = await readJsonl(tempFile('s.jsonl', text), { skipBadRecords: true }, 's.jsonl');
    expect(res.records.map((r) => r.source.line)).toEqual([1, 3, 6]);
    expect(res.skipped).toBe(3);
    expect(res.warnings.map((w) => w.line)).toEqual([2, 4, 5]);
    expect(res.warnings.every((w) => w instanceof DataError)).toBe(true);
  });

  it('reports a missing file as a DataError, not an exception from fs', async () => {
    await expect(readJsonl('/nonexistent/x.jsonl', {}, 'data/x.jsonl')).rejects.toThrow(/^data\/x\.jsonl: cannot open: no such file/);
  });

  it('stops after maxRecords good records', async () => {
    const res = await readJsonl('data/medcare/stage1.jsonl', { maxRecords: 5 });
    expect(res.records).toHaveLength(5);
    expect(res.lines).toBe(5);
  });
});

describe('JSONL reader: instruction layout', () => {
  it('turns {instruction, input?, output, system?} into a conversation', () => {
    const text = [
      JSON.stringify({ instruction: 'Summarise.', input: 'Long text.', output: 'Short.' }),
      JSON.stringify({ instruction: 'Say hi.', output: 'Hi.', system: 'Be brief.', id: 'r2' }),
    ].join('\n');
    const { records } = parseJsonl(text, 'i.jsonl', { format: 'instruction' });
    expect(records[0]!.messages).toEqual([
      { role: 'user', content: 'Summarise.\n\nLong text.' },
      { role: 'assistant', content: 'Short.' },
    ]);
    expect(records[1]!.messages[0]).toEqual({ role: 'system', content: 'Be brief.' });
    expect(records[1]!.id).toBe('r2');
  });

  it('names what is missing or wrong', () => {
    const err = (obj: object) => {
      try {
        parseJsonl(JSON.stringify(obj), 'i.jsonl', { format: 'instruction' });
      } catch (e) {
        return (e as DataError).message;
      }
      return 'no error';
    };
    expect(err({ output: 'x' })).toBe('i.jsonl:1: missing `instruction`');
    expect(err({ instruction: 'x' })).toBe('i.jsonl:1: missing `output`');
    expect(err({ instruction: 'x', output: 3 })).toBe('i.jsonl:1: `output` must be a string, found the number 3');
    expect(err({ instruction: 'x', output: 'y', input: {} })).toBe('i.jsonl:1: `input` must be a string, found an object');
    expect(err({ messages: [] })).toMatch(/this looks like a chat record: declare the data with format: chat/);
  });
});

describe('JSONL reader: fuzz', () => {
  const alphabet = fc.constantFrom(...'{}[]":,\\ \n\r\tabc0-1enulltruemessagesroleusercontentassistant\u0000\u00ff'.split(''));
  const jsonish = fc.array(fc.oneof(alphabet, fc.constantFrom('{"messages":[', '{"role":"user","content":"x"}', '{"role":"assistant","content":"y"}', ']}', '\n')), { maxLength: 200 }).map((a) => a.join(''));

  it('throws nothing but DataError on random bytes, and never throws with skipBadRecords', () => {
    fc.assert(
      fc.property(fc.oneof(fc.uint8Array({ maxLength: 400 }), jsonish.map((s) => new TextEncoder().encode(s))), (bytes) => {
        try {
          parseJsonl(bytes, 'fuzz.jsonl');
        } catch (e) {
          if (!(e instanceof DataError)) throw e;
          expect(e.line).toBeGreaterThan(0);
          expect(e.message.startsWith(`fuzz.jsonl:${e.line}: `)).toBe(true);
        }
        const res = parseJsonl(bytes, 'fuzz.jsonl', { skipBadRecords: true });
        expect(res.records.length + res.skipped).toBeLessThanOrEqual(res.lines);
      }),
      { numRuns: 2000 },
    );
  });

  it('the streaming reader agrees with the in-memory one on random files', async () => {
    await fc.assert(
      fc.asyncProperty(jsonish, async (text) => {
        const path = tempFile('f.jsonl', text);
        const a = await readJsonl(path, { skipBadRecords: true }, 'f.jsonl');
        const b = parseJsonl(text, 'f.jsonl', { skipBadRecords: true });
        expect(a.records.map((r) => r.source.line)).toEqual(b.records.map((r) => r.source.line));
        expect(a.warnings.map((w) => w.message)).toEqual(b.warnings.map((w) => w.message));
      }),
      { numRuns: 100 },
    );
  });
});
