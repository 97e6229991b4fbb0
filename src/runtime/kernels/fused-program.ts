/**
 * What both code generators of a fused_elementwise expression (./fused-js.ts to JavaScript, ./fused-wasm.ts to
 * WebAssembly SIMD) need to know of a serial program before emitting code: each node's class (a constant, a
 * `vec` value read per column, a per-row value, or a per-element value), its stage (the number of row sums
 * on its deepest path: pass p of a row computes the row sums whose argument has stage p, the last pass the
 * roots), the nodes the roots need, and the last stage.
 */
import type { FusedInputKind, FusedSerialNode } from '../../plan/fused.js';

export type Cls = 0 | 1 | 2 | 3; // const, vec, row, elem
export const CONST = 0;
export const VEC = 1;
export const ROW = 2;
export const ELEM = 3;
const join = (a: Cls, b: Cls): Cls => (a === b ? a : a === CONST ? b : b === CONST ? a : ELEM);

export const isLeaf = (op: string): boolean => op === 'in' || op === 'out' || op === 'dy' || op === 'const' || op === 'cols';

/** A root of a generated function: written per element, or (a `vec` gradient) summed over the rows. */
export interface FusedRoot {
  node: number;
  reduce: 'none' | 'cols';
}

export interface ProgramShape {
  cls: Cls[];
  stage: number[];
  needed: Set<number>;
  last: number;
}

export function programShape(nodes: readonly FusedSerialNode[], kinds: readonly FusedInputKind[], roots: readonly FusedRoot[]): ProgramShape {
  const cls: Cls[] = [];
  const stage: number[] = [];
  for (const [op, ...a] of nodes) {
    if (op === 'in') cls.push(kinds[a[0]!] === 'vec' ? VEC : ELEM);
    else if (op === 'out' || op === 'dy') cls.push(ELEM);
    else if (op === 'const' || op === 'cols') cls.push(CONST);
    else if (op === 'rowsum') cls.push(ROW);
    else cls.push(a.reduce<Cls>((c, i) => join(c, cls[i]!), CONST));
    stage.push(isLeaf(op) ? 0 : op === 'rowsum' ? stage[a[0]!]! + 1 : Math.max(0, ...a.map((i) => stage[i]!)));
  }
  const needed = new Set<number>();
  const visit = (i: number) => {
    if (needed.has(i)) return;
    needed.add(i);
    const [op, ...a] = nodes[i]!;
    if (!isLeaf(op)) a.forEach(visit);
  };
  roots.forEach((r) => visit(r.node));
  return { cls, stage, needed, last: Math.max(0, ...roots.map((r) => stage[r.node]!)) };
}
