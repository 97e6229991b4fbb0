/**
 * grammar/mcp.tmLanguage.json and the VS Code extension files beside it: the regexes are valid in
 * JavaScript (and avoid Oniguruma-only syntax), every keyword of tokens.ts is highlighted as exactly one
 * kind of keyword, word boundaries hold (`dropout` is no `drop`), scopes are well formed, and sample
 * lines get the scopes a reader expects.
 */
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { parser } from '../../src/compiler/1-parse/parser.js';
import { keywords, lexer } from '../../src/compiler/1-parse/tokens.js';
import { allRules, compile, tokenize, type TmGrammar } from './textmate-sim.js';

const dir = new URL('../../grammar/', import.meta.url);
const readJson = (name: string): unknown => JSON.parse(readFileSync(new URL(name, dir), 'utf8'));
const grammar = readJson('mcp.tmLanguage.json') as TmGrammar;
const keywordWords = keywords.map((k) => k.name.toLowerCase());

/** Rules whose own scope, or one of whose captures' scopes, says "keyword" or "language constant". */
const isKeywordScope = (s: string | undefined): boolean => !!s && /^(keyword\.(declaration|control|other)|constant\.language)\b/.test(s) && !s.startsWith('keyword.other.unit');
const keywordRules = allRules(grammar).filter(({ rule }) => rule.match !== undefined && isKeywordScope(rule.name));

/** Scope names of the characters of `needle` (its first occurrence at or after `from`) in a one-line text. */
function scopesOf(line: string, needle: string, from = 0): string[][] {
  const at = line.indexOf(needle, from);
  if (at < 0) throw new Error(`${needle} not in ${line}`);
  return tokenize(grammar, line)[0].slice(at, at + needle.length);
}
/** The scopes every character of `needle` carries. */
function commonScopes(line: string, needle: string, from = 0): string[] {
  const per = scopesOf(line, needle, from);
  return per[0].filter((s) => per.every((c) => c.includes(s)));
}

describe('grammar/mcp.tmLanguage.json', () => {
  it('names the language source.mcp for .mcp files', () => {
    expect(grammar.scopeName).toBe('source.mcp');
    expect(grammar.fileTypes).toEqual(['mcp']);
  });

  it('uses only regexes JavaScript compiles, without Oniguruma-only syntax', () => {
    for (const { path, rule } of allRules(grammar)) {
      for (const key of ['match', 'begin', 'end'] as const) {
        const src = rule[key];
        if (src === undefined) continue;
        expect(() => compile(src), `${path}.${key}`).not.toThrow();
        // \h \G \A \z \Z, atomic groups, possessive quantifiers, inline flags: Oniguruma reads them, JS does not (or differently).
        expect(src, `${path}.${key} uses Oniguruma-only syntax`).not.toMatch(/\\[hHGAzZ]|\(\?>|\(\?[imx-]+[:)]|[*+?}]\+/);
      }
    }
  });

  it('resolves every include', () => {
    for (const { path, rule } of allRules(grammar)) {
      if (rule.include === undefined) continue;
      const ok = rule.include === '$self' || (rule.include.startsWith('#') && rule.include.slice(1) in grammar.repository);
      expect(ok, `${path}: include ${rule.include}`).toBe(true);
    }
  });

  it('has well-formed scope names', () => {
    const roots = ['comment', 'constant', 'entity', 'invalid', 'keyword', 'markup', 'meta', 'punctuation', 'storage', 'string', 'support', 'variable'];
    const names: [string, string][] = [];
    for (const { path, rule } of allRules(grammar)) {
      if (rule.name) names.push([path, rule.name]);
      if (rule.contentName) names.push([path, rule.contentName]);
      for (const key of ['captures', 'beginCaptures', 'endCaptures'] as const) {
        for (const [k, c] of Object.entries(rule[key] ?? {})) {
          expect(k, `${path}.${key}: capture keys are group numbers`).toMatch(/^\d+$/);
          if (c.name) names.push([`${path}.${key}.${k}`, c.name]);
        }
      }
    }
    expect(names.length).toBeGreaterThan(20);
    for (const [path, scope] of names) {
      expect(scope, path).toMatch(/^[a-z][a-z0-9-]*(\.[a-z0-9-]+)*\.mcp$/);
      expect(roots, `${path}: ${scope} has a non-standard root`).toContain(scope.split('.')[0]);
    }
  });

  it('highlights every keyword of tokens.ts by exactly one keyword pattern', () => {
    expect(keywordRules.length).toBeGreaterThan(1);
    for (const word of keywordWords) {
      const hits = keywordRules.filter(({ rule }) => new RegExp(`^(?:${rule.match})$`).test(word));
      expect(hits.map((h) => h.path), `keyword '${word}'`).toHaveLength(1);
    }
  });

  it('has no keyword pattern for a word that is no keyword', () => {
    // Words an alternation could hold: split each keyword pattern's (?:a|b|c) group and compare.
    for (const { path, rule } of keywordRules) {
      const group = /\(\?:([a-z|]+)\)/.exec(rule.match!);
      expect(group, `${path}: keyword patterns are written \\b(?:a|b)\\b`).not.toBeNull();
      for (const w of group![1].split('|')) expect(keywordWords, `${path} highlights '${w}'`).toContain(w);
    }
  });

  it('respects word boundaries: dropout, trainer, online, at_k, norms are no keywords', () => {
    for (const word of ['dropout', 'trainer', 'online', 'at_k', 'norms', 'data_dir', 'x_drop', 'eval2']) {
      for (const { path, rule } of keywordRules) {
        expect(compile(rule.match!).exec(word), `${path} matches inside '${word}'`).toBeNull();
      }
      const scopes = commonScopes(`  ${word} 0.1`, word);
      expect(scopes.filter(isKeywordScope), word).toEqual([]);
      expect(scopes).toContain('variable.other.mcp');
    }
    // ... and the lexer agrees: `dropout` is one identifier.
    expect(lexer.tokenize('dropout').tokens.map((t) => t.tokenType.name)).toEqual(['Ident']);
  });
});

