/**
 * The safetensors format (https://huggingface.co/docs/safetensors): reader, writer, sharded index.
 *
 * Layout: 8-byte little-endian unsigned header length N, N bytes of UTF-8 JSON header, then the
 * data buffer. The header maps tensor names to {dtype, shape, data_offsets: [begin, end]} (offsets
 * relative to the start of the data buffer), plus an optional "__metadata__" string-to-string map.
 *
 * Reader: everything the header claims is validated before anything sized by the header is
 * allocated or read (see `parseSafetensorsHeader`); every problem is a `SafetensorsError` naming the
 * file and the tensor. It is at least as strict as the reference implementation (huggingface
 * `safetensors` 0.8.0, Rust core) and stricter in a few documented places: duplicate names, the key
 * `__proto__`, unknown fields in a tensor entry, and the sub-byte dtypes (F4, F6_*) are rejected.
 *
 * Writer: byte-for-byte what the reference writes (`safetensors.serialize` / `save_file`,
 * `prepare()` in safetensors/src/tensor.rs), checked against files the reference library produced
 * (test/runtime/io/fixtures):
 *   - tensors sorted by dtype, descending in the reference's `Dtype` enum order (which is by
 *     alignment: U64, I64, F64, C64, F32, U32, I32, BF16, F16, U16, I16, F8_*, I8, U8, BOOL), then
 *     by name in byte order of the UTF-8 encoding (Rust `String` ordering, not JS UTF-16 order);
 *   - data laid out contiguously in that order, offsets starting at 0, no padding between tensors;
 *   - header: compact JSON (serde_json), "__metadata__" first when given, then the tensors in the
 *     order above, each as {"dtype":..,"shape":[..],"data_offsets":[b,e]}; strings escaped as
 *     serde_json does (`"` `\\` and control characters only; \b \f \n \r \t, others \u00xx lowercase;
 *     non-ASCII, U+2028 and DEL written raw) which is also what JSON.stringify does for well-formed
 *     strings;
 *   - header padded with spaces (0x20) to a multiple of 8 bytes, so the data buffer starts 8-aligned.
 * Two deliberate differences, both where the reference output is not reproducible or not valid:
 *   - metadata with 2+ keys: the reference writes them in Rust HashMap order, which changes from run
 *     to run; we write them sorted (UTF-8 byte order), which is one of the reference's possible
 *     outputs and makes our files deterministic;
 *   - no tensors and an empty (but present) metadata map: the reference 0.8.0 writes the invalid
 *     header `{},"__metadata__":{}}`; we write `{"__metadata__":{}}`.
 */
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { basename, dirname, isAbsolute, join } from 'node:path';
import { endianness } from 'node:os';
import {
  JsonNumber,
  StrictJsonError,
  formatPath,
  isJsonObject,
  jsonTypeName,
  parseStrictJson,
  type JsonObject,
  type JsonValue,
} from './strict-json.js';
import {
  bf16BytesToFloat32,
  f16BytesToFloat32,
  float32ToBf16Bytes,
  float32ToF16Bytes,
} from './float16.js';
import { writeFileAtomicSync } from './atomic.js';

// ---------------------------------------------------------------------------------------------
// dtypes

/**
 * Byte-sized dtypes the reference knows, in the reference's `Dtype` enum order (ascending). The
 * writer sorts by descending position in this list. F4, F6_E2M3 and F6_E3M2 (sub-byte) sit between
 * BOOL and U8 in the reference enum; they are recognised but not supported here.
 */
export const DTYPES = [
  'BOOL', 'U8', 'I8', 'F8_E5M2', 'F8_E4M3', 'F8_E8M0', 'F8_E4M3FNUZ', 'F8_E5M2FNUZ',
  'I16', 'U16', 'F16', 'BF16', 'I32', 'U32', 'F32', 'C64', 'F64', 'I64', 'U64',
] as const;
export type Dtype = (typeof DTYPES)[number];

const SUB_BYTE_DTYPES = new Set(['F4', 'F6_E2M3', 'F6_E3M2']);

const DTYPE_SIZE: Record<Dtype, number> = {
  BOOL: 1, U8: 1, I8: 1, F8_E5M2: 1, F8_E4M3: 1, F8_E8M0: 1, F8_E4M3FNUZ: 1, F8_E5M2FNUZ: 1,
  I16: 2, U16: 2, F16: 2, BF16: 2, I32: 4, U32: 4, F32: 4, C64: 8, F64: 8, I64: 8, U64: 8,
};
const DTYPE_RANK = new Map<string, number>(DTYPES.map((d, i) => [d, i]));

