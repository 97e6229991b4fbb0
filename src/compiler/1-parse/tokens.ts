/**
 * Tokens of the `.mcp` language. Keywords use `longer_alt: Ident` so `dropout` is one identifier, not
 * `drop` + `out`. Keywords are also `Name`s, so they can still appear where only a name makes sense
 * (selector segments such as `norm`, argument names such as `weight:`).
 */
import { createToken, Lexer, type TokenType } from './chevrotain.js';

export const Name = createToken({ name: 'Name', pattern: Lexer.NA });
export const Keyword = createToken({ name: 'Keyword', pattern: Lexer.NA });

export const Ident = createToken({ name: 'Ident', pattern: /[A-Za-z_][A-Za-z0-9_]*/, categories: [Name] });

function kw(word: string): TokenType {
  return createToken({
    name: word[0].toUpperCase() + word.slice(1),
    pattern: new RegExp(word),
    longer_alt: Ident,
    categories: [Keyword, Name],
  });
}

export const Pipeline = kw('pipeline');
export const Extends = kw('extends');
export const Override = kw('override');
export const Model = kw('model');
export const Tokenizer = kw('tokenizer');
export const Data = kw('data');
export const Adapter = kw('adapter');
export const Probe = kw('probe');
export const Stage = kw('stage');
export const After = kw('after');
export const Train = kw('train');
export const On = kw('on');
export const Then = kw('then');
export const Merge = kw('merge');
export const Into = kw('into');
export const Drop = kw('drop');
export const Where = kw('where');
export const Freeze = kw('freeze');
export const Unfreeze = kw('unfreeze');
export const Constrain = kw('constrain');
export const Weight = kw('weight');
export const Norm = kw('norm');
export const Eval = kw('eval');
export const Every = kw('every');
export const Export = kw('export');
export const At = kw('at');
export const Except = kw('except');
export const True = kw('true');
export const False = kw('false');

export const keywords: TokenType[] = [
  Pipeline, Extends, Override, Model, Tokenizer, Data, Adapter, Probe, Stage, After, Train, On, Then, Merge,
  Into, Drop, Where, Freeze, Unfreeze, Constrain, Weight, Norm, Eval, Every, Export, At, Except, True, False,
];

export const WhiteSpace = createToken({ name: 'WhiteSpace', pattern: /[ \t\r\n\f\v\uFEFF\u00A0]+/, group: Lexer.SKIPPED });
export const LineComment = createToken({ name: 'LineComment', pattern: /\/\/[^\r\n]*/, group: 'comments' });
export const BlockComment = createToken({ name: 'BlockComment', pattern: /\/\*[\s\S]*?\*\//, line_breaks: true, group: 'comments' });
/** A `/*` with no closing `*\/`: lexed so it can be reported precisely. */
export const UnterminatedComment = createToken({ name: 'UnterminatedComment', pattern: /\/\*[\s\S]*/, line_breaks: true, group: 'comments' });

export const StringLit = createToken({ name: 'String', pattern: /"(?:[^"\\\r\n]|\\[^\r\n])*"/ });
/** A string missing its closing quote on the line: lexed, reported, then parsed as a string. */
export const UnterminatedString = createToken({ name: 'UnterminatedString', pattern: /"(?:[^"\\\r\n]|\\[^\r\n])*\\?/ });

export const Size = createToken({ name: 'Size', pattern: /\d+(?:\.\d+)?(?:[KMGTkmgt]i?[Bb])\b/ });
export const Percent = createToken({ name: 'Percent', pattern: /\d+(?:\.\d+)?(?:[eE][+-]?\d+)?%/ });
export const NumberLit = createToken({ name: 'Number', pattern: /\d+(?:\.\d+)?(?:[eE][+-]?\d+)?/ });

export const LBrace = createToken({ name: 'LBrace', pattern: /\{/, label: "'{'" });
export const RBrace = createToken({ name: 'RBrace', pattern: /\}/, label: "'}'" });
export const LParen = createToken({ name: 'LParen', pattern: /\(/, label: "'('" });
export const RParen = createToken({ name: 'RParen', pattern: /\)/, label: "')'" });
export const LBracket = createToken({ name: 'LBracket', pattern: /\[/, label: "'['" });
export const RBracket = createToken({ name: 'RBracket', pattern: /\]/, label: "']'" });
export const Comma = createToken({ name: 'Comma', pattern: /,/, label: "','" });
export const Semicolon = createToken({ name: 'Semicolon', pattern: /;/, label: "';'" });
export const Colon = createToken({ name: 'Colon', pattern: /:/, label: "':'" });
export const DotDot = createToken({ name: 'DotDot', pattern: /\.\./, label: "'..'" });
export const Dot = createToken({ name: 'Dot', pattern: /\./, label: "'.'" });
export const Equals = createToken({ name: 'Equals', pattern: /=/, label: "'='" });
export const Le = createToken({ name: 'Le', pattern: /<=/, label: "'<='" });
export const Ge = createToken({ name: 'Ge', pattern: />=/, label: "'>='" });
export const Lt = createToken({ name: 'Lt', pattern: /</, label: "'<'" });
export const Gt = createToken({ name: 'Gt', pattern: />/, label: "'>'" });
export const Minus = createToken({ name: 'Minus', pattern: /-/, label: "'-'" });
export const Star = createToken({ name: 'Star', pattern: /\*/, label: "'*'" });

export const allTokens: TokenType[] = [
  WhiteSpace, LineComment, BlockComment, UnterminatedComment, StringLit, UnterminatedString,
  Size, Percent, NumberLit,
  ...keywords, Ident,
  LBrace, RBrace, LParen, RParen, LBracket, RBracket, Comma, Semicolon, Colon, DotDot, Dot, Equals,
  Le, Ge, Lt, Gt, Minus, Star,
  Name, Keyword,
];

export const lexer = new Lexer(allTokens, { positionTracking: 'full', ensureOptimizations: false });

/** The human form of a token type in messages: `'{'`, `keyword 'stage'`, `a name`. */
export function describeTokenType(t: TokenType): string {
  if (t === Ident || t === Name) return 'a name';
  if (t === StringLit) return 'a string';
  if (t === NumberLit) return 'a number';
  if (t === Percent) return 'a percentage';
  if (t === Size) return 'a size';
  if (keywords.includes(t)) return `'${t.name.toLowerCase()}'`;
  return t.LABEL ?? t.name;
}
