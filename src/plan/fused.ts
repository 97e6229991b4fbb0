/**
 * The serialised expression of a `fused_elementwise` step (`step.attrs.expr`), as the compiler's fusion
 * module (src/compiler/fusion/expr.ts) writes it and the runtime evaluates it. Types only: the compiler builds
 * and differentiates expressions, the runtime interprets them, and neither imports the other.
 *
 * A fused kernel computes, for every row of a [rows, cols] grid (rows = the tokens of a micro-batch), its
 * outputs from its inputs. An input is `elem` (a [rows, cols] tensor) or `vec` (a [cols] tensor broadcast
 * over the rows, e.g. an RMSNorm weight). A program is a DAG in dependency order; node i may only refer to
 * nodes before it:
 *
 *   ['in', i]     forward input i          ['const', v]  the literal v (a finite f32)
 *   ['out', k]    saved forward output k   ['cols']      the row length, as a number
 *   ['dy', k]     upstream gradient of output k (the last two: backward programs only)
 *   [unary, a]    neg exp log sqrt rsqrt sigmoid silu tanh
 *   [binary, a, b] add sub mul div max min; comparisons gt ge lt le eq give 1 or 0
 *   ['select', c, a, b]  a where c != 0, else b
 *   ['rowsum', a] the sum of a over its row, broadcast back over the row
 *
 * The step's inputs and outputs are the program's inputs and roots, in order.
 */

export type FusedInputKind = 'elem' | 'vec';
export type FusedUnaryOp = 'neg' | 'exp' | 'log' | 'sqrt' | 'rsqrt' | 'sigmoid' | 'silu' | 'tanh';
export type FusedBinaryOp = 'add' | 'sub' | 'mul' | 'div' | 'max' | 'min';
export type FusedCmpOp = 'gt' | 'ge' | 'lt' | 'le' | 'eq';
export type FusedLeafOp = 'in' | 'out' | 'dy' | 'const' | 'cols';
export type FusedOp = FusedLeafOp | FusedUnaryOp | FusedBinaryOp | FusedCmpOp | 'select' | 'rowsum';

/** `[op, ...argument indices]`, or `[leaf op, index or literal]`. */
export type FusedSerialNode = [FusedOp, ...number[]];

export interface FusedSerialProgram {
  nodes: FusedSerialNode[];
  roots: number[];
}

/** `step.attrs.expr` of a fused_elementwise step. */
export interface FusedExprAttrs {
  inputs: FusedInputKind[];
  forward: FusedSerialProgram;
  /**
   * The generated backward, in the kernel table's copy only (`plan.kernels[].attrs.expr`): the WGSL path runs
   * it; the reference path differentiates `forward` itself.
   */
  backward?: {
    program: FusedSerialProgram;
    /** One gradient buffer each: `cols` slots are summed over the rows (the gradient of a `vec` input). */
    slots: { inputs: number[]; reduce: 'none' | 'cols'; identityOf?: number }[];
    /** For each input, the index of its slot, or null when its gradient is zero. */
    grads: (number | null)[];
  };
}