export function isDtype(s: string): s is Dtype {
  return DTYPE_RANK.has(s);
}
export function dtypeSize(d: Dtype): number {
  return DTYPE_SIZE[d];
}

// ---------------------------------------------------------------------------------------------
// errors

export type SafetensorsErrorCode =
  | 'IO'
  | 'FILE_TOO_SMALL'
  | 'HEADER_TOO_LARGE'
  | 'TRUNCATED'
  | 'INVALID_UTF8'
  | 'INVALID_JSON'
  | 'NOT_AN_OBJECT'
  | 'DUPLICATE_NAME'
  | 'FORBIDDEN_NAME'
  | 'INVALID_ENTRY'
  | 'UNKNOWN_DTYPE'
  | 'UNSUPPORTED_DTYPE'
  | 'INVALID_SHAPE'
  | 'INVALID_OFFSETS'
  | 'OUT_OF_BOUNDS'
  | 'SIZE_MISMATCH'
  | 'OVERLAP'
  | 'GAP'
  | 'INVALID_METADATA'
  | 'TENSOR_NOT_FOUND'
  | 'INVALID_TENSOR'
  | 'INVALID_INDEX';

/** Any problem with a safetensors file or index: `file`, `tensor` (when one is at fault), `code`. */
export class SafetensorsError extends Error {
  constructor(
    readonly code: SafetensorsErrorCode,
    readonly file: string,
    readonly detail: string,
    readonly tensor?: string,
  ) {
    super(`${file}: ${tensor !== undefined ? `tensor ${JSON.stringify(tensor)}: ` : ''}${detail}`);
    this.name = 'SafetensorsError';
  }
}

// ---------------------------------------------------------------------------------------------
// header parsing and validation

/** Reference limit (safetensors MAX_HEADER_SIZE). */
export const MAX_HEADER_BYTES = 100_000_000;

export interface TensorInfo {
  readonly name: string;
  readonly dtype: Dtype;
  readonly shape: readonly number[];
  /** Number of elements (product of the shape; 1 for a scalar). */
  readonly numel: number;
  /** Offsets in the data buffer (after the header). */
  readonly begin: number;
  readonly end: number;
}

export interface SafetensorsHeader {
  /** Tensors in data-buffer order (by offset). */
  readonly tensors: readonly TensorInfo[];
  readonly byName: ReadonlyMap<string, TensorInfo>;
  /** `__metadata__`, or null when the header has none. */
  readonly metadata: ReadonlyMap<string, string> | null;
  /** Header length N (bytes after the 8-byte prefix). */
  readonly headerLength: number;
  /** Absolute file offset where the data buffer starts (8 + N). */
  readonly dataStart: number;
}

const utf8Strict = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
const TENSOR_FIELDS = new Set(['dtype', 'shape', 'data_offsets']);

/**
 * Checks the 8-byte prefix against the file size. Returns N. Nothing is allocated.
 */
export function checkHeaderLength(prefix: Uint8Array, fileSize: number, file: string): number {
  if (fileSize < 8 || prefix.length < 8) {
    throw new SafetensorsError('FILE_TOO_SMALL', file,
      `file is ${fileSize} bytes; a safetensors file starts with an 8-byte header length`);
  }
  const n = new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(MAX_HEADER_BYTES)) {
    throw new SafetensorsError('HEADER_TOO_LARGE', file,
      `header length ${n} exceeds the ${MAX_HEADER_BYTES}-byte limit (not a safetensors file, or corrupt)`);
  }
  const len = Number(n);
  if (len > fileSize - 8) {
    throw new SafetensorsError('TRUNCATED', file,
      `header length ${len} runs past the end of the file (${fileSize} bytes): the file is truncated or corrupt`);
  }
  if (len < 2) {
    throw new SafetensorsError('INVALID_JSON', file, `header length ${len} is too short for a JSON object`);
  }
  return len;
}

/**
 * Parses and validates a header: `headerBytes` are the N bytes after the prefix, `dataLength` the
 * number of bytes after the header. Checks, in order: UTF-8, strict JSON (no duplicate names, no
 * `__proto__`), a top-level object, each entry's fields and types, dtypes, shapes, offsets in
 * bounds, sizes = numel * dtype size, and offsets contiguous from 0 to `dataLength` with neither
 * overlaps nor gaps. Allocates only in proportion to `headerBytes`.
 */
