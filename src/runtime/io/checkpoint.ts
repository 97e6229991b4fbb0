/**
 * Checkpoint folders: `<root>/step-000123/` holding any number of files plus a `COMPLETE` marker, a
 * JSON manifest of every file's name, size and sha256, written last.
 *
 * Writing (`writeCheckpoint`):
 *   1. a staging folder `<root>/.tmp-step-000123.<pid>.<rand>/` is created;
 *   2. every file is written into it atomically (temp file, fsync, rename);
 *   3. the folder is fsynced, then `COMPLETE` is written atomically, last;
 *   4. the staging folder is renamed to `step-000123` and the root is fsynced;
 *   5. with `keepLast`, older checkpoints beyond the newest `keepLast` valid ones are removed
 *      (renamed to `.trash-...` first, so a crash mid-delete leaves nothing that looks like a
 *      checkpoint). The checkpoint just written always counts, so a complete checkpoint is never
 *      removed before a newer complete one exists.
 * A kill at any moment leaves either no `step-000123` folder or a complete one. Folders without a
 * valid `COMPLETE` (from other writers, older versions, or tampering) are ignored by the reader.
 * What a kill can leave besides: the staging folder of step 1-3 and a `.trash-...` folder of step 5.
 * `removeLeftovers` (a writer's start) and `pruneCheckpoints` remove both: trash always, a staging folder
 * when the process its name carries is gone (or is the caller, which has no write in flight then).
 *
 * Reading (`findLatestCheckpoint`): the newest `step-N` folder whose `COMPLETE` parses and whose
 * files match the manifest (sizes, and sha256 unless `verify: 'size'`). Newer folders that fail are
 * reported in `rejected`, with the reason, so the caller can warn.
 *
 * One writer per root is assumed (a second concurrent writer could have its staging folder removed).
 */
import {
  closeSync,
  existsSync,
  fstatSync,
  lstatSync,
  mkdirSync,
  openSync,
  readSync,
  readdirSync,
  renameSync,
  rmSync,
  statSync,
} from 'node:fs';
import { join } from 'node:path';
import { createHash, randomBytes } from 'node:crypto';
import { fsyncDir, writeFileAtomicSync, writerGone, type FileContent, AtomicWriteError } from './atomic.js';
import { JsonNumber, StrictJsonError, isJsonObject, jsonTypeName, parseStrictJson } from './strict-json.js';

export const COMPLETE_MARKER = 'COMPLETE';
export const MANIFEST_FORMAT = 'mcpc-checkpoint';
export const MANIFEST_VERSION = 1;
const STAGING_PREFIX = '.tmp-step-';
const TRASH_PREFIX = '.trash-step-';
/** A staging folder's name: `.tmp-step-<step>.<pid>.<random>`. */
const STAGING_RE = /^\.tmp-step-\d+\.(\d+)\.[0-9a-f]+$/;
const STEP_DIR_RE = /^step-(\d{6,15})$/;
/** Largest manifest read (a manifest lists file names; megabytes would already be absurd). */
const MAX_MANIFEST_BYTES = 16 * 1024 * 1024;

export type CheckpointErrorCode =
  | 'INVALID_ARGUMENT'
  | 'EXISTS'
  | 'IO'
  | 'NO_MARKER'
  | 'INVALID_MANIFEST'
  | 'MISSING_FILE'
  | 'SIZE_MISMATCH'
  | 'HASH_MISMATCH';

export class CheckpointError extends Error {
  constructor(
    readonly code: CheckpointErrorCode,
    /** The checkpoint folder (or root) concerned. */
    readonly dir: string,
    readonly detail: string,
    /** The file within the checkpoint at fault, if any. */
    readonly fileName?: string,
  ) {
    super(`${fileName !== undefined ? join(dir, fileName) : dir}: ${detail}`);
    this.name = 'CheckpointError';
  }
}

export interface ManifestEntry {
  readonly name: string;
  readonly bytes: number;
  readonly sha256: string;
}

export interface CheckpointManifest {
  readonly format: typeof MANIFEST_FORMAT;
  readonly version: typeof MANIFEST_VERSION;
  readonly step: number;
  /** Sorted by name. */
  readonly files: readonly ManifestEntry[];
}

export interface Checkpoint {
  readonly step: number;
  readonly dir: string;
  readonly manifest: CheckpointManifest;
}

export type VerifyLevel = 'sha256' | 'size';

