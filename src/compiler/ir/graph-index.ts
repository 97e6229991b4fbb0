/**
 * An index over one stage graph for passes that rewrite many sites: nodes by site, consumers by value, and
 * edits (replace, remove) that are applied to the node list in one sweep by `commit()`. Lookups are O(1)
 * where GraphEditor scans the whole graph, so a pass stays linear in the graph size (the 7B example has
 * thousands of nodes per stage).
 */
import type { Graph, Node } from './types.js';

export class GraphIndex {
  private readonly sites = new Map<string, Node[]>();
  private readonly cons = new Map<string, Set<Node>>();
  private readonly replaced = new Map<Node, Node[]>();
  private readonly removed = new Set<Node>();

  constructor(readonly g: Graph) {
    for (const n of g.nodes) this.register(n);
  }

  private register(n: Node): void {
    if (n.site) {
      const list = this.sites.get(n.site);
      if (list) list.push(n);
      else this.sites.set(n.site, [n]);
    }
    for (const i of n.inputs) {
      const s = this.cons.get(i);
      if (s) s.add(n);
      else this.cons.set(i, new Set([n]));
    }
  }

  private unregister(n: Node): void {
    for (const i of n.inputs) this.cons.get(i)?.delete(n);
  }

  /** Live nodes of a site, in graph order (nodes added by `replace` come last). */
  site(site: string): Node[] {
    return (this.sites.get(site) ?? []).filter((n) => !this.removed.has(n));
  }

  /** Live nodes that read `value`. */
  consumers(value: string): Node[] {
    return [...(this.cons.get(value) ?? [])].filter((n) => !this.removed.has(n));
  }

  /** Make every consumer of `from` read `to` instead. */
  rewire(from: string, to: string): void {
    const readers = this.cons.get(from);
    if (readers) {
      const target = this.cons.get(to) ?? new Set<Node>();
      for (const n of readers) {
        n.inputs = n.inputs.map((i) => (i === from ? to : i));
        target.add(n);
      }
      this.cons.set(to, target);
      this.cons.delete(from);
    }
    if (this.g.loss === from) this.g.loss = to;
  }

  /** Replace `old` by `nodes` at its position (applied by `commit`). */
  replace(old: Node, nodes: Node[]): void {
    this.replaced.set(old, nodes);
    this.removed.add(old);
    this.unregister(old);
    for (const n of nodes) this.register(n);
  }

  /** Remove nodes (applied by `commit`). */
  remove(nodes: Node[]): void {
    for (const n of nodes) {
      this.removed.add(n);
      this.unregister(n);
    }
  }

  /** Apply the replacements and removals to the graph's node list, keeping order. */
  commit(): void {
    if (!this.removed.size) return;
    this.g.nodes = this.g.nodes.flatMap((n) => {
      const r = this.replaced.get(n);
      if (r) return r.filter((m) => !this.removed.has(m));
      return this.removed.has(n) ? [] : [n];
    });
    this.replaced.clear();
    this.removed.clear();
  }
}
