import { afterAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  DTYPES,
  MAX_HEADER_BYTES,
  SafetensorsError,
  SafetensorsReader,
  ShardedSafetensorsReader,
  dtypeSize,
  encodeSafetensors,
  layoutSafetensors,
  parseSafetensorsIndex,
  readSafetensorsFile,
  tensorFromFloat32,
  toFloat32,
  writeSafetensorsFile,
  type Dtype,
  type SafetensorsErrorCode,
  type TensorInput,
} from '../../../src/runtime/io/safetensors.js';
import {
  bf16BitsToFloat32,
  f16BitsToFloat32,
  float32ToBf16Bits,
  float32ToF16Bits,
} from '../../../src/runtime/io/float16.js';
import { bytesOf, filesArb, removeTempDirs, tempDir } from './helpers.js';

afterAll(removeTempDirs);

/** A file from header text (or bytes) and data; `n` overrides the length prefix. */
function mk(header: string | Uint8Array, data: Uint8Array | number = 0, n?: bigint): Uint8Array {
  const h = typeof header === 'string' ? Buffer.from(header, 'utf8') : header;
  const d = typeof data === 'number' ? new Uint8Array(data) : data;
  const out = new Uint8Array(8 + h.length + d.length);
  new DataView(out.buffer).setBigUint64(0, n ?? BigInt(h.length), true);
  out.set(h, 8);
  out.set(d, 8 + h.length);
  return out;
}

function entry(dtype: string, shape: number[], b: number, e: number): string {
  return `{"dtype":"${dtype}","shape":[${shape.join(',')}],"data_offsets":[${b},${e}]}`;
}

