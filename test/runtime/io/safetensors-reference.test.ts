/**
 * Byte compatibility with the reference safetensors implementation.
 *
 * 1. Fixtures in fixtures/reference/ were written by the reference Python library (safetensors
 *    0.8.0, Rust core; see VERSION and make_reference.py) from the inputs in spec.json. Our writer
 *    must produce exactly the same bytes from the same inputs, and our reader must read them back.
 * 2. Three files derived by hand from the format description, independent of any library.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  SafetensorsReader,
  ShardedSafetensorsReader,
  encodeSafetensors,
  openSafetensors,
  writeSafetensorsFile,
} from '../../../src/runtime/io/safetensors.js';
import { FIXTURES, bytesOf, headerText, spec, specNumber, specTensor, specTensors, removeTempDirs, tempDir } from './helpers.js';

afterAll(removeTempDirs);

function fixture(name: string): Uint8Array {
  return new Uint8Array(readFileSync(join(FIXTURES, name)));
}

describe('writer output equals the reference library byte for byte', () => {
  for (const c of spec.cases) {
    it(c.file, () => {
      const expected = fixture(c.file);
      const ours = encodeSafetensors(specTensors(c.tensors), c.metadata ?? undefined);
      // Compare the header text first for a readable diff, then every byte.
      expect(headerText(ours)).toBe(headerText(expected));
      expect(Buffer.from(ours).equals(Buffer.from(expected))).toBe(true);
    });
  }

  it('writeSafetensorsFile writes the same bytes to disk', () => {
    const dir = tempDir();
    for (const c of spec.cases) {
      const p = join(dir, c.file);
      writeSafetensorsFile(p, specTensors(c.tensors), c.metadata ?? undefined);
      expect(Buffer.compare(readFileSync(p), Buffer.from(fixture(c.file)))).toBe(0);
    }
  });

  it('each shard of the reference sharded checkpoint', () => {
    for (const shard of spec.sharded.shards) {
      const ours = encodeSafetensors(specTensors(shard.tensors), { format: 'pt' });
      const expected = fixture(join(spec.sharded.folder, shard.file));
      expect(Buffer.from(ours).equals(Buffer.from(expected))).toBe(true);
    }
  });

  it('metadata with several keys: reference order varies per run; ours is sorted and parses to the same header', () => {
    const c = spec.unordered_metadata_case;
    const expected = fixture(c.file);
    const ours = encodeSafetensors(specTensors(c.tensors), c.metadata!);
    expect(ours.length).toBe(expected.length);
    const parsedOurs = JSON.parse(headerText(ours));
    const parsedRef = JSON.parse(headerText(expected));
    expect(parsedOurs).toEqual(parsedRef);
    expect(Object.keys(parsedOurs.__metadata__)).toEqual(['base', 'format', 'step', 'z']);
    expect(Buffer.from(ours.subarray(ours.length - 8)).equals(Buffer.from(expected.subarray(expected.length - 8)))).toBe(true);
  });
});

describe('reader reads every reference file', () => {
  for (const c of [...spec.cases, spec.unordered_metadata_case]) {
    it(c.file, () => {
      const r = SafetensorsReader.open(join(FIXTURES, c.file));
      try {
        expect(new Set(r.names)).toEqual(new Set(c.tensors.map((t) => t.name)));
        for (const t of c.tensors) {
          const raw = r.readRaw(t.name);
          expect(raw.dtype).toBe(t.dtype);
          expect(raw.shape).toEqual(t.shape);
          expect(Buffer.from(raw.data).equals(Buffer.from(bytesOf(specTensor(t).data)))).toBe(true);
        }
        expect(r.metadata === null ? null : Object.fromEntries(r.metadata)).toEqual(c.metadata);
      } finally {
        r.close();
      }
    });
  }

  it('float values: F32 exact, F16 / BF16 (numpy / ml_dtypes rounding) widened to float32, F64 narrowed', () => {
    const r = SafetensorsReader.open(join(FIXTURES, 'float_values.safetensors'));
    const values = spec.float_values.map(specNumber);
    const f32 = r.readFloat32('f32');
    expect(Array.from(f32)).toEqual(values.map(Math.fround));
    expect(Array.from(r.readFloat32('f64'))).toEqual(values.map(Math.fround));
    const f16 = r.readFloat32('f16');
    const bf16 = r.readFloat32('bf16');
    // Spot checks of the rounding the reference tools did (ties to even, overflow, underflow).
    const at = (v: number | string) => spec.float_values.indexOf(v);
    expect(f16[at(1.00048828125)]).toBe(1); // 1 + 2^-11: tie, to even
    expect(f16[at(1.00146484375)]).toBe(1.001953125); // 1 + 3*2^-11: tie, to even (up)
    expect(f16[at(65504)]).toBe(65504);
    expect(f16[at(65520)]).toBe(Infinity);
    expect(f16[at(2.9802322387695312e-8)]).toBe(0); // 2^-25: tie between 0 and 2^-24, to even
    expect(f16[at(4.470348358154297e-8)]).toBe(2 ** -24);
    expect(Object.is(f16[at('-0')], -0)).toBe(true);
    expect(f16[at('nan')]).toBeNaN();
    expect(bf16[at(1.00390625)]).toBe(1); // 1 + 2^-8: tie, to even
    expect(bf16[at(1.01171875)]).toBe(1.015625); // 1 + 3*2^-8: tie, to even (up)
    expect(bf16[at(1.0039100646972656)]).toBe(1.0078125); // just above the tie
    expect(bf16[at(3.4e38)]).toBe(Infinity);
    expect(bf16[at('nan')]).toBeNaN();
    r.close();
  });

  it('the reference sharded checkpoint through its index', () => {
    const idx = join(FIXTURES, spec.sharded.folder, 'model.safetensors.index.json');
    const r = openSafetensors(idx);
    expect(r).toBeInstanceOf(ShardedSafetensorsReader);
    const s = r as ShardedSafetensorsReader;
    const all = spec.sharded.shards.flatMap((sh) => sh.tensors);
    expect(new Set(s.names)).toEqual(new Set(all.map((t) => t.name)));
    for (const t of all) expect(Buffer.from(s.readRaw(t.name).data).equals(Buffer.from(bytesOf(specTensor(t).data)))).toBe(true);
    const total = all.reduce((a, t) => a + bytesOf(specTensor(t).data).length, 0);
    expect((s.index.metadata.get('total_size') as { value: number }).value).toBe(total);
    s.close();
  });
});

describe('files derived by hand from the format description', () => {
  const le64 = (n: number) => [n, 0, 0, 0, 0, 0, 0, 0];
  const ascii = (s: string) => [...Buffer.from(s, 'ascii')];
  const f32le = (xs: number[]) => [...new Uint8Array(Float32Array.from(xs).buffer)];

  it('no tensors: "{}" padded with 6 spaces to 8 bytes', () => {
    expect([...encodeSafetensors({})]).toEqual([...le64(8), ...ascii('{}'), 32, 32, 32, 32, 32, 32]);
  });

  it('one F32 [1,2,3] tensor whose header is exactly 64 bytes: no padding', () => {
    const header = '{"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}}';
    expect(header.length).toBe(64); // 64 % 8 == 0
    const expected = [...le64(64), ...ascii(header), ...f32le([0, 1, 2, 3, 4, 5])];
    // f32 little-endian: 1.0 = 00 00 80 3f, 2.0 = 00 00 00 40
    expect(expected.slice(8 + 64 + 4, 8 + 64 + 12)).toEqual([0, 0, 0x80, 0x3f, 0, 0, 0, 0x40]);
    const ours = encodeSafetensors({ 'attn.0': { dtype: 'F32', shape: [1, 2, 3], data: Float32Array.from([0, 1, 2, 3, 4, 5]) } });
    expect([...ours]).toEqual(expected);
  });

  it('header of 65 bytes gets 7 spaces, so the data starts at 8 + 72 = 80 (8-aligned)', () => {
    const header = '{"attn0":{"dtype":"F32","shape":[1,1,2,3],"data_offsets":[0,24]}}';
    expect(header.length).toBe(65);
    const expected = [...le64(72), ...ascii(header), ...Array(7).fill(32), ...f32le([0, 1, 2, 3, 4, 5])];
    const ours = encodeSafetensors({ attn0: { dtype: 'F32', shape: [1, 1, 2, 3], data: Float32Array.from([0, 1, 2, 3, 4, 5]) } });
    expect([...ours]).toEqual(expected);
  });

  it('two dtypes: the larger alignment first whatever the names; metadata first', () => {
    // Reference order: dtype descending (I64 before U8), then name. Offsets follow that order.
    const header =
      '{"__metadata__":{"format":"pt"},"z":{"dtype":"I64","shape":[1],"data_offsets":[0,8]},' +
      '"a":{"dtype":"U8","shape":[2],"data_offsets":[8,10]}}';
    const padded = header + ' '.repeat((8 - (header.length % 8)) % 8);
    const expected = [...le64(padded.length), ...ascii(padded), 7, 0, 0, 0, 0, 0, 0, 0, 1, 2];
    const ours = encodeSafetensors(
      { a: { dtype: 'U8', shape: [2], data: Uint8Array.from([1, 2]) }, z: { dtype: 'I64', shape: [1], data: BigInt64Array.from([7n]) } },
      { format: 'pt' },
    );
    expect([...ours]).toEqual(expected);
  });
});
