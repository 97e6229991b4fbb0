/**
 * Human output of `mcpc lint`: rustc/esbuild-style code frames.
 *
 * ```
 * error[use_after_drop]: adapter `noise` is used after it was dropped
 *   --> pipelines/x.mcp:12:9
 *    |
 * 12 |   train noise on mixed
 *    |         ^^^^^
 *    = hint: remove the use, or drop the adapter later
 * note: dropped here
 *   --> pipelines/x.mcp:9:3
 *    |
 *  9 |   then { drop noise }
 *    |   ^^^^
 *
 * 1 error
 * ```
 *
 * Carets underline the span on its first line (a span over several lines is underlined to the end of its
 * first line); there is always at least one caret, even for an empty span. Tabs are expanded to tab stops
 * of {@link TAB_WIDTH} in the shown line and the carets alike; wide characters (CJK, emoji) count two
 * columns, combining marks none, and control characters are shown as U+FFFD so a source file cannot send
 * escape sequences to the terminal. No line of the output ends in a space added by the renderer.
 */
import type { Diagnostic, Note } from '../../compiler/diagnostics/diagnostic.js';
import type { SourceFile, Span } from '../../compiler/source.js';

export const TAB_WIDTH = 4;
/** Longer source lines are shown as a window of this many UTF-16 units around the span. */
export const MAX_SHOWN = 400;

export interface TextOptions {
  color: boolean;
}

/** Whether to colour output: the rules of no-color.org and FORCE_COLOR, as Node and most CLIs read them. */
export function useColor(io: { isTTY: boolean; env: Record<string, string | undefined> }): boolean {
  const force = io.env.FORCE_COLOR;
  if (force !== undefined && force !== '') {
    // FORCE_COLOR=0 / false forces colour off; any other value (1, 2, 3, true) forces it on.
    return !(force === '0' || force.toLowerCase() === 'false');
  }
  if (!io.isTTY) return false;
  const noColor = io.env.NO_COLOR;
  if (noColor !== undefined && noColor !== '') return false;
  if (io.env.TERM === 'dumb') return false;
  return true;
}

// --- ANSI styles ---------------------------------------------------------------------------------------------

const ESC = '\x1b[';
const RESET = `${ESC}0m`;
const codes = { bold: '1', red: '31', green: '32', yellow: '33', cyan: '36' } as const;
type Style = keyof typeof codes;

function painter(color: boolean) {
  return (text: string, ...styles: Style[]): string =>
    color && text !== '' && styles.length ? `${ESC}${styles.map((s) => codes[s]).join(';')}m${text}${RESET}` : text;
}

// --- display columns -----------------------------------------------------------------------------------------

const ZERO_WIDTH = /^[\p{Mn}\p{Me}\u200B-\u200F\u2060\uFE00-\uFE0F\uFEFF]$/u;
const CONTROL = /^[\x00-\x08\x0A-\x1F\x7F-\x9F\u2028\u2029]$/;

function isWide(cp: number): boolean {
  return (
    (cp >= 0x1100 && cp <= 0x115f) ||
    (cp >= 0x2e80 && cp <= 0xa4cf && cp !== 0x303f) ||
    (cp >= 0xac00 && cp <= 0xd7a3) ||
    (cp >= 0xf900 && cp <= 0xfaff) ||
    (cp >= 0xfe30 && cp <= 0xfe4f) ||
    (cp >= 0xff00 && cp <= 0xff60) ||
    (cp >= 0xffe0 && cp <= 0xffe6) ||
    (cp >= 0x1f300 && cp <= 0x1f64f) ||
    (cp >= 0x1f900 && cp <= 0x1f9ff) ||
    (cp >= 0x20000 && cp <= 0x3fffd)
  );
}

interface ShownLine {
  /** The line as printed: tabs expanded, control characters replaced. */
  text: string;
  /** display[i] = display column (0-based) where UTF-16 unit i of the source line starts; length + 1 entries. */
  display: number[];
}

/** Prepare a source line for the terminal and map its UTF-16 columns to display columns. */
export function showLine(line: string): ShownLine {
  const display: number[] = new Array(line.length + 1);
  let text = '';
  let col = 0;
  for (let i = 0; i < line.length; ) {
    const cp = line.codePointAt(i)!;
    const units = cp > 0xffff ? 2 : 1;
    for (let k = 0; k < units; k++) display[i + k] = col;
    const ch = String.fromCodePoint(cp);
    if (cp === 9) {
      const w = TAB_WIDTH - (col % TAB_WIDTH);
      text += ' '.repeat(w);
      col += w;
    } else if (CONTROL.test(ch) || (cp >= 0xd800 && cp <= 0xdfff)) {
      text += '\uFFFD';
      col += 1;
    } else {
      text += ch;
      col += ZERO_WIDTH.test(ch) ? 0 : isWide(cp) ? 2 : 1;
    }
    i += units;
  }
  display[line.length] = col;
  return { text, display };
}

// --- frames --------------------------------------------------------------------------------------------------

