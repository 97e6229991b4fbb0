/**
 * Prints the grammar of `.mcp` as EBNF, generated from the parser itself: the syntactic part walks
 * chevrotain's grammar AST (`parser.getGAstProductions()`), the lexical part reads the token definitions.
 * `npm run grammar` writes the result to `grammar/mcp.ebnf`; test/grammar/ebnf.test.ts fails when the file
 * and this output differ, so the published grammar cannot drift from the one that actually parses.
 *
 * Notation (W3C-style): `rule ::= ...`, juxtaposition is sequence, `|` choice, `( )` grouping, `?` optional,
 * `*` zero or more, `+` one or more. Terminals are quoted literals ('stage', '{') when the token's pattern
 * is a fixed string, otherwise the token's name in capitals (IDENT, STRING). Output is a pure function of
 * the parser and the token list: no dates, no paths, no hash-ordered iteration.
 */
import {
  Alternation,
  Alternative,
  Lexer,
  NonTerminal,
  Option,
  Repetition,
  RepetitionMandatory,
  RepetitionMandatoryWithSeparator,
  RepetitionWithSeparator,
  Rule,
  Terminal,
  type IProduction,
  type TokenType,
} from './chevrotain.js';
import { parser as defaultParser } from './parser.js';
import { allTokens as defaultTokens } from './tokens.js';

/** What the generator needs from a parser: chevrotain's `BaseParser` satisfies it. */
export interface GrammarSource {
  getGAstProductions(): Record<string, Rule>;
}

export interface EbnfOptions {
  /** The parser whose rules are printed (default: the `.mcp` parser singleton). */
  parser?: GrammarSource;
  /** The lexer's token list, in the lexer's order (default: `allTokens` of tokens.ts). */
  tokens?: TokenType[];
  /** The rule parsing starts at (default: the first rule defined). */
  start?: string;
}

/** Human notes for tokens whose role the token definition alone does not say. Unknown names are ignored. */
const tokenNotes: Record<string, string> = {
  UnterminatedComment: 'a block comment never closed: reported as an error',
  UnterminatedString: 'a string missing its closing quote: reported, then parsed as STRING',
};

/** `StringLit`-style names become `STRING_LIT`; `LBrace` stays `LBRACE`. */
export function tokenName(t: TokenType): string {
  return t.name.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toUpperCase();
}

/** The fixed text a token matches, when its pattern is a plain string or a regex without metacharacters. */
export function literalOf(t: TokenType): string | undefined {
  const p = t.PATTERN;
  if (typeof p === 'string') return p;
  if (!(p instanceof RegExp) || p === Lexer.NA || p.flags.replace(/[gyd]/g, '') !== '') return undefined;
  if (!/^(?:[^\\^$.|?*+()[\]{}]|\\[^A-Za-z0-9])+$/.test(p.source)) return undefined;
  return p.source.replace(/\\(.)/g, '$1');
}

function quote(s: string): string {
  return s.includes("'") ? `"${s}"` : `'${s}'`;
}

/** How a terminal is written in the EBNF: its literal text quoted, or its name in capitals. */
export function terminalText(t: TokenType): string {
  const lit = literalOf(t);
  return lit === undefined ? tokenName(t) : quote(lit);
}

const isCategory = (t: TokenType): boolean => t.PATTERN === Lexer.NA;

// ---------------------------------------------------------------------------------------------------------
// Syntactic grammar

/** Renders a sequence of productions, space separated. An empty sequence renders as ''. */
function renderSeq(defs: IProduction[]): string {
  return defs.map(renderItem).join(' ');
}

/** Renders a sequence as one operand of a postfix operator: a single name or literal, else parenthesised. */
function renderGroup(defs: IProduction[]): string {
  if (defs.length === 1 && (defs[0] instanceof Terminal || defs[0] instanceof NonTerminal)) return renderItem(defs[0]);
  if (defs.length === 1 && defs[0] instanceof Alternation) return renderItem(defs[0]);
  return `( ${renderSeq(defs)} )`;
}

/** The alternatives of a choice, and whether one of them is empty (then the whole choice is optional). */
function renderAlternatives(alt: Alternation): { alts: string[]; optional: boolean } {
  const alts: string[] = [];
  let optional = false;
  for (const a of alt.definition) {
    const text = renderSeq((a as Alternative).definition);
    if (text === '') optional = true;
    else alts.push(text);
  }
  return { alts, optional };
}

