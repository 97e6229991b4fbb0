/**
 * Printing of values, placements and selectors: one line each, canonical spacing (`f(a, key: v)`, `[a, b]`,
 * `layers[0..3, -1].mlp.{gate, up}`). Numbers, percentages and sizes print as written (the AST keeps their
 * text); strings are re-escaped.
 */
import type * as A from '../1-parse/ast.js';

const escapes: Record<string, string> = { '\\': '\\\\', '"': '\\"', '\n': '\\n', '\t': '\\t', '\r': '\\r' };

/** A string literal that lexes back to the same value: `\`, `"`, newline, tab and CR are escaped. */
export function printString(s: A.StringLit): string {
  return `"${s.value.replace(/[\\"\n\t\r]/g, (c) => escapes[c] ?? c)}"`;
}

export function printExpr(e: A.Expr): string {
  switch (e.kind) {
    case 'number':
    case 'percent':
    case 'size':
      return e.text;
    case 'string':
      return printString(e);
    case 'bool':
      return e.value ? 'true' : 'false';
    case 'list':
      return `[${e.items.map(printExpr).join(', ')}]`;
    case 'ref':
      return printRef(e);
    case 'call':
      return `${e.callee.name}(${e.args.map(printArg).join(', ')})`;
  }
}

export function printRef(r: A.RefExpr): string {
  return r.path.map((p) => p.name).join('.');
}

function printArg(a: A.Arg): string {
  return a.name ? `${a.name.name}: ${printExpr(a.value)}` : printExpr(a.value);
}

const indexItemText = /^-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?(?:\.\.-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)?$/;

/**
 * An index item as written (`0..3`, `-1`, `02`): the AST keeps only its value, so the text comes from the
 * source, without the whitespace and comments that may sit between its tokens (those comments are printed
 * elsewhere). Falls back to the value when the source does not look like an index item.
 */
function printIndexItem(item: A.IndexItem, text: string): string {
  const raw = text
    .slice(item.span.start.offset, item.span.end.offset)
    .replace(/\/\*[\s\S]*?\*\/|\/\/[^\r\n]*/g, '')
    .replace(/\s+/g, '');
  if (indexItemText.test(raw)) return raw;
  return item.to === undefined ? String(item.from) : `${item.from}..${item.to}`;
}

function printSegment(s: A.Segment, text: string): string {
  switch (s.kind) {
    case 'any':
      return '*';
    case 'set':
      return `{${s.names.map((n) => n.name).join(', ')}}`;
    case 'name': {
      if (!s.index) return s.name.name;
      const idx = s.index.kind === 'all' ? '*' : s.index.items.map((i) => printIndexItem(i, text)).join(', ');
      return `${s.name.name}[${idx}]`;
    }
  }
}

export function printSelector(s: A.Selector, text: string): string {
  return s.segments.map((seg) => printSegment(seg, text)).join('.');
}

/** `at SEL, SEL except SEL, SEL` */
export function printPlacement(p: A.Placement, text: string): string {
  const include = p.include.map((s) => printSelector(s, text)).join(', ');
  const exclude = p.exclude.length ? ` except ${p.exclude.map((s) => printSelector(s, text)).join(', ')}` : '';
  return `at ${include}${exclude}`;
}