function rejects(bytes: Uint8Array, code: SafetensorsErrorCode, tensor?: string, message?: RegExp): SafetensorsError {
  let err: unknown;
  try {
    SafetensorsReader.fromBytes(bytes, 'bad.safetensors');
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(SafetensorsError);
  const se = err as SafetensorsError;
  expect(se.code).toBe(code);
  expect(se.file).toBe('bad.safetensors');
  expect(se.message.startsWith('bad.safetensors: ')).toBe(true);
  if (tensor !== undefined) {
    expect(se.tensor).toBe(tensor);
    expect(se.message).toContain(`tensor ${JSON.stringify(tensor)}`);
  }
  if (message) expect(se.message).toMatch(message);
  return se;
}

describe('reader rejects malformed files with a typed error naming the file and tensor', () => {
  it('file shorter than the 8-byte prefix', () => {
    rejects(new Uint8Array(5), 'FILE_TOO_SMALL', undefined, /5 bytes/);
    rejects(new Uint8Array(0), 'FILE_TOO_SMALL');
  });

  it('header length over 100 MB (including 2^64 - 1), before reading anything else', () => {
    rejects(mk('{}', 0, BigInt(MAX_HEADER_BYTES) + 1n), 'HEADER_TOO_LARGE', undefined, /100000000/);
    rejects(mk('{}', 0, 0xffffffffffffffffn), 'HEADER_TOO_LARGE');
  });

  it('truncated file: header length past the end', () => {
    const ok = encodeSafetensors({ w: { dtype: 'F32', shape: [4], data: new Float32Array(4) } });
    const n = Number(new DataView(ok.buffer).getBigUint64(0, true));
    rejects(ok.subarray(0, 8 + n - 1), 'TRUNCATED', undefined, /truncated/);
  });

  it('truncated file: data cut short (tensor runs past the end)', () => {
    const ok = encodeSafetensors({ w: { dtype: 'F32', shape: [4], data: new Float32Array(4) } });
    rejects(ok.subarray(0, ok.length - 3), 'OUT_OF_BOUNDS', 'w', /run past the end of the data \(13 bytes\)/);
  });

  it('invalid UTF-8 in the header', () => {
    rejects(mk(Uint8Array.from([0x7b, 0x22, 0xff, 0x22, 0x3a, 0x31, 0x7d])), 'INVALID_UTF8');
  });

  it('bad JSON: syntax error, trailing garbage, NUL padding, empty header, BOM', () => {
    rejects(mk('{"a":'), 'INVALID_JSON', undefined, /not valid JSON/);
    rejects(mk('{} x'), 'INVALID_JSON');
    rejects(mk('{}\0\0\0\0\0\0'), 'INVALID_JSON');
    rejects(mk(''), 'INVALID_JSON');
    rejects(mk('\ufeff{}'), 'INVALID_JSON');
    rejects(mk(`{"w":${entry('U8', [1], 0, 1)},}`, 1), 'INVALID_JSON');
    rejects(mk('[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]'), 'INVALID_JSON', undefined, /nesting/);
  });

  it('header that is not an object', () => {
    rejects(mk('[]'), 'NOT_AN_OBJECT', undefined, /found array/);
    rejects(mk('12'), 'NOT_AN_OBJECT');
  });

  it('duplicate tensor names (JSON.parse would silently keep the last)', () => {
    const h = `{"a":${entry('U8', [1], 0, 1)},"b":${entry('U8', [1], 1, 2)},"a":${entry('U8', [1], 0, 1)}}`;
    rejects(mk(h, 2), 'DUPLICATE_NAME', 'a', /more than once/);
    // escaped spelling of the same name is the same name
    const h2 = `{"a":${entry('U8', [1], 0, 1)},"\\u0061":${entry('U8', [1], 1, 2)}}`;
    rejects(mk(h2, 2), 'DUPLICATE_NAME', 'a');
    // duplicate field within an entry
    rejects(mk('{"a":{"dtype":"U8","dtype":"I8","shape":[1],"data_offsets":[0,1]}}', 1), 'DUPLICATE_NAME', 'a');
  });

  it('the key __proto__ (as a tensor, a metadata key or a field)', () => {
    rejects(mk(`{"__proto__":${entry('U8', [1], 0, 1)}}`, 1), 'FORBIDDEN_NAME', '__proto__');
    rejects(mk('{"__metadata__":{"__proto__":"x"}}'), 'FORBIDDEN_NAME');
    rejects(mk('{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"__proto__":{}}}', 1), 'FORBIDDEN_NAME', 'a');
    expect(({} as Record<string, unknown>).dtype).toBeUndefined(); // nothing leaked onto Object.prototype
  });

  it('unknown and unsupported dtypes', () => {
    rejects(mk(`{"w":${entry('F33', [1], 0, 4)}}`, 4), 'UNKNOWN_DTYPE', 'w', /unknown dtype "F33"/);
    rejects(mk(`{"w":${entry('f32', [1], 0, 4)}}`, 4), 'UNKNOWN_DTYPE', 'w');
    rejects(mk(`{"w":${entry('F4', [2], 0, 1)}}`, 1), 'UNSUPPORTED_DTYPE', 'w');
    rejects(mk('{"w":{"dtype":7,"shape":[1],"data_offsets":[0,1]}}', 1), 'INVALID_ENTRY', 'w');
  });

  it('bad shapes: negative, fractional, exponent, huge, not an array', () => {
    rejects(mk(`{"w":${entry('U8', [-1], 0, 1)}}`, 1), 'INVALID_SHAPE', 'w');
    rejects(mk('{"w":{"dtype":"U8","shape":[1.0],"data_offsets":[0,1]}}', 1), 'INVALID_SHAPE', 'w');
    rejects(mk('{"w":{"dtype":"U8","shape":[1e0],"data_offsets":[0,1]}}', 1), 'INVALID_SHAPE', 'w');
    rejects(mk('{"w":{"dtype":"U8","shape":[99999999999999999999],"data_offsets":[0,1]}}', 1), 'INVALID_SHAPE', 'w');
    rejects(mk('{"w":{"dtype":"U8","shape":"1","data_offsets":[0,1]}}', 1), 'INVALID_SHAPE', 'w');
  });

  it('missing or unknown fields in an entry', () => {
    rejects(mk('{"w":{"dtype":"U8","data_offsets":[0,1]}}', 1), 'INVALID_ENTRY', 'w', /missing field "shape"/);
    rejects(mk('{"w":{"dtype":"U8","shape":[1]}}', 1), 'INVALID_ENTRY', 'w', /data_offsets/);
    rejects(mk('{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"extra":1}}', 1), 'INVALID_ENTRY', 'w', /unknown field "extra"/);
    rejects(mk('{"w":[1]}', 1), 'INVALID_ENTRY', 'w');
  });

  it('bad offsets: wrong arity, negative, end before begin', () => {
    rejects(mk('{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1,2]}}', 1), 'INVALID_OFFSETS', 'w');
    rejects(mk('{"w":{"dtype":"U8","shape":[1],"data_offsets":[-1,0]}}', 1), 'INVALID_OFFSETS', 'w');
    rejects(mk(`{"w":${entry('U8', [0], 1, 0)},"v":${entry('U8', [1], 0, 1)}}`, 1), 'INVALID_OFFSETS', 'w', /end before/);
  });

  it('offsets out of bounds', () => {
    rejects(mk(`{"w":${entry('U8', [8], 0, 8)}}`, 4), 'OUT_OF_BOUNDS', 'w', /\(4 bytes\)/);
    // a hostile size: 2^40 elements, offsets far past a tiny file; rejected without allocating
    rejects(mk(`{"w":${entry('F32', [2 ** 40], 0, 2 ** 42)}}`, 4), 'OUT_OF_BOUNDS', 'w');
  });

  it('size != numel * dtype size', () => {
    rejects(mk(`{"w":${entry('F32', [2], 0, 4)}}`, 4), 'SIZE_MISMATCH', 'w', /needs 8 bytes .* hold 4/);
    rejects(mk(`{"w":${entry('F16', [3, 0], 0, 2)}}`, 2), 'SIZE_MISMATCH', 'w');
    // shape product overflowing 2^64 is still just a mismatch (BigInt arithmetic)
    rejects(mk(`{"w":${entry('U8', [2 ** 50, 2 ** 50, 2 ** 50], 0, 1)}}`, 1), 'SIZE_MISMATCH', 'w');
  });

  it('overlapping tensors', () => {
    const h = `{"a":${entry('U8', [4], 0, 4)},"b":${entry('U8', [4], 2, 6)}}`;
    rejects(mk(h, 6), 'OVERLAP', 'b', /overlap tensor "a" \[0, 4\]/);
    // two tensors on the very same bytes
    rejects(mk(`{"a":${entry('U8', [4], 0, 4)},"b":${entry('U8', [4], 0, 4)}}`, 4), 'OVERLAP');
  });

  it('gaps: between tensors, before the first, after the last', () => {
    rejects(mk(`{"a":${entry('U8', [2], 0, 2)},"b":${entry('U8', [2], 3, 5)}}`, 5), 'GAP', 'b', /bytes 2\.\.3/);
    rejects(mk(`{"a":${entry('U8', [2], 1, 3)}}`, 3), 'GAP', 'a');
    rejects(mk(`{"a":${entry('U8', [2], 0, 2)}}`, 5), 'GAP', 'a', /bytes 2\.\.5 belong to no tensor/);
    rejects(mk('{}', 1), 'GAP');
  });

  it('non-string metadata', () => {
    rejects(mk('{"__metadata__":{"a":1}}'), 'INVALID_METADATA', undefined, /"a" is number/);
    rejects(mk('{"__metadata__":{"a":{"b":"c"}}}'), 'INVALID_METADATA');
    rejects(mk('{"__metadata__":["a"]}'), 'INVALID_METADATA');
    rejects(mk('{"__metadata__":"a"}'), 'INVALID_METADATA');
  });

  it('from a real file: the error names the path; only the prefix is read when the length is absurd', () => {
    const dir = tempDir();
    const p = join(dir, 'model.safetensors');
    writeFileSync(p, mk('{}', 0, 0xffffffffffffffffn));
    expect(() => SafetensorsReader.open(p)).toThrow(new RegExp(`^${p.replace(/[/\\.]/g, '\\$&')}: header length 18446744073709551615 exceeds`));
    writeFileSync(p, mk(`{"w":${entry('F32', [4], 0, 16)}}`, 8));
    expect(() => SafetensorsReader.open(p)).toThrow(/model.safetensors: tensor "w": data_offsets \[0, 16\] run past the end/);
    expect(() => SafetensorsReader.open(join(dir, 'missing.safetensors'))).toThrow(/missing.safetensors: cannot open/);
    expect(() => SafetensorsReader.open(dir)).toThrowError(SafetensorsError);
  });

  it('accepts what the reference accepts: whitespace around the JSON, null metadata, any entry order', () => {
    const h = ` {"b":${entry('U8', [1], 1, 2)}, "__metadata__": null, "a":${entry('U8', [1], 0, 1)}}    `;
    const r = SafetensorsReader.fromBytes(mk(h, Uint8Array.from([5, 6])));
    expect(r.names).toEqual(['a', 'b']); // data order
    expect(r.metadata).toBeNull();
    expect([...r.readRaw('b').data]).toEqual([6]);
  });
});

// ---------------------------------------------------------------------------------------------

describe('round trip', () => {
  it('write then read gives back every tensor, dtype, shape and the metadata (property)', () => {
    fc.assert(
      fc.property(filesArb, ({ tensors, metadata }) => {
        const map = new Map(tensors);
        const bytes = encodeSafetensors(map, metadata);
        expect(Number(new DataView(bytes.buffer).getBigUint64(0, true)) % 8).toBe(0);
        const r = SafetensorsReader.fromBytes(bytes);
        expect(new Set(r.names)).toEqual(new Set(map.keys()));
        for (const [name, t] of map) {
          const raw = r.readRaw(name);
          expect(raw.dtype).toBe(t.dtype);
          expect(raw.shape).toEqual(t.shape);
          expect(Buffer.from(raw.data).equals(Buffer.from(bytesOf(t.data)))).toBe(true);
          // data of 2/4/8-byte dtypes starts aligned to its size (header padded to 8, sorted by alignment)
          expect((r.header.dataStart + r.info(name).begin) % dtypeSize(t.dtype)).toBe(0);
        }
        if (metadata === undefined) expect(r.metadata).toBeNull();
        else expect(Object.fromEntries(r.metadata!)).toEqual(metadata);
        // deterministic: insertion order of the inputs does not matter
        const reversed = encodeSafetensors(new Map([...map].reverse()), metadata);
        expect(Buffer.from(reversed).equals(Buffer.from(bytes))).toBe(true);
      }),
      { numRuns: 300 },
    );
  });

  it('through a file, with float conversions', () => {
    const dir = tempDir();
    const p = join(dir, 'model.safetensors');
    const vals = Float32Array.from({ length: 24 }, (_, i) => Math.sin(i) * 10 ** (i % 5));
    writeSafetensorsFile(p, {
      'w.f32': tensorFromFloat32(vals, [4, 6]),
      'w.f16': tensorFromFloat32(vals, [4, 6], 'F16'),
      'w.bf16': tensorFromFloat32(vals, [2, 3, 4], 'BF16'),
      'w.f64': { dtype: 'F64', shape: [24], data: Float64Array.from(vals) },
      'i.i64': { dtype: 'I64', shape: [3], data: BigInt64Array.from([-5n, 0n, 2n ** 40n]) },
      'i.u16': { dtype: 'U16', shape: [2], data: Uint16Array.from([65535, 1]) },
      empty: { dtype: 'F32', shape: [0, 3], data: new Float32Array(0) },
      scalar: { dtype: 'F32', shape: [], data: Float32Array.from([7.5]) },
    }, { format: 'pt', source: 'test' });
    const r = SafetensorsReader.open(p);
    expect(Array.from(r.readFloat32('w.f32'))).toEqual(Array.from(vals));
    expect(Array.from(r.readFloat32('w.f64'))).toEqual(Array.from(vals));
    const f16 = r.readFloat32('w.f16');
    const bf16 = r.readFloat32('w.bf16');
    for (let i = 0; i < vals.length; i++) {
      if (Math.abs(vals[i]) < 65504) expect(Math.abs(f16[i] - vals[i])).toBeLessThanOrEqual(Math.max(Math.abs(vals[i]) * 2 ** -11, 2 ** -25));
      expect(Math.abs(bf16[i] - vals[i])).toBeLessThanOrEqual(Math.abs(vals[i]) * 2 ** -8);
    }
    expect(Array.from(r.readFloat32('i.i64'))).toEqual([-5, 0, 2 ** 40]);
    expect(Array.from(r.readFloat32('i.u16'))).toEqual([65535, 1]);
    expect(r.readFloat32('empty').length).toBe(0);
    expect(r.info('empty').shape).toEqual([0, 3]);
    expect(Array.from(r.readFloat32('scalar'))).toEqual([7.5]);
    expect(Object.fromEntries(r.metadata!)).toEqual({ format: 'pt', source: 'test' });
    r.close();
    const whole = readSafetensorsFile(p);
    expect(whole.tensors.size).toBe(8);
  });

  it('unknown tensor: TENSOR_NOT_FOUND; F8 to float32: UNSUPPORTED_DTYPE', () => {
    const r = SafetensorsReader.fromBytes(encodeSafetensors({ q: { dtype: 'F8_E4M3', shape: [2], data: new Uint8Array(2) } }), 'm.safetensors');
    expect(() => r.info('nope')).toThrow(/m.safetensors: tensor "nope": no such tensor/);
    expect(() => r.readFloat32('q')).toThrowError(SafetensorsError);
    expect(() => toFloat32({ dtype: 'C64', shape: [1], data: new Uint8Array(8) })).toThrow(/cannot convert C64/);
  });
});

describe('writer validates its input', () => {
  const t = (dtype: Dtype, shape: number[], n: number): TensorInput => ({ dtype, shape, data: new Uint8Array(n) });
  it('data length must equal numel * dtype size', () => {
    expect(() => encodeSafetensors({ w: t('F32', [2], 4) })).toThrow(/tensor "w": shape \[2\] of F32 needs 8 bytes, data has 4/);
  });
  it('shapes must hold non-negative integers; dtypes must be known', () => {
    expect(() => encodeSafetensors({ w: t('U8', [-1], 0) })).toThrowError(SafetensorsError);
    expect(() => encodeSafetensors({ w: t('U8', [1.5], 0) })).toThrowError(SafetensorsError);
    expect(() => encodeSafetensors({ w: t('X' as Dtype, [1], 1) })).toThrow(/unknown dtype/);
  });
  it('names: no lone surrogates, no __proto__, no __metadata__', () => {
    expect(() => encodeSafetensors({ ['a\ud800']: t('U8', [1], 1) })).toThrow(/lone UTF-16 surrogate/);
    expect(() => encodeSafetensors(new Map([['__proto__', t('U8', [1], 1)]]))).toThrowError(SafetensorsError);
    expect(() => encodeSafetensors({ __metadata__: t('U8', [1], 1) })).toThrowError(SafetensorsError);
    expect(() => encodeSafetensors({}, { k: 'v\udc00' })).toThrowError(SafetensorsError);
  });
  it('layout does not copy tensor data', () => {
    const data = new Uint8Array(4);
    const { chunks } = layoutSafetensors({ w: { dtype: 'U8', shape: [4], data } });
    expect(chunks[0].buffer).toBe(data.buffer);
  });
  it('an empty but present metadata map with no tensors is valid JSON (reference 0.8.0 writes `{},"__metadata__":{}}`)', () => {
    const bytes = encodeSafetensors({}, {});
    expect(Buffer.from(bytes.subarray(8)).toString()).toBe('{"__metadata__":{}}     ');
    expect(SafetensorsReader.fromBytes(bytes).metadata!.size).toBe(0);
  });
});

describe('sharded index', () => {
  it('reads a checkpoint written by our writer', () => {
    const dir = tempDir();
    writeSafetensorsFile(join(dir, 'a.safetensors'), { x: tensorFromFloat32([1, 2], [2]) });
    writeSafetensorsFile(join(dir, 'b.safetensors'), { y: tensorFromFloat32([3], [1]), z: tensorFromFloat32([4], [1]) });
    writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: 16 }, weight_map: { x: 'a.safetensors', y: 'b.safetensors', z: 'b.safetensors' } }));
    const r = ShardedSafetensorsReader.open(join(dir, 'model.safetensors.index.json'));
    expect(r.index.shards).toEqual(['a.safetensors', 'b.safetensors']);
    expect(Array.from(r.readFloat32('z'))).toEqual([4]);
    expect(r.info('x').shape).toEqual([2]);
    r.close();
  });

  function indexError(weightMap: Record<string, string>, files: Record<string, Record<string, number[]>>, re: RegExp): void {
    const dir = tempDir();
    for (const [f, ts] of Object.entries(files)) {
      writeSafetensorsFile(join(dir, f), Object.fromEntries(Object.entries(ts).map(([n, v]) => [n, tensorFromFloat32(v, [v.length])])));
    }
    writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ weight_map: weightMap }));
    expect(() => ShardedSafetensorsReader.open(join(dir, 'model.safetensors.index.json'))).toThrow(re);
  }

  it('inconsistent index and shards are errors naming the tensor', () => {
    indexError({ x: 'a.safetensors' }, { 'a.safetensors': { y: [1] } }, /tensor "y": shard a.safetensors holds a tensor the weight_map does not list/);
    indexError({ x: 'a.safetensors', y: 'a.safetensors' }, { 'a.safetensors': { x: [1] } }, /tensor "y": weight_map says a.safetensors but that shard has no such tensor/);
    indexError({ x: 'b.safetensors', y: 'a.safetensors' }, { 'a.safetensors': { x: [1], y: [2] }, 'b.safetensors': { x: [1] } }, /tensor "x": tensor is in two shards/);
    indexError({ x: 'missing.safetensors' }, {}, /missing.safetensors: cannot open/);
  });

  it('index JSON is validated strictly', () => {
    expect(() => parseSafetensorsIndex('{"weight_map":{"a":"x","a":"y"}}', 'i.json')).toThrow(/i.json: .*duplicate key "a"/);
    expect(() => parseSafetensorsIndex('{"weight_map":{"a":"../x.safetensors"}}', 'i.json')).toThrow(/plain file name/);
    expect(() => parseSafetensorsIndex('{"weight_map":{"a":"/etc/passwd"}}', 'i.json')).toThrow(/plain file name/);
    expect(() => parseSafetensorsIndex('{"weight_map":{"a":3}}', 'i.json')).toThrow(/tensor "a"/);
    expect(() => parseSafetensorsIndex('{"metadata":{}}', 'i.json')).toThrow(/missing "weight_map"/);
    expect(() => parseSafetensorsIndex('{"weight_map":{"__proto__":"x"}}', 'i.json')).toThrow(/__proto__/);
    expect(parseSafetensorsIndex('{"metadata":null,"weight_map":{}}').shards).toEqual([]);
  });

  it('a shard with a corrupt header names the shard file', () => {
    const dir = tempDir();
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'a.safetensors'), mk('{"x":1}'));
    writeFileSync(join(dir, 'model.safetensors.index.json'), '{"weight_map":{"x":"a.safetensors"}}');
    expect(() => ShardedSafetensorsReader.open(join(dir, 'model.safetensors.index.json'))).toThrow(/a.safetensors: tensor "x": entry must be an object/);
  });
});

