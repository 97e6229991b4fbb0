/**
 * fast-check arbitraries for the formatter's property tests: random valid pipelines built from the grammar,
 * token by token, each token followed by a random separator (nothing, spaces, tabs, line breaks of every
 * kind, block and line comments), with optional semicolons wherever the language allows an empty item.
 */
import fc from 'fast-check';
import { keywords } from '../../../src/compiler/1-parse/tokens.js';

/** A token and what follows it in the text. */
interface Piece {
  text: string;
  sep: string;
}
type Pieces = Piece[];
type Arb = fc.Arbitrary<Pieces>;

const keywordSet = new Set(keywords.map((k) => k.name.toLowerCase()));

const chars = (s: string): string[] => Array.from(s);
const commentChars = chars('abz  */{}()";:,.-\\\té😀∑\u00A0\u2028');

export const lineComment: fc.Arbitrary<string> = fc.string({ unit: fc.constantFrom(...commentChars, '/'), maxLength: 12 }).map((t) => `//${t}`);
export const blockComment: fc.Arbitrary<string> = fc
  .string({ unit: fc.constantFrom(...commentChars, '\n', '\r\n', '\r', '/'), maxLength: 14 })
  .map((t) => `/*${t.replace(/\*\//g, '* /')}*/`);

const whitespace = fc.constantFrom(' ', ' ', ' ', '  ', '\t', '\n', '\n', '\r\n', '\n\n', '\n  \n\n', '\r', '\f', '\u00A0');

/** What follows a token: mostly one space or a line break, sometimes nothing, sometimes comments. */
export const separator: fc.Arbitrary<string> = fc.oneof(
  { weight: 12, arbitrary: whitespace },
  { weight: 3, arbitrary: fc.constant('') },
  {
    weight: 1,
    arbitrary: fc
      .array(fc.oneof(whitespace, blockComment, lineComment.map((c) => `${c}\n`)), { minLength: 1, maxLength: 3 })
      .map((parts) => parts.join('')),
  },
);

/** What may follow a setting's name: its value must start on the same line. */
const sameLine: fc.Arbitrary<string> = fc.oneof(
  { weight: 6, arbitrary: fc.constantFrom(' ', '  ', '\t', '\f', '') },
  { weight: 1, arbitrary: blockComment.filter((c) => !/[\r\n]/.test(c)) },
);

const tok = (text: string | fc.Arbitrary<string>, sep = separator): Arb =>
  fc.tuple(typeof text === 'string' ? fc.constant(text) : text, sep).map(([t, s]) => [{ text: t, sep: s }]);

const seq = (...parts: Arb[]): Arb => fc.tuple(...parts).map((ps) => ps.flat());
const opt = (a: Arb): Arb => fc.option(a, { nil: undefined }).map((x) => x ?? []);
/** `a (sep a)*`, at least one. */
const sepBy = (a: Arb, sep: string, max = 3): Arb =>
  fc.tuple(a, fc.array(seq(tok(sep), a), { maxLength: max - 1 })).map(([first, rest]) => [...first, ...rest.flat()]);
/** `[a (sep a)*]`, possibly empty. */
const sepBy0 = (a: Arb, sep: string, max = 3): Arb => fc.oneof({ weight: 1, arbitrary: fc.constant([] as Pieces) }, { weight: 3, arbitrary: sepBy(a, sep, max) });

const identText = fc.oneof(
  fc.constantFrom('a', 'b', 'base', 'attn', 'knowledge', 'x1', 'dropout', 'stage2', 'atx', 'onward', '_u', 'peft', 'merged', 'lr', 'epochs', 'load', 'A'),
  fc.stringMatching(/^[a-z_][a-z0-9_]{0,5}$/).filter((s) => !keywordSet.has(s)),
);
const ident = tok(identText);
/** Where the grammar takes any name, keywords included. */
const name = fc.oneof({ weight: 3, arbitrary: ident }, { weight: 1, arbitrary: tok(fc.constantFrom(...keywordSet)) });

const digits = fc.stringMatching(/^\d{1,3}$/);
const numberText = fc
  .tuple(digits, fc.option(digits.map((d) => `.${d}`), { nil: '' }), fc.option(fc.tuple(fc.constantFrom('e', 'E'), fc.constantFrom('', '+', '-'), digits).map((p) => p.join('')), { nil: '' }))
  .map((p) => p.join(''));
const number: Arb = fc.oneof(tok(numberText), seq(tok('-'), tok(numberText)));
const percent = tok(numberText.map((n) => `${n}%`));
const size = tok(fc.tuple(digits, fc.option(digits.map((d) => `.${d}`), { nil: '' }), fc.constantFrom('KB', 'MB', 'GB', 'TB', 'KiB', 'MiB', 'GiB', 'TiB')).map((p) => p.join('')));

const stringChar = fc.oneof(
  { weight: 5, arbitrary: fc.constantFrom(...chars('abc xyz/._-é😀∑\t{}//*;:'), '\u0001', '\u2028') },
  { weight: 2, arbitrary: fc.constantFrom(...chars('"\\ntrqx/é\t')).map((c) => `\\${c}`) },
);
export const stringText: fc.Arbitrary<string> = fc.array(stringChar, { maxLength: 8 }).map((cs) => `"${cs.join('')}"`);
const str = tok(stringText);

