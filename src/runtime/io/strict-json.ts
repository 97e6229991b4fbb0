/**
 * A strict JSON parser (RFC 8259) for untrusted file headers and manifests.
 *
 * Unlike `JSON.parse` it
 * - reports duplicate object keys (JSON.parse silently keeps the last one),
 * - rejects the key `__proto__` anywhere (no prototype pollution by any later copy),
 * - returns objects as `Map`s (no prototype, key order preserved, integer-like keys not reordered),
 * - keeps each number's source text, so callers can tell `1` from `1.0` or `1e0`,
 * - rejects lone surrogates in `\u` escapes (the text must round-trip through UTF-8),
 * - bounds nesting depth (no stack overflow on `[[[[...`).
 *
 * Errors are `StrictJsonError`s carrying the character offset and the key path.
 */

export type JsonValue = null | boolean | string | JsonNumber | JsonValue[] | JsonObject;
export type JsonObject = Map<string, JsonValue>;

/** A JSON number with its exact source text. */
export class JsonNumber {
  constructor(
    readonly raw: string,
    readonly value: number,
  ) {}
  /** True when the source text is a non-negative integer without fraction or exponent (`0`, `42`). */
  get isPlainNonNegativeInteger(): boolean {
    return /^(0|[1-9][0-9]*)$/.test(this.raw);
  }
}

export class StrictJsonError extends Error {
  constructor(
    readonly reason: string,
    /** Character offset (UTF-16 code units) in the parsed text. */
    readonly offset: number,
    /** Path of the value being parsed, e.g. `["model.w", "shape"]`. */
    readonly path: readonly (string | number)[],
    readonly code: 'SYNTAX' | 'DUPLICATE_KEY' | 'FORBIDDEN_KEY' | 'TOO_DEEP' = 'SYNTAX',
    /** The offending key, for DUPLICATE_KEY and FORBIDDEN_KEY. */
    readonly key?: string,
  ) {
    super(`${reason} at character ${offset}${path.length ? ` (in ${formatPath(path)})` : ''}`);
    this.name = 'StrictJsonError';
  }
}

export function formatPath(path: readonly (string | number)[]): string {
  return path.map((p) => (typeof p === 'number' ? `[${p}]` : JSON.stringify(p))).join(' > ');
}

export interface StrictJsonOptions {
  /** Maximum nesting of arrays and objects (default 64). */
  maxDepth?: number;
}

const WS = new Set([0x20, 0x09, 0x0a, 0x0d]);
const NUMBER_RE = /-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?/y;

