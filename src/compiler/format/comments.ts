/**
 * Comment attachment and blank lines: turns the AST plus `file.comments` into a tree of blocks (the file,
 * stage bodies, then-blocks) whose entries carry the comments to print around them. No comment is dropped:
 * each one lands in exactly one slot, and the slots print in source order.
 *
 * Within a block, a comment is
 * - inside a nested block's braces: handed to that block;
 * - inside an item's span otherwise (between tokens of one statement, in an argument list, in a stage
 *   header before `{`): an "awkward" comment, printed on its own line just above that item;
 * - on the line where the previous item ends (or where an earlier trailing comment of it ends): trailing,
 *   printed at the end of that item's last line (after a block's `}` for a stage or then-block);
 * - before the first item and on the line of the block's `{`: printed at the end of the `{` line;
 * - otherwise on its own line(s): leading, printed above the next item, or before the block's end
 *   (`}`, end of file) when no item follows.
 *
 * Each leading comment and item also records whether the author left a blank line before it.
 */
import type * as A from '../1-parse/ast.js';
import type { SourceFile } from '../source.js';

export type LayoutNode = A.Header | A.TopItem | A.StageItem | A.Transition;

export const isHeader = (n: LayoutNode): n is A.Header => !('kind' in n);
const isBlock = (n: LayoutNode): n is A.Stage | A.Then => !isHeader(n) && (n.kind === 'stage' || n.kind === 'then');

/** A comment printed on its own line; `blank`: a blank line goes before it. */
export interface OwnLine {
  comment: A.Comment;
  blank: boolean;
}

export interface Entry {
  node: LayoutNode;
  /** Own-line comments printed above the node, in order. */
  before: OwnLine[];
  /** A blank line goes before the node (after `before`). */
  blank: boolean;
  /** Comments printed after the node's last line. */
  trailing: A.Comment[];
  /** The body of a stage or then-block. */
  body?: Block;
}

export interface Block {
  /** Comments printed at the end of the line holding `{`. */
  open: A.Comment[];
  entries: Entry[];
  /** Own-line comments after the last entry. */
  dangling: OwnLine[];
}

interface Work extends Entry {
  awkward: A.Comment[];
  inner: A.Comment[];
  braces?: { open: number; close: number };
}

/** Lays out the whole file: the header (when present) and the top-level items, with every comment. */
export function layoutFile(file: A.PipelineFile, src: SourceFile): Block {
  const items: LayoutNode[] = file.header ? [file.header, ...file.items] : [...file.items];
  const comments = [...file.comments].sort((a, b) => a.span.start.offset - b.span.start.offset);
  return layoutBlock(items, comments, 0, undefined, src);
}

function layoutBlock(items: LayoutNode[], comments: A.Comment[], bodyStart: number, openLine: number | undefined, src: SourceFile): Block {
  const text = src.text;
  const work: Work[] = items.map((node) => ({ node, before: [], blank: false, trailing: [], awkward: [], inner: [], braces: bracesOf(node, text) }));
  const open: A.Comment[] = [];
  let pending: OwnLine[] = [];
  let prevEnd = bodyStart;
  /** The line a comment must start on to trail the last thing printed (`{` or an item); undefined once broken. */
  let chainLine = openLine;
  let chainOwner: Work | undefined;
  let next = 0;

  const reach = (w: Work): void => {
    w.blank = blankBetween(text, prevEnd, w.node.span.start.offset);
    w.before = pending;
    pending = [];
    prevEnd = w.node.span.end.offset;
    chainLine = w.node.span.end.line;
    chainOwner = w;
  };

  for (const c of comments) {
    const at = c.span.start.offset;
    while (next < work.length && work[next].node.span.end.offset <= at) reach(work[next++]);
    const cur = work[next];
    if (cur && cur.node.span.start.offset < at) {
      if (cur.braces && at > cur.braces.open && c.span.end.offset <= cur.braces.close) cur.inner.push(c);
      else cur.awkward.push(c);
      continue;
    }
    if (chainLine !== undefined && c.span.start.line === chainLine) {
      (chainOwner ? chainOwner.trailing : open).push(c);
      chainLine = c.span.end.line;
      prevEnd = c.span.end.offset;
      continue;
    }
    pending.push({ comment: c, blank: blankBetween(text, prevEnd, at) });
    prevEnd = c.span.end.offset;
    chainLine = undefined;
  }
  while (next < work.length) reach(work[next++]);

  const entries = work.map((w): Entry => {
    const before = [...w.before];
    let blank = w.blank;
    // Comments from inside the statement go right above it; the blank line the author put before the
    // statement moves above them.
    w.awkward.forEach((comment, i) => before.push({ comment, blank: i === 0 ? blank : false }));
    if (w.awkward.length) blank = false;
    const entry: Entry = { node: w.node, before, blank, trailing: w.trailing };
    if (w.braces && isBlock(w.node)) {
      const children: LayoutNode[] = w.node.kind === 'stage' ? w.node.items : w.node.transitions;
      entry.body = layoutBlock(children, w.inner, w.braces.open + 1, src.position(w.braces.open).line, src);
    }
    return entry;
  });
  return { open, entries, dangling: pending };
}

/** Offsets of the `{` and `}` of a stage or then-block. */
function bracesOf(node: LayoutNode, text: string): { open: number; close: number } | undefined {
  if (!isBlock(node)) return undefined;
  const from = node.kind === 'stage' ? (node.after ?? node.name).span.end.offset : node.span.start.offset + 'then'.length;
  const close = node.span.end.offset - 1;
  const open = nextCodeChar(text, from, close);
  return text[open] === '{' && text[close] === '}' ? { open, close } : { open: close, close };
}

/** The offset of the first character at or after `from` that is neither whitespace nor inside a comment. */
function nextCodeChar(text: string, from: number, limit: number): number {
  let i = from;
  while (i < limit) {
    const ch = text[i];
    if (/\s/.test(ch) || ch === '\uFEFF') i++;
    else if (text.startsWith('//', i)) {
      while (i < limit && text[i] !== '\n' && text[i] !== '\r') i++;
    } else if (text.startsWith('/*', i)) {
      const end = text.indexOf('*/', i + 2);
      i = end < 0 ? limit : end + 2;
    } else return i;
  }
  return limit;
}

/** True when the text between two offsets holds a blank line (two or more line breaks). */
function blankBetween(text: string, from: number, to: number): boolean {
  let breaks = 0;
  for (let i = from; i < to; i++) {
    const c = text.charCodeAt(i);
    if (c === 10 || (c === 13 && text.charCodeAt(i + 1) !== 10)) {
      if (++breaks >= 2) return true;
    }
  }
  return false;
}
