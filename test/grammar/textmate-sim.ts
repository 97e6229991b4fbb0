/**
 * A small TextMate tokenizer, enough to check grammar/mcp.tmLanguage.json without an editor: `match` and
 * `begin`/`end` rules, `include` of `#name` and `$self`, captures, and the TextMate choice rule (at each
 * position the pattern matching earliest wins; among those starting at the same place, the first listed;
 * a begin rule's `end` beats its inner patterns on a tie). Regexes are compiled with JavaScript's RegExp,
 * which is why the grammar sticks to syntax that Oniguruma and JavaScript read the same way.
 */

export interface TmRule {
  name?: string;
  contentName?: string;
  match?: string;
  begin?: string;
  end?: string;
  include?: string;
  comment?: string;
  captures?: Record<string, { name?: string }>;
  beginCaptures?: Record<string, { name?: string }>;
  endCaptures?: Record<string, { name?: string }>;
  patterns?: TmRule[];
}

export interface TmGrammar {
  scopeName: string;
  fileTypes?: string[];
  patterns: TmRule[];
  repository: Record<string, TmRule>;
}

/** Compiles one grammar regex as JavaScript: `d` for capture positions, `g` to search from an offset. */
export function compile(source: string): RegExp {
  return new RegExp(source, 'dg');
}

/** Every rule of the grammar, nested ones included, with the path that leads to it. */
export function allRules(g: TmGrammar): { path: string; rule: TmRule }[] {
  const out: { path: string; rule: TmRule }[] = [];
  const walk = (r: TmRule, path: string): void => {
    out.push({ path, rule: r });
    (r.patterns ?? []).forEach((p, i) => walk(p, `${path}.patterns[${i}]`));
  };
  g.patterns.forEach((p, i) => walk(p, `patterns[${i}]`));
  for (const [k, r] of Object.entries(g.repository)) walk(r, `repository.${k}`);
  return out;
}

/** The rules that can match at a level, includes expanded (a rule with only `patterns` is a group). */
export function expand(g: TmGrammar, rules: TmRule[], seen = new Set<TmRule>()): TmRule[] {
  const out: TmRule[] = [];
  for (const r of rules) {
    if (r.include !== undefined) {
      const target: TmRule | undefined =
        r.include === '$self' ? { patterns: g.patterns } : r.include.startsWith('#') ? g.repository[r.include.slice(1)] : undefined;
      if (!target) throw new Error(`include ${r.include} does not resolve`);
      if (seen.has(target)) continue;
      out.push(...expand(g, [target], new Set([...seen, target])));
    } else if (r.match === undefined && r.begin === undefined) out.push(...expand(g, r.patterns ?? [], seen));
    else out.push(r);
  }
  return out;
}

/** Scopes of each character of each line (the grammar's scopeName first). Block rules may span lines. */
export function tokenize(g: TmGrammar, text: string): string[][][] {
  const stack: { rule: TmRule; end: RegExp }[] = [];
  const result: string[][][] = [];
  for (const line of text.split('\n')) {
    const scopes: string[][] = [...line].map(() => []);
    const base = (): string[] => [g.scopeName, ...stack.flatMap((s) => [s.rule.name, s.rule.contentName].filter((x): x is string => !!x))];
    const paint = (from: number, to: number, names: string[]): void => {
      for (let i = from; i < to && i < line.length; i++) scopes[i].push(...names);
    };
    const paintCaptures = (m: RegExpExecArray, caps: TmRule['captures']): void => {
      for (const [k, c] of Object.entries(caps ?? {})) {
        const span = m.indices?.[Number(k)];
        if (span && c.name) paint(span[0], span[1], [c.name]);
      }
    };
    let pos = 0;
    for (let guard = 0; pos <= line.length; guard++) {
      if (guard > 10_000) throw new Error(`tokenizer loops on ${JSON.stringify(line)}`);
      const top = stack[stack.length - 1];
      const candidates = expand(g, top ? (top.rule.patterns ?? []) : g.patterns);
      let best: { m: RegExpExecArray; rule?: TmRule } | undefined;
      if (top) {
        top.end.lastIndex = pos;
        const m = top.end.exec(line);
        if (m) best = { m };
      }
      for (const rule of candidates) {
        const re = compile((rule.match ?? rule.begin)!);
        re.lastIndex = pos;
        const m = re.exec(line);
        if (m && (!best || m.index < best.m.index)) best = { m, rule };
      }
      const here = base();
      if (!best) {
        paint(pos, line.length, here);
        break;
      }
      const { m, rule } = best;
      const end = m.index + m[0].length;
      paint(pos, m.index, here);
      if (!rule) {
        // The end of the innermost block.
        const closing = stack.pop()!;
        paint(m.index, end, here.filter((s) => s !== closing.rule.contentName));
        paintCaptures(m, closing.rule.endCaptures ?? closing.rule.captures);
      } else if (rule.match !== undefined) {
        paint(m.index, end, rule.name ? [...here, rule.name] : here);
        paintCaptures(m, rule.captures);
      } else {
        paint(m.index, end, rule.name ? [...here, rule.name] : here);
        paintCaptures(m, rule.beginCaptures ?? rule.captures);
        stack.push({ rule, end: compile(rule.end!) });
      }
      // A zero-length match that pushes or paints nothing must still move on; a zero-length end pops a block.
      pos = m[0].length === 0 && rule ? end + 1 : end;
    }
    result.push(scopes);
  }
  return result;
}