export function parseSafetensorsHeader(
  headerBytes: Uint8Array,
  dataLength: number,
  file = '<buffer>',
): SafetensorsHeader {
  let text: string;
  try {
    text = utf8Strict.decode(headerBytes);
  } catch {
    throw new SafetensorsError('INVALID_UTF8', file, 'header is not valid UTF-8');
  }
  let root: JsonValue;
  try {
    // Depth 3 is all a valid header needs (root > tensor > shape); 4 gives room for a clear message.
    root = parseStrictJson(text, { maxDepth: 4 });
  } catch (e) {
    if (e instanceof StrictJsonError) {
      const name = typeof e.path[0] === 'string' ? e.path[0] : undefined;
      if (e.code === 'DUPLICATE_KEY') {
        throw e.path.length === 0
          ? new SafetensorsError('DUPLICATE_NAME', file, 'the name appears more than once in the header', e.key)
          : new SafetensorsError('DUPLICATE_NAME', file, `field ${JSON.stringify(e.key)} appears more than once in the entry`, name);
      }
      if (e.code === 'FORBIDDEN_KEY') {
        throw new SafetensorsError('FORBIDDEN_NAME', file,
          `the key "__proto__" is not allowed in a header${e.path.length ? ` (in ${formatPath(e.path)})` : ''}`,
          e.path.length === 0 ? '__proto__' : name);
      }
      throw new SafetensorsError('INVALID_JSON', file, `header is not valid JSON: ${e.message}`);
    }
    throw e;
  }
  if (!isJsonObject(root)) {
    throw new SafetensorsError('NOT_AN_OBJECT', file, `header must be a JSON object, found ${jsonTypeName(root)}`);
  }

  let metadata: Map<string, string> | null = null;
  const tensors: TensorInfo[] = [];
  for (const [name, entry] of root) {
    if (name === '__metadata__') {
      metadata = validateMetadata(entry, file);
      continue;
    }
    tensors.push(validateEntry(name, entry, dataLength, file));
  }

  // Contiguity: sorted by (begin, end), each must start where the previous ended.
  const ordered = [...tensors].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let cursor = 0;
  let prev: TensorInfo | undefined;
  for (const t of ordered) {
    if (t.begin < cursor) {
      throw new SafetensorsError('OVERLAP', file,
        `data_offsets [${t.begin}, ${t.end}] overlap tensor ${JSON.stringify(prev!.name)} [${prev!.begin}, ${prev!.end}]`,
        t.name);
    }
    if (t.begin > cursor) {
      throw new SafetensorsError('GAP', file,
        `data_offsets start at ${t.begin} but the previous tensor${prev ? ` (${JSON.stringify(prev.name)})` : ''} ends at ${cursor}: bytes ${cursor}..${t.begin} of the data belong to no tensor`,
        t.name);
    }
    cursor = t.end;
    prev = t;
  }
  if (cursor !== dataLength) {
    throw new SafetensorsError('GAP', file,
      `the tensors cover ${cursor} bytes of data but ${dataLength} follow the header: bytes ${cursor}..${dataLength} belong to no tensor`,
      prev?.name);
  }

  const byName = new Map<string, TensorInfo>();
  for (const t of ordered) byName.set(t.name, t);
  return {
    tensors: ordered,
    byName,
    metadata,
    headerLength: headerBytes.length,
    dataStart: 8 + headerBytes.length,
  };
}

function validateMetadata(entry: JsonValue, file: string): Map<string, string> | null {
  // The reference accepts `"__metadata__": null` as "no metadata".
  if (entry === null) return null;
  if (!isJsonObject(entry)) {
    throw new SafetensorsError('INVALID_METADATA', file,
      `"__metadata__" must be an object of strings, found ${jsonTypeName(entry)}`);
  }
  const out = new Map<string, string>();
  for (const [k, v] of entry) {
    if (typeof v !== 'string') {
      throw new SafetensorsError('INVALID_METADATA', file,
        `"__metadata__" values must be strings; ${JSON.stringify(k)} is ${jsonTypeName(v)}`);
    }
    out.set(k, v);
  }
  return out;
}

