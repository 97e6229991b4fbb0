/**
 * A plain LoRA's term at its site, as expand-sites writes it: `lora_down(x, A)` → `lora_up(h, B)` → the one
 * two-input `add` that sums it into the site's output, beside the site's `linear`. The passes that fold an
 * adapter into its base weight (fold-frozen-lora once at stage entry, fold-trainable-lora every step) find the
 * term and remove it the same way.
 */
import type { GraphIndex } from './graph-index.js';
import type { Node } from './types.js';

export interface LoraTerm {
  down: Node;
  up: Node;
  add: Node;
  /** The site's base GEMM. */
  linear: Node;
}

/** The term `down` starts, if its output feeds only its adapter's up projection and that only one add. */
export function loraTermOf(ix: GraphIndex, down: Node): LoraTerm | undefined {
  const name = down.adapter;
  const [up, ...more] = ix.consumers(down.outputs[0]);
  if (!up || more.length || up.op !== 'lora_up' || up.adapter !== name) return undefined;
  const [add, ...more2] = ix.consumers(up.outputs[0]);
  if (!add || more2.length || add.op !== 'add' || add.inputs.length !== 2) return undefined;
  const linear = ix.site(down.site!).find((n) => n.op === 'linear');
  return linear ? { down, up, add, linear } : undefined;
}

/** Take the term out of the site's sum: the add's consumers read its other operand; down, up and add go. */
export function removeLoraTerm(ix: GraphIndex, t: LoraTerm): void {
  const keep = t.add.inputs[0] === t.up.outputs[0] ? t.add.inputs[1] : t.add.inputs[0];
  ix.rewire(t.add.outputs[0], keep);
  ix.remove([t.down, t.up, t.add]);
}