export function stepDirName(step: number): string {
  if (!Number.isSafeInteger(step) || step < 0) {
    throw new CheckpointError('INVALID_ARGUMENT', '<checkpoint>', `step must be a non-negative integer, got ${step}`);
  }
  return `step-${String(step).padStart(6, '0')}`;
}

/** The step of a canonical `step-NNNNNN` folder name, or undefined. */
export function parseStepDirName(name: string): number | undefined {
  const m = STEP_DIR_RE.exec(name);
  if (!m) return undefined;
  const step = Number(m[1]);
  return stepDirName(step) === name ? step : undefined;
}

const FILE_NAME_RE = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,199}$/;

function checkFileName(name: string, dir: string): void {
  if (!FILE_NAME_RE.test(name) || name === COMPLETE_MARKER) {
    throw new CheckpointError('INVALID_ARGUMENT', dir,
      `file name ${JSON.stringify(name)} is not allowed (letters, digits, '.', '_', '-'; not starting with '.' or '-'; not ${COMPLETE_MARKER})`);
  }
}

function materialise(content: FileContent): Uint8Array[] {
  if (typeof content === 'string') return [Buffer.from(content, 'utf8')];
  if (ArrayBuffer.isView(content)) return [new Uint8Array(content.buffer, content.byteOffset, content.byteLength)];
  return [...content].map((c) => new Uint8Array(c.buffer, c.byteOffset, c.byteLength));
}

export interface WriteCheckpointOptions {
  /** Keep only the newest N valid checkpoints (N >= 1) after this one is complete. */
  keepLast?: number;
}

/** Writes a complete checkpoint for `step` under `root` (see the file comment for the protocol). */
export function writeCheckpoint(
  root: string,
  step: number,
  files: ReadonlyMap<string, FileContent> | Readonly<Record<string, FileContent>>,
  options: WriteCheckpointOptions = {},
): Checkpoint {
  const finalName = stepDirName(step);
  const finalDir = join(root, finalName);
  if (options.keepLast !== undefined && (!Number.isSafeInteger(options.keepLast) || options.keepLast < 1)) {
    throw new CheckpointError('INVALID_ARGUMENT', root, `keepLast must be an integer >= 1, got ${options.keepLast}`);
  }
  const entries: [string, FileContent][] = files instanceof Map
    ? [...files.entries()]
    : Object.keys(files).map((k) => [k, (files as Record<string, FileContent>)[k]]);
  for (const [name] of entries) checkFileName(name, finalDir);

  try {
    mkdirSync(root, { recursive: true });
  } catch (e) {
    throw new CheckpointError('IO', root, `cannot create the checkpoint folder: ${(e as Error).message}`);
  }
  if (existsSync(finalDir)) {
    // A valid checkpoint is never overwritten; a broken one (no marker, bad files) is replaced.
    let valid = false;
    try {
      verifyCheckpoint(finalDir, { verify: 'size' });
      valid = true;
    } catch {
      valid = false;
    }
    if (valid) throw new CheckpointError('EXISTS', finalDir, 'a complete checkpoint for this step already exists');
    discard(root, finalName);
  }

  const staging = join(root, `${STAGING_PREFIX}${String(step).padStart(6, '0')}.${process.pid}.${randomBytes(4).toString('hex')}`);
  try {
    mkdirSync(staging);
    const manifestFiles: ManifestEntry[] = [];
    for (const [name, content] of entries) {
      const chunks = materialise(content);
      const h = createHash('sha256');
      let bytes = 0;
      for (const c of chunks) {
        h.update(c);
        bytes += c.length;
      }
      writeFileAtomicSync(join(staging, name), chunks, { syncDir: false });
      manifestFiles.push({ name, bytes, sha256: h.digest('hex') });
    }
    manifestFiles.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    fsyncDir(staging);
    const manifest: CheckpointManifest = { format: MANIFEST_FORMAT, version: MANIFEST_VERSION, step, files: manifestFiles };
    writeFileAtomicSync(join(staging, COMPLETE_MARKER), `${JSON.stringify(manifest, null, 2)}\n`);
    renameSync(staging, finalDir);
    fsyncDir(root);
    const written: Checkpoint = { step, dir: finalDir, manifest };
    if (options.keepLast !== undefined) pruneCheckpoints(root, options.keepLast, step);
    return written;
  } catch (e) {
    try { rmSync(staging, { recursive: true, force: true }); } catch { /* best effort */ }
    if (e instanceof CheckpointError) throw e;
    const msg = e instanceof AtomicWriteError ? e.message : (e as Error).message;
    throw new CheckpointError('IO', finalDir, `writing the checkpoint failed: ${msg}`);
  }
}