function validateEntry(name: string, entry: JsonValue, dataLength: number, file: string): TensorInfo {
  const bad = (code: SafetensorsErrorCode, detail: string): never => {
    throw new SafetensorsError(code, file, detail, name);
  };
  if (!isJsonObject(entry)) {
    return bad('INVALID_ENTRY', `entry must be an object {dtype, shape, data_offsets}, found ${jsonTypeName(entry)}`);
  }
  for (const k of entry.keys()) {
    if (!TENSOR_FIELDS.has(k)) bad('INVALID_ENTRY', `unknown field ${JSON.stringify(k)} (expected dtype, shape, data_offsets)`);
  }
  const dt = entry.get('dtype');
  const shapeV = entry.get('shape');
  const offV = entry.get('data_offsets');
  if (dt === undefined) bad('INVALID_ENTRY', 'missing field "dtype"');
  if (shapeV === undefined) bad('INVALID_ENTRY', 'missing field "shape"');
  if (offV === undefined) bad('INVALID_ENTRY', 'missing field "data_offsets"');
  if (typeof dt !== 'string') return bad('INVALID_ENTRY', `"dtype" must be a string, found ${jsonTypeName(dt!)}`);
  if (!isDtype(dt)) {
    if (SUB_BYTE_DTYPES.has(dt)) bad('UNSUPPORTED_DTYPE', `dtype ${dt} (sub-byte) is not supported`);
    return bad('UNKNOWN_DTYPE', `unknown dtype ${JSON.stringify(dt)} (known: ${DTYPES.join(', ')})`);
  }
  if (!Array.isArray(shapeV)) return bad('INVALID_SHAPE', `"shape" must be an array, found ${jsonTypeName(shapeV!)}`);
  const shape: number[] = [];
  for (const d of shapeV) {
    if (!(d instanceof JsonNumber) || !d.isPlainNonNegativeInteger || !Number.isSafeInteger(d.value)) {
      bad('INVALID_SHAPE', `shape [${shapeV.map(showJson).join(', ')}] must hold non-negative integers`);
    }
    shape.push((d as JsonNumber).value);
  }
  if (!Array.isArray(offV) || offV.length !== 2) {
    return bad('INVALID_OFFSETS', `"data_offsets" must be [begin, end], found ${showJson(offV!)}`);
  }
  const [b, e] = offV;
  if (!(b instanceof JsonNumber) || !b.isPlainNonNegativeInteger || !(e instanceof JsonNumber) || !e.isPlainNonNegativeInteger) {
    return bad('INVALID_OFFSETS', `data_offsets ${showJson(offV)} must be non-negative integers`);
  }
  if (e.value > dataLength || b.value > dataLength) {
    bad('OUT_OF_BOUNDS', `data_offsets [${b.raw}, ${e.raw}] run past the end of the data (${dataLength} bytes)`);
  }
  const begin = b.value;
  const end = e.value;
  if (end < begin) bad('INVALID_OFFSETS', `data_offsets [${begin}, ${end}] end before they begin`);
  // numel * size must equal end - begin. Computed in BigInt: a hostile shape cannot overflow.
  let numel = 1n;
  for (const d of shape) numel *= BigInt(d);
  const expected = numel * BigInt(DTYPE_SIZE[dt]);
  if (expected !== BigInt(end - begin)) {
    bad('SIZE_MISMATCH',
      `shape [${shape.join(', ')}] of ${dt} needs ${expected} bytes but data_offsets [${begin}, ${end}] hold ${end - begin}`);
  }
  return { name, dtype: dt, shape, numel: Number(numel), begin, end };
}

function showJson(v: JsonValue): string {
  if (v instanceof JsonNumber) return v.raw;
  if (v instanceof Map) return '{...}';
  if (Array.isArray(v)) return `[${v.map(showJson).join(', ')}]`;
  return JSON.stringify(v);
}

// ---------------------------------------------------------------------------------------------
// byte sources (all reads go through one, so tests can account for every byte requested)

export interface ByteSource {
  /** Name used in error messages. */
  readonly name: string;
  readonly size: number;
  /** Returns exactly `length` bytes at `offset` (callers never ask past `size`). */
  read(offset: number, length: number): Uint8Array;
  close?(): void;
}

export function bufferSource(bytes: Uint8Array, name = '<buffer>'): ByteSource {
  return {
    name,
    size: bytes.length,
    read: (offset, length) => bytes.subarray(offset, offset + length),
  };
}

export function fileSource(path: string): ByteSource {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (e) {
    throw new SafetensorsError('IO', path, `cannot open: ${(e as Error).message}`);
  }
  let size: number;
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new Error('not a regular file');
    size = st.size;
  } catch (e) {
    closeSync(fd);
    throw new SafetensorsError('IO', path, `cannot stat: ${(e as Error).message}`);
  }
  let open = true;
  return {
    name: path,
    size,
    read(offset, length) {
      const buf = Buffer.allocUnsafe(length);
      let done = 0;
      while (done < length) {
        let n: number;
        try {
          n = readSync(fd, buf, done, length - done, offset + done);
        } catch (e) {
          throw new SafetensorsError('IO', path, `read failed: ${(e as Error).message}`);
        }
        if (n === 0) throw new SafetensorsError('TRUNCATED', path, `file shrank while reading (offset ${offset + done})`);
        done += n;
      }
      return new Uint8Array(buf.buffer, buf.byteOffset, length);
    },
    close() {
      if (open) {
        open = false;
        closeSync(fd);
      }
    },
  };
}

