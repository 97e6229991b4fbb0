/** Input generators for the safetensors fuzz tests: byte-level and structural (JSON) mutations. */
import fc from 'fast-check';
import { DTYPES } from '../../../src/runtime/io/safetensors.js';

export function withPrefix(header: Uint8Array, data: Uint8Array, n = BigInt(header.length)): Uint8Array {
  const out = new Uint8Array(8 + header.length + data.length);
  new DataView(out.buffer).setBigUint64(0, n, true);
  out.set(header, 8);
  out.set(data, 8 + header.length);
  return out;
}

export const INTERESTING_U64 = [0n, 1n, 2n, 7n, 8n, 100_000_000n, 100_000_001n, 2n ** 31n, 2n ** 32n, 2n ** 53n, 2n ** 63n, 2n ** 64n - 1n];

export type Mutation =
  | { kind: 'flip'; at: number; bit: number }
  | { kind: 'set'; at: number; value: number }
  | { kind: 'truncate'; at: number }
  | { kind: 'insert'; at: number; bytes: Uint8Array }
  | { kind: 'delete'; at: number; count: number }
  | { kind: 'prefix'; value: bigint; relative: boolean };

export const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), bit: fc.nat({ max: 7 }) }),
  fc.record({ kind: fc.constant('set' as const), at: fc.nat(), value: fc.constantFrom(0, 0x20, 0x22, 0x2c, 0x30, 0x39, 0x5b, 0x5d, 0x7b, 0x7d, 0x5c, 0xff, 0x80) }),
  fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }),
  fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 9 }) }),
  fc.record({ kind: fc.constant('delete' as const), at: fc.nat(), count: fc.integer({ min: 1, max: 9 }) }),
  fc.record({
    kind: fc.constant('prefix' as const),
    value: fc.oneof(fc.constantFrom(...INTERESTING_U64), fc.bigInt({ min: -16n, max: 16n })),
    relative: fc.boolean(),
  }),
);

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

export function mutate(file: Uint8Array, muts: Mutation[]): Uint8Array {
  let b = file;
  for (const m of muts) {
    const at = b.length === 0 ? 0 : m.kind === 'prefix' ? 0 : (m as { at: number }).at % (b.length + 1);
    switch (m.kind) {
      case 'flip':
        if (at < b.length) { b = b.slice(); b[at] ^= 1 << m.bit; }
        break;
      case 'set':
        if (at < b.length) { b = b.slice(); b[at] = m.value; }
        break;
      case 'truncate':
        b = b.slice(0, at);
        break;
      case 'insert':
        b = concat(b.subarray(0, at), m.bytes, b.subarray(at));
        break;
      case 'delete':
        b = concat(b.subarray(0, at), b.subarray(Math.min(b.length, at + m.count)));
        break;
      case 'prefix': {
        if (b.length < 8) break;
        b = b.slice();
        const dv = new DataView(b.buffer);
        const cur = dv.getBigUint64(0, true);
        const v = m.relative ? cur + m.value : m.value;
        dv.setBigUint64(0, BigInt.asUintN(64, v), true);
        break;
      }
    }
  }
  return b;
}

/** Structural mutations of a valid header, keeping it parseable JSON (deep validation paths). */
export type Edit =
  | { kind: 'offset'; t: number; which: 0 | 1; delta: number }
  | { kind: 'shape'; t: number; dim: number; value: number }
  | { kind: 'dtype'; t: number; dtype: string }
  | { kind: 'dup'; t: number }
  | { kind: 'proto' }
  | { kind: 'meta'; value: unknown }
  | { kind: 'field'; t: number; name: string; value: unknown }
  | { kind: 'drop'; t: number; field: 'dtype' | 'shape' | 'data_offsets' }
  | { kind: 'data'; delta: number }
  | { kind: 'alias'; t: number; from: number }
  | { kind: 'shift'; t: number; delta: number };