function renderItem(p: IProduction): string {
  if (p instanceof Terminal) return terminalText(p.terminalType);
  if (p instanceof NonTerminal) return p.nonTerminalName;
  if (p instanceof Option) return `${renderGroup(p.definition)}?`;
  if (p instanceof Repetition) return `${renderGroup(p.definition)}*`;
  if (p instanceof RepetitionMandatory) return `${renderGroup(p.definition)}+`;
  if (p instanceof RepetitionWithSeparator) {
    const body = renderSeq(p.definition);
    return `( ${body} ( ${terminalText(p.separator)} ${body} )* )?`;
  }
  if (p instanceof RepetitionMandatoryWithSeparator) {
    const body = renderSeq(p.definition);
    return `${body} ( ${terminalText(p.separator)} ${body} )*`;
  }
  if (p instanceof Alternation) {
    const { alts, optional } = renderAlternatives(p);
    if (optional && alts.length === 1) {
      // `a | <empty>` is `a?`.
      const only = p.definition.find((a) => (a as Alternative).definition.length > 0) as Alternative;
      return `${renderGroup(only.definition)}?`;
    }
    return `( ${alts.join(' | ')} )${optional ? '?' : ''}`;
  }
  throw new Error(`ebnf: unknown grammar production ${p.constructor.name}`);
}

/** One production; a rule that is a single choice prints one alternative per line, `|` under `::=`. */
function renderRule(rule: Rule, width: number): string {
  const lhs = rule.name.padEnd(width);
  const def = rule.definition;
  if (def.length === 1 && def[0] instanceof Alternation) {
    const { alts, optional } = renderAlternatives(def[0]);
    if (!optional && alts.length > 1) {
      const pad = ' '.repeat(width + 3);
      return `${lhs} ::= ${alts[0]}\n` + alts.slice(1).map((a) => `${pad}| ${a}`).join('\n');
    }
  }
  return `${lhs} ::= ${renderSeq(def)}`;
}

// ---------------------------------------------------------------------------------------------------------
// Lexical grammar

function patternText(t: TokenType): string {
  const lit = literalOf(t);
  if (lit !== undefined) return quote(lit);
  const p = t.PATTERN;
  if (p instanceof RegExp) return `/${p.source}/${p.flags}`;
  return '/* custom matcher */';
}

/** Token types that belong to a category, in lexer order. */
function members(cat: TokenType, tokens: TokenType[]): TokenType[] {
  return tokens.filter((t) => t !== cat && (t.CATEGORIES ?? []).includes(cat));
}

/**
 * A category's members, written with the fewest names: members that make up a whole smaller category
 * are replaced by that category (NAME ::= IDENT | KEYWORD rather than IDENT and 29 keywords).
 */
function categoryAlternatives(cat: TokenType, tokens: TokenType[]): string[] {
  const own = members(cat, tokens);
  const out: string[] = [];
  const covered = new Set<TokenType>();
  for (const other of tokens) {
    if (other === cat || !isCategory(other)) continue;
    const sub = members(other, tokens);
    if (sub.length > 0 && sub.length < own.length && sub.every((m) => own.includes(m))) {
      for (const m of sub) covered.add(m);
    }
  }
  // Keep lexer order: a sub-category is written where its first member stands.
  const placed = new Set<TokenType>();
  for (const m of own) {
    if (!covered.has(m)) {
      out.push(terminalText(m));
      continue;
    }
    const sub = tokens.find(
      (o) => o !== cat && isCategory(o) && !placed.has(o) && members(o, tokens).includes(m) && members(o, tokens).every((x) => own.includes(x)),
    );
    if (sub) {
      placed.add(sub);
      out.push(tokenName(sub));
    }
  }
  return out;
}

/** Joins alternatives with ` | `, wrapping before a `|` so lines stay under `max` columns. */
function wrapAlternatives(lhs: string, alts: string[], max = 110): string {
  const lines: string[] = [];
  let line = `${lhs} ::= ${alts[0]}`;
  const pad = ' '.repeat(lhs.length + 3);
  for (const a of alts.slice(1)) {
    if (line.length + 3 + a.length > max) {
      lines.push(line);
      line = `${pad}| ${a}`;
    } else line += ` | ${a}`;
  }
  lines.push(line);
  return lines.join('\n');
}

/** Every token type a production can consume, categories expanded to their members. */
function referencedTokens(rules: Rule[], tokens: TokenType[]): Set<TokenType> {
  const seen = new Set<TokenType>();
  const add = (t: TokenType): void => {
    if (seen.has(t)) return;
    seen.add(t);
    if (isCategory(t)) for (const m of members(t, tokens)) add(m);
  };
  const walk = (p: IProduction): void => {
    if (p instanceof Terminal) add(p.terminalType);
    if (p instanceof RepetitionWithSeparator || p instanceof RepetitionMandatoryWithSeparator) add(p.separator);
    const def = (p as { definition?: IProduction[] }).definition;
    if (!(p instanceof NonTerminal) && def) def.forEach(walk);
  };
  for (const r of rules) r.definition.forEach(walk);
  return seen;
}

