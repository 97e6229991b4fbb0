/**
 * Reads grammar/mcp.ebnf back as a grammar, independently of the generator: the tests use it to recognise
 * token streams (does the EBNF accept what the parser accepts?) and to generate sentences (does the parser
 * accept what the EBNF describes?). Only the notation the generator prints is understood.
 */
import type { IToken } from '../../src/compiler/1-parse/chevrotain.js';

export type Expr =
  | { k: 'alt'; alts: Expr[] }
  | { k: 'seq'; items: Expr[] }
  | { k: 'opt' | 'star' | 'plus'; e: Expr }
  | { k: 'lit'; v: string }
  | { k: 'tok'; name: string }
  | { k: 'rule'; name: string };

export interface Grammar {
  /** Syntactic productions (lower-case names), in file order. */
  rules: Map<string, Expr>;
  /** Lexical productions (CAPITAL names): the raw right-hand side, and the parsed form when it is a choice of tokens. */
  lexical: Map<string, { raw: string; expr?: Expr }>;
  start: string;
}

const isTokenName = (s: string): boolean => /^[A-Z][A-Z0-9_]*$/.test(s);

function lexRhs(rhs: string): string[] {
  const out: string[] = [];
  const re = /\s*('(?:[^'])*'|"(?:[^"])*"|[()|?*+]|[A-Za-z_][A-Za-z0-9_]*)/y;
  let pos = 0;
  while (pos < rhs.length) {
    if (/^\s*$/.test(rhs.slice(pos))) break;
    re.lastIndex = pos;
    const m = re.exec(rhs);
    if (!m) throw new Error(`ebnf reader: cannot read ${JSON.stringify(rhs.slice(pos))} in ${JSON.stringify(rhs)}`);
    out.push(m[1]);
    pos = re.lastIndex;
  }
  return out;
}

export function parseExpr(rhs: string): Expr {
  const toks = lexRhs(rhs);
  let i = 0;
  const alt = (): Expr => {
    const alts = [seq()];
    while (toks[i] === '|') {
      i++;
      alts.push(seq());
    }
    return alts.length === 1 ? alts[0] : { k: 'alt', alts };
  };
  const seq = (): Expr => {
    const items: Expr[] = [];
    while (i < toks.length && toks[i] !== '|' && toks[i] !== ')') items.push(item());
    return items.length === 1 ? items[0] : { k: 'seq', items };
  };
  const item = (): Expr => {
    let e = primary();
    for (;;) {
      const t = toks[i];
      if (t === '?') e = { k: 'opt', e };
      else if (t === '*') e = { k: 'star', e };
      else if (t === '+') e = { k: 'plus', e };
      else return e;
      i++;
    }
  };
  const primary = (): Expr => {
    const t = toks[i++];
    if (t === '(') {
      const e = alt();
      if (toks[i++] !== ')') throw new Error(`ebnf reader: missing ')' in ${JSON.stringify(rhs)}`);
      return e;
    }
    if (t === undefined || '|)?*+'.includes(t)) throw new Error(`ebnf reader: unexpected ${t} in ${JSON.stringify(rhs)}`);
    if (t.startsWith("'") || t.startsWith('"')) return { k: 'lit', v: t.slice(1, -1) };
    return isTokenName(t) ? { k: 'tok', name: t } : { k: 'rule', name: t };
  };
  const e = alt();
  if (i !== toks.length) throw new Error(`ebnf reader: trailing ${toks.slice(i).join(' ')} in ${JSON.stringify(rhs)}`);
  return e;
}

