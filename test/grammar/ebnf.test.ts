/**
 * grammar/mcp.ebnf against the parser it is generated from:
 *  - the file on disk is byte-identical to a fresh generation (else: `npm run grammar`);
 *  - the EBNF, read back as a grammar, is closed (every name defined, every production reachable);
 *  - sentences the parser accepts are derivable from the EBNF, sentences it rejects are not, and every
 *    rule their CST contains is a production of the EBNF;
 *  - sentences generated at random from the EBNF are accepted by the parser.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { createToken, CstParser, EMPTY_ALT, Lexer, type CstElement, type CstNode, type IToken } from '../../src/compiler/1-parse/chevrotain.js';
import { describe, expect, it } from 'vitest';
import { generateEbnf, tokenName } from '../../src/compiler/1-parse/ebnf.js';
import { parser } from '../../src/compiler/1-parse/parser.js';
import { keywords, lexer } from '../../src/compiler/1-parse/tokens.js';
import { generate, prng, readEbnf, recognises, references, type Expr } from './ebnf-reader.js';

const ebnfPath = fileURLToPath(new URL('../../grammar/mcp.ebnf', import.meta.url));
const onDisk = readFileSync(ebnfPath, 'utf8');
const grammar = readEbnf(onDisk);

function parseText(text: string): { tokens: IToken[]; cst: CstNode; errors: string[] } {
  const lexed = lexer.tokenize(text);
  parser.input = lexed.tokens;
  const cst = parser.file();
  const errors = [...lexed.errors.map((e) => e.message), ...parser.errors.map((e) => e.message)];
  return { tokens: lexed.tokens, cst, errors };
}

function ruleNames(node: CstNode, out = new Set<string>()): Set<string> {
  out.add(node.name);
  for (const children of Object.values(node.children)) {
    for (const c of children as CstElement[]) if ('children' in c) ruleNames(c, out);
  }
  return out;
}

const byEbnf = (tokens: IToken[]): boolean => recognises(grammar, tokens, (t) => tokenName(t.tokenType));

describe('grammar/mcp.ebnf', () => {
  it('is identical to what the parser generates', () => {
    const fresh = generateEbnf();
    expect(onDisk, 'grammar/mcp.ebnf is out of date with the parser: run `npm run grammar` and commit the result').toBe(fresh);
  });

  it('generates the same text twice (deterministic)', () => {
    expect(generateEbnf()).toBe(generateEbnf());
  });

  it('has one production per parser rule, and starts at `file`', () => {
    expect([...grammar.rules.keys()]).toEqual(Object.keys(parser.getGAstProductions()));
    expect(grammar.start).toBe('file');
  });

  it('is closed: every name used is defined, every production is reachable, every literal is a token', () => {
    const used = { rules: new Set<string>(), tokens: new Set<string>(), literals: new Set<string>() };
    for (const def of grammar.rules.values()) references(def, used);
    for (const r of used.rules) expect(grammar.rules.has(r), `production ${r} is used but not defined`).toBe(true);
    for (const t of used.tokens) expect(grammar.lexical.has(t), `token ${t} is used but not defined`).toBe(true);
    const literalTokens = new Set([...grammar.lexical.values()].flatMap((d) => (d.expr?.k === 'lit' ? [d.expr.v] : [])));
    for (const l of used.literals) expect(literalTokens.has(l), `literal '${l}' is no token of the lexical grammar`).toBe(true);

    const reached = new Set([grammar.start]);
    const queue = [grammar.start];
    while (queue.length > 0) {
      const refs = { rules: new Set<string>(), tokens: new Set<string>(), literals: new Set<string>() };
      references(grammar.rules.get(queue.pop()!)!, refs);
      for (const r of refs.rules) if (!reached.has(r)) reached.add(r), queue.push(r);
    }
    expect([...grammar.rules.keys()].filter((r) => !reached.has(r)), 'unreachable productions').toEqual([]);
  });

  it('lists every keyword of tokens.ts as a KEYWORD literal', () => {
    const kw = grammar.lexical.get('KEYWORD')?.expr;
    expect(kw?.k).toBe('alt');
    const lits = (kw as Extract<Expr, { k: 'alt' }>).alts.map((a) => (a.k === 'lit' ? a.v : `?${a.k}`));
    expect(lits.sort()).toEqual(keywords.map((k) => k.name.toLowerCase()).sort());
  });
});

const accepted: Record<string, string> = {
  'the design example': `
pipeline medcare
model base = hf("models/tiny-med-base")          // config.json + model.safetensors (+ tokenizer)
data mixed     = jsonl("data/medcare/stage1.jsonl")
data alignment = jsonl("data/medcare/stage2.jsonl")

adapter attn      = lora(r: 16, alpha: 32)                       at layers[*].attn.{q, k, v, o}
adapter knowledge = lora(r: 32, alpha: 32)                       at layers[*].mlp.{gate, up, down}
adapter noise     = moe_lora(experts: 8, top_k: 2, r: 16, alpha: 32) at layers[*].mlp.{gate, up, down}

stage aggregate {
  train attn, knowledge, noise on mixed
  epochs 1  lr 2e-4  schedule cosine(warmup: 3%)  batch 128  micro_batch 4  max_len 3072
  then { merge attn into base; drop noise; freeze knowledge }
}
stage align {
  adapter align = lora(r: 32, alpha: 32) at layers[*].mlp.{gate, up, down}
  train align on alignment
  epochs 3
  constrain orthogonal(align.A, knowledge.A) weight 1.0 norm l1
}
export peft "out/medcare/adapters"; export merged "out/medcare/model"
`,
  'a variant using every construct': `
pipeline medcare_v2 extends "medcare.mcp"
/* block
   comment */
