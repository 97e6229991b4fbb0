/** Small helpers for passes that rewrite a stage graph. */
import type { Dim, Graph, Node, Value } from './types.js';

export class GraphEditor {
  private counter: number;

  constructor(readonly g: Graph) {
    this.counter = g.nodes.reduce((m, n) => Math.max(m, Number(n.id.replace(/\D/g, '')) || 0), 0) + 1;
  }

  value(id: string, shape: Dim[], kind: Value['kind'] = 'activation'): string {
    this.g.values.set(id, { id, shape, dtype: 'f32', kind });
    return id;
  }

  node(op: Node['op'], inputs: string[], outputs: string[], attrs: Record<string, unknown> = {}, extra: Partial<Node> = {}): Node {
    return { id: `n${this.counter++}`, op, inputs, outputs, attrs, ...extra };
  }

  /** Replace `old` (in place, keeping order) by `replacement` nodes. */
  replace(old: Node, replacement: Node[]): void {
    const i = this.g.nodes.indexOf(old);
    if (i < 0) throw new Error(`node ${old.id} is not in the graph`);
    this.g.nodes.splice(i, 1, ...replacement);
  }

  remove(nodes: Node[]): void {
    const drop = new Set(nodes);
    this.g.nodes = this.g.nodes.filter((n) => !drop.has(n));
  }

  /** Make every consumer of `from` read `to` instead. */
  rewire(from: string, to: string): void {
    for (const n of this.g.nodes) n.inputs = n.inputs.map((i) => (i === from ? to : i));
    if (this.g.loss === from) this.g.loss = to;
  }

  /** Drop values no node reads or writes (params and inputs included). */
  pruneValues(): void {
    const live = new Set(this.g.nodes.flatMap((n) => [...n.inputs, ...n.outputs]));
    live.add(this.g.loss);
    for (const id of [...this.g.values.keys()]) if (!live.has(id) && this.g.values.get(id)!.kind !== 'input') this.g.values.delete(id);
  }

  consumers(value: string): Node[] {
    return this.g.nodes.filter((n) => n.inputs.includes(value));
  }

  producer(value: string): Node | undefined {
    return this.g.nodes.find((n) => n.outputs.includes(value));
  }
}