/** Moves a folder out of the way (atomic rename to a trash name), then deletes it. */
function discard(root: string, name: string): void {
  const trash = join(root, `${TRASH_PREFIX}${name}.${randomBytes(4).toString('hex')}`);
  renameSync(join(root, name), trash);
  fsyncDir(root);
  rmSync(trash, { recursive: true, force: true });
}

/** Parses and checks a `COMPLETE` manifest's text. */
export function parseManifest(text: string, dir: string): CheckpointManifest {
  const bad = (detail: string): never => {
    throw new CheckpointError('INVALID_MANIFEST', dir, detail, COMPLETE_MARKER);
  };
  let root;
  try {
    root = parseStrictJson(text, { maxDepth: 8 });
  } catch (e) {
    if (e instanceof StrictJsonError) return bad(`not valid JSON: ${e.message}`);
    throw e;
  }
  if (!isJsonObject(root)) return bad(`must be a JSON object, found ${jsonTypeName(root)}`);
  if (root.get('format') !== MANIFEST_FORMAT) bad(`"format" must be "${MANIFEST_FORMAT}"`);
  const version = root.get('version');
  if (!(version instanceof JsonNumber) || version.raw !== String(MANIFEST_VERSION)) bad(`"version" must be ${MANIFEST_VERSION}`);
  const stepV = root.get('step');
  if (!(stepV instanceof JsonNumber) || !stepV.isPlainNonNegativeInteger || !Number.isSafeInteger(stepV.value)) {
    bad('"step" must be a non-negative integer');
  }
  const filesV = root.get('files');
  if (!Array.isArray(filesV)) return bad('"files" must be an array');
  const files: ManifestEntry[] = [];
  const seen = new Set<string>();
  for (const f of filesV) {
    if (!isJsonObject(f)) return bad('each entry of "files" must be an object {name, bytes, sha256}');
    const name = f.get('name');
    const bytes = f.get('bytes');
    const sha = f.get('sha256');
    if (typeof name !== 'string' || !FILE_NAME_RE.test(name) || name === COMPLETE_MARKER) return bad(`invalid file name ${JSON.stringify(name ?? null)}`);
    if (seen.has(name)) bad(`file ${JSON.stringify(name)} is listed twice`);
    seen.add(name);
    if (!(bytes instanceof JsonNumber) || !bytes.isPlainNonNegativeInteger || !Number.isSafeInteger(bytes.value)) {
      bad(`"bytes" of ${name} must be a non-negative integer`);
    }
    if (typeof sha !== 'string' || !/^[0-9a-f]{64}$/.test(sha)) return bad(`"sha256" of ${name} must be 64 lowercase hex digits`);
    files.push({ name, bytes: (bytes as JsonNumber).value, sha256: sha });
  }
  return { format: MANIFEST_FORMAT, version: MANIFEST_VERSION, step: (stepV as JsonNumber).value, files };
}

function readSmall(path: string, limit: number, dir: string, fileName: string): string {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new CheckpointError('NO_MARKER', dir, 'no completion marker: the checkpoint is incomplete', fileName);
    throw new CheckpointError('IO', dir, `cannot open: ${(e as Error).message}`, fileName);
  }
  try {
    const size = fstatSync(fd).size;
    if (size > limit) throw new CheckpointError('INVALID_MANIFEST', dir, `${size} bytes, over the ${limit}-byte limit`, fileName);
    const buf = Buffer.alloc(size);
    let done = 0;
    while (done < size) {
      const n = readSync(fd, buf, done, size - done, done);
      if (n === 0) break;
      done += n;
    }
    return buf.subarray(0, done).toString('utf8');
  } finally {
    closeSync(fd);
  }
}

/** sha256 of a file, streamed in 8 MiB pieces. */
export function sha256File(path: string): string {
  const fd = openSync(path, 'r');
  try {
    const h = createHash('sha256');
    const buf = Buffer.allocUnsafe(8 * 1024 * 1024);
    let pos = 0;
    for (;;) {
      const n = readSync(fd, buf, 0, buf.length, pos);
      if (n === 0) break;
      h.update(buf.subarray(0, n));
      pos += n;
    }
    return h.digest('hex');
  } finally {
    closeSync(fd);
  }
}