export function readEbnf(text: string): Grammar {
  const code = text.replace(/\/\*[\s\S]*?\*\//g, (c) => c.replace(/[^\n]/g, ' '));
  const productions: { name: string; rhs: string }[] = [];
  for (const line of code.split('\n')) {
    const head = /^(\S+)\s+::=\s?(.*)$/.exec(line);
    if (head) productions.push({ name: head[1], rhs: head[2].trim() });
    else if (/^\s+\|/.test(line)) productions[productions.length - 1].rhs += ' ' + line.trim();
    else if (line.trim() !== '') throw new Error(`ebnf reader: stray line ${JSON.stringify(line)}`);
  }
  const rules = new Map<string, Expr>();
  const lexical = new Map<string, { raw: string; expr?: Expr }>();
  for (const p of productions) {
    const seen = rules.has(p.name) || lexical.has(p.name);
    if (seen) throw new Error(`ebnf reader: ${p.name} is defined twice`);
    if (isTokenName(p.name)) {
      const isRegex = p.rhs.startsWith('/');
      lexical.set(p.name, { raw: p.rhs, expr: isRegex ? undefined : parseExpr(p.rhs) });
    } else rules.set(p.name, parseExpr(p.rhs));
  }
  const start = /Start symbol: ([A-Za-z_][A-Za-z0-9_]*)/.exec(text)?.[1] ?? [...rules.keys()][0];
  return { rules, lexical, start };
}

/** Rule and token names an expression mentions. */
export function references(e: Expr, out: { rules: Set<string>; tokens: Set<string>; literals: Set<string> }): void {
  switch (e.k) {
    case 'alt':
      e.alts.forEach((a) => references(a, out));
      break;
    case 'seq':
      e.items.forEach((a) => references(a, out));
      break;
    case 'opt':
    case 'star':
    case 'plus':
      references(e.e, out);
      break;
    case 'lit':
      out.literals.add(e.v);
      break;
    case 'tok':
      out.tokens.add(e.name);
      break;
    case 'rule':
      out.rules.add(e.name);
      break;
  }
}

/**
 * The token-type names (as the lexical section spells them) a terminal of the EBNF stands for: a literal is
 * every lexical production defined as exactly that literal; a category expands to its members.
 */
export function terminalTypes(g: Grammar, e: Expr): Set<string> {
  const out = new Set<string>();
  const visit = (x: Expr): void => {
    if (x.k === 'lit') {
      for (const [name, def] of g.lexical) if (def.expr?.k === 'lit' && def.expr.v === x.v) out.add(name);
    } else if (x.k === 'tok') {
      const def = g.lexical.get(x.name);
      if (!def) throw new Error(`ebnf: token ${x.name} has no lexical production`);
      if (def.expr) visit(def.expr);
      else out.add(x.name);
    } else if (x.k === 'alt') x.alts.forEach(visit);
    else throw new Error(`ebnf: unexpected ${x.k} in a lexical production`);
  };
  visit(e);
  return out;
}

/**
 * Whether the grammar derives exactly this token sequence from its start symbol. Full (non-deterministic)
 * EBNF semantics: every way through a choice or repetition is tried, with sets of reachable positions.
 * `typeName` gives a token's type as the lexical section names it.
 */
export function recognises(g: Grammar, tokens: IToken[], typeName: (t: IToken) => string): boolean {
  const termCache = new Map<Expr, Set<string>>();
  const memo = new Map<string, Set<number>>();
  const active = new Set<string>();

  const ends = (e: Expr, pos: number): Set<number> => {
    switch (e.k) {
      case 'lit':
      case 'tok': {
        let types = termCache.get(e);
        if (!types) termCache.set(e, (types = terminalTypes(g, e)));
        const t = tokens[pos];
        return t && types.has(typeName(t)) ? new Set([pos + 1]) : new Set();
      }
      case 'rule': {
        const key = `${e.name}@${pos}`;
        const hit = memo.get(key);
        if (hit) return hit;
        if (active.has(key)) throw new Error(`ebnf: left recursion through ${e.name}`);
        const def = g.rules.get(e.name);
        if (!def) throw new Error(`ebnf: undefined production ${e.name}`);
        active.add(key);
        const r = ends(def, pos);
        active.delete(key);
        memo.set(key, r);
        return r;
      }
      case 'seq': {
        let cur = new Set([pos]);
        for (const item of e.items) {
          const next = new Set<number>();
          for (const p of cur) for (const q of ends(item, p)) next.add(q);
          cur = next;
          if (cur.size === 0) break;
        }
        return cur;
      }
      case 'alt': {
        const out = new Set<number>();
        for (const a of e.alts) for (const q of ends(a, pos)) out.add(q);
        return out;
      }
      case 'opt': {
        const out = new Set([pos]);
        for (const q of ends(e.e, pos)) out.add(q);
        return out;
      }
      case 'star':
      case 'plus': {
        const out = new Set<number>(e.k === 'star' ? [pos] : []);
        let frontier = [pos];
        const expanded = new Set<number>();
        while (frontier.length > 0) {
          const next: number[] = [];
          for (const p of frontier) {
            if (expanded.has(p)) continue;
            expanded.add(p);
            for (const q of ends(e.e, p)) {
              if (!out.has(q)) out.add(q);
              next.push(q);
            }
          }
          frontier = next;
        }
        return out;
      }
    }
  };

  return ends({ k: 'rule', name: g.start }, 0).has(tokens.length);
}

/** A small deterministic PRNG (mulberry32), so generated sentences are the same on every run. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Derives one random sentence from the start symbol, as a list of terminals (literals, or token names
 * for the caller to spell). Beyond `maxDepth` nested productions it takes the cheapest way out.
 */
export function generate(g: Grammar, rnd: () => number, maxDepth = 6): Expr[] {
  const cost = new Map<string, number>();
  for (const name of g.rules.keys()) cost.set(name, Infinity);
  const costOf = (e: Expr): number => {
    switch (e.k) {
      case 'lit':
      case 'tok':
        return 1;
      case 'rule':
        return cost.get(e.name) ?? Infinity;
      case 'seq':
        return e.items.reduce((s, x) => s + costOf(x), 0);
      case 'alt':
        return Math.min(...e.alts.map(costOf));
      case 'opt':
      case 'star':
        return 0;
      case 'plus':
        return costOf(e.e);
    }
  };
  for (let changed = true; changed; ) {
    changed = false;
    for (const [name, def] of g.rules) {
      const c = costOf(def);
      if (c < cost.get(name)!) {
        cost.set(name, c);
        changed = true;
      }
    }
  }

  const out: Expr[] = [];
  const emit = (e: Expr, depth: number): void => {
    const deep = depth > maxDepth;
    switch (e.k) {
      case 'lit':
      case 'tok':
        out.push(e);
        return;
      case 'rule':
        emit(g.rules.get(e.name)!, depth + 1);
        return;
      case 'seq':
        e.items.forEach((x) => emit(x, depth));
        return;
      case 'alt': {
        if (deep) {
          const best = e.alts.reduce((a, b) => (costOf(b) < costOf(a) ? b : a));
          emit(best, depth);
        } else emit(e.alts[Math.floor(rnd() * e.alts.length)], depth);
        return;
      }
      case 'opt':
        if (!deep && rnd() < 0.5) emit(e.e, depth);
        return;
      case 'star':
      case 'plus': {
        const n = deep ? (e.k === 'plus' ? 1 : 0) : Math.floor(rnd() * 3) + (e.k === 'plus' ? 1 : 0);
        for (let i = 0; i < n; i++) emit(e.e, depth);
        return;
      }
    }
  };
  emit({ k: 'rule', name: g.start }, 0);
  return out;
}
