/**
 * A pass is a named module `{ name, description, run(ir, ctx) }` that rewrites the IR in place and says
 * how much it changed. Required passes define the stage graph and run at every optimization level;
 * the others are optimizations that `-O0` turns off. Every pass must keep the trained result identical.
 */
import type { IR } from '../ir/types.js';

export interface PassContext {
  optLevel: 0 | 1;
  /** Project-wide memory budget in bytes (mcpc.yaml `memory:`) for stages that set none (plan-memory). */
  memoryBudget?: number;
}

export interface PassResult {
  /** How many things the pass changed (sites expanded, adapters folded, kernels fused ...). */
  changes: number;
  /** One line per notable change, for `mcpc explain`. */
  notes: string[];
}

export interface Pass {
  name: string;
  /** One line: what the pass does, for `mcpc explain`. */
  description: string;
  /** Runs even at -O0: it defines the graph rather than speeding it up. */
  required?: boolean;
  run(ir: IR, ctx: PassContext): PassResult;
}
