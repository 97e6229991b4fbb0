/**
 * The files and folders commands write, checked before anything is written (a file where a folder goes, a
 * folder where a file goes), and written through a temporary file that a failed write does not leave behind.
 */
import { chmodSync, closeSync, openSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';

/** Why `dir` cannot be (made) a folder: it, or a folder above it, is a file; undefined when it can. */
export function folderProblem(dir: string, shown: (f: string) => string): string | undefined {
  for (let p = dir; ; p = dirname(p)) {
    let isDir: boolean;
    try {
      isDir = statSync(p).isDirectory();
    } catch {
      if (dirname(p) === p) return undefined;
      continue;
    }
    if (isDir) return undefined;
    return p === dir ? `${shown(dir)} is a file, not a folder` : `cannot make the folder ${shown(dir)}: ${shown(p)} is a file, not a folder`;
  }
}

/** Why `file` cannot be written: a folder stands at its path; undefined when it can. */
export function fileProblem(file: string, shown: (f: string) => string): string | undefined {
  try {
    if (statSync(file).isDirectory()) return `${shown(file)} is a folder, where a file is to be written`;
  } catch {
    /* absent: fine */
  }
  return undefined;
}

/**
 * Writes `text` to `file` through a new `<file>.<pid>.tmp` (never one that is there already) and a rename, with
 * `mode` when given (a rewritten file keeps its permissions). On failure the temporary file is removed, `file`
 * is as it was, and the error is rethrown, naming `file`.
 */
export function writeAtomically(file: string, text: string, mode?: number): void {
  const tmp = `${file}.${process.pid}.tmp`;
  let fd: number | undefined;
  let created = false;
  try {
    fd = openSync(tmp, 'wx', mode ?? 0o666);
    created = true;
    writeFileSync(fd, text);
    closeSync(fd);
    fd = undefined;
    if (mode !== undefined) chmodSync(tmp, mode); // the umask applies at creation
    renameSync(tmp, file);
  } catch (e) {
    if (fd !== undefined) closeSync(fd);
    if (created) {
      try {
        rmSync(tmp, { force: true });
      } catch {
        /* the error below says what went wrong; a temporary file that cannot be removed is named by its .tmp ending */
      }
    }
    const x = e as NodeJS.ErrnoException;
    // Named as the file the caller writes (the temporary name means nothing to the user), unless it is the temporary file that is in the way.
    if (x instanceof Error && typeof x.code === 'string' && (x.path === undefined || (x.path === tmp && x.code !== 'EEXIST'))) Object.assign(x, { path: file, syscall: 'write' });
    throw e;
  }
}

/** A Node.js file-system error as one line, `cannot write out/x: EACCES (no permission ...)`; undefined for other errors. */
export function fsErrorLine(e: unknown, shown: (f: string) => string): string | undefined {
  const x = e as NodeJS.ErrnoException | undefined;
  if (!(x instanceof Error) || typeof x.code !== 'string' || typeof x.path !== 'string' || typeof x.syscall !== 'string') return undefined;
  const op = x.syscall === 'mkdir' ? 'make the folder' : /^(write|rename|copyfile)$/.test(x.syscall) ? 'write' : /^(read|stat|lstat|scandir)$/.test(x.syscall) ? 'read' : x.syscall;
  const hint =
    x.code === 'ENOTDIR' || (x.code === 'EEXIST' && x.syscall === 'mkdir') ? ' (a file stands where a folder is needed: move it away, or write somewhere else)'
    : x.code === 'EEXIST' ? ' (a file of that name is in the way: move it away)'
    : x.code === 'EISDIR' ? ' (a folder stands where a file is written: move it away, or write somewhere else)'
    : x.code === 'EACCES' || x.code === 'EPERM' || x.code === 'EROFS' ? ' (no permission: make it writable, or write somewhere else)'
    : x.code === 'ENOSPC' || x.code === 'EDQUOT' ? ' (the disk is full: free some space)'
    : '';
  return `cannot ${op} ${shown(x.path)}: ${x.code}${hint}`;
}
