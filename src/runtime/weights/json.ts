/** Small JSON helpers for config files: strict parsing into plain values, and writing JSON atomically. */
import { readFileSync } from 'node:fs';
import { writeFileAtomicSync } from '../io/atomic.js';
import { JsonNumber, StrictJsonError, parseStrictJson, type JsonValue } from '../io/strict-json.js';
import { WeightsError } from './errors.js';

export type Plain = null | boolean | number | string | Plain[] | { [k: string]: Plain };

/** Strict JSON (no duplicate keys, no `__proto__`) to plain values; objects get a null prototype. */
export function toPlain(v: JsonValue): Plain {
  if (v instanceof JsonNumber) return v.value;
  if (Array.isArray(v)) return v.map(toPlain);
  if (v instanceof Map) {
    const o: { [k: string]: Plain } = Object.create(null) as { [k: string]: Plain };
    for (const [k, x] of v) o[k] = toPlain(x);
    return o;
  }
  return v;
}

const MAX_CONFIG_BYTES = 64 * 1024 * 1024;

/** Reads a JSON object file strictly; every problem is a WeightsError naming the file. */
export function readJsonObject(file: string, code: 'BAD_CONFIG' | 'BAD_ADAPTER' = 'BAD_CONFIG'): { [k: string]: Plain } {
  let text: string;
  try {
    const buf = readFileSync(file);
    if (buf.length > MAX_CONFIG_BYTES) throw new WeightsError(code, file, `is ${buf.length} bytes, over the ${MAX_CONFIG_BYTES}-byte limit for a JSON config`);
    text = new TextDecoder('utf-8', { fatal: true }).decode(buf);
  } catch (e) {
    if (e instanceof WeightsError) throw e;
    const err = e as NodeJS.ErrnoException;
    throw new WeightsError('IO', file, err.code === 'ENOENT' ? 'does not exist' : `cannot read: ${err.code ?? err.message}`);
  }
  let v: JsonValue;
  try {
    v = parseStrictJson(text);
  } catch (e) {
    if (e instanceof StrictJsonError) throw new WeightsError(code, file, `is not valid JSON: ${e.message}`);
    throw e;
  }
  const p = toPlain(v);
  if (p === null || typeof p !== 'object' || Array.isArray(p)) throw new WeightsError(code, file, 'must hold a JSON object');
  return p;
}

/** Writes `value` as 2-space-indented JSON with a final newline, atomically. */
export function writeJsonAtomic(file: string, value: unknown): void {
  writeFileAtomicSync(file, `${JSON.stringify(value, null, 2)}\n`);
}
