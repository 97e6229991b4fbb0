/**
 * The `json_format` verdict: does a generated answer state exactly the expected record?
 *
 * An answer matches when it is one JSON object (whitespace around it allowed, nothing else) whose members
 * are exactly the expected keys, each once, each value equal to the expected one (deep equality of the
 * parsed values, so `1.5` and `1.50` are equal; key order and whitespace are free). A duplicate key fails
 * even where `JSON.parse` would keep the last value.
 *
 * The same scanner judges a prefix of an answer (`complete: false`): `fail` only when no continuation can
 * match, so generation may stop a row as soon as its verdict is `fail` without changing the probe's result.
 * It is conservative: inside a string with an escape, or inside a value that is neither a string nor a number
 * nor a literal, a prefix stays `open`; U+FFFD at the end of a prefix (a character not decoded yet) is ignored.
 */

export type JsonVerdict = 'match' | 'fail' | 'open';

/** Judges `text` (the whole answer when `complete`, else a prefix of it) against `expected`. */
export function judgeJson(text: string, expected: Readonly<Record<string, unknown>>, complete: boolean): JsonVerdict {
  const eof: JsonVerdict = complete ? 'fail' : 'open';
  // A prefix may end inside a character (a partial UTF-8 sequence decodes to U+FFFD): judge what precedes it.
  if (!complete) text = text.replace(/\uFFFD+$/, '');
  const keys = Object.keys(expected);
  const seen = new Set<string>();
  let i = 0;
  const ws = () => {
    while (i < text.length && (text[i] === ' ' || text[i] === '\t' || text[i] === '\n' || text[i] === '\r')) i++;
  };
  ws();
  if (i >= text.length) return eof;
  if (text[i] !== '{') return 'fail';
  i++;
  for (let first = true; ; first = false) {
    ws();
    if (i >= text.length) return eof;
    if (first && text[i] === '}') {
      i++;
      break;
    }
    if (text[i] !== '"') return 'fail';
    // The key.
    const k = scanString(text, i);
    if (k === 'bad') return 'fail';
    if (k === 'eof') {
      if (complete) return 'fail';
      const raw = text.slice(i + 1);
      if (raw.includes('\\')) return 'open';
      return keys.some((key) => !seen.has(key) && key.startsWith(raw)) ? 'open' : 'fail';
    }
    const key = JSON.parse(text.slice(i, k)) as string;
    if (!Object.hasOwn(expected, key) || seen.has(key)) return 'fail';
    seen.add(key);
    i = k;
    ws();
    if (i >= text.length) return eof;
    if (text[i] !== ':') return 'fail';
    i++;
    ws();
    if (i >= text.length) return eof;
    // The value.
    const want = expected[key];
    const v = scanValue(text, i);
    if (v === 'bad') return 'fail';
    if (v === 'eof') {
      if (complete) return 'fail';
      return partialValueViable(text.slice(i), want) ? 'open' : 'fail';
    }
    if (!deepEqual(JSON.parse(text.slice(i, v)), want)) return 'fail';
    i = v;
    ws();
    if (i >= text.length) return eof;
    if (text[i] === '}') {
      i++;
      break;
    }
    if (text[i] !== ',') return 'fail';
    i++;
  }
  // After the closing brace: every key, then only whitespace.
  if (seen.size !== keys.length) return 'fail';
  ws();
  if (i < text.length) return 'fail';
  return complete ? 'match' : 'open';
}

/** Whether `raw` (the start of a value, to the end of the text) can still become `want`. */
function partialValueViable(raw: string, want: unknown): boolean {
  if (typeof want === 'string') {
    if (raw[0] !== '"') return false;
    const body = raw.slice(1);
    return body.includes('\\') || want.startsWith(body);
  }
  if (typeof want === 'number') return /^-?[0-9.eE+-]*$/.test(raw);
  if (typeof want === 'boolean' || want === null) return String(want).startsWith(raw);
  if (Array.isArray(want)) return raw[0] === '[';
  if (typeof want === 'object') return raw[0] === '{';
  return false;
}

/** End (exclusive) of the JSON string starting at `i` (a `"`), `eof` if it does not end, `bad` if invalid. */
function scanString(text: string, i: number): number | 'eof' | 'bad' {
  let j = i + 1;
  while (j < text.length) {
    const c = text.charCodeAt(j);
    if (c === 0x22) return j + 1;
    if (c < 0x20) return 'bad';
    if (c === 0x5c) {
      if (j + 1 >= text.length) return 'eof';
      const e = text[j + 1]!;
      if (e === 'u') {
        const hex = text.slice(j + 2, j + 6);
        if (!/^[0-9a-fA-F]*$/.test(hex)) return 'bad';
        if (hex.length < 4) return 'eof';
        j += 6;
        continue;
      }
      if (!'"\\/bfnrt'.includes(e)) return 'bad';
      j += 2;
      continue;
    }
    j++;
  }
  return 'eof';
}

/** End (exclusive) of the JSON value starting at `i`, `eof` if the text ends inside it, `bad` if invalid. */
function scanValue(text: string, i: number): number | 'eof' | 'bad' {
  const c = text[i]!;
  if (c === '"') return scanString(text, i);
  if (c === '{' || c === '[') {
    // Find the matching close bracket (strings skipped), then let JSON.parse validate the span.
    const stack: string[] = [];
    let j = i;
    while (j < text.length) {
      const d = text[j]!;
      if (d === '"') {
        const e = scanString(text, j);
        if (typeof e !== 'number') return e;
        j = e;
        continue;
      }
      if (d === '{' || d === '[') stack.push(d === '{' ? '}' : ']');
      else if (d === '}' || d === ']') {
        if (stack.pop() !== d) return 'bad';
        if (!stack.length) return validSpan(text, i, j + 1);
      }
      j++;
    }
    return 'eof';
  }
  if (c === '-' || (c >= '0' && c <= '9')) {
    let j = i;
    while (j < text.length && /[-+0-9.eE]/.test(text[j]!)) j++;
    if (j >= text.length) return 'eof';
    return validSpan(text, i, j);
  }
  for (const lit of ['true', 'false', 'null']) {
    if (text.startsWith(lit, i)) return i + lit.length;
    if (lit.startsWith(text.slice(i))) return 'eof';
  }
  return 'bad';
}

function validSpan(text: string, from: number, to: number): number | 'bad' {
  try {
    JSON.parse(text.slice(from, to));
    return to;
  } catch {
    return 'bad';
  }
}

function deepEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  if (Array.isArray(a)) {
    const bb = b as unknown[];
    return a.length === bb.length && a.every((x, k) => deepEqual(x, bb[k]));
  }
  const ka = Object.keys(a);
  const kb = Object.keys(b);
  return ka.length === kb.length && ka.every((k) => Object.hasOwn(b, k) && deepEqual((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k]));
}
