/**
 * Placement selectors against the model's module tree. Resolution happens here, before any tensor exists:
 * `layers[*].attn.{q, k, v, o}` becomes the list of linear modules it names, each with its shape.
 *
 * Semantics: segments walk down from the root; `name[...]` indexes a list (`[*]`, `[3]`, `[0..5]`
 * inclusive, negatives from the end); `{a, b}` takes several children; `*` all children (norms and
 * embeddings among them are skipped). A selector that ends on a container stands for every linear module
 * below it. `except` removes what its selectors match.
 */
import type * as A from '../1-parse/ast.js';
import type { Diagnostics } from '../diagnostics/diagnostic.js';
import { didYouMean } from '../util/suggest.js';
import { linearsUnder, type ModuleNode } from './models.js';

export function selectorText(s: A.Selector): string {
  return s.segments
    .map((g) => {
      if (g.kind === 'any') return '*';
      if (g.kind === 'set') return `{${g.names.map((n) => n.name).join(', ')}}`;
      if (!g.index) return g.name.name;
      const idx = g.index.kind === 'all' ? '*' : g.index.items.map((i) => (i.to === undefined ? `${i.from}` : `${i.from}..${i.to}`)).join(', ');
      return `${g.name.name}[${idx}]`;
    })
    .join('.');
}

export function placementText(p: A.Placement): string {
  const inc = p.include.map(selectorText).join(', ');
  return p.exclude.length ? `${inc} except ${p.exclude.map(selectorText).join(', ')}` : inc;
}

/**
 * Nodes as a reader would select them: one path, or the common pattern of several (`layers[*].mlp`), or the
 * first with a count.
 */
export function describeNodes(nodes: ModuleNode[]): string {
  if (nodes.length === 1 && !nodes[0].path) return 'the model';
  const paths = nodes.map((n) => n.path);
  if (paths.length === 1) return `\`${paths[0]}\``;
  const patterns = new Set(paths.map((p) => p.replace(/\[\d+\]/g, '[*]')));
  if (patterns.size === 1) return `\`${[...patterns][0]}\``;
  return `\`${paths[0]}\` (and ${paths.length - 1} more)`;
}

const childNames = (nodes: ModuleNode[]): string[] => [...new Set(nodes.flatMap((n) => (n.kind === 'list' ? [] : n.children.map((c) => c.name))))];

/** Resolve one selector to module nodes; reports and returns [] when it matches nothing. */
export function resolveSelector(root: ModuleNode, sel: A.Selector, diags: Diagnostics): ModuleNode[] {
  let cur: ModuleNode[] = [root];
  for (const seg of sel.segments) {
    const where = describeNodes(cur);
    if (seg.kind === 'any') {
      cur = cur.flatMap((n) => n.children);
    } else if (seg.kind === 'set' || seg.kind === 'name') {
      const names = seg.kind === 'set' ? seg.names : [seg.name];
      if (names.some((nm) => nm.name === '')) return [];
      const next: ModuleNode[] = [];
      const missing: A.Ident[] = [];
      for (const nm of names) {
        const found = cur.flatMap((n) => (n.kind === 'list' ? [] : n.children.filter((c) => c.name === nm.name)));
        if (!found.length) missing.push(nm);
        next.push(...found);
      }
      if (missing.length) {
        const inList = cur.some((n) => n.kind === 'list');
        const options = childNames(cur);
        const children = cur.flatMap((n) => (n.kind === 'list' ? [] : n.children));
        // `gate_proj`, `self_attn`: Hugging Face module names where the selector wants mcpc's.
        const hf = missing.map((nm) => children.find((ch) => ch.name !== nm.name && (ch.hfName.endsWith(`.${nm.name}`) || ch.hfName === nm.name)));
        const quoted = (xs: string[]) => xs.map((x) => `\`${x}\``).join(', ');
        // One diagnostic for the segment: `{gate_proj, up_proj, down_proj}` is one mistake.
        const span = missing.length > 1 && seg.kind === 'set' ? seg.span : missing[0].span;
        const what = missing.length > 1 ? `modules ${quoted(missing.map((m) => m.name))}` : `module \`${missing[0].name}\``;
        diags.report('selector_matches_nothing', span, `${where} has no ${what}`, {
          hint: inList
            ? `\`${cur[0].path}\` is a list of ${cur[0].children.length}: index it first, e.g. \`${cur[0].name}[*].${missing[0].name}\``
            : hf.every((h) => h)
              ? `${missing.length > 1 ? 'these are' : 'this is'} the Hugging Face checkpoint ${missing.length > 1 ? 'names' : 'name'}; selectors use ${quoted(hf.map((h) => h!.name))}`
              : (missing.length === 1 ? didYouMean(missing[0].name, options) : undefined) ?? (options.length ? `${where} has: ${options.join(', ')}` : `${where} has no submodules`),
        });
        return [];
      }
      cur = next;
      if (seg.kind === 'name' && seg.index) {
        const lists = cur.filter((n) => n.kind === 'list');
        if (lists.length !== cur.length) {
          diags.report('selector_matches_nothing', seg.index.span, `\`${cur[0].path}\` is not a list and cannot be indexed`, { hint: `remove the brackets: \`${seg.name.name}\`` });
          return [];
        }
        const picked: ModuleNode[] = [];
        for (const list of lists) {
          const n = list.children.length;
          if (seg.index.kind === 'all') {
            picked.push(...list.children);
            continue;
          }
          for (const item of seg.index.items) {
            const norm = (i: number) => (i < 0 ? n + i : i);
            const a = norm(item.from);
            const b = item.to === undefined ? a : norm(item.to);
            if (a < 0 || a >= n || b < 0 || b >= n) {
              diags.report('selector_index_out_of_range', item.span, `\`${list.path}\` has ${n} entries (0..${n - 1}); ${item.to === undefined ? item.from : `${item.from}..${item.to}`} is out of range`, {
                hint: `use indices 0..${n - 1}, or negatives from the end (-1 is the last)`,
              });
              return [];
            }
            if (b < a) {
              diags.report('selector_index_out_of_range', item.span, `the range ${item.from}..${item.to} is empty`, { hint: 'ranges are inclusive and ascending: `0..3`' });
              return [];
            }
            for (let i = a; i <= b; i++) picked.push(list.children[i]);
          }
        }
        cur = [...new Set(picked)];
      }
    }
  }
  return cur;
}