/** Reads the marker of a checkpoint folder and checks its files. Throws `CheckpointError`. */
export function verifyCheckpoint(dir: string, options: { verify?: VerifyLevel } = {}): Checkpoint {
  const verify = options.verify ?? 'sha256';
  const text = readSmall(join(dir, COMPLETE_MARKER), MAX_MANIFEST_BYTES, dir, COMPLETE_MARKER);
  const manifest = parseManifest(text, dir);
  const folderStep = parseStepDirName(dir.split(/[/\\]/).pop() ?? '');
  if (folderStep !== undefined && folderStep !== manifest.step) {
    throw new CheckpointError('INVALID_MANIFEST', dir, `manifest says step ${manifest.step} but the folder is step ${folderStep}`, COMPLETE_MARKER);
  }
  for (const f of manifest.files) {
    const p = join(dir, f.name);
    let size: number;
    try {
      const st = statSync(p);
      if (!st.isFile()) throw new Error('not a regular file');
      size = st.size;
    } catch (e) {
      throw new CheckpointError('MISSING_FILE', dir, `listed in the manifest but unreadable: ${(e as Error).message}`, f.name);
    }
    if (size !== f.bytes) {
      throw new CheckpointError('SIZE_MISMATCH', dir, `is ${size} bytes, the manifest says ${f.bytes}`, f.name);
    }
    if (verify === 'sha256') {
      const actual = sha256File(p);
      if (actual !== f.sha256) {
        throw new CheckpointError('HASH_MISMATCH', dir, `sha256 ${actual} differs from the manifest's ${f.sha256}: the file is corrupt`, f.name);
      }
    }
  }
  return { step: manifest.step, dir, manifest };
}

export interface CheckpointListing {
  readonly step: number;
  readonly dir: string;
  /** A `COMPLETE` marker exists (not verified). */
  readonly hasMarker: boolean;
}

/** Every canonical `step-N` folder under `root`, newest first. */
export function listCheckpoints(root: string): CheckpointListing[] {
  let names: string[];
  try {
    names = readdirSync(root);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw new CheckpointError('IO', root, `cannot list: ${(e as Error).message}`);
  }
  const out: CheckpointListing[] = [];
  for (const name of names) {
    const step = parseStepDirName(name);
    if (step === undefined) continue;
    const dir = join(root, name);
    try {
      if (!statSync(dir).isDirectory()) continue;
    } catch {
      continue;
    }
    out.push({ step, dir, hasMarker: existsSync(join(dir, COMPLETE_MARKER)) });
  }
  return out.sort((a, b) => b.step - a.step);
}

export interface LatestCheckpoint {
  /** The newest valid checkpoint, or null if there is none. */
  readonly latest: Checkpoint | null;
  /** Newer folders that were skipped, with why (incomplete, corrupt...). */
  readonly rejected: readonly { dir: string; step: number; error: CheckpointError }[];
}

/** Finds the newest complete, verified checkpoint under `root` (missing root: none). */
export function findLatestCheckpoint(root: string, options: { verify?: VerifyLevel } = {}): LatestCheckpoint {
  const rejected: { dir: string; step: number; error: CheckpointError }[] = [];
  for (const c of listCheckpoints(root)) {
    try {
      return { latest: verifyCheckpoint(c.dir, options), rejected };
    } catch (e) {
      if (!(e instanceof CheckpointError)) throw e;
      rejected.push({ dir: c.dir, step: c.step, error: e });
    }
  }
  return { latest: null, rejected };
}

/** Reads one file of a verified checkpoint, checking it against the manifest again. */
export function readCheckpointFile(ckpt: Checkpoint, name: string): Buffer {
  const entry = ckpt.manifest.files.find((f) => f.name === name);
  if (!entry) throw new CheckpointError('MISSING_FILE', ckpt.dir, 'not listed in the manifest', name);
  let data: Buffer;
  try {
    const fd = openSync(join(ckpt.dir, name), 'r');
    try {
      const size = fstatSync(fd).size;
      if (size !== entry.bytes) throw new CheckpointError('SIZE_MISMATCH', ckpt.dir, `is ${size} bytes, the manifest says ${entry.bytes}`, name);
      data = Buffer.alloc(size);
      let done = 0;
      while (done < size) {
        const n = readSync(fd, data, done, size - done, done);
        if (n === 0) throw new CheckpointError('SIZE_MISMATCH', ckpt.dir, 'shrank while reading', name);
        done += n;
      }
    } finally {
      closeSync(fd);
    }
  } catch (e) {
    if (e instanceof CheckpointError) throw e;
    throw new CheckpointError('MISSING_FILE', ckpt.dir, `cannot read: ${(e as Error).message}`, name);
  }
  const sha = createHash('sha256').update(data).digest('hex');
  if (sha !== entry.sha256) throw new CheckpointError('HASH_MISMATCH', ckpt.dir, `sha256 ${sha} differs from the manifest's ${entry.sha256}: the file is corrupt`, name);
  return data;
}

