/**
 * Printing of blocks and items: one statement per line, comments where comments.ts put them, `=` and `at`
 * aligned within runs of declarations of one kind.
 */
import type * as A from '../1-parse/ast.js';
import { isHeader, type Block, type Entry, type LayoutNode } from './comments.js';
import { printExpr, printPlacement, printRef, printString } from './expr.js';

export const INDENT = '  ';

/** Column layout of one declaration inside an aligned run. */
interface Align {
  /** Width the `[override] KIND NAME` part is padded to before ` = `. */
  head: number;
  /** Width the `... = VALUE` part is padded to before ` at `; 0 = no padding. */
  value: number;
}

export class ItemPrinter {
  readonly lines: string[] = [];

  constructor(private readonly text: string) {}

  /** Prints a block's entries at `indent`. At the top level, a blank line always follows the header. */
  block(b: Block, indent: string, topLevel: boolean): void {
    const align = alignments(b.entries);
    let first = true;
    let forceBlank = false;
    const emit = (blank: boolean, lines: string[]): void => {
      if (!first && (blank || forceBlank)) this.lines.push('');
      first = false;
      forceBlank = false;
      for (const l of lines) this.lines.push(l);
    };
    const printed = b.entries.map((e) => this.entry(e, indent, align.get(e)));
    const widths = commentColumns(b.entries, printed);
    b.entries.forEach((e, i) => {
      for (const c of e.before) emit(c.blank, [indent + commentText(c.comment)]);
      const lines = printed[i];
      lines[lines.length - 1] = withComments(lines[lines.length - 1], e.trailing, widths.get(e));
      emit(e.blank, lines);
      if (topLevel && isHeader(e.node)) forceBlank = true;
    });
    for (const c of b.dangling) emit(c.blank, [indent + commentText(c.comment)]);
  }

  /** The lines of an entry, without its trailing comments. */
  private entry(e: Entry, indent: string, align: Align | undefined): string[] {
    const n = e.node;
    let lines: string[];
    if (e.body && !isHeader(n) && (n.kind === 'stage' || n.kind === 'then')) {
      const head = n.kind === 'stage' ? stageHead(n) : 'then';
      const body = e.body;
      if (!body.open.length && !body.entries.length && !body.dangling.length) lines = [`${indent}${head} {}`];
      else {
        const inner = new ItemPrinter(this.text);
        inner.block(body, indent + INDENT, false);
        lines = [withComments(`${indent}${head} {`, body.open), ...inner.lines, `${indent}}`];
      }
    } else lines = [indent + this.line(n, align)];
    return lines;
  }

  /** The one-line form of a statement. */
  private line(n: LayoutNode, align?: Align): string {
    if (isHeader(n)) return `pipeline ${n.name.name}${n.extends ? ` extends ${printString(n.extends)}` : ''}`;
    switch (n.kind) {
      case 'decl':
        return declLine(n, this.text, align);
      case 'stage':
        return `${stageHead(n)} {}`;
      case 'then':
        return 'then {}';
      case 'export': {
        const adapters = n.adapters.length ? ` ${names(n.adapters)}` : '';
        return `export ${n.format.name}${adapters}${n.path ? ` ${printString(n.path)}` : ''}`;
      }
      case 'setting':
        return n.value ? `${n.name.name} ${printExpr(n.value)}` : n.name.name;
      case 'train':
        return `train ${names(n.targets)}${n.data.length ? ` on ${names(n.data)}` : ''}`;
      case 'constrain': {
        let s = 'constrain';
        if (n.call) {
          // `constrain f` (no parentheses) and `constrain f()` have one AST; print what was written.
          const written = this.text[n.call.span.end.offset - 1] === ')';
          s += ` ${n.call.args.length || written ? printExpr(n.call) : n.call.callee.name}`;
        }
        if (n.weight) s += ` weight ${printExpr(n.weight)}`;
        if (n.norm) s += ` norm ${n.norm.name}`;
        return s;
      }
      case 'eval':
        return `eval ${names(n.probes)}${n.every ? ` every ${printExpr(n.every)}` : ''}`;
      case 'merge':
        return `merge ${refs(n.targets)}${n.into ? ` into ${n.into.name}` : ''}`;
      case 'drop': {
        const c = n.condition;
        return `drop ${refs(n.targets)}${c ? ` where ${c.metric.name} ${c.op}${c.value ? ` ${printExpr(c.value)}` : ''}` : ''}`;
      }
      case 'freeze':
      case 'unfreeze':
        return `${n.kind} ${refs(n.targets)}`;
    }
  }
}