export interface ResolvedPlacement {
  /** Linear modules, in tree order, no duplicates. */
  sites: ModuleNode[];
  ok: boolean;
}

/** Resolve a placement to linear sites. Non-linear targets and empty results are reported. */
export function resolvePlacement(root: ModuleNode, p: A.Placement, diags: Diagnostics): ResolvedPlacement {
  const order = new Map<ModuleNode, number>();
  linearsUnder(root).forEach((n, i) => order.set(n, i));
  const collect = (sels: A.Selector[]): { nodes: Set<ModuleNode>; ok: boolean } => {
    const nodes = new Set<ModuleNode>();
    let ok = true;
    for (const s of sels) {
      const matched = resolveSelector(root, s, diags);
      if (!matched.length) {
        ok = false;
        continue;
      }
      const bad = matched.filter((m) => m.kind !== 'linear' && linearsUnder(m).length === 0);
      // A `*` segment means "every module here": the norms it also meets hold no linear module and are skipped.
      const wildcard = s.segments.some((g) => g.kind === 'any') && bad.length < matched.length;
      if (bad.length && !wildcard) {
        const kinds = new Set(bad.map((b) => b.kind));
        const kind = kinds.size > 1 ? 'not a linear module' : bad[0].kind === 'norm' ? 'a norm' : bad[0].kind === 'embedding' ? 'an embedding' : `a ${bad[0].kind}`;
        diags.report('invalid_placement', s.span, `${describeNodes(bad)} is ${kind}, not a linear projection; adapters attach to linear modules`, {
          hint: 'place adapters on attn.{q, k, v, o}, mlp.{gate, up, down} or lm_head',
        });
        ok = false;
        continue;
      }
      for (const m of matched) for (const l of linearsUnder(m)) nodes.add(l);
    }
    return { nodes, ok };
  };
  const inc = collect(p.include);
  const exc = collect(p.exclude);
  const sites = [...inc.nodes].filter((n) => !exc.nodes.has(n)).sort((a, b) => order.get(a)! - order.get(b)!);
  if (inc.ok && exc.ok && sites.length === 0) {
    diags.report('selector_matches_nothing', p.span, `after \`except\`, \`${placementText(p)}\` matches no module`, { hint: 'the exclusions remove every module the placement selects' });
    return { sites, ok: false };
  }
  return { sites, ok: inc.ok && exc.ok };
}