/**
 * Keeps the newest `keepLast` valid checkpoints (checked by size, so a truncated one does not count)
 * and removes every step folder older than the oldest kept one, plus leftover staging and trash
 * folders (see `removeLeftovers`). Folders newer than the newest valid checkpoint are left alone.
 * `mustKeep` (the step just written) is always kept and counted; `pinned` steps are kept and not
 * counted (a caller's stage-end checkpoints). Returns the removed folder names.
 */
export function pruneCheckpoints(root: string, keepLast: number, mustKeep?: number, options: { pinned?: Iterable<number> } = {}): string[] {
  if (!Number.isSafeInteger(keepLast) || keepLast < 1) {
    throw new CheckpointError('INVALID_ARGUMENT', root, `keepLast must be an integer >= 1, got ${keepLast}`);
  }
  const pinned = new Set(options.pinned ?? []);
  const all = listCheckpoints(root);
  const kept: number[] = [];
  for (const c of all) {
    if (kept.length >= keepLast) break;
    if (pinned.has(c.step) && c.step !== mustKeep) continue;
    if (c.step === mustKeep) {
      kept.push(c.step);
      continue;
    }
    if (!c.hasMarker) continue;
    try {
      verifyCheckpoint(c.dir, { verify: 'size' });
      kept.push(c.step);
    } catch {
      /* invalid: does not count */
    }
  }
  const removed: string[] = [];
  if (kept.length === 0) return removed;
  const oldestKept = kept[kept.length - 1];
  for (const c of all) {
    if (c.step < oldestKept && c.step !== mustKeep && !pinned.has(c.step)) {
      const name = stepDirName(c.step);
      discard(root, name);
      removed.push(name);
    }
  }
  for (const l of removeLeftovers(root).removed) removed.push(l.name);
  return removed;
}

export interface Leftovers {
  /** Removed: trash folders and staging folders of writers that are gone, with their size in bytes. */
  readonly removed: readonly { name: string; bytes: number; kind: 'staging' | 'trash' }[];
  /** Staging folders left alone: the process named in them is alive (another writer on this root?). */
  readonly inUse: readonly { name: string; pid: number }[];
}

/**
 * Removes what a killed writer leaves under `root`: `.trash-step-*` folders (a delete cut short) and
 * `.tmp-step-*` staging folders (a checkpoint write cut short) whose process is gone or is this one
 * (call it when this process has no write in flight). Staging folders of live processes are reported.
 */
export function removeLeftovers(root: string): Leftovers {
  let names: string[];
  try {
    names = readdirSync(root);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { removed: [], inUse: [] };
    throw new CheckpointError('IO', root, `cannot list: ${(e as Error).message}`);
  }
  const removed: { name: string; bytes: number; kind: 'staging' | 'trash' }[] = [];
  const inUse: { name: string; pid: number }[] = [];
  for (const name of names.sort()) {
    const trash = name.startsWith(TRASH_PREFIX);
    if (!trash && !name.startsWith(STAGING_PREFIX)) continue;
    const m = STAGING_RE.exec(name);
    if (!trash && m && !writerGone(Number(m[1]))) {
      inUse.push({ name, pid: Number(m[1]) });
      continue;
    }
    const path = join(root, name);
    const bytes = sizeOf(path);
    rmSync(path, { recursive: true, force: true });
    removed.push({ name, bytes, kind: trash ? 'trash' : 'staging' });
  }
  return { removed, inUse };
}

/** Bytes under a path (files only; what cannot be read counts 0). */
function sizeOf(path: string): number {
  try {
    const st = lstatSync(path);
    if (!st.isDirectory()) return st.isFile() ? st.size : 0;
    let n = 0;
    for (const name of readdirSync(path)) n += sizeOf(join(path, name));
    return n;
  } catch {
    return 0;
  }
}