override adapter attn = lora(r: 8, alpha: 16, dropout: 0.05, weight: 1, rslora: true)
  at layers[0..3, -1, 5].attn.{q, v}, layers[*].norm, *.mlp.gate except layers[0].mlp.gate, layers[-2..-1].attn.o
tokenizer tok = hf("models/tok"); probe qa = jsonl("probes/qa.jsonl") ;
model small = builtin("tiny")
override stage align after aggregate {
  max_mem 8GB
  warmup 3%
  targets [attn, "a \\"quoted\\" string", 1, -2, true, false, [], [1.5e3]]
  optimizer adamw(betas: [0.9, 0.95], eps: 1e-8)
  data extra = jsonl("x.jsonl")
  train base on mixed, alignment
  eval qa, qa2 every 100
  constrain orthogonal(align.A, [knowledge.A, attn.A]) weight 0.5 norm l1
  then { drop noise.experts where load < 2%; drop a, b where load >= 0.5; unfreeze knowledge; merge align, attn into base ; }
  ;
}
export peft attn, knowledge "out/adapters"
export peft attn knowledge, "out/other"
`,
  'a header alone': 'pipeline p',
  'comments only': '// nothing here\n/* nor here */',
};

const rejected: Record<string, string> = {
  'train without an adapter': 'pipeline p\nstage s { train }',
  'an unclosed call': 'pipeline p\nadapter a = lora(r: 16',
  'an export without a format': 'pipeline p\nexport "x"',
  'merge without a target': 'pipeline p\nstage s { then { merge a } }',
  'an open range': 'pipeline p\nadapter a = lora() at layers[1..]',
  'two headers': 'pipeline p pipeline q',
  'a trailing comma in a list': 'pipeline p\nmodel m = f([1, 2,])',
  'a keyword as a declared name': 'pipeline p\nmodel data = hf("x")',
  'a setting outside a stage': 'pipeline p\nlr 2e-4',
  'a percentage in an index': 'pipeline p\nadapter a = lora() at layers[3%]',
};

describe('the EBNF describes the language the parser accepts', () => {
  for (const [name, text] of Object.entries(accepted)) {
    it(`accepts ${name}`, () => {
      const { tokens, cst, errors } = parseText(text);
      expect(errors, 'the parser itself should accept this sample').toEqual([]);
      for (const r of ruleNames(cst)) expect(grammar.rules.has(r), `the CST has a ${r} node but the EBNF no production ${r}`).toBe(true);
      expect(byEbnf(tokens), 'the parser accepts this but the EBNF does not derive it').toBe(true);
    });
  }

  for (const [name, text] of Object.entries(rejected)) {
    it(`rejects ${name}`, () => {
      const { tokens, errors } = parseText(text);
      expect(errors.length, 'the parser itself should reject this sample').toBeGreaterThan(0);
      expect(byEbnf(tokens), 'the parser rejects this but the EBNF derives it').toBe(false);
    });
  }

  it('a parser rule dropped from the EBNF would be noticed', () => {
    // Guards the guard: the recogniser must fail when a production is missing.
    const crippled = readEbnf(onDisk.replace(/^index\s+::=.*$/m, "index ::= '[' '*' ']'"));
    const { tokens } = parseText('pipeline p\nadapter a = lora() at layers[0..3].attn');
    expect(recognises(crippled, tokens, (t) => tokenName(t.tokenType))).toBe(false);
    expect(byEbnf(tokens)).toBe(true);
  });

  it('the parser accepts sentences generated at random from the EBNF', () => {
    const rnd = prng(20261127);
    const spell: Record<string, string[]> = {
      IDENT: ['a', 'base', 'dropout', 'x_1', 'layers', 'Train'],
      NUMBER: ['0', '3', '2e-4', '1.5'],
      PERCENT: ['3%', '0.5%'],
      SIZE: ['8GB', '512MiB'],
      STRING: ['"s"', '"out/a b"', '"esc\\"aped"'],
    };
    const keywordLits = (grammar.lexical.get('KEYWORD')!.expr as Extract<Expr, { k: 'alt' }>).alts;
    const pick = <T>(xs: T[]): T => xs[Math.floor(rnd() * xs.length)];
    const word = (e: Expr): string => {
      if (e.k === 'lit') return e.v;
      if (e.k !== 'tok') throw new Error(`unexpected ${e.k}`);
      if (e.name === 'NAME') return rnd() < 0.5 ? pick(spell.IDENT) : word(pick(keywordLits));
      const choices = spell[e.name];
      if (!choices) throw new Error(`the test cannot spell token ${e.name}: add it to \`spell\``);
      return pick(choices);
    };
    const failures: string[] = [];
    for (let i = 0; i < 300; i++) {
      const text = generate(grammar, rnd).map(word).join(' ');
      const { errors } = parseText(text);
      if (errors.length > 0) failures.push(`${text}\n    -> ${errors[0]}`);
    }
    expect(failures.slice(0, 5), `${failures.length} of 300 EBNF sentences rejected by the parser`).toEqual([]);
  });
});