interface Frame {
  span: Span;
  source?: SourceFile;
}

function location(span: Span): string {
  return `${span.file}:${span.start.line}:${span.start.column}`;
}

export function renderText(diags: Diagnostic[], sources: Map<string, SourceFile>, opts: TextOptions): string {
  const paint = painter(opts.color);
  const out: string[] = [];
  for (const d of diags) out.push(renderOne(d, sources, paint), '');
  out.push(summary(diags, paint));
  return out.join('\n') + '\n';
}

function renderOne(d: Diagnostic, sources: Map<string, SourceFile>, paint: ReturnType<typeof painter>): string {
  const main: Frame = { span: d.span, source: sources.get(d.span.file) };
  const framed = d.notes.filter((n): n is Note & { span: Span } => n.span !== undefined);
  const plain = d.notes.filter((n) => n.span === undefined);
  const noteFrames: Frame[] = framed.map((n) => ({ span: n.span, source: sources.get(n.span.file) }));
  // One gutter width for the whole diagnostic, so every `|` lines up.
  const width = Math.max(1, ...[main, ...noteFrames].filter((f) => f.source).map((f) => String(f.span.start.line).length));
  const pad = ' '.repeat(width);
  const sev = d.severity === 'error' ? 'red' : 'yellow';

  const lines: string[] = [];
  lines.push(paint(`${d.severity}[${d.code}]`, 'bold', sev) + paint(`: ${d.message}`, 'bold'));
  frame(lines, main, width, paint, sev);
  for (const n of plain) lines.push(...trailer(pad, 'note', n.message, paint));
  if (d.hint) lines.push(...trailer(pad, 'hint', d.hint, paint));
  framed.forEach((n, i) => {
    lines.push(paint('note', 'bold', 'green') + paint(`: ${n.message}`, 'bold'));
    frame(lines, noteFrames[i], width, paint, 'cyan');
  });
  return lines.join('\n');
}

/** `--> file:line:col` and, when the source is known, the line with its carets. */
function frame(lines: string[], f: Frame, width: number, paint: ReturnType<typeof painter>, caretColor: Style): void {
  const pad = ' '.repeat(width);
  const bar = paint('|', 'bold', 'cyan');
  lines.push(`${' '.repeat(Math.max(width, 1))}${paint('-->', 'bold', 'cyan')} ${location(f.span)}`);
  if (!f.source) return;
  const { start, end } = f.span;
  const full = f.source.lineText(start.line);
  let from = Math.min(Math.max(start.column - 1, 0), full.length);
  let to = end.line === start.line ? Math.min(Math.max(end.column - 1, from), full.length) : full.length;
  // A generated file may hold a megabyte on one line: show a window of it around the span, `…` for the rest.
  let raw = full;
  if (full.length > MAX_SHOWN) {
    let a = Math.max(0, from - MAX_SHOWN / 4);
    let b = Math.min(full.length, a + MAX_SHOWN);
    if (/[\uDC00-\uDFFF]/.test(full[a] ?? '')) a++;
    if (/[\uD800-\uDBFF]/.test(full[b - 1] ?? '')) b--;
    const lead = a > 0 ? '…' : '';
    raw = lead + full.slice(a, b) + (b < full.length ? '…' : '');
    from = Math.min(from - a, b - a) + lead.length;
    to = Math.min(Math.max(to - a, from - lead.length), b - a) + lead.length;
  }
  const shown = showLine(raw);
  const caretStart = shown.display[from];
  const carets = Math.max(1, shown.display[to] - caretStart);
  const num = String(start.line).padStart(width);
  lines.push(`${pad} ${bar}`);
  lines.push(`${paint(num, 'bold', 'cyan')} ${bar}${shown.text ? ' ' + shown.text : ''}`);
  lines.push(`${pad} ${bar} ${' '.repeat(caretStart)}${paint('^'.repeat(carets), 'bold', caretColor)}`);
}

/** `= hint: ...` / `= note: ...`; further lines of a multi-line text are indented under the first. */
function trailer(pad: string, label: string, text: string, paint: ReturnType<typeof painter>): string[] {
  const [first, ...rest] = text.split(/\r\n|\r|\n/);
  const indent = `${pad} ${' '.repeat(label.length + 4)}`;
  return [`${pad} ${paint('=', 'bold', 'cyan')} ${paint(label, 'bold')}: ${first}`, ...rest.map((l) => (l ? indent + l : ''))];
}

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}

function summary(diags: Diagnostic[], paint: ReturnType<typeof painter>): string {
  const errors = diags.filter((d) => d.severity === 'error').length;
  const warnings = diags.length - errors;
  if (errors === 0 && warnings === 0) return paint('no problems', 'bold', 'green');
  const parts: string[] = [];
  if (errors) parts.push(paint(plural(errors, 'error'), 'bold', 'red'));
  if (warnings) parts.push(paint(plural(warnings, 'warning'), 'bold', 'yellow'));
  return parts.join(', ');
}
