/**
 * What "the formatter changed nothing that matters" means: the AST without spans (and without the file's
 * comment list) is the same, and the comments are the same texts in the same order (a line comment's trailing
 * spaces aside: the formatter drops them).
 */
import type * as A from '../1-parse/ast.js';
import { commentText } from './items.js';

/** A deep copy of an AST value without `span` fields; `comments` of a file are dropped too. */
export function stripSpans(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(stripSpans);
  if (value && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) {
      if (k === 'span' || k === 'comments' || v === undefined) continue;
      out[k] = stripSpans(v);
    }
    return out;
  }
  return value;
}

/** True when two files hold the same program and the same comments in the same order. */
export function sameProgram(a: A.PipelineFile, b: A.PipelineFile): boolean {
  if (a.comments.length !== b.comments.length) return false;
  if (a.comments.some((c, i) => commentText(c) !== commentText(b.comments[i]))) return false;
  return sameValue(a, b);
}

const ignored = (k: string, v: unknown): boolean => k === 'span' || k === 'comments' || v === undefined;

/** Deep equality that skips what stripSpans drops, without copying. */
function sameValue(a: unknown, b: unknown): boolean {
  if (Object.is(a, b)) return true;
  if (!a || !b || typeof a !== 'object' || typeof b !== 'object') return false;
  if (Array.isArray(a) || Array.isArray(b)) {
    if (!Array.isArray(a) || !Array.isArray(b) || a.length !== b.length) return false;
    return a.every((x, i) => sameValue(x, b[i]));
  }
  const ra = a as Record<string, unknown>;
  const rb = b as Record<string, unknown>;
  const ka = Object.keys(ra).filter((k) => !ignored(k, ra[k]));
  const kb = Object.keys(rb).filter((k) => !ignored(k, rb[k]));
  if (ka.length !== kb.length) return false;
  return ka.every((k) => !ignored(k, rb[k]) && sameValue(ra[k], rb[k]));
}
