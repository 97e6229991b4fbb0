/**
 * JSON Lines reader. Streams the file in chunks and splits on `\n` bytes (a trailing `\r` is dropped), so line
 * numbers are exactly those an editor shows, 1-based. Blank lines are skipped. Each other line must be UTF-8
 * holding one JSON object in the declared layout (`records.ts`); a line that is not is a {@link DataError}
 * naming `file:line`, or, with `skipBadRecords`, a counted warning and the reader goes on.
 *
 * Memory stays bounded by the longest line accepted: a line over `maxLineBytes` is not kept, only reported.
 */

import { open } from 'node:fs/promises';
import { DataError } from './errors.js';
import { checkRecord, type ChatRecord, type RecordFormat } from './records.js';

export interface JsonlOptions {
  /** Record layout. Default `chat`. */
  format?: RecordFormat;
  /** Count bad lines as warnings instead of failing on the first. Default false. */
  skipBadRecords?: boolean;
  /** Stop after this many good records (in file order). */
  maxRecords?: number;
  /** Longest line accepted, in bytes. Default 16 MiB. */
  maxLineBytes?: number;
  /** Require every record to end with an assistant turn. Default true. */
  requireResponse?: boolean;
}

export interface JsonlResult {
  records: ChatRecord[];
  /** The bad lines, in order (only with `skipBadRecords`; otherwise the first one is thrown). */
  warnings: DataError[];
  /** Number of bad lines skipped (= warnings.length). */
  skipped: number;
  /** Lines read (the last line number seen). */
  lines: number;
}

export const DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024;
const CHUNK = 64 * 1024;

/** One line out of the splitter: its bytes, or `null` when it was longer than the limit. */
interface RawLine {
  line: number;
  bytes: Uint8Array | null;
  length: number;
}

/** Splits a byte stream into lines, keeping at most `maxLineBytes` of the line in progress. */
class LineSplitter {
  private parts: Uint8Array[] = [];
  private partBytes = 0;
  private tooLong = false;
  private lineNo = 0;

  constructor(private readonly maxLineBytes: number) {}

  push(chunk: Uint8Array, out: RawLine[]): void {
    let start = 0;
    for (;;) {
      const nl = chunk.indexOf(0x0a, start);
      const end = nl < 0 ? chunk.length : nl;
      this.append(chunk.subarray(start, end));
      if (nl < 0) return;
      this.flush(out);
      start = nl + 1;
    }
  }

  /** Emits the last line when the input does not end with a newline. */
  end(out: RawLine[]): void {
    if (this.partBytes > 0 || this.tooLong) this.flush(out);
  }

  private append(piece: Uint8Array): void {
    if (piece.length === 0) return;
    this.partBytes += piece.length;
    if (this.tooLong) return;
    // One byte of slack for the `\r` that a CRLF line carries.
    if (this.partBytes > this.maxLineBytes + 1) {
      this.tooLong = true;
      this.parts = [];
      return;
    }
    this.parts.push(piece.slice());
  }

  private flush(out: RawLine[]): void {
    this.lineNo++;
    let bytes: Uint8Array | null = null;
    if (!this.tooLong) {
      bytes = this.parts.length === 1 ? this.parts[0]! : concat(this.parts, this.partBytes);
      if (bytes.length > 0 && bytes[bytes.length - 1] === 0x0d) bytes = bytes.subarray(0, bytes.length - 1);
      if (bytes.length > this.maxLineBytes) bytes = null;
    }
    out.push({ line: this.lineNo, bytes, length: this.partBytes });
    this.parts = [];
    this.partBytes = 0;
    this.tooLong = false;
  }
}

