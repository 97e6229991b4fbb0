/**
 * Paths in diagnostics are as the compiler was given them: absolute, or relative to the cwd. Machine-readable
 * reports want them relative to the project root, with forward slashes.
 */
import { isAbsolute, relative, resolve, sep } from 'node:path';
import { pathToFileURL } from 'node:url';

export type RootedPath =
  /** Inside the root: the path relative to it, '/'-separated (never empty: the root itself is '.'). */
  | { inside: true; rel: string; abs: string }
  /** Outside the root (or on another drive): the absolute path. */
  | { inside: false; abs: string };

export function rootPath(file: string, root: string, cwd: string): RootedPath {
  const abs = resolve(cwd, file);
  const rel = relative(resolve(cwd, root), abs);
  if (rel === '..' || rel.startsWith('..' + sep) || isAbsolute(rel)) return { inside: false, abs };
  return { inside: true, rel: rel === '' ? '.' : rel.split(sep).join('/'), abs };
}

/** A relative URI reference for a '/'-separated relative path: each segment percent-encoded. */
export function relativeUri(rel: string): string {
  return rel
    .split('/')
    .map((s) => encodeURIComponent(s))
    .join('/');
}

/** `file://` URI of an absolute path; with `dir`, ending in '/' as SARIF wants for base URIs. */
export function fileUri(abs: string, dir = false): string {
  const href = pathToFileURL(abs).href;
  return dir && !href.endsWith('/') ? href + '/' : href;
}
