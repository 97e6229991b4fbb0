import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { judgeJson } from '../../../src/runtime/eval/json-match.js';

const EXPECTED = { drug: 'ibuprofen', class: 'NSAID', dose_mg: 400 };

describe('judgeJson on whole answers', () => {
  it.each([
    ['{"drug":"ibuprofen","class":"NSAID","dose_mg":400}', 'match'],
    ['  { "dose_mg" : 400.0,\n "class":"NSAID", "drug": "ibuprofen" }\n', 'match'],
    ['{"drug":"\\u0069buprofen","class":"NSAID","dose_mg":4e2}', 'match'],
    ['{"drug":"ibuprofen","class":"NSAID","dose_mg":"400"}', 'fail'],
    ['{"drug":"ibuprofen","class":"nsaid","dose_mg":400}', 'fail'],
    ['{"drug":"ibuprofen","class":"NSAID"}', 'fail'],
    ['{"drug":"ibuprofen","class":"NSAID","dose_mg":400,"route":"oral"}', 'fail'],
    ['{"drug":"x","drug":"ibuprofen","class":"NSAID","dose_mg":400}', 'fail'],
    ['{"drug":"ibuprofen","class":"NSAID","dose_mg":400', 'fail'],
    ['{"drug":"ibuprofen","class":"NSAID","dose_mg":400} ok', 'fail'],
    ['{"drug":"ibuprofen","class":"NSAID","dose_mg":0400}', 'fail'],
    ["{'drug':'ibuprofen'}", 'fail'],
    ['', 'fail'],
  ])('%j is %s', (text, verdict) => {
    expect(judgeJson(text, EXPECTED, true)).toBe(verdict);
  });

  it('compares nested values deeply', () => {
    expect(judgeJson('{"a":[1,{"b":null}],"c":true}', { a: [1, { b: null }], c: true }, true)).toBe('match');
    expect(judgeJson('{"a":[1,{"b":0}],"c":true}', { a: [1, { b: null }], c: true }, true)).toBe('fail');
  });
});

describe('judgeJson on prefixes', () => {
  it('keeps every prefix of a matching answer open', () => {
    const answer = ' {"class": "NSAID", "drug":"ibuprofen","dose_mg":400}';
    for (let n = 0; n < answer.length; n++) expect(judgeJson(answer.slice(0, n), EXPECTED, false), answer.slice(0, n)).toBe('open');
    expect(judgeJson(answer, EXPECTED, true)).toBe('match');
  });

  it.each([
    ['x', 'fail'],
    ['{"dr', 'open'],
    ['{"dx', 'fail'],
    ['{"drug":"ibu', 'open'],
    ['{"drug":"ibx', 'fail'],
    ['{"drug":4', 'fail'],
    ['{"drug":"ibuprofen","drug', 'fail'],
    ['{"dose_mg":4', 'open'],
    ['{"dose_mg":"', 'fail'],
    ['{"dose_mg":401,', 'fail'],
    ['{"drug":"ib\\u00', 'open'],
    ['{"drug":"ibu\uFFFD', 'open'],
    ['{"drug":"\uFFFDibu', 'fail'],
  ])('prefix %j is %s', (text, verdict) => {
    expect(judgeJson(text, EXPECTED, false)).toBe(verdict);
  });

  it('never fails a prefix of an answer that matches (random spellings of the expected record)', () => {
    const spelled = fc
      .tuple(fc.shuffledSubarray(Object.keys(EXPECTED), { minLength: 3, maxLength: 3 }), fc.array(fc.constantFrom('', ' ', '\n', '\t'), { minLength: 12, maxLength: 12 }), fc.boolean())
      .map(([keys, ws, escape]) => {
        const val = (k: string) => (k === 'dose_mg' ? (escape ? '4.00e2' : '400') : JSON.stringify((EXPECTED as Record<string, unknown>)[k]).replace('i', escape ? '\\u0069' : 'i'));
        return ws[0] + '{' + keys.map((k, i) => `${ws[i + 1]}"${k}"${ws[i + 4]}:${ws[i + 7]}${val(k)}`).join(',') + ws[10] + '}' + ws[11];
      });
    fc.assert(
      fc.property(spelled, (text) => {
        expect(judgeJson(text, EXPECTED, true)).toBe('match');
        for (let n = 0; n < text.length; n++) expect(judgeJson(text.slice(0, n), EXPECTED, false)).toBe('open');
      }),
    );
  });

  it('fails a prefix only when the whole answer fails (random answers)', () => {
    const alphabet = fc.constantFrom(...'{}[]":,. 0123456789eE-abdfgilnoprstuDASNIPM\\'.split(''), '"drug"', '"class"', '"NSAID"', '"ibuprofen"', '"dose_mg"', '400');
    fc.assert(
      fc.property(fc.array(alphabet, { maxLength: 30 }), (parts) => {
        const text = '{' + parts.join('');
        const whole = judgeJson(text, EXPECTED, true);
        for (let n = 0; n <= text.length; n++) if (judgeJson(text.slice(0, n), EXPECTED, false) === 'fail') expect(whole).toBe('fail');
      }),
      { numRuns: 2000 },
    );
  });
});