/** Parses `text` as one JSON value, allowing only whitespace around it. */
export function parseStrictJson(text: string, options: StrictJsonOptions = {}): JsonValue {
  const maxDepth = options.maxDepth ?? 64;
  let pos = 0;
  const path: (string | number)[] = [];

  const fail = (reason: string, code: StrictJsonError['code'] = 'SYNTAX', at = pos, key?: string): never => {
    throw new StrictJsonError(reason, at, [...path], code, key);
  };
  const skipWs = (): void => {
    while (pos < text.length && WS.has(text.charCodeAt(pos))) pos++;
  };
  const describe = (): string =>
    pos >= text.length ? 'end of text' : `${JSON.stringify(text[pos])}`;

  const parseString = (): string => {
    // text[pos] === '"'
    pos++;
    let out = '';
    let chunkStart = pos;
    for (;;) {
      if (pos >= text.length) fail('unterminated string');
      const c = text.charCodeAt(pos);
      if (c === 0x22) {
        out += text.slice(chunkStart, pos);
        pos++;
        return out;
      }
      if (c < 0x20) fail(`unescaped control character U+${c.toString(16).padStart(4, '0')} in string`);
      if (c === 0x5c) {
        out += text.slice(chunkStart, pos);
        pos++;
        if (pos >= text.length) fail('unterminated string');
        const e = text[pos];
        switch (e) {
          case '"': out += '"'; break;
          case '\\': out += '\\'; break;
          case '/': out += '/'; break;
          case 'b': out += '\b'; break;
          case 'f': out += '\f'; break;
          case 'n': out += '\n'; break;
          case 'r': out += '\r'; break;
          case 't': out += '\t'; break;
          case 'u': {
            const unit = readHex4(pos + 1);
            pos += 4;
            if (unit >= 0xd800 && unit <= 0xdbff) {
              // Must be followed by an escaped low surrogate.
              if (text[pos + 1] !== '\\' || text[pos + 2] !== 'u') fail('lone surrogate in \\u escape');
              const low = readHex4(pos + 3);
              if (low < 0xdc00 || low > 0xdfff) fail('lone surrogate in \\u escape');
              pos += 6;
              out += String.fromCharCode(unit, low);
            } else if (unit >= 0xdc00 && unit <= 0xdfff) {
              fail('lone surrogate in \\u escape');
            } else {
              out += String.fromCharCode(unit);
            }
            break;
          }
          default:
            fail(`invalid escape \\${e}`);
        }
        pos++;
        chunkStart = pos;
        continue;
      }
      pos++;
    }
  };
  const readHex4 = (at: number): number => {
    const h = text.slice(at, at + 4);
    if (!/^[0-9a-fA-F]{4}$/.test(h)) fail('invalid \\u escape', 'SYNTAX', at);
    return parseInt(h, 16);
  };

  const parseValue = (depth: number): JsonValue => {
    skipWs();
    if (pos >= text.length) fail('unexpected end of text, expected a value');
    const c = text[pos];
    if (c === '{' || c === '[') {
      if (depth >= maxDepth) fail(`nesting deeper than ${maxDepth}`, 'TOO_DEEP');
      return c === '{' ? parseObject(depth + 1) : parseArray(depth + 1);
    }
    if (c === '"') return parseString();
    if (c === 't' && text.startsWith('true', pos)) { pos += 4; return true; }
    if (c === 'f' && text.startsWith('false', pos)) { pos += 5; return false; }
    if (c === 'n' && text.startsWith('null', pos)) { pos += 4; return null; }
    if (c === '-' || (c >= '0' && c <= '9')) {
      NUMBER_RE.lastIndex = pos;
      const m = NUMBER_RE.exec(text);
      if (!m) fail('invalid number');
      const raw = m![0];
      pos += raw.length;
      // A digit right after a number means something like `01`.
      if (pos < text.length && /[0-9.eE+-]/.test(text[pos])) fail('invalid number');
      return new JsonNumber(raw, Number(raw));
    }
    return fail(`unexpected ${describe()}, expected a value`);
  };

  const parseArray = (depth: number): JsonValue[] => {
    pos++; // [
    const out: JsonValue[] = [];
    skipWs();
    if (text[pos] === ']') { pos++; return out; }
    for (;;) {
      path.push(out.length);
      out.push(parseValue(depth));
      path.pop();
      skipWs();
      if (text[pos] === ',') { pos++; continue; }
      if (text[pos] === ']') { pos++; return out; }
      fail(`unexpected ${describe()}, expected ',' or ']'`);
    }
  };

  const parseObject = (depth: number): JsonObject => {
    pos++; // {
    const out: JsonObject = new Map();
    skipWs();
    if (text[pos] === '}') { pos++; return out; }
    for (;;) {
      skipWs();
      if (text[pos] !== '"') fail(`unexpected ${describe()}, expected a string key`);
      const keyAt = pos;
      const key = parseString();
      if (key === '__proto__') fail('forbidden key "__proto__"', 'FORBIDDEN_KEY', keyAt, key);
      if (out.has(key)) fail(`duplicate key ${JSON.stringify(key)}`, 'DUPLICATE_KEY', keyAt, key);
      skipWs();
      if (text[pos] !== ':') fail(`unexpected ${describe()}, expected ':'`);
      pos++;
      path.push(key);
      out.set(key, parseValue(depth));
      path.pop();
      skipWs();
      if (text[pos] === ',') { pos++; continue; }
      if (text[pos] === '}') { pos++; return out; }
      fail(`unexpected ${describe()}, expected ',' or '}'`);
    }
  };

  const value = parseValue(0);
  skipWs();
  if (pos < text.length) fail(`unexpected ${describe()} after the JSON value`);
  return value;
}

export function isJsonObject(v: JsonValue): v is JsonObject {
  return v instanceof Map;
}

export function jsonTypeName(v: JsonValue): string {
  if (v === null) return 'null';
  if (v instanceof Map) return 'object';
  if (Array.isArray(v)) return 'array';
  if (v instanceof JsonNumber) return 'number';
  return typeof v;
}