describe('sample lines', () => {
  it('keywords by group', () => {
    const line = 'override stage align after aggregate { train a on b; then { drop noise where load < 2% } at x except y; constrain f() weight 1 norm l1; true }';
    expect(commonScopes(line, 'override')).toContain('keyword.declaration.mcp');
    expect(commonScopes(line, 'stage')).toContain('keyword.declaration.mcp');
    expect(commonScopes(line, 'after')).toContain('keyword.control.mcp');
    expect(commonScopes(line, 'train')).toContain('keyword.control.mcp');
    expect(commonScopes(line, 'drop')).toContain('keyword.control.transition.mcp');
    expect(commonScopes(line, 'where')).toContain('keyword.control.transition.mcp');
    expect(commonScopes(line, 'except')).toContain('keyword.other.placement.mcp');
    expect(commonScopes(line, 'weight')).toContain('keyword.other.constraint.mcp');
    expect(commonScopes(line, 'true')).toContain('constant.language.boolean.mcp');
    expect(commonScopes(line, '<')).toContain('keyword.operator.comparison.mcp');
  });

  it('calls, named arguments and declared names', () => {
    const line = 'adapter noise = moe_lora(experts: 8, weight: 0.5, r: 16) at layers[*].mlp.{gate, up}';
    expect(commonScopes(line, 'noise')).toContain('variable.other.definition.mcp');
    expect(commonScopes(line, 'moe_lora')).toContain('entity.name.function.mcp');
    expect(commonScopes(line, 'experts')).toContain('variable.parameter.mcp');
    // An argument named like a keyword is an argument, not the keyword.
    expect(commonScopes(line, 'weight')).toContain('variable.parameter.mcp');
    expect(commonScopes(line, 'weight').filter(isKeywordScope)).toEqual([]);
    expect(scopesOf(line, 'r:')[0]).toContain('variable.parameter.mcp');
    expect(scopesOf(line, 'r:')[1]).toContain('punctuation.separator.key-value.mcp');
    expect(commonScopes('schedule cosine (warmup: 3%)', 'cosine')).toContain('entity.name.function.mcp');
  });

  it('selectors', () => {
    const line = 'at layers[0..3, -1].norm.{q, k}, *.mlp';
    expect(commonScopes(line, '..')).toContain('keyword.operator.range.mcp');
    expect(commonScopes(line, '-')).toContain('keyword.operator.sign.mcp');
    expect(commonScopes(line, '[')).toContain('punctuation.section.brackets.begin.mcp');
    expect(commonScopes(line, '{')).toContain('punctuation.section.braces.begin.mcp');
    expect(commonScopes(line, '*')).toContain('keyword.operator.wildcard.mcp');
    expect(commonScopes(line, ',')).toContain('punctuation.separator.comma.mcp');
    // A keyword after a dot is a module name.
    expect(commonScopes(line, 'norm')).toContain('variable.other.member.mcp');
    expect(commonScopes(line, 'norm').filter(isKeywordScope)).toEqual([]);
    expect(scopesOf(line, '.norm')[0]).toContain('punctuation.accessor.mcp');
  });

  it('numbers, percentages and sizes', () => {
    const line = 'lr 2e-4 warmup 3% mem 8GB cache 1.5MiB steps 100 x2';
    expect(commonScopes(line, '2e-4')).toContain('constant.numeric.decimal.mcp');
    expect(commonScopes(line, '3%')).toContain('constant.numeric.percentage.mcp');
    expect(commonScopes(line, '8GB')).toContain('constant.numeric.size.mcp');
    expect(scopesOf(line, '8GB')[1]).toContain('keyword.other.unit.mcp');
    expect(commonScopes(line, '1.5MiB')).toContain('constant.numeric.size.mcp');
    expect(commonScopes(line, '100')).toContain('constant.numeric.decimal.mcp');
    expect(commonScopes(line, 'x2')).toEqual(['source.mcp', 'variable.other.mcp']);
  });

  it('strings with escapes, closed at the end of the line when unterminated', () => {
    const line = 'export peft "out/a \\"b\\" drop" ; drop';
    const str = '"out/a \\"b\\" drop"';
    expect(commonScopes(line, str)).toContain('string.quoted.double.mcp');
    expect(commonScopes(line, '\\"')).toContain('constant.character.escape.mcp');
    expect(commonScopes(line, 'drop"').filter(isKeywordScope)).toEqual([]);
    expect(commonScopes(line, 'drop', line.indexOf('; drop'))).toContain('keyword.control.transition.mcp');

    const [first, second] = tokenize(grammar, 'data d = jsonl("unterminated\nmodel m');
    expect(first[first.length - 1]).toContain('string.quoted.double.mcp');
    expect(second[0]).not.toContain('string.quoted.double.mcp');
    expect(second[0]).toContain('keyword.declaration.mcp');
  });

  it('comments, line and block, including a block over several lines', () => {
    expect(commonScopes('lr 1 // drop the rest', '// drop the rest')).toContain('comment.line.double-slash.mcp');
    expect(commonScopes('lr 1 /* drop */ epochs 2', '/* drop */')).toContain('comment.block.mcp');
    expect(commonScopes('lr 1 /* drop */ epochs 2', 'epochs')).not.toContain('comment.block.mcp');
    const lines = tokenize(grammar, 'a /* drop\n stage\n*/ stage');
    expect(lines[1].every((c) => c.includes('comment.block.mcp'))).toBe(true);
    expect(lines[2][3]).toContain('keyword.declaration.mcp');
    expect(lines[2][3]).not.toContain('comment.block.mcp');
  });

  it('tokenizes the design example without leaving a construct unscoped', () => {
    const text = readFileSync(new URL('../../grammar/README.md', import.meta.url), 'utf8');
    const example = /```mcp\n([\s\S]*?)```/.exec(text)?.[1];
    expect(example, 'grammar/README.md shows an mcp example').toBeDefined();
    // The example must stay valid .mcp, or the README teaches something the parser refuses.
    const lexed = lexer.tokenize(example!);
    parser.input = lexed.tokens;
    parser.file();
    expect([...lexed.errors, ...parser.errors].map((e) => e.message), 'the README example should parse').toEqual([]);
    const lines = tokenize(grammar, example!);
    const src = example!.split('\n');
    lines.forEach((scopes, i) =>
      scopes.forEach((s, j) => {
        if (!/\s/.test(src[i][j])) expect(s.length, `line ${i + 1} col ${j + 1} ('${src[i][j]}') has no scope`).toBeGreaterThan(1);
      }),
    );
  });
});