describe('F16 / BF16 conversions', () => {
  it('every F16 and BF16 bit pattern survives widen then narrow (NaN stays NaN)', () => {
    const bad: string[] = [];
    for (let h = 0; h < 65536; h++) {
      for (const [kind, widen, narrow] of [['f16', f16BitsToFloat32, float32ToF16Bits], ['bf16', bf16BitsToFloat32, float32ToBf16Bits]] as const) {
        const v = widen(h);
        const ok = Number.isNaN(v) ? Number.isNaN(widen(narrow(v))) : narrow(v) === h;
        if (!ok) bad.push(`${kind} 0x${h.toString(16)}`);
      }
    }
    expect(bad).toEqual([]);
  });
  it('narrowing picks the nearest value, ties to even (property over random float32)', () => {
    const f32 = new Float32Array(1);
    const u32 = new Uint32Array(f32.buffer);
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 0xffffffff }), (bits) => {
        u32[0] = bits;
        const x = f32[0];
        if (Number.isNaN(x)) return true;
        for (const [narrow, widen] of [[float32ToF16Bits, f16BitsToFloat32], [float32ToBf16Bits, bf16BitsToFloat32]] as const) {
          const r = narrow(x);
          const y = widen(r);
          if (!Number.isFinite(y)) continue; // overflow to infinity, checked by the fixtures
          // neighbours of the result (same sign) must not be strictly closer; on a tie the result is even
          for (const n of [r + 1, r - 1]) {
            if (n < 0 || n > 0xffff) continue;
            const z = widen(n);
            if (!Number.isFinite(z) || (Math.sign(z) !== Math.sign(y) && y !== 0 && z !== 0)) continue;
            const dz = Math.abs(z - x);
            const dy = Math.abs(y - x);
            if (dz < dy || (dz === dy && (r & 1) === 1)) return false;
          }
        }
        return true;
      }),
      { numRuns: 50000 },
    );
  });
});