function concat(parts: Uint8Array[], total: number): Uint8Array {
  const out = new Uint8Array(total);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** Accumulates records and bad lines; shared by the streaming and the in-memory reader. */
class Collector {
  readonly result: JsonlResult = { records: [], warnings: [], skipped: 0, lines: 0 };
  private readonly format: RecordFormat;
  private readonly max: number;

  constructor(
    private readonly file: string,
    private readonly opts: JsonlOptions,
  ) {
    this.format = opts.format ?? 'chat';
    this.max = opts.maxRecords ?? Infinity;
  }

  get full(): boolean {
    return this.result.records.length >= this.max;
  }

  take(raw: RawLine): void {
    if (this.full) return;
    this.result.lines = raw.line;
    const rec = this.parse(raw);
    if (rec === null) return;
    if (typeof rec === 'string') {
      const err = new DataError(this.file, raw.line, rec);
      if (!this.opts.skipBadRecords) throw err;
      this.result.warnings.push(err);
      this.result.skipped++;
      return;
    }
    this.result.records.push(rec);
  }

  /** The record, a problem, or null for a blank line. */
  private parse(raw: RawLine): ChatRecord | string | null {
    if (raw.bytes === null) {
      return `line is ${raw.length} bytes, over the limit of ${this.opts.maxLineBytes ?? DEFAULT_MAX_LINE_BYTES}; JSONL holds one record per line`;
    }
    let text: string;
    try {
      text = utf8.decode(raw.bytes);
    } catch {
      return `invalid UTF-8 at byte ${firstInvalidUtf8(raw.bytes)} of the line; save the file as UTF-8`;
    }
    // A byte-order mark may start the file, nowhere else.
    if (raw.line === 1 && text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    if (text.trim() === '') return null;
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (e) {
      return `invalid JSON: ${shorten((e as Error).message)}`;
    }
    return checkRecord(value, this.format, { file: this.file, line: raw.line }, { requireResponse: this.opts.requireResponse });
  }
}

/**
 * Reads a JSONL file by streaming it. `displayName` is how messages name the file (default: `path`).
 * Throws {@link DataError}: on the first bad line (unless `skipBadRecords`) and when the file cannot be read.
 */
export async function readJsonl(path: string, opts: JsonlOptions = {}, displayName = path): Promise<JsonlResult> {
  const collector = new Collector(displayName, opts);
  const splitter = new LineSplitter(opts.maxLineBytes ?? DEFAULT_MAX_LINE_BYTES);
  let fh;
  try {
    fh = await open(path, 'r');
  } catch (e) {
    throw new DataError(displayName, 0, `cannot open: ${ioProblem(e)}`);
  }
  try {
    const buf = new Uint8Array(CHUNK);
    const lines: RawLine[] = [];
    for (;;) {
      let n: number;
      try {
        ({ bytesRead: n } = await fh.read(buf, 0, CHUNK, null));
      } catch (e) {
        throw new DataError(displayName, collector.result.lines + 1, `cannot read: ${ioProblem(e)}`);
      }
      if (n === 0) break;
      splitter.push(buf.subarray(0, n), lines);
      for (const l of lines) collector.take(l);
      lines.length = 0;
      if (collector.full) return collector.result;
    }
    splitter.end(lines);
    for (const l of lines) collector.take(l);
  } finally {
    await fh.close();
  }
  return collector.result;
}

/** Parses JSONL held in memory (same rules as {@link readJsonl}). */
export function parseJsonl(input: Uint8Array | string, file: string, opts: JsonlOptions = {}): JsonlResult {
  const bytes = typeof input === 'string' ? new TextEncoder().encode(input) : input;
  const collector = new Collector(file, opts);
  const splitter = new LineSplitter(opts.maxLineBytes ?? DEFAULT_MAX_LINE_BYTES);
  const lines: RawLine[] = [];
  splitter.push(bytes, lines);
  splitter.end(lines);
  for (const l of lines) {
    collector.take(l);
    if (collector.full) break;
  }
  return collector.result;
}

function ioProblem(e: unknown): string {
  const code = (e as NodeJS.ErrnoException).code;
  if (code === 'ENOENT') return 'no such file (check the path in the pipeline; it is relative to the project root)';
  if (code === 'EISDIR') return 'it is a folder, not a file';
  if (code === 'EACCES') return 'permission denied';
  return code ?? String((e as Error).message ?? e);
}

function shorten(s: string): string {
  return s.length > 200 ? `${s.slice(0, 200)}...` : s;
}

/** Byte offset (0-based) of the first byte that is not part of a valid UTF-8 sequence. */
function firstInvalidUtf8(b: Uint8Array): number {
  let i = 0;
  while (i < b.length) {
    const c = b[i]!;
    let n = 0;
    let min = 0;
    if (c < 0x80) n = 0;
    else if (c >= 0xc2 && c <= 0xdf) (n = 1), (min = 0x80);
    else if (c >= 0xe0 && c <= 0xef) (n = 2), (min = 0x800);
    else if (c >= 0xf0 && c <= 0xf4) (n = 3), (min = 0x10000);
    else return i;
    if (i + n >= b.length && n > 0) return i;
    let cp = n === 0 ? c : c & (0x3f >> n);
    for (let k = 1; k <= n; k++) {
      const d = b[i + k]!;
      if ((d & 0xc0) !== 0x80) return i;
      cp = (cp << 6) | (d & 0x3f);
    }
    if (n > 0 && (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))) return i;
    i += n + 1;
  }
  return i;
}
