import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { JsonNumber, StrictJsonError, parseStrictJson, type JsonValue } from '../../../src/runtime/io/strict-json.js';

/** Our value -> the plain value JSON.parse would give. */
function plain(v: JsonValue): unknown {
  if (v instanceof JsonNumber) return v.value;
  if (v instanceof Map) {
    const o: Record<string, unknown> = Object.create(null);
    for (const [k, x] of v) o[k] = plain(x);
    return o;
  }
  if (Array.isArray(v)) return v.map(plain);
  return v;
}

function fails(text: string, code: StrictJsonError['code'] = 'SYNTAX'): StrictJsonError {
  let err: unknown;
  try {
    parseStrictJson(text);
  } catch (e) {
    err = e;
  }
  expect(err, text).toBeInstanceOf(StrictJsonError);
  expect((err as StrictJsonError).code, text).toBe(code);
  return err as StrictJsonError;
}

describe('parseStrictJson', () => {
  it('agrees with JSON.parse on valid JSON (property)', () => {
    fc.assert(
      fc.property(fc.jsonValue(), (v) => {
        const text = JSON.stringify(v);
        if (text.includes('"__proto__"')) return;
        expect(JSON.stringify(plain(parseStrictJson(text, { maxDepth: 1000 })))).toBe(JSON.stringify(JSON.parse(text)));
      }),
      { numRuns: 500 },
    );
  });

  it('duplicate keys at any depth, with the key and path', () => {
    const e = fails('{"a":{"b":1,"b":2}}', 'DUPLICATE_KEY');
    expect(e.key).toBe('b');
    expect(e.path).toEqual(['a']);
    fails('{"x":1,"\\u0078":2}', 'DUPLICATE_KEY');
  });

  it('__proto__ keys', () => {
    expect(fails('{"__proto__":{"polluted":true}}', 'FORBIDDEN_KEY').key).toBe('__proto__');
    fails('[{"a":{"__proto__":1}}]', 'FORBIDDEN_KEY');
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });

  it('objects are Maps: integer-like keys keep their order', () => {
    const v = parseStrictJson('{"b":1,"10":2,"2":3}') as Map<string, JsonValue>;
    expect([...v.keys()]).toEqual(['b', '10', '2']);
  });

  it('numbers keep their source text', () => {
    const arr = parseStrictJson('[1, 1.0, 1e0, -0, 12345678901234567890]') as JsonNumber[];
    expect(arr.map((n) => n.raw)).toEqual(['1', '1.0', '1e0', '-0', '12345678901234567890']);
    expect(arr.map((n) => n.isPlainNonNegativeInteger)).toEqual([true, false, false, false, true]);
  });

  it('rejects what RFC 8259 rejects', () => {
    for (const t of ['', ' ', '01', '1.', '.5', '+1', '-', '1e', 'tru', 'nul', "'a'", '[1,]', '{"a":1,}', '{a:1}', '[1 2]',
      '"\\x"', '"\\u12"', '"a\nb"', '"\t"', 'NaN', 'Infinity', '{"a" 1}', '[', '{', '"abc', '1 2']) {
      fails(t);
    }
  });

  it('rejects lone surrogate escapes, accepts pairs', () => {
    fails('"\\ud800"');
    fails('"\\udc00"');
    fails('"\\ud800\\u0041"');
    expect(parseStrictJson('"\\ud83d\\ude00"')).toBe('😀');
  });

  it('bounds nesting depth', () => {
    fails('['.repeat(100) + ']'.repeat(100), 'TOO_DEEP');
    expect(() => parseStrictJson('['.repeat(5) + ']'.repeat(5), { maxDepth: 5 })).not.toThrow();
    fails('['.repeat(200000), 'TOO_DEEP');
  });

  it('error messages give the offset and path', () => {
    const e = fails('{"a":[1,2,x]}');
    expect(e.offset).toBe(10);
    expect(e.message).toMatch(/at character 10 \(in "a" > \[2\]\)/);
  });
});
