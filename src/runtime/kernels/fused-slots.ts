/**
 * Which gradient slots of a fused elementwise kernel to compute in one pass, for both kernel tables (the CPU's
 * McpcFused in ./cpu-ops.ts, webgpu's McpcFusedWgsl in ../webgpu/fused.ts). tfjs calls a node's gradient
 * closures one input at a time, in input order, and only for the inputs on the path to the parameters; so
 * when input i asks for its slot, the pass also computes the slots of the later inputs (an earlier input not
 * asked for wants none), except slots computed ahead before and never taken (an input off the path, such as a
 * frozen norm weight's column sum): those are not computed ahead again until some input asks for them.
 * MCPC_FUSED_GRAD_ONEPASS=0: every slot in its own pass, when asked for. Each backend keeps the tensors'
 * lifetimes itself; this holds only the policy and what it learns per program.
 */

/** Whether a fused gradient computes the slots of later inputs in the same pass. */
const fusedGradOnePass = (): boolean => (typeof process !== 'undefined' ? process.env.MCPC_FUSED_GRAD_ONEPASS : undefined) !== '0';

/** A slot computed ahead of its request; a later closure that takes it sets `taken`. */
export interface AheadSlot {
  program: number;
  slot: number;
  taken: boolean;
}

/** One backend's record: per program (its own ids), the slots asked for and those to skip. */
export class FusedSlots {
  private readonly uses = new Map<number, { requested: Set<number>; skip: Set<number> }>();
  private readonly log: AheadSlot[] = [];

  private use(program: number): { requested: Set<number>; skip: Set<number> } {
    let u = this.uses.get(program);
    if (!u) this.uses.set(program, (u = { requested: new Set(), skip: new Set() }));
    return u;
  }

  /** An input asked for `slot`: it is computed ahead again from now on. */
  request(program: number, slot: number): void {
    const u = this.use(program);
    u.requested.add(slot);
    u.skip.delete(slot);
  }

  /**
   * The slots to compute when input `i` asks for `slot`, in increasing order: the slot, and with one pass the
   * slots of later inputs that `computes` accepts, the node has not computed yet (`have`) and are not skipped.
   */
  pass(program: number, grads: readonly (number | null)[], i: number, slot: number, computes: (s: number) => boolean, have: (s: number) => boolean): number[] {
    const want = new Set([slot]);
    if (fusedGradOnePass()) {
      const skip = this.use(program).skip;
      for (let j = i + 1; j < grads.length; j++) {
        const s = grads[j];
        if (s !== null && s !== undefined && computes(s) && !have(s) && !skip.has(s)) want.add(s);
      }
    }
    return [...want].sort((a, b) => a - b);
  }

  /** A slot computed ahead of its request, until `settle`. */
  ahead(program: number, slot: number): AheadSlot {
    const e = { program, slot, taken: false };
    this.log.push(e);
    return e;
  }

  /** The logged nodes' closures have all run: a slot computed ahead, never taken and never asked for is skipped from now on. */
  settle(): void {
    for (const e of this.log) {
      const u = this.use(e.program);
      if (!e.taken && !u.requested.has(e.slot)) u.skip.add(e.slot);
    }
    this.log.length = 0;
  }
}