describe('the generator on constructs the .mcp parser does not use (yet)', () => {
  // AT_LEAST_ONE, AT_LEAST_ONE_SEP and an empty alternative: if the parser adopts them, they must print right.
  const WS = createToken({ name: 'WhiteSpace', pattern: /\s+/, group: Lexer.SKIPPED });
  const Word = createToken({ name: 'Word', pattern: /[xyz]+/ });
  const A = createToken({ name: 'A', pattern: /a/ });
  const B = createToken({ name: 'B', pattern: 'b' });
  const Lp = createToken({ name: 'LParen', pattern: /\(/ });
  const Rp = createToken({ name: 'RParen', pattern: /\)/ });
  const Comma = createToken({ name: 'Comma', pattern: /,/ });
  const Star = createToken({ name: 'Star', pattern: /\*/ });
  const toks = [WS, Word, A, B, Lp, Rp, Comma, Star];
  class Tiny extends CstParser {
    constructor() {
      super(toks);
      this.performSelfAnalysis();
    }
    start = this.RULE('start', () => {
      this.AT_LEAST_ONE(() => this.SUBRULE(this.item));
    });
    item = this.RULE('item', () =>
      this.OR([
        {
          ALT: () => {
            this.CONSUME(Lp);
            this.AT_LEAST_ONE_SEP({ SEP: Comma, DEF: () => (this.CONSUME(A), this.CONSUME(B)) });
            this.CONSUME(Rp);
          },
        },
        { ALT: () => (this.CONSUME(Word), this.SUBRULE(this.tail)) },
      ]),
    );
    tail = this.RULE('tail', () => this.OR([{ ALT: () => this.CONSUME(Star) }, { ALT: EMPTY_ALT() }]));
  }
  const tiny = new Tiny();
  const text = generateEbnf({ parser: tiny, tokens: toks });
  const tinyLexer = new Lexer(toks);

  it('prints +, a separated +, and an empty alternative as ?', () => {
    const productions = text.split('\n').filter((l) => /^[a-z]\w*\s+::=|^\s+\|/.test(l));
    expect(productions).toEqual([
      'start ::= item+',
      "item  ::= '(' 'a' 'b' ( ',' 'a' 'b' )* ')'",
      '        | WORD tail',
      "tail  ::= '*'?",
    ]);
    expect(text).toContain("B           ::= 'b'");
  });

  it('agrees with that parser on what it accepts', () => {
    const g = readEbnf(text);
    for (const sample of ['(ab)', '(ab, ab) x', 'x* y (ab,ab,ab) z', '', '()', '(ab,)', '(a b b)', '* x', 'x**']) {
      const lexed = tinyLexer.tokenize(sample);
      tiny.input = lexed.tokens;
      tiny.start();
      const parserAccepts = lexed.errors.length === 0 && tiny.errors.length === 0;
      expect(recognises(g, lexed.tokens, (t) => tokenName(t.tokenType)), JSON.stringify(sample)).toBe(parserAccepts);
    }
  });
});