// ---------------------------------------------------------------------------------------------
// reading

/** Reads and validates the header of `source`; allocates at most 8 + N bytes, N <= size - 8. */
export function readSafetensorsHeader(source: ByteSource): SafetensorsHeader {
  if (source.size < 8) {
    throw new SafetensorsError('FILE_TOO_SMALL', source.name,
      `file is ${source.size} bytes; a safetensors file starts with an 8-byte header length`);
  }
  const n = checkHeaderLength(source.read(0, 8), source.size, source.name);
  const headerBytes = source.read(8, n);
  return parseSafetensorsHeader(headerBytes, source.size - 8 - n, source.name);
}

/** One tensor's raw little-endian bytes. */
export interface RawTensor {
  readonly dtype: Dtype;
  readonly shape: readonly number[];
  readonly data: Uint8Array;
}

/** An open safetensors file whose header has been validated. Tensors are read on demand. */
export class SafetensorsReader {
  readonly header: SafetensorsHeader;

  private constructor(private readonly source: ByteSource) {
    this.header = readSafetensorsHeader(source);
  }

  static open(path: string): SafetensorsReader {
    const src = fileSource(path);
    try {
      return new SafetensorsReader(src);
    } catch (e) {
      src.close?.();
      throw e;
    }
  }

  static fromBytes(bytes: Uint8Array, name = '<buffer>'): SafetensorsReader {
    return new SafetensorsReader(bufferSource(bytes, name));
  }

  static fromSource(source: ByteSource): SafetensorsReader {
    return new SafetensorsReader(source);
  }

  get file(): string {
    return this.source.name;
  }
  get metadata(): ReadonlyMap<string, string> | null {
    return this.header.metadata;
  }
  /** Tensor names in data-buffer order. */
  get names(): string[] {
    return this.header.tensors.map((t) => t.name);
  }
  has(name: string): boolean {
    return this.header.byName.has(name);
  }
  info(name: string): TensorInfo {
    const t = this.header.byName.get(name);
    if (!t) throw new SafetensorsError('TENSOR_NOT_FOUND', this.source.name, 'no such tensor in the file', name);
    return t;
  }

  /** Raw bytes of one tensor (a view into the buffer for in-memory sources, a fresh read otherwise). */
  readRaw(name: string): RawTensor {
    const t = this.info(name);
    return { dtype: t.dtype, shape: t.shape, data: this.source.read(this.header.dataStart + t.begin, t.end - t.begin) };
  }

  /** One tensor as float32 values (F32 as is; F16, BF16, F64 and integer dtypes converted). */
  readFloat32(name: string): Float32Array {
    const raw = this.readRaw(name);
    return toFloat32(raw, this.source.name, name);
  }

  /** Every tensor's raw bytes, in data order. */
  readAll(): Map<string, RawTensor> {
    const out = new Map<string, RawTensor>();
    for (const t of this.header.tensors) out.set(t.name, this.readRaw(t.name));
    return out;
  }

  close(): void {
    this.source.close?.();
  }
}

/** Convenience: open, read every tensor's raw bytes, close. */
export function readSafetensorsFile(path: string): { metadata: ReadonlyMap<string, string> | null; tensors: Map<string, RawTensor> } {
  const r = SafetensorsReader.open(path);
  try {
    return { metadata: r.metadata, tensors: r.readAll() };
  } finally {
    r.close();
  }
}

const LITTLE_ENDIAN = endianness() === 'LE';

/** Converts raw tensor bytes to float32 values. Always returns a fresh array. */
export function toFloat32(raw: RawTensor, file = '<buffer>', name = '<tensor>'): Float32Array {
  const { dtype, data } = raw;
  const size = DTYPE_SIZE[dtype];
  const n = data.length / size;
  switch (dtype) {
    case 'F16':
      return f16BytesToFloat32(data);
    case 'BF16':
      return bf16BytesToFloat32(data);
    case 'F32': {
      if (LITTLE_ENDIAN) {
        // copy into an aligned buffer (the data may sit at any offset)
        const out = new Float32Array(n);
        new Uint8Array(out.buffer).set(data);
        return out;
      }
      break;
    }
    case 'BOOL':
    case 'U8':
      return Float32Array.from(data);
    case 'I8':
      return Float32Array.from(new Int8Array(data.buffer, data.byteOffset, data.length));
    default:
      break;
  }
  const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const out = new Float32Array(n);
  const get: ((i: number) => number) | undefined = {
    F32: (i: number) => dv.getFloat32(i * 4, true),
    F64: (i: number) => dv.getFloat64(i * 8, true),
    I16: (i: number) => dv.getInt16(i * 2, true),
    U16: (i: number) => dv.getUint16(i * 2, true),
    I32: (i: number) => dv.getInt32(i * 4, true),
    U32: (i: number) => dv.getUint32(i * 4, true),
    I64: (i: number) => Number(dv.getBigInt64(i * 8, true)),
    U64: (i: number) => Number(dv.getBigUint64(i * 8, true)),
  }[dtype as string];
  if (!get) {
    throw new SafetensorsError('UNSUPPORTED_DTYPE', file, `cannot convert ${dtype} to float32`, name);
  }
  for (let i = 0; i < n; i++) out[i] = get(i);
  return out;
}

