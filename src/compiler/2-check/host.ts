/**
 * What the checker may read from disk. The compiler reads pipeline sources, model config.json files and
 * checks that data files exist; it never loads tensors. Tests pass an in-memory host.
 */
import { existsSync, readFileSync } from 'node:fs';
import { isAbsolute, relative, resolve, sep } from 'node:path';

export interface CheckHost {
  /** Absolute project root: pipeline paths resolve against it. */
  root: string;
  /** Absolute directory that displayed paths are relative to. */
  cwd: string;
  allowOutsideRoot: boolean;
  /** File text, or an error code such as 'ENOENT'. */
  readFile(abs: string): { text: string } | { error: string };
  exists(abs: string): boolean;
}

export function nodeHost(root: string, cwd: string = process.cwd(), allowOutsideRoot = false): CheckHost {
  return {
    root: resolve(root),
    cwd: resolve(cwd),
    allowOutsideRoot,
    readFile(abs) {
      try {
        return { text: readFileSync(abs, 'utf8') };
      } catch (err) {
        return { error: (err as NodeJS.ErrnoException).code ?? String(err) };
      }
    },
    exists: (abs) => existsSync(abs),
  };
}

/** An error code from CheckHost.readFile in words: "it does not exist" rather than "ENOENT". */
export function describeReadError(code: string): string {
  const words: Record<string, string> = {
    ENOENT: 'it does not exist',
    EACCES: 'permission denied',
    EPERM: 'permission denied',
    EISDIR: 'it is a directory',
    ENOTDIR: 'a folder on its path is a file',
    ELOOP: 'its links form a loop',
  };
  return words[code] ?? code;
}

/** Path shown in diagnostics: relative to the cwd with forward slashes, or absolute when outside it. */
export function displayPath(host: CheckHost, abs: string): string {
  const rel = relative(host.cwd, abs);
  if (!rel) return '.';
  if (rel.startsWith('..') || isAbsolute(rel)) return abs;
  return rel.split(sep).join('/');
}

/** Whether `abs` lies inside the project root. */
export function insideRoot(host: CheckHost, abs: string): boolean {
  const rel = relative(host.root, abs);
  return rel === '' || (!rel.startsWith('..') && !isAbsolute(rel));
}