function lexicalSection(rules: Rule[], tokens: TokenType[]): string {
  const used = referencedTokens(rules, tokens);
  const rows: { lhs: string; rhs: string; note: string }[] = [];
  for (const t of tokens) {
    const notes: string[] = [];
    if (t.GROUP === Lexer.SKIPPED) notes.push('skipped');
    else if (typeof t.GROUP === 'string') notes.push(`group "${t.GROUP}": not seen by the parser`);
    const longer = t.LONGER_ALT === undefined ? [] : Array.isArray(t.LONGER_ALT) ? t.LONGER_ALT : [t.LONGER_ALT];
    if (longer.length > 0) notes.push(`else ${longer.map(tokenName).join(' or ')} when that matches longer`);
    if (tokenNotes[t.name]) notes.push(tokenNotes[t.name]);
    else if (t.GROUP === undefined && !used.has(t)) notes.push('used by no production');
    if (isCategory(t)) {
      rows.push({ lhs: tokenName(t), rhs: '', note: 'category: matches any of these token types' });
      continue;
    }
    rows.push({ lhs: tokenName(t), rhs: patternText(t), note: notes.join('; ') });
  }
  const width = Math.max(...rows.map((r) => r.lhs.length));
  const out: string[] = [];
  for (const [i, r] of rows.entries()) {
    const t = tokens[i];
    const lhs = r.lhs.padEnd(width);
    if (isCategory(t)) {
      out.push(`/* ${r.note} */`);
      out.push(wrapAlternatives(lhs, categoryAlternatives(t, tokens)));
      continue;
    }
    out.push(r.note ? `${lhs} ::= ${r.rhs}  /* ${r.note} */` : `${lhs} ::= ${r.rhs}`);
  }
  return out.join('\n');
}

// ---------------------------------------------------------------------------------------------------------

const rule = '/* ' + '-'.repeat(104) + ' */';

/** The complete text of `grammar/mcp.ebnf`, ending in a newline. */
export function generateEbnf(options: EbnfOptions = {}): string {
  const p = options.parser ?? defaultParser;
  const tokens = options.tokens ?? defaultTokens;
  const rules = Object.values(p.getGAstProductions());
  const start = options.start ?? rules[0]?.name ?? '';
  const width = Math.max(...rules.map((r) => r.name.length));

  const head = [
    '/*',
    ' * The grammar of the .mcp pipeline language.',
    ' *',
    ' * GENERATED FILE: do not edit by hand. It is printed from the chevrotain parser',
    ' * (src/compiler/1-parse/parser.ts) and tokens (src/compiler/1-parse/tokens.ts) by',
    ' * `npm run grammar`; test/grammar/ebnf.test.ts fails when this file and the parser disagree.',
    ' *',
    " * Notation: `a ::= ...` defines a; juxtaposition is sequence; `|` separates alternatives; `( )` groups;",
    ' * `?` is optional, `*` zero or more, `+` one or more. Quoted text is a literal token; names in capitals',
    ' * are tokens defined in the lexical grammar below; other names are productions.',
    ' *',
    ' * The parser is LL(k) with ordered choice: where two alternatives could both apply, the first one listed',
    ' * wins, and `?`, `*` and `+` consume as much as they can.',
    ' */',
  ];
  const syntax = [
    rule,
    `/* Syntactic grammar. Start symbol: ${start}. Whitespace and comments may appear between any two tokens. */`,
    rule,
    '',
    ...rules.map((r) => renderRule(r, width)),
  ];
  const lexical = [
    rule,
    '/*',
    ' * Lexical grammar. Patterns are JavaScript regular expressions. At each position the lexer tries the',
    ' * token types in the order listed and takes the first that matches (not the longest), except that a type',
    ' * with an "else" note gives way to the named type when that one matches a longer text: `dropout` is one',
    " * IDENT, not 'drop' followed by IDENT `out`.",
    ' */',
    rule,
    '',
    lexicalSection(rules, tokens),
  ];
  const text = [...head, '', ...syntax, '', ...lexical, ''].join('\n');
  // A pattern or note holding `*/` would end a comment early and garble the file for EBNF tools.
  const inComments = text.match(/\/\*(?:[^*]|\*(?!\/))*\*\//g) ?? [];
  for (const c of inComments) {
    if (c.slice(2).includes('/*')) throw new Error(`ebnf: a comment opens a nested comment: ${c}`);
  }
  return text;
}