// ---------------------------------------------------------------------------------------------
// writing

/** A tensor to write: raw little-endian bytes (any typed array is taken as its bytes). */
export interface TensorInput {
  readonly dtype: Dtype;
  readonly shape: readonly number[];
  readonly data: ArrayBufferView;
}

export type TensorMap = ReadonlyMap<string, TensorInput> | Readonly<Record<string, TensorInput>>;
export type MetadataMap = ReadonlyMap<string, string> | Readonly<Record<string, string>>;

/** Builds a tensor from float32 values, narrowing to F16 or BF16 (round to nearest even) if asked. */
export function tensorFromFloat32(values: ArrayLike<number>, shape: readonly number[], dtype: 'F32' | 'F16' | 'BF16' = 'F32'): TensorInput {
  const numel = shape.reduce((a, b) => a * b, 1);
  if (numel !== values.length) {
    throw new SafetensorsError('INVALID_TENSOR', '<tensor>', `shape [${shape.join(', ')}] has ${numel} elements, values have ${values.length}`);
  }
  if (dtype === 'F16') return { dtype, shape: [...shape], data: float32ToF16Bytes(values) };
  if (dtype === 'BF16') return { dtype, shape: [...shape], data: float32ToBf16Bytes(values) };
  const f = values instanceof Float32Array ? values : Float32Array.from(values);
  if (!LITTLE_ENDIAN) {
    const out = new Uint8Array(f.length * 4);
    const dv = new DataView(out.buffer);
    f.forEach((v, i) => dv.setFloat32(i * 4, v, true));
    return { dtype, shape: [...shape], data: out };
  }
  return { dtype, shape: [...shape], data: f };
}

function entriesOf<V>(m: ReadonlyMap<string, V> | Readonly<Record<string, V>>): [string, V][] {
  if (m instanceof Map) return [...m.entries()];
  return Object.keys(m).map((k) => [k, (m as Record<string, V>)[k]]);
}

const utf8 = new TextEncoder();