const names = (ids: A.Ident[]): string => ids.map((i) => i.name).join(', ');
const refs = (rs: A.RefExpr[]): string => rs.map(printRef).join(', ');

function stageHead(s: A.Stage): string {
  return `${s.override ? 'override ' : ''}stage ${s.name.name}${s.after ? ` after ${s.after.name}` : ''}`;
}

/** `line // comment`: one space before the comments, or padded to `width` to line up with neighbours. */
function withComments(line: string, comments: A.Comment[], width = 0): string {
  return comments.length ? `${line.padEnd(width)} ${comments.map(commentText).join(' ')}` : line;
}

/** A comment as printed: a line comment without the spaces that trailed it (invisible, and flagged by editors). */
export function commentText(c: A.Comment): string {
  return c.text.startsWith('//') ? c.text.replace(/[ \t]+$/, '') : c.text;
}

/**
 * Trailing comments of consecutive one-line entries (no blank line, no own-line comment, no entry without a
 * trailing comment between them) start in one column, one space after the longest line.
 */
function commentColumns(entries: Entry[], printed: string[][]): Map<Entry, number> {
  const out = new Map<Entry, number>();
  let run: { e: Entry; width: number }[] = [];
  const flush = (): void => {
    const width = run.reduce((w, r) => Math.max(w, r.width), 0);
    if (run.length > 1) for (const r of run) out.set(r.e, width);
    run = [];
  };
  entries.forEach((e, i) => {
    const lines = printed[i];
    if (e.blank || e.before.length) flush();
    if (lines.length === 1 && e.trailing.length) run.push({ e, width: lines[0].length });
    else flush();
    // A blank line always follows the header.
    if (isHeader(e.node)) flush();
  });
  flush();
  return out;
}

function declHead(d: A.Decl): string {
  return `${d.override ? 'override ' : ''}${d.declKind} ${d.name.name}`;
}

function declValue(d: A.Decl, align: Align | undefined): string {
  const head = declHead(d);
  return `${head.padEnd(align?.head ?? 0)}${d.value ? ` = ${printExpr(d.value)}` : ''}`;
}

function declLine(d: A.Decl, text: string, align: Align | undefined): string {
  const value = declValue(d, align);
  return d.placement ? `${value.padEnd(align?.value ?? 0)} ${printPlacement(d.placement, text)}` : value;
}

/**
 * Runs of declarations of one kind (`model`, `data`, `adapter`, ...) with no blank line anywhere between
 * them (own-line comments do not break a run) share a column for `=`; when two or more of them have a
 * placement, those share a column for `at` as well.
 */
function alignments(entries: Entry[]): Map<Entry, Align> {
  const out = new Map<Entry, Align>();
  let run: Entry[] = [];
  const flush = (): void => {
    if (run.length > 1) {
      const decls = run.map((e) => e.node as A.Decl);
      const head = decls.reduce((w, d) => Math.max(w, declHead(d).length), 0);
      const placed = decls.filter((d) => d.placement);
      const value = placed.length > 1 ? placed.reduce((w, d) => Math.max(w, declValue(d, { head, value: 0 }).length), 0) : 0;
      for (const e of run) out.set(e, { head, value });
    }
    run = [];
  };
  for (const e of entries) {
    const n = e.node;
    if (isHeader(n)) {
      flush();
      continue;
    }
    const breaks = e.blank || e.before.some((c) => c.blank);
    if (n.kind !== 'decl') {
      flush();
      continue;
    }
    const prev = run[run.length - 1]?.node as A.Decl | undefined;
    if (breaks || (prev && prev.declKind !== n.declKind)) flush();
    run.push(e);
  }
  flush();
  return out;
}
