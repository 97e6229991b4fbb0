import { describe, expect, it } from 'vitest';
import { renderText, showLine, useColor } from '../../../src/cli/report/text.js';
import { SourceFile } from '../../../src/compiler/source.js';
import { diag, fixture, sourcesOf, spanOf, stripAnsi } from './helpers.js';

const x = fixture('x.mcp', 'pipelines/x.mcp');
const tabs = fixture('tabs.mcp', 'pipelines/tabs.mcp');

const plain = (ds: Parameters<typeof renderText>[0], ...files: SourceFile[]) => renderText(ds, sourcesOf(...files), { color: false });

const useAfterDrop = diag('use_after_drop', spanOf(x, 'noise', 3), 'adapter `noise` is used after it was dropped', {
  hint: 'remove the use, or drop the adapter later',
  notes: [{ message: 'dropped here', span: spanOf(x, 'drop noise') }],
});

describe('renderText', () => {
  it('renders a code frame with a hint and a note frame (the rustc layout)', () => {
    expect(plain([useAfterDrop], x)).toBe(
      [
        'error[use_after_drop]: adapter `noise` is used after it was dropped',
        '  --> pipelines/x.mcp:12:9',
        '   |',
        '12 |   train noise on mixed',
        '   |         ^^^^^',
        '   = hint: remove the use, or drop the adapter later',
        'note: dropped here',
        '  --> pipelines/x.mcp:9:10',
        '   |',
        ' 9 |   then { drop noise }',
        '   |          ^^^^^^^^^^',
        '',
        '1 error',
        '',
      ].join('\n'),
    );
  });

  it('renders several diagnostics in the order given, a blank line after each, and a summary', () => {
    const a = diag('unknown_name', spanOf(x, 'tiny'), 'unknown built-in model `tiny`');
    const b = diag('data_never_used', spanOf(x, 'mixed'), 'data `mixed` is never used', { severity: 'warning' });
    expect(plain([a, b], x)).toBe(
      [
        'error[unknown_name]: unknown built-in model `tiny`',
        ' --> pipelines/x.mcp:4:23',
        '  |',
        '4 | model base = builtin("tiny")',
        '  |                       ^^^^',
        '',
        'warning[data_never_used]: data `mixed` is never used',
        ' --> pipelines/x.mcp:5:6',
        '  |',
        '5 | data mixed = jsonl("data/mixed.jsonl")',
        '  |      ^^^^^',
        '',
        '1 error, 1 warning',
        '',
      ].join('\n'),
    );
  });

  it('says "no problems" when there is nothing to report', () => {
    expect(plain([])).toBe('no problems\n');
    expect(renderText([], new Map(), { color: true })).toBe('\x1b[1;32mno problems\x1b[0m\n');
  });

  it('counts errors and warnings with singular and plural', () => {
    const e = diag('unknown_name', spanOf(x, 'base'), 'e');
    const w = diag('data_never_used', spanOf(x, 'mixed'), 'w', { severity: 'warning' });
    const last = (ds: Parameters<typeof renderText>[0]) => plain(ds, x).trimEnd().split('\n').at(-1);
    expect(last([e])).toBe('1 error');
    expect(last([e, e])).toBe('2 errors');
    expect(last([w])).toBe('1 warning');
    expect(last([w, w, w])).toBe('3 warnings');
    expect(last([e, w, e])).toBe('2 errors, 1 warning');
    expect(last([e, w, w])).toBe('1 error, 2 warnings');
  });

  it('uses ANSI colour only when asked: red errors, yellow warnings, cyan frame, bold messages', () => {
    const src = new SourceFile('a.mcp', 'pipeline a\nstage s {}\n');
    const d = diag('stage_trains_nothing', spanOf(src, 's {', 0, 1), 'stage `s` trains nothing', {
      severity: 'warning',
      hint: 'add `train <adapter> on <data>`',
    });
    const coloured = renderText([d], sourcesOf(src), { color: true });
    expect(coloured).toBe(
      [
        '\x1b[1;33mwarning[stage_trains_nothing]\x1b[0m\x1b[1m: stage `s` trains nothing\x1b[0m',
        ' \x1b[1;36m-->\x1b[0m a.mcp:2:7',
        '  \x1b[1;36m|\x1b[0m',
        '\x1b[1;36m2\x1b[0m \x1b[1;36m|\x1b[0m stage s {}',
        '  \x1b[1;36m|\x1b[0m       \x1b[1;33m^\x1b[0m',
        '  \x1b[1;36m=\x1b[0m \x1b[1mhint\x1b[0m: add `train <adapter> on <data>`',
        '',
        '\x1b[1;33m1 warning\x1b[0m',
        '',
      ].join('\n'),
    );
    const off = renderText([d], sourcesOf(src), { color: false });
    expect(off).not.toContain('\x1b');
    expect(stripAnsi(coloured)).toBe(off);
  });

  it('colours errors red, and note carets in the frame colour', () => {
    const coloured = renderText([useAfterDrop], sourcesOf(x), { color: true });
    expect(coloured).toContain('\x1b[1;31merror[use_after_drop]\x1b[0m');
    expect(coloured).toContain('\x1b[1;31m^^^^^\x1b[0m');
    expect(coloured).toContain('\x1b[1;32mnote\x1b[0m\x1b[1m: dropped here\x1b[0m');
    expect(coloured).toContain('\x1b[1;36m^^^^^^^^^^\x1b[0m');
    expect(coloured).toContain('\x1b[1;31m1 error\x1b[0m');
    expect(stripAnsi(coloured)).toBe(plain([useAfterDrop], x));
  });

  it('expands tabs in the line and the carets alike', () => {
    const d = diag('use_after_drop', spanOf(tabs, 'noise'), 'adapter `noise` is used after it was dropped', {
      notes: [{ message: 'a span with a tab inside', span: spanOf(tabs, 'drop\tnoise') }],
    });
    expect(plain([d], tabs)).toBe(
      [
        'error[use_after_drop]: adapter `noise` is used after it was dropped',
        ' --> pipelines/tabs.mcp:3:8',
        '  |',
        '3 |     train   noise on mixed',
        '  |             ^^^^^',
        'note: a span with a tab inside',
        ' --> pipelines/tabs.mcp:4:9',
        '  |',
        '4 |     then {  drop    noise }',
        '  |             ^^^^^^^^^^^^^',
        '',
        '1 error',
        '',
      ].join('\n'),
    );
  });

  it('puts one caret at an empty span at the end of a file that ends in a newline', () => {
    const eof = x.span(x.text.length, x.text.length);
    expect(plain([diag('unexpected_end', eof, 'unexpected end of file')], x)).toBe(
      [
        'error[unexpected_end]: unexpected end of file',
        '  --> pipelines/x.mcp:14:1',
        '   |',
        '14 |',
        '   | ^',
        '',
        '1 error',
        '',
      ].join('\n'),
    );
  });

  it('puts one caret just past the last character at the end of a file without a final newline', () => {
    const src = new SourceFile('a.mcp', 'pipeline a\nstage s {');
    const eof = src.span(src.text.length, src.text.length);
    expect(plain([diag('unexpected_end', eof, 'expected `}`')], src)).toBe(
      ['error[unexpected_end]: expected `}`', ' --> a.mcp:2:10', '  |', '2 | stage s {', '  |          ^', '', '1 error', ''].join('\n'),
    );
  });

  it('renders an empty file (e.g. an unreadable one) with one caret', () => {
    const src = new SourceFile('gone.mcp', '');
    expect(plain([diag('unreadable_file', src.span(0, 0), 'cannot read gone.mcp: ENOENT')], src)).toBe(
      ['error[unreadable_file]: cannot read gone.mcp: ENOENT', ' --> gone.mcp:1:1', '  |', '1 |', '  | ^', '', '1 error', ''].join('\n'),
    );
  });

  it('underlines a multi-line span to the end of its first line', () => {
    const from = x.text.indexOf('stage main');
    const to = x.text.indexOf('mixed\n}') + 5;
    const d = diag('stage_trains_nothing', x.span(from, to), 'stage `main` ...', { severity: 'warning' });
    expect(plain([d], x)).toBe(
      [
        'warning[stage_trains_nothing]: stage `main` ...',
        '  --> pipelines/x.mcp:11:1',
        '   |',
        '11 | stage main {',
        '   | ^^^^^^^^^^^^',
        '',
        '1 warning',
        '',
      ].join('\n'),
    );
  });

  it('puts one caret at a multi-line span that starts at the end of its first line', () => {
    const from = x.text.indexOf('main {') + 6;
    const d = diag('unexpected_token', x.span(from, from + 3), 'x');
    const out = plain([d], x).split('\n');
    expect(out.slice(1, 5)).toEqual(['  --> pipelines/x.mcp:11:13', '   |', '11 | stage main {', '   |             ^']);
  });

  it('handles a CRLF file like an LF one', () => {
    const src = new SourceFile('crlf.mcp', 'pipeline a\r\nstage s {}\r\n');
    const d = diag('stage_trains_nothing', spanOf(src, 's {', 0, 1), 'w', { severity: 'warning' });
    expect(plain([d], src)).toContain('2 | stage s {}\n  |       ^\n');
  });

  it('shows control characters as U+FFFD so the source cannot drive the terminal', () => {
    const src = new SourceFile('c.mcp', 'data d = "a\x1b[2Jb"\n');
    const d = diag('invalid_character', spanOf(src, '\x1b'), 'invalid character');
    const out = plain([d], src);
    expect(out).not.toContain('\x1b');
    expect(out).toContain('1 | data d = "a\uFFFD[2Jb"\n  |            ^\n');
  });

  it('lines carets up after wide characters and surrogate pairs', () => {
    const src = new SourceFile('w.mcp', 'data 名前 = "😀" x\n');
    const out = plain([diag('unexpected_token', spanOf(src, 'x'), 'x')], src);
    // `data ` 5 + 名前 4 + ` = "` 4 + 😀 2 + `" ` 2 = 17 columns before `x`.
    expect(out).toContain(`1 | data 名前 = "😀" x\n  | ${' '.repeat(17)}^\n`);
    const emoji = plain([diag('unexpected_token', spanOf(src, '😀'), 'e')], src);
    expect(emoji).toContain(`  | ${' '.repeat(13)}^^\n`);
  });

  it('maps UTF-16 columns to display columns', () => {
    const s = showLine('\ta😀\tb');
    expect(s.text).toBe('    a😀 b');
    expect(s.display).toEqual([0, 4, 5, 5, 7, 8, 9]);
  });

  it('gives notes without a span a `= note:` line, and notes into other files their own frame', () => {
    const base = new SourceFile('/abs/base.mcp', 'pipeline base\nadapter noise = lora(rank: 8) at attn.q\n');
    const d = diag('redeclared_from_base', spanOf(x, 'noise', 1), 'adapter `noise` is already declared in the base pipeline', {
      hint: 'write `override` before it to replace the base version',
      notes: [
        { message: 'the base declares it here', span: spanOf(base, 'noise') },
        { message: 'pipelines extend `/abs/base.mcp`' },
        { message: 'a note into a file that is not loaded', span: { ...spanOf(base, 'noise'), file: 'missing.mcp' } },
      ],
    });
    expect(plain([d], x, base)).toBe(
      [
        'error[redeclared_from_base]: adapter `noise` is already declared in the base pipeline',
        ' --> pipelines/x.mcp:6:9',
        '  |',
        '6 | adapter noise = lora(rank: 8) at layers[*].attn.q',
        '  |         ^^^^^',
        '  = note: pipelines extend `/abs/base.mcp`',
        '  = hint: write `override` before it to replace the base version',
        'note: the base declares it here',
        ' --> /abs/base.mcp:2:9',
        '  |',
        '2 | adapter noise = lora(rank: 8) at attn.q',
        '  |         ^^^^^',
        'note: a note into a file that is not loaded',
        ' --> missing.mcp:2:9',
        '',
        '1 error',
        '',
      ].join('\n'),
    );
  });

  it('prints only the location when the source is not loaded', () => {
    const span = spanOf(x, 'noise');
    expect(plain([diag('unknown_name', { ...span, file: 'elsewhere.mcp' }, 'x', { hint: 'h' })])).toBe(
      ['error[unknown_name]: x', ' --> elsewhere.mcp:1:15', '  = hint: h', '', '1 error', ''].join('\n'),
    );
  });

  it('indents the further lines of a multi-line hint under the first', () => {
    const d = diag('unknown_name', spanOf(x, 'base'), 'x', { hint: 'first line\nsecond line' });
    expect(plain([d], x)).toContain('  = hint: first line\n          second line\n');
  });

  it('never adds trailing spaces', () => {
    const all = [useAfterDrop, diag('unexpected_end', x.span(x.text.length, x.text.length), 'eof')];
    for (const line of plain(all, x).split('\n')) expect(line).toBe(line.trimEnd());
  });
});