export const editArb: fc.Arbitrary<Edit> = fc.oneof(
  fc.record({ kind: fc.constant('offset' as const), t: fc.nat(), which: fc.constantFrom(0 as const, 1 as const), delta: fc.oneof(fc.integer({ min: -9, max: 9 }), fc.constantFrom(2 ** 40, -(2 ** 40), 2 ** 53)) }),
  fc.record({ kind: fc.constant('shape' as const), t: fc.nat(), dim: fc.nat(), value: fc.oneof(fc.nat({ max: 9 }), fc.constantFrom(-1, 1.5, 2 ** 31, 2 ** 53, 2 ** 60)) }),
  fc.record({ kind: fc.constant('dtype' as const), t: fc.nat(), dtype: fc.oneof(fc.constantFrom(...DTYPES), fc.constantFrom('F4', 'f32', '', 'F128', 'BOOL ')) }),
  fc.record({ kind: fc.constant('dup' as const), t: fc.nat() }),
  fc.constant({ kind: 'proto' as const }),
  fc.record({ kind: fc.constant('meta' as const), value: fc.oneof(fc.constant(null), fc.jsonValue({ maxDepth: 2 }), fc.dictionary(fc.string({ maxLength: 4 }), fc.string({ maxLength: 4 }))) }),
  fc.record({ kind: fc.constant('field' as const), t: fc.nat(), name: fc.constantFrom('extra', 'dtype', 'shape', 'data_offsets'), value: fc.jsonValue({ maxDepth: 2 }) }),
  fc.record({ kind: fc.constant('drop' as const), t: fc.nat(), field: fc.constantFrom('dtype' as const, 'shape' as const, 'data_offsets' as const) }),
  fc.record({ kind: fc.constant('data' as const), delta: fc.integer({ min: -8, max: 8 }) }),
  fc.record({ kind: fc.constant('alias' as const), t: fc.nat(), from: fc.nat() }),
  fc.record({ kind: fc.constant('shift' as const), t: fc.nat(), delta: fc.integer({ min: -16, max: 16 }) }),
);

export function applyEdits(file: Uint8Array, edits: Edit[]): Uint8Array {
  const n = Number(new DataView(file.buffer, file.byteOffset).getBigUint64(0, true));
  const header = JSON.parse(Buffer.from(file.subarray(8, 8 + n)).toString('utf8')) as Record<string, unknown>;
  let data = file.subarray(8 + n);
  // Entries as [name, value] pairs, so duplicates and __proto__ can be expressed.
  const pairs: [string, Record<string, unknown> | unknown][] = Object.entries(header);
  const tensorIdx = () => pairs.map((p, i) => [p, i] as const).filter(([p]) => p[0] !== '__metadata__').map(([, i]) => i);
  for (const e of edits) {
    const idx = tensorIdx();
    const pick = (t: number) => (idx.length ? (pairs[idx[t % idx.length]][1] as Record<string, unknown>) : undefined);
    switch (e.kind) {
      case 'offset': {
        const t = pick(e.t);
        if (t && Array.isArray(t.data_offsets)) t.data_offsets = t.data_offsets.map((v: number, i: number) => (i === e.which ? v + e.delta : v));
        break;
      }
      case 'shape': {
        const t = pick(e.t);
        if (t && Array.isArray(t.shape)) {
          const shape = [...(t.shape as number[])];
          shape[shape.length ? e.dim % shape.length : 0] = e.value;
          t.shape = shape;
        }
        break;
      }
      case 'dtype': { const t = pick(e.t); if (t) t.dtype = e.dtype; break; }
      case 'dup': if (idx.length) pairs.push([pairs[idx[e.t % idx.length]][0], pairs[idx[e.t % idx.length]][1]]); break;
      case 'proto': pairs.push(['__proto__', { dtype: 'U8', shape: [0], data_offsets: [0, 0] }]); break;
      case 'meta': pairs.unshift(['__metadata__', e.value]); break;
      case 'field': { const t = pick(e.t); if (t) t[e.name] = e.value; break; }
      case 'drop': { const t = pick(e.t); if (t) delete t[e.field]; break; }
      case 'data': data = e.delta < 0 ? data.subarray(0, Math.max(0, data.length + e.delta)) : concat(data, new Uint8Array(e.delta)); break;
      case 'alias': {
        // Same dtype, shape and offsets as another tensor: sizes stay right, ranges now collide.
        const a = pick(e.t);
        const b = pick(e.from);
        if (a && b && a !== b) Object.assign(a, { dtype: b.dtype, shape: b.shape, data_offsets: b.data_offsets });
        break;
      }
      case 'shift': {
        const t = pick(e.t);
        if (t && Array.isArray(t.data_offsets)) t.data_offsets = t.data_offsets.map((v: number) => v + e.delta);
        break;
      }
    }
  }
  const text = `{${pairs.map(([k, v]) => `${JSON.stringify(k)}:${JSON.stringify(v) ?? 'null'}`).join(',')}}`;
  return withPrefix(Buffer.from(text, 'utf8'), data);
}