function compareUtf8(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

function checkWellFormed(name: string, what: string, file: string): void {
  // Lone surrogates cannot be written as UTF-8 (the reference takes only valid UTF-8 strings).
  if (/[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/.test(name)) {
    throw new SafetensorsError('INVALID_TENSOR', file, `${what} contains a lone UTF-16 surrogate`);
  }
}

function checkName(name: string, what: string, file: string): void {
  checkWellFormed(name, `${what} ${JSON.stringify(name)}`, file);
  if (name === '__proto__') throw new SafetensorsError('FORBIDDEN_NAME', file, `${what} "__proto__" is not allowed`);
}

export interface EncodedSafetensors {
  /** 8-byte prefix + padded header. */
  readonly head: Uint8Array;
  /** Tensor data in file order (views of the inputs, not copies). */
  readonly chunks: readonly Uint8Array[];
  readonly totalBytes: number;
}

/**
 * Lays out a safetensors file exactly as the reference writer does (see the file comment), without
 * copying tensor data. `file` only names the target in error messages.
 */
export function layoutSafetensors(tensors: TensorMap, metadata?: MetadataMap, file = '<buffer>'): EncodedSafetensors {
  const items = entriesOf(tensors).map(([name, t]) => {
    checkName(name, 'tensor name', file);
    if (name === '__metadata__') throw new SafetensorsError('INVALID_TENSOR', file, 'a tensor cannot be named "__metadata__"', name);
    if (!isDtype(t.dtype)) throw new SafetensorsError('UNKNOWN_DTYPE', file, `unknown dtype ${JSON.stringify(t.dtype)}`, name);
    let numel = 1;
    for (const d of t.shape) {
      if (!Number.isSafeInteger(d) || d < 0) {
        throw new SafetensorsError('INVALID_SHAPE', file, `shape [${t.shape.join(', ')}] must hold non-negative integers`, name);
      }
      numel *= d;
    }
    const bytes = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
    if (bytes.length !== numel * DTYPE_SIZE[t.dtype]) {
      throw new SafetensorsError('SIZE_MISMATCH', file,
        `shape [${t.shape.join(', ')}] of ${t.dtype} needs ${numel * DTYPE_SIZE[t.dtype]} bytes, data has ${bytes.length}`, name);
    }
    return { name, key: Buffer.from(name, 'utf8'), dtype: t.dtype, shape: t.shape, bytes };
  });
  items.sort((a, b) => DTYPE_RANK.get(b.dtype)! - DTYPE_RANK.get(a.dtype)! || Buffer.compare(a.key, b.key));

  const parts: string[] = [];
  if (metadata !== undefined) {
    const meta = entriesOf(metadata);
    for (const [k, v] of meta) {
      checkName(k, 'metadata key', file);
      if (typeof v !== 'string') throw new SafetensorsError('INVALID_METADATA', file, `metadata value of ${JSON.stringify(k)} must be a string`);
      checkWellFormed(v, `metadata value of ${JSON.stringify(k)}`, file);
    }
    meta.sort((a, b) => compareUtf8(a[0], b[0]));
    parts.push(`"__metadata__":{${meta.map(([k, v]) => `${JSON.stringify(k)}:${JSON.stringify(v)}`).join(',')}}`);
  }
  let offset = 0;
  for (const it of items) {
    const end = offset + it.bytes.length;
    parts.push(`${JSON.stringify(it.name)}:{"dtype":"${it.dtype}","shape":[${it.shape.join(',')}],"data_offsets":[${offset},${end}]}`);
    offset = end;
  }
  const json = utf8.encode(`{${parts.join(',')}}`);
  const padded = (json.length + 7) & ~7;
  if (padded > MAX_HEADER_BYTES) {
    throw new SafetensorsError('HEADER_TOO_LARGE', file, `header would be ${padded} bytes, over the ${MAX_HEADER_BYTES}-byte limit`);
  }
  const head = new Uint8Array(8 + padded);
  new DataView(head.buffer).setBigUint64(0, BigInt(padded), true);
  head.set(json, 8);
  head.fill(0x20, 8 + json.length);
  return { head, chunks: items.map((i) => i.bytes), totalBytes: head.length + offset };
}

/** The whole file in one buffer. */
export function encodeSafetensors(tensors: TensorMap, metadata?: MetadataMap): Uint8Array {
  const { head, chunks, totalBytes } = layoutSafetensors(tensors, metadata);
  const out = new Uint8Array(totalBytes);
  out.set(head, 0);
  let at = head.length;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

/** Writes a safetensors file atomically (temp file, fsync, rename, fsync folder), streaming the data. */
export function writeSafetensorsFile(path: string, tensors: TensorMap, metadata?: MetadataMap): void {
  const { head, chunks } = layoutSafetensors(tensors, metadata, path);
  writeFileAtomicSync(path, [head, ...chunks]);
}

// ---------------------------------------------------------------------------------------------
// sharded checkpoints: model.safetensors.index.json

export interface SafetensorsIndex {
  /** The index file's own path. */
  readonly file: string;
  /** `metadata` (e.g. total_size) as parsed JSON values; empty when absent. */
  readonly metadata: ReadonlyMap<string, JsonValue>;
  /** tensor name -> shard file name (relative to the index's folder). */
  readonly weightMap: ReadonlyMap<string, string>;
  /** Distinct shard file names, in first-appearance order. */
  readonly shards: readonly string[];
}

/** Parses `model.safetensors.index.json` text ({metadata?, weight_map}). */
export function parseSafetensorsIndex(text: string, file = '<index>'): SafetensorsIndex {
  let root: JsonValue;
  try {
    root = parseStrictJson(text, { maxDepth: 16 });
  } catch (e) {
    if (e instanceof StrictJsonError) throw new SafetensorsError('INVALID_INDEX', file, `not valid JSON: ${e.message}`);
    throw e;
  }
  if (!isJsonObject(root)) throw new SafetensorsError('INVALID_INDEX', file, `must be a JSON object, found ${jsonTypeName(root)}`);
  const wm = root.get('weight_map');
  if (wm === undefined) throw new SafetensorsError('INVALID_INDEX', file, 'missing "weight_map"');
  if (!isJsonObject(wm)) throw new SafetensorsError('INVALID_INDEX', file, `"weight_map" must be an object, found ${jsonTypeName(wm)}`);
  const md = root.get('metadata');
  let metadata: JsonObject = new Map();
  if (md !== undefined && md !== null) {
    if (!isJsonObject(md)) throw new SafetensorsError('INVALID_INDEX', file, `"metadata" must be an object, found ${jsonTypeName(md)}`);
    metadata = md;
  }
  const weightMap = new Map<string, string>();
  const shards: string[] = [];
  for (const [tensor, shard] of wm) {
    if (typeof shard !== 'string') {
      throw new SafetensorsError('INVALID_INDEX', file, `"weight_map" value must be a file name, found ${jsonTypeName(shard)}`, tensor);
    }
    if (shard === '' || shard === '.' || shard === '..' || /[/\\]/.test(shard) || isAbsolute(shard) || shard.includes('\0')) {
      throw new SafetensorsError('INVALID_INDEX', file,
        `shard ${JSON.stringify(shard)} must be a plain file name in the index's folder`, tensor);
    }
    weightMap.set(tensor, shard);
    if (!shards.includes(shard)) shards.push(shard);
  }
  return { file, metadata, weightMap, shards };
}

/**
 * A sharded checkpoint opened through its index: every shard's header is validated, every tensor
 * of the weight map must be in its shard, and no tensor may be in two shards or in a shard without
 * being in the weight map.
 */
export class ShardedSafetensorsReader {
  private constructor(
    readonly index: SafetensorsIndex,
    private readonly readers: ReadonlyMap<string, SafetensorsReader>,
  ) {}

  static open(indexPath: string): ShardedSafetensorsReader {
    let text: string;
    try {
      text = utf8Strict.decode(readWholeSmallFile(indexPath, 64 * 1024 * 1024));
    } catch (e) {
      if (e instanceof SafetensorsError) throw e;
      throw new SafetensorsError('INVALID_INDEX', indexPath, 'not valid UTF-8');
    }
    const index = parseSafetensorsIndex(text, indexPath);
    const folder = dirname(indexPath);
    const readers = new Map<string, SafetensorsReader>();
    try {
      for (const shard of index.shards) readers.set(shard, SafetensorsReader.open(join(folder, shard)));
      const seen = new Map<string, string>();
      for (const [shard, r] of readers) {
        for (const name of r.names) {
          const other = seen.get(name);
          if (other !== undefined) {
            throw new SafetensorsError('INVALID_INDEX', indexPath, `tensor is in two shards, ${other} and ${shard}`, name);
          }
          seen.set(name, shard);
          const listed = index.weightMap.get(name);
          if (listed === undefined) {
            throw new SafetensorsError('INVALID_INDEX', indexPath, `shard ${shard} holds a tensor the weight_map does not list`, name);
          }
          if (listed !== shard) {
            throw new SafetensorsError('INVALID_INDEX', indexPath, `weight_map says ${listed} but the tensor is in ${shard}`, name);
          }
        }
      }
      for (const [name, shard] of index.weightMap) {
        if (!readers.get(shard)!.has(name)) {
          throw new SafetensorsError('INVALID_INDEX', indexPath, `weight_map says ${shard} but that shard has no such tensor`, name);
        }
      }
    } catch (e) {
      for (const r of readers.values()) r.close();
      throw e;
    }
    return new ShardedSafetensorsReader(index, readers);
  }

  get names(): string[] {
    return [...this.index.weightMap.keys()];
  }
  has(name: string): boolean {
    return this.index.weightMap.has(name);
  }
  private readerFor(name: string): SafetensorsReader {
    const shard = this.index.weightMap.get(name);
    if (shard === undefined) throw new SafetensorsError('TENSOR_NOT_FOUND', this.index.file, 'no such tensor in the weight_map', name);
    return this.readers.get(shard)!;
  }
  info(name: string): TensorInfo {
    return this.readerFor(name).info(name);
  }
  readRaw(name: string): RawTensor {
    return this.readerFor(name).readRaw(name);
  }
  readFloat32(name: string): Float32Array {
    return this.readerFor(name).readFloat32(name);
  }
  close(): void {
    for (const r of this.readers.values()) r.close();
  }
}

/** Opens `path` as a single file, or as a sharded checkpoint when it ends in `.index.json`. */
export function openSafetensors(path: string): SafetensorsReader | ShardedSafetensorsReader {
  return basename(path).endsWith('.index.json') ? ShardedSafetensorsReader.open(path) : SafetensorsReader.open(path);
}

function readWholeSmallFile(path: string, limit: number): Uint8Array {
  const src = fileSource(path);
  try {
    if (src.size > limit) throw new SafetensorsError('INVALID_INDEX', path, `index file is ${src.size} bytes, over the ${limit}-byte limit`);
    return src.read(0, src.size);
  } finally {
    src.close?.();
  }
}