describe('the VS Code extension in grammar/', () => {
  const pkg = readJson('package.json') as {
    contributes: { languages: { id: string; extensions: string[]; configuration: string }[]; grammars: { language: string; scopeName: string; path: string }[] };
    engines: { vscode: string };
  };
  const config = readJson('language-configuration.json') as {
    comments: { lineComment: string; blockComment: [string, string] };
    brackets: [string, string][];
    autoClosingPairs: { open: string; close: string }[];
  };

  it('contributes the mcp language and its grammar, with paths that exist', () => {
    expect(pkg.engines.vscode).toBeTruthy();
    const [lang] = pkg.contributes.languages;
    expect(lang.id).toBe('mcp');
    expect(lang.extensions).toEqual(['.mcp']);
    expect(existsSync(fileURLToPath(new URL(lang.configuration, dir)))).toBe(true);
    const [g] = pkg.contributes.grammars;
    expect(g.language).toBe('mcp');
    expect(g.scopeName).toBe(grammar.scopeName);
    expect(existsSync(fileURLToPath(new URL(g.path, dir)))).toBe(true);
  });

  it('declares the comment and bracket tokens the lexer uses', () => {
    const lexes = (s: string): string[] => lexer.tokenize(s).groups.comments?.map((t) => t.tokenType.name) ?? [];
    expect(lexes(`${config.comments.lineComment} x`)).toEqual(['LineComment']);
    expect(lexes(`${config.comments.blockComment[0]} x ${config.comments.blockComment[1]}`)).toEqual(['BlockComment']);
    for (const [open, close] of config.brackets) {
      const kinds = lexer.tokenize(`${open}${close}`).tokens.map((t) => t.tokenType.name);
      expect(kinds, `${open}${close}`).toHaveLength(2);
      expect(config.autoClosingPairs.some((p) => p.open === open && p.close === close), `auto-close ${open}`).toBe(true);
    }
  });
});
