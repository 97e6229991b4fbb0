/**
 * Atomic file writes: a reader sees either the old file or the complete new one, never a part,
 * even after a crash or power loss at any moment.
 *
 * Steps: write a temp file in the same folder (same file system, so rename is atomic), fsync it,
 * rename it over the target, fsync the folder (so the rename itself is durable). On any error the
 * temp file is removed and the target is untouched.
 *
 * All functions are synchronous: a checkpoint is a point the training loop waits for anyway, and
 * synchronous code has no interleavings to reason about when the process is killed.
 */
import {
  closeSync,
  fsyncSync,
  lstatSync,
  openSync,
  readdirSync,
  renameSync,
  unlinkSync,
  writeSync,
} from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { randomBytes } from 'node:crypto';

export class AtomicWriteError extends Error {
  constructor(
    readonly file: string,
    readonly detail: string,
    readonly cause?: unknown,
  ) {
    super(`${file}: ${detail}`);
    this.name = 'AtomicWriteError';
  }
}

export type FileContent = string | ArrayBufferView | Iterable<ArrayBufferView>;

export interface AtomicWriteOptions {
  /** File mode of the new file (default 0o644). */
  mode?: number;
  /** fsync the folder after the rename (default true). Turn off only to batch, then call `fsyncDir`. */
  syncDir?: boolean;
}

/** Prefix of temp files; `isTempName` recognises them so folder scans can skip or clean them. */
export const TEMP_PREFIX = '.tmp-';

export function isTempName(name: string): boolean {
  return name.startsWith(TEMP_PREFIX);
}

export function tempPathFor(path: string): string {
  return join(dirname(path), `${TEMP_PREFIX}${basename(path)}.${process.pid}.${randomBytes(6).toString('hex')}`);
}

/**
 * Whether a leftover named with process id `pid` (a temp file, a checkpoint's staging folder) can no longer
 * be written to: its process is gone, or it is this process, which calls this only when it has no write of
 * its own in flight (every write here is synchronous). A live process of another user (EPERM) counts as alive.
 */
export function writerGone(pid: number): boolean {
  if (pid === process.pid) return true;
  if (!Number.isSafeInteger(pid) || pid <= 0) return true;
  try {
    process.kill(pid, 0);
    return false;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code !== 'EPERM';
  }
}

const TEMP_FILE_RE = /^\.tmp-.+\.(\d+)\.[0-9a-f]{12}$/;

/**
 * Removes the temp files `writeFileAtomicSync` left in `dir` when its process was killed between creating
 * and renaming one (only those whose process is gone: see `writerGone`). Returns the names removed.
 */
export function removeStaleTempFiles(dir: string): string[] {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return [];
  }
  const removed: string[] = [];
  for (const name of names) {
    const m = TEMP_FILE_RE.exec(name);
    if (!m || !writerGone(Number(m[1]))) continue;
    try {
      if (!lstatSync(join(dir, name)).isFile()) continue;
      unlinkSync(join(dir, name));
      removed.push(name);
    } catch {
      /* gone already, or not ours to remove: left alone */
    }
  }
  return removed;
}

function* chunksOf(content: FileContent): Iterable<Uint8Array> {
  if (typeof content === 'string') {
    yield Buffer.from(content, 'utf8');
  } else if (ArrayBuffer.isView(content)) {
    yield new Uint8Array(content.buffer, content.byteOffset, content.byteLength);
  } else {
    for (const c of content) yield new Uint8Array(c.buffer, c.byteOffset, c.byteLength);
  }
}

function writeAll(fd: number, bytes: Uint8Array): void {
  let done = 0;
  while (done < bytes.length) {
    // Large writes can be partial; write at most 1 GiB per call.
    done += writeSync(fd, bytes, done, Math.min(bytes.length - done, 1 << 30));
  }
}

/** fsync a folder so that renames and creations in it are durable. No-op where unsupported. */
export function fsyncDir(dir: string): void {
  let fd: number | undefined;
  try {
    fd = openSync(dir, 'r');
    fsyncSync(fd);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    // Windows cannot open folders; some file systems refuse fsync on them.
    if (code !== 'EISDIR' && code !== 'EINVAL' && code !== 'EPERM' && code !== 'EBADF' && code !== 'ENOTSUP') {
      throw new AtomicWriteError(dir, `cannot fsync folder: ${(e as Error).message}`, e);
    }
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/** Writes `content` to `path` atomically and durably. */
export function writeFileAtomicSync(path: string, content: FileContent, options: AtomicWriteOptions = {}): void {
  const tmp = tempPathFor(path);
  let fd: number | undefined;
  try {
    fd = openSync(tmp, 'wx', options.mode ?? 0o644);
    for (const chunk of chunksOf(content)) writeAll(fd, chunk);
    fsyncSync(fd);
    closeSync(fd);
    fd = undefined;
    renameSync(tmp, path);
  } catch (e) {
    if (fd !== undefined) {
      try { closeSync(fd); } catch { /* already failing */ }
    }
    try { unlinkSync(tmp); } catch { /* may not exist */ }
    if (e instanceof AtomicWriteError) throw e;
    throw new AtomicWriteError(path, `atomic write failed: ${(e as Error).message}`, e);
  }
  if (options.syncDir ?? true) fsyncDir(dirname(path));
}
