import fc from 'fast-check';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  DTYPES,
  dtypeSize,
  tensorFromFloat32,
  type Dtype,
  type TensorInput,
} from '../../../src/runtime/io/safetensors.js';

export const FIXTURES = fileURLToPath(new URL('./fixtures/reference/', import.meta.url));

const created: string[] = [];

/** A fresh folder under the OS temp folder, removed by `afterAll(removeTempDirs)`. */
export function tempDir(prefix = 'mcpc-io-'): string {
  const d = mkdtempSync(join(tmpdir(), prefix));
  created.push(d);
  return d;
}

export function removeTempDirs(): void {
  for (const d of created.splice(0)) rmSync(d, { recursive: true, force: true });
}

export interface SpecTensor {
  name: string;
  dtype: Dtype;
  shape: number[];
  seed?: number;
  values?: (number | string)[] | 'FLOAT_VALUES';
}
export interface SpecCase {
  file: string;
  metadata: Record<string, string> | null;
  tensors: SpecTensor[];
}
export interface Spec {
  cases: SpecCase[];
  float_values: (number | string)[];
  unordered_metadata_case: SpecCase;
  sharded: { folder: string; shards: { file: string; tensors: SpecTensor[] }[] };
}

export const spec: Spec = JSON.parse(readFileSync(join(FIXTURES, 'spec.json'), 'utf8'));

const SIZE: Record<string, number> = {
  BOOL: 1, U8: 1, I8: 1, F8_E5M2: 1, F8_E4M3: 1, F8_E8M0: 1, F8_E4M3FNUZ: 1, F8_E5M2FNUZ: 1,
  I16: 2, U16: 2, F16: 2, BF16: 2, I32: 4, U32: 4, F32: 4, C64: 8, F64: 8, I64: 8, U64: 8,
};

export function specNumber(v: number | string): number {
  if (typeof v === 'number') return v;
  return { nan: NaN, inf: Infinity, '-inf': -Infinity, '-0': -0 }[v] ?? Number(v);
}

/** The same tensor the Python generator builds from a spec entry, made with our own code. */
export function specTensor(t: SpecTensor): TensorInput {
  const numel = t.shape.reduce((a, b) => a * b, 1);
  if (t.values !== undefined) {
    const values = (t.values === 'FLOAT_VALUES' ? spec.float_values : t.values).map(specNumber);
    if (t.dtype === 'F64') return { dtype: 'F64', shape: t.shape, data: Float64Array.from(values) };
    if (t.dtype === 'F32' || t.dtype === 'F16' || t.dtype === 'BF16') return tensorFromFloat32(values, t.shape, t.dtype);
    throw new Error(`values for ${t.dtype}`);
  }
  const n = numel * SIZE[t.dtype];
  const data = new Uint8Array(n);
  const s = t.seed!;
  for (let i = 0; i < n; i++) data[i] = (s * 131 + i * 29 + (i >> 3)) & 255;
  return { dtype: t.dtype, shape: t.shape, data };
}

export function specTensors(tensors: SpecTensor[]): Map<string, TensorInput> {
  return new Map(tensors.map((t) => [t.name, specTensor(t)]));
}

export function bytesOf(v: ArrayBufferView): Uint8Array {
  return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
}

/** Header text of a safetensors file (for readable diffs). */
export function headerText(bytes: Uint8Array): string {
  const n = Number(new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true));
  return Buffer.from(bytes.subarray(8, 8 + n)).toString('utf8');
}

/** No lone UTF-16 surrogates (String.prototype.isWellFormed is ES2024). */
export function wellFormed(s: string): boolean {
  return !/[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/.test(s);
}

export const nameArb = fc.oneof(
  fc.string({ maxLength: 12 }),
  fc.string({ unit: 'binary', maxLength: 6 }),
  fc.constantFrom('model.layers.0.mlp.up_proj.weight', '0', '10', 'é', '😀', '\ue000', 'a"b', 'x\\y', '\n'),
);
export const validName = nameArb.filter((n) => n !== '__proto__' && n !== '__metadata__' && wellFormed(n));

export function makeTensorArb(maxDim = 5, maxRank = 4): fc.Arbitrary<TensorInput> {
  return fc
    .record({
      dtype: fc.constantFrom(...DTYPES),
      shape: fc.array(fc.nat({ max: maxDim }), { maxLength: maxRank }),
      seed: fc.nat(),
    })
    .map(({ dtype, shape, seed }): TensorInput => {
      const n = shape.reduce((a, b) => a * b, 1) * dtypeSize(dtype);
      const data = new Uint8Array(n);
      for (let i = 0; i < n; i++) data[i] = (seed + i * 101) & 255;
      return { dtype, shape, data };
    });
}

export function makeFilesArb(maxDim = 5, maxRank = 4, maxTensors = 8) {
  return fc.record({
    tensors: fc.uniqueArray(fc.tuple(validName, makeTensorArb(maxDim, maxRank)), { selector: ([n]) => n, maxLength: maxTensors }),
    metadata: fc.option(fc.dictionary(validName, fc.string({ maxLength: 10 }).filter((s) => wellFormed(s)), { maxKeys: 4 }), { nil: undefined }),
  });
}

export const filesArb = makeFilesArb();