describe('useColor', () => {
  const cases: [boolean, Record<string, string | undefined>, boolean][] = [
    // isTTY, env, expected
    [true, {}, true],
    [false, {}, false],
    [true, { TERM: 'xterm-256color' }, true],
    [true, { TERM: 'dumb' }, false],
    [true, { NO_COLOR: '1' }, false],
    [true, { NO_COLOR: 'anything' }, false],
    [true, { NO_COLOR: '' }, true],
    [true, { NO_COLOR: undefined }, true],
    [false, { FORCE_COLOR: '1' }, true],
    [false, { FORCE_COLOR: 'true' }, true],
    [false, { FORCE_COLOR: '3' }, true],
    [true, { FORCE_COLOR: '1', NO_COLOR: '1' }, true],
    [true, { FORCE_COLOR: '1', TERM: 'dumb' }, true],
    [true, { FORCE_COLOR: '0' }, false],
    [true, { FORCE_COLOR: 'false' }, false],
    [true, { FORCE_COLOR: '' }, true],
    [false, { FORCE_COLOR: '' }, false],
    [false, { TERM: 'xterm' }, false],
  ];
  it.each(cases)('isTTY=%s env=%j -> %s', (isTTY, env, expected) => {
    expect(useColor({ isTTY, env })).toBe(expected);
  });
});