const ref: Arb = seq(ident, fc.array(seq(tok('.'), name), { maxLength: 2 }).map((x) => x.flat()));

const { expr } = fc.letrec<{ expr: Pieces; call: Pieces; list: Pieces; arg: Pieces }>((tie) => ({
  expr: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    number,
    percent,
    size,
    str,
    tok(fc.constantFrom('true', 'false')),
    ref,
    tie('call'),
    tie('list'),
  ),
  call: seq(ref, tok('('), sepBy0(tie('arg'), ',', 3), tok(')')),
  list: seq(tok('['), sepBy0(tie('expr'), ',', 3), tok(']')),
  arg: seq(opt(seq(name, tok(':'))), tie('expr')),
}));
const call: Arb = seq(ref, tok('('), sepBy0(seq(opt(seq(name, tok(':'))), expr), ',', 3), tok(')'));

/** Layer indices are whole numbers (the parser reports `1.5`). */
const indexNumber = fc.oneof(tok(digits), seq(tok('-'), tok(digits)));
const indexItem = seq(indexNumber, opt(seq(tok('..'), indexNumber)));
const index = seq(tok('['), fc.oneof(tok('*'), sepBy(indexItem, ',', 3)), tok(']'));
const segment = fc.oneof(seq(name, opt(index)), seq(tok('{'), sepBy(name, ',', 3), tok('}')), tok('*'));
const selector = sepBy(segment, '.', 4);
const placement = seq(tok('at'), sepBy(selector, ',', 2), opt(seq(tok('except'), sepBy(selector, ',', 2))));

const decl = seq(opt(tok('override')), tok(fc.constantFrom('model', 'tokenizer', 'data', 'adapter', 'probe')), ident, tok('='), expr, opt(placement));

/** Items with optional semicolons before and after each. */
const items = (item: Arb, max: number): Arb =>
  fc.array(seq(fc.array(tok(';'), { maxLength: 2 }).map((x) => x.flat()), item), { maxLength: max }).chain((xs) =>
    fc.array(tok(';'), { maxLength: 1 }).map((tail) => [...xs.flat(), ...tail.flat()]),
  );

const refList = sepBy(ref, ',', 3);
const transition = fc.oneof(
  seq(tok('merge'), refList, tok('into'), ident),
  seq(tok('drop'), refList, opt(seq(tok('where'), name, tok(fc.constantFrom('<', '<=', '>', '>=')), expr))),
  seq(tok(fc.constantFrom('freeze', 'unfreeze')), refList),
);
const weight = seq(tok('weight'), expr);
const norm = seq(tok('norm'), ident);
const stageItem = fc.oneof(
  { weight: 2, arbitrary: decl },
  { weight: 4, arbitrary: seq(tok(identText, sameLine), expr) },
  { weight: 2, arbitrary: seq(tok('train'), sepBy(ident, ',', 3), opt(seq(tok('on'), sepBy(ident, ',', 2)))) },
  { weight: 2, arbitrary: seq(tok('then'), tok('{'), items(transition, 4), tok('}')) },
  {
    weight: 1,
    arbitrary: seq(
      tok('constrain'),
      fc.oneof(call, ref),
      fc.constantFrom('', 'w', 'n', 'wn').chain((k) => seq(...[...k].map((c) => (c === 'w' ? weight : norm)))),
    ),
  },
  { weight: 1, arbitrary: seq(tok('eval'), sepBy(ident, ',', 2), opt(seq(tok('every'), expr))) },
);
const stage = seq(opt(tok('override')), tok('stage'), ident, opt(seq(tok('after'), ident)), tok('{'), items(stageItem, 6), tok('}'));
const exportItem = seq(
  tok('export'),
  ident,
  fc.array(seq(ident, opt(tok(','))), { maxLength: 3 }).map((x) => x.flat()),
  str,
);
const topItem = fc.oneof({ weight: 4, arbitrary: decl }, { weight: 2, arbitrary: stage }, { weight: 1, arbitrary: exportItem });
const header = seq(tok('pipeline'), ident, opt(seq(tok('extends'), str)));

/** A number, percentage or size glued to a name is an error (`1lr`, `3%at`). */
const wordEnd = /[A-Za-z0-9_%]$/;
const wordStart = /^[A-Za-z0-9_]/;

/** Joins pieces into text, adding a space wherever two words would otherwise run together. */
export function render(lead: string, pieces: Pieces): string {
  let out = lead;
  for (let i = 0; i < pieces.length; i++) {
    const p = pieces[i];
    out += p.text;
    const next = pieces[i + 1];
    out += p.sep === '' && next && wordEnd.test(p.text) && wordStart.test(next.text) ? ' ' : p.sep;
  }
  return out;
}

/** Source text of a random valid pipeline. */
export const pipelineText: fc.Arbitrary<string> = fc
  .tuple(fc.oneof(fc.constant(''), separator), seq(header, items(topItem, 6)))
  .map(([lead, pieces]) => render(lead, pieces));
