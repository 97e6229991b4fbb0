/**
 * The elementwise expression language of fused kernels, with symbolic differentiation, simplification and
 * a reference interpreter.
 *
 * A fused kernel computes, for every row r of a [rows, cols] grid, its outputs from its inputs. An input is
 * either `elem` (a [rows, cols] tensor, read at (r, c)) or `vec` (a [cols] tensor broadcast over the rows,
 * such as an RMSNorm weight). Expressions are DAGs built through an {@link ExprBuilder}, whose smart
 * constructors simplify locally (constant folding, x*1, x+0, x-x, --x, ...) and hash-cons every node, so a
 * common subexpression is one node (CSE for free) and structurally equal expressions are the same object.
 *
 * Every node has a broadcast class: `const` (the same everywhere: literals, `cols`), `vec` (varies along a
 * row only), `row` (one value per row: row reductions and what is computed from them) or `elem`.
 * `rowsum(x)` sums x over the last axis and broadcasts the sum back; `rowmean` is `rowsum(x) / cols`.
 *
 * The backward ({@link deriveBackward}) is reverse-mode differentiation over the same DAG: each node's
 * adjoint is the sum of its consumers' contributions, and a contribution to a `row` node is row-summed
 * (the adjoint of a broadcast is a reduction). Contributions to `vec` nodes stay per element; the gradient
 * of a `vec` input is their sum over the rows (a column reduction the WGSL does in a second entry point).
 * Gradients that are the same expression share one gradient slot; forward outputs that the backward needs
 * are read back from the saved outputs rather than recomputed when that binds fewer buffers.
 */

export type InputKind = 'elem' | 'vec';
export type Cls = 'const' | 'vec' | 'row' | 'elem';
export type UnaryOp = 'neg' | 'exp' | 'log' | 'sqrt' | 'rsqrt' | 'sigmoid' | 'silu' | 'tanh';
export type BinaryOp = 'add' | 'sub' | 'mul' | 'div' | 'max' | 'min';
export type CmpOp = 'gt' | 'ge' | 'lt' | 'le' | 'eq';
/** Leaves: `in` (forward input), `out` (saved forward output, backward only), `dy` (upstream gradient of an output), `const`, `cols` (row length). */
export type LeafOp = 'in' | 'out' | 'dy' | 'const' | 'cols';
export type Op = LeafOp | UnaryOp | BinaryOp | CmpOp | 'select' | 'rowsum';

export const unaryOps: readonly UnaryOp[] = ['neg', 'exp', 'log', 'sqrt', 'rsqrt', 'sigmoid', 'silu', 'tanh'];
export const binaryOps: readonly BinaryOp[] = ['add', 'sub', 'mul', 'div', 'max', 'min'];
export const cmpOps: readonly CmpOp[] = ['gt', 'ge', 'lt', 'le', 'eq'];
const commutative = new Set<Op>(['add', 'mul', 'max', 'min', 'eq']);
const isUnary = (op: Op): op is UnaryOp => (unaryOps as readonly Op[]).includes(op);
const isBinary = (op: Op): op is BinaryOp => (binaryOps as readonly Op[]).includes(op);
const isCmp = (op: Op): op is CmpOp => (cmpOps as readonly Op[]).includes(op);

export interface Expr {
  /** Creation number inside its builder (not part of the structure). */
  readonly id: number;
  readonly op: Op;
  readonly args: readonly Expr[];
  /** The literal of a `const`; the index of an `in`, `out` or `dy`; 0 otherwise. */
  readonly value: number;
  /** For `in`: the input's kind. */
  readonly kind?: InputKind;
  readonly cls: Cls;
  /** Structural hash: equal for structurally equal expressions, whatever the builder or creation order. */
  readonly hash: number;
}

const joinCls = (a: Cls, b: Cls): Cls => (a === b ? a : a === 'const' ? b : b === 'const' ? a : 'elem');

/**
 * Structural hash of a node from its op, literal or index, kind and its arguments' hashes: two 32-bit
 * multiplicative hashes folded into a 53-bit integer. Deterministic across runs and platforms.
 */
function nodeHash(op: Op, value: number, kind: InputKind | undefined, args: readonly Expr[]): number {
  let h1 = 0x811c9dc5;
  let h2 = 0x9e3779b9;
  const mix = (w: number) => {
    h1 = Math.imul(h1 ^ w, 0x01000193);
    h2 = Math.imul(h2 ^ w, 0x5bd1e995);
    h2 ^= h2 >>> 13;
  };
  const text = `${op}|${value}|${kind ?? ''}`;
  for (let i = 0; i < text.length; i++) mix(text.charCodeAt(i));
  for (const a of args) {
    mix(a.hash % 0x100000000);
    mix(Math.floor(a.hash / 0x100000000));
  }
  return (h1 >>> 0) * 0x200000 + ((h2 >>> 0) >>> 11);
}

/** A literal that WGSL can write as an f32: finite and inside the f32 range. */
const representable = (v: number): boolean => Number.isFinite(v) && Number.isFinite(Math.fround(v));

const unaryFn: Record<UnaryOp, (a: number) => number> = {
  neg: (a) => -a,
  exp: Math.exp,
  log: Math.log,
  sqrt: Math.sqrt,
  rsqrt: (a) => 1 / Math.sqrt(a),
  sigmoid: (a) => 1 / (1 + Math.exp(-a)),
  silu: (a) => a / (1 + Math.exp(-a)),
  tanh: Math.tanh,
};
const binaryFn: Record<BinaryOp | CmpOp, (a: number, b: number) => number> = {
  add: (a, b) => a + b,
  sub: (a, b) => a - b,
  mul: (a, b) => a * b,
  div: (a, b) => a / b,
  max: (a, b) => (a >= b ? a : b),
  min: (a, b) => (a <= b ? a : b),
  gt: (a, b) => (a > b ? 1 : 0),
  ge: (a, b) => (a >= b ? 1 : 0),
  lt: (a, b) => (a < b ? 1 : 0),
  le: (a, b) => (a <= b ? 1 : 0),
  eq: (a, b) => (a === b ? 1 : 0),
};

/** Builds hash-consed, locally simplified expressions. Use one builder per kernel (forward and backward). */
export class ExprBuilder {
  private readonly table = new Map<string, Expr>();
  private next = 0;

  private intern(op: Op, args: Expr[], value = 0, kind?: InputKind): Expr {
    if (commutative.has(op) && args.length === 2 && order(args[1], args[0]) < 0) args = [args[1], args[0]];
    const key = `${op}|${value}|${kind ?? ''}|${args.map((a) => a.id).join(',')}`;
    const hit = this.table.get(key);
    if (hit) return hit;
    let cls: Cls;
    if (op === 'in') cls = kind!;
    else if (op === 'out' || op === 'dy') cls = 'elem';
    else if (op === 'const' || op === 'cols') cls = 'const';
    else if (op === 'rowsum') cls = 'row';
    else cls = args.reduce<Cls>((c, a) => joinCls(c, a.cls), 'const');
    const hash = nodeHash(op, value, kind, args);
    const e: Expr = { id: this.next++, op, args, value, ...(kind ? { kind } : {}), cls, hash };
    this.table.set(key, e);
    return e;
  }

  // --- leaves -------------------------------------------------------------------------------------------------

  input(i: number, kind: InputKind = 'elem'): Expr {
    return this.intern('in', [], i, kind);
  }
  /** A saved forward output (backward expressions only). */
  out(k: number): Expr {
    return this.intern('out', [], k);
  }
  /** The upstream gradient of forward output k (backward expressions only). */
  dy(k: number): Expr {
    return this.intern('dy', [], k);
  }
  const(v: number): Expr {
    if (!representable(v)) throw new Error(`constant ${v} is not a finite f32`);
    return this.intern('const', [], v === 0 ? 0 : v);
  }
  /** The row length, as an f32. */
  cols(): Expr {
    return this.intern('cols', []);
  }

  // --- arithmetic ---------------------------------------------------------------------------------------------

  add(a: Expr, b: Expr): Expr {
    if (isConst(a) && isConst(b)) return this.fold('add', [a, b]);
    if (isZero(a)) return b;
    if (isZero(b)) return a;
    if (b.op === 'neg') return this.sub(a, b.args[0]);
    if (a.op === 'neg') return this.sub(b, a.args[0]);
    if (a === b) return this.mul(this.const(2), a);
    return this.intern('add', [a, b]);
  }
  sub(a: Expr, b: Expr): Expr {
    if (isConst(a) && isConst(b)) return this.fold('sub', [a, b]);
    if (isZero(b)) return a;
    if (isZero(a)) return this.neg(b);
    if (a === b) return this.const(0);
    if (b.op === 'neg') return this.add(a, b.args[0]);
    return this.intern('sub', [a, b]);
  }
  mul(a: Expr, b: Expr): Expr {
    if (isConst(a) && isConst(b)) return this.fold('mul', [a, b]);
    if (isConst(b)) [a, b] = [b, a];
    if (isConst(a)) {
      if (a.value === 0) return a;
      if (a.value === 1) return b;
      if (a.value === -1) return this.neg(b);
      if (b.op === 'neg') return this.mul(this.const(-a.value), b.args[0]);
      if (b.op === 'mul' && isConst(b.args[0]) && representable(a.value * b.args[0].value)) return this.mul(this.const(a.value * b.args[0].value), b.args[1]);
    }
    if (a.op === 'neg' && b.op === 'neg') return this.mul(a.args[0], b.args[0]);
    if (a.op === 'neg') return this.neg(this.mul(a.args[0], b));
    if (b.op === 'neg') return this.neg(this.mul(a, b.args[0]));
    return this.intern('mul', [a, b]);
  }
  div(a: Expr, b: Expr): Expr {
    if (isConst(a) && isConst(b) && b.value !== 0) return this.fold('div', [a, b]);
    if (isConst(b) && b.value === 1) return a;
    if (isConst(b) && b.value === -1) return this.neg(a);
    if (isZero(a)) return a;
    if (a === b) return this.const(1);
    if (a.op === 'neg') return this.neg(this.div(a.args[0], b));
    return this.intern('div', [a, b]);
  }
  max(a: Expr, b: Expr): Expr {
    if (isConst(a) && isConst(b)) return this.fold('max', [a, b]);
    return a === b ? a : this.intern('max', [a, b]);
  }
  min(a: Expr, b: Expr): Expr {
    if (isConst(a) && isConst(b)) return this.fold('min', [a, b]);
    return a === b ? a : this.intern('min', [a, b]);
  }
  /** 1 where the comparison holds, else 0. */
  cmp(op: CmpOp, a: Expr, b: Expr): Expr {
    if (isConst(a) && isConst(b)) return this.fold(op, [a, b]);
    return this.intern(op, [a, b]);
  }
  /** `cond != 0 ? a : b`. */
  select(cond: Expr, a: Expr, b: Expr): Expr {
    if (isConst(cond)) return cond.value !== 0 ? a : b;
    if (a === b) return a;
    return this.intern('select', [cond, a, b]);
  }

  neg(a: Expr): Expr {
    if (isConst(a)) return this.const(-a.value);
    if (a.op === 'neg') return a.args[0];
    if (a.op === 'sub') return this.sub(a.args[1], a.args[0]);
    if (a.op === 'mul' && isConst(a.args[0])) return this.mul(this.const(-a.args[0].value), a.args[1]);
    return this.intern('neg', [a]);
  }
  unary(op: UnaryOp, a: Expr): Expr {
    if (op === 'neg') return this.neg(a);
    if (isConst(a)) {
      const v = unaryFn[op](a.value);
      if (representable(v)) return this.const(v);
    }
    return this.intern(op, [a]);
  }
  exp(a: Expr): Expr {
    return this.unary('exp', a);
  }
  log(a: Expr): Expr {
    return this.unary('log', a);
  }
  sqrt(a: Expr): Expr {
    return this.unary('sqrt', a);
  }
  rsqrt(a: Expr): Expr {
    return this.unary('rsqrt', a);
  }
  sigmoid(a: Expr): Expr {
    return this.unary('sigmoid', a);
  }
  silu(a: Expr): Expr {
    return this.unary('silu', a);
  }
  tanh(a: Expr): Expr {
    return this.unary('tanh', a);
  }

  /** Sum over the last axis, broadcast back to every element of the row. */
  rowsum(a: Expr): Expr {
    if (isZero(a)) return a;
    if (a.cls === 'const' || a.cls === 'row') return this.mul(a, this.cols());
    if (a.op === 'neg') return this.neg(this.rowsum(a.args[0]));
    if (a.op === 'mul') {
      // Pull per-row and constant factors out of the sum: rowsum(r * e) = r * rowsum(e).
      const [p, q] = a.args;
      if (p.cls === 'const' || p.cls === 'row') return this.mul(p, this.rowsum(q));
      if (q.cls === 'const' || q.cls === 'row') return this.mul(q, this.rowsum(p));
    }
    return this.intern('rowsum', [a]);
  }
  rowmean(a: Expr): Expr {
    return this.div(this.rowsum(a), this.cols());
  }

  /** Rebuild a node of the given op from (possibly new) arguments, through the simplifying constructors. */
  make(op: Op, args: Expr[], value = 0, kind?: InputKind): Expr {
    switch (op) {
      case 'in':
        return this.input(value, kind);
      case 'out':
        return this.out(value);
      case 'dy':
        return this.dy(value);
      case 'const':
        return this.const(value);
      case 'cols':
        return this.cols();
      case 'select':
        return this.select(args[0], args[1], args[2]);
      case 'rowsum':
        return this.rowsum(args[0]);
    }
    if (isUnary(op)) return this.unary(op, args[0]);
    if (isCmp(op)) return this.cmp(op, args[0], args[1]);
    switch (op) {
      case 'add':
        return this.add(args[0], args[1]);
      case 'sub':
        return this.sub(args[0], args[1]);
      case 'mul':
        return this.mul(args[0], args[1]);
      case 'div':
        return this.div(args[0], args[1]);
      case 'max':
        return this.max(args[0], args[1]);
      case 'min':
        return this.min(args[0], args[1]);
    }
    throw new Error(`unknown op ${op}`);
  }

  /** Sum of several terms (left to right, a repeated term once times its count); 0 for none. */
  sum(terms: Expr[]): Expr {
    const counts = new Map<Expr, number>();
    for (const t of terms) counts.set(t, (counts.get(t) ?? 0) + 1);
    return [...counts].reduce((acc, [t, k]) => this.add(acc, k === 1 ? t : this.mul(this.const(k), t)), this.const(0));
  }

  private fold(op: BinaryOp | CmpOp, [a, b]: Expr[]): Expr {
    const v = binaryFn[op](a.value, b.value);
    return representable(v) ? this.const(v) : this.intern(op, [a, b]);
  }
}

const isConst = (e: Expr): boolean => e.op === 'const';
const isZero = (e: Expr): boolean => e.op === 'const' && e.value === 0;
/** Canonical operand order of commutative ops: constants first, then by structural hash. */
const order = (a: Expr, b: Expr): number => (isConst(a) !== isConst(b) ? (isConst(a) ? -1 : 1) : a.hash < b.hash ? -1 : a.hash > b.hash ? 1 : 0);

// --- graph utilities -------------------------------------------------------------------------------------------

/** Every node reachable from `roots`, each after its arguments (depth-first post-order, deterministic). */
export function topo(roots: readonly Expr[]): Expr[] {
  const seen = new Set<Expr>();
  const out: Expr[] = [];
  const visit = (e: Expr) => {
    if (seen.has(e)) return;
    seen.add(e);
    for (const a of e.args) visit(a);
    out.push(e);
  };
  roots.forEach(visit);
  return out;
}

/** Arithmetic per element and per row, counting multiply-adds as 2 and each transcendental as 1. */
export function countFlops(roots: readonly Expr[]): { perElement: number; perRow: number } {
  const cost: Partial<Record<Op, number>> = { sigmoid: 3, silu: 4, select: 1, rowsum: 1 };
  let perElement = 0;
  let perRow = 0;
  for (const e of topo(roots)) {
    if (!e.args.length) continue;
    const c = cost[e.op] ?? 1;
    if (e.op === 'rowsum' || e.cls === 'elem' || e.cls === 'vec') perElement += c;
    else if (e.cls === 'row') perRow += c;
  }
  return { perElement, perRow };
}

const infix: Partial<Record<Op, string>> = { add: '+', sub: '-', mul: '*', div: '/', gt: '>', ge: '>=', lt: '<', le: '<=', eq: '==' };
const prec: Partial<Record<Op, number>> = { add: 1, sub: 1, mul: 2, div: 2, gt: 0, ge: 0, lt: 0, le: 0, eq: 0 };

/** Human-readable text, e.g. `in0 * rsqrt(rowsum(in0 * in0) / cols + 1e-6)`. Shared nodes are written out in full. */
export function format(e: Expr): string {
  const go = (x: Expr, outer: number): string => {
    switch (x.op) {
      case 'in':
        return `in${x.value}`;
      case 'out':
        return `out${x.value}`;
      case 'dy':
        return `dy${x.value}`;
      case 'cols':
        return 'cols';
      case 'const':
        return String(x.value);
      case 'neg':
        return `-${go(x.args[0], 3)}`;
      case 'select':
        return `select(${go(x.args[0], 0)}, ${go(x.args[1], 0)}, ${go(x.args[2], 0)})`;
    }
    const sym = infix[x.op];
    if (sym) {
      const p = prec[x.op]!;
      const s = `${go(x.args[0], p)} ${sym} ${go(x.args[1], p + 1)}`;
      return p < outer ? `(${s})` : s;
    }
    return `${x.op}(${x.args.map((a) => go(a, 0)).join(', ')})`;
  };
  return go(e, 0);
}

// --- serialisation -----------------------------------------------------------------------------------------------

/** One node of a serialised program: `[op, ...argument indices]`, or `[leaf op, index or literal]`. */
export type SerialNode = [Op, ...number[]];

/** A DAG as JSON: nodes in dependency order, the roots by index. Structurally equal programs serialise equally. */
export interface SerialProgram {
  nodes: SerialNode[];
  roots: number[];
}

export function serialise(roots: readonly Expr[]): SerialProgram {
  const order = topo(roots);
  const index = new Map(order.map((e, i) => [e, i]));
  const nodes = order.map((e): SerialNode => {
    if (e.op === 'in' || e.op === 'out' || e.op === 'dy' || e.op === 'const') return [e.op, e.value];
    if (e.op === 'cols') return ['cols'];
    return [e.op, ...e.args.map((a) => index.get(a)!)];
  });
  return { nodes, roots: roots.map((r) => index.get(r)!) };
}

export function deserialise(p: SerialProgram, inputs: readonly InputKind[], E: ExprBuilder = new ExprBuilder()): Expr[] {
  const built: Expr[] = [];
  for (const [op, ...rest] of p.nodes) {
    if (op === 'in') built.push(E.input(rest[0], inputs[rest[0]]));
    else if (op === 'out' || op === 'dy' || op === 'const') built.push(E.make(op, [], rest[0]));
    else built.push(E.make(op, rest.map((i) => built[i])));
  }
  return p.roots.map((i) => built[i]);
}

// --- kernels and their backward --------------------------------------------------------------------------------

/** A fused kernel: its inputs' kinds and one expression per output (each output is a [rows, cols] tensor). */
export interface FusedExpr {
  inputs: InputKind[];
  outputs: Expr[];
}

/** One buffer the backward writes: a gradient shared by one or more inputs. */
export interface GradSlot {
  expr: Expr;
  /** The inputs whose gradient this is. */
  inputs: number[];
  /** `cols`: a `vec` input's gradient, the sum over rows of `expr` (a second, column-reduction step). */
  reduce: 'none' | 'cols';
}

export interface Backward {
  slots: GradSlot[];
  /** For each input, the index of its slot, or null when its gradient is zero. */
  grads: (number | null)[];
  /** Whether the slot expressions read saved forward outputs (`out` leaves). */
  usesOutputs: boolean;
}

/** Gradients of every input with respect to Σ_k <dy_k, y_k>, as expressions over in/dy (and maybe out) leaves. */
export function deriveBackward(f: FusedExpr, E: ExprBuilder, opts: { useOutputs?: 'auto' | boolean } = {}): Backward {
  const raw = reverseMode(f, E);
  const plain = toSlots(f, raw, false);
  const mode = opts.useOutputs ?? 'auto';
  if (mode === false) return plain;
  const withOut = toSlots(
    f,
    substituteOutputs(raw, f.outputs, E),
    true,
  );
  if (mode === true) return withOut;
  return backwardBindings(f, withOut) <= backwardBindings(f, plain) ? withOut : plain;
}

function reverseMode(f: FusedExpr, E: ExprBuilder): (Expr | null)[] {
  const order = topo(f.outputs);
  const contrib = new Map<Expr, Expr[]>();
  const push = (target: Expr, c: Expr) => {
    if (target.cls === 'const' || isZero(c)) return;
    // The adjoint of a per-row value is the row sum of what its (broadcast) consumers send it.
    if (target.cls === 'row' && c.cls !== 'row' && c.cls !== 'const') c = E.rowsum(c);
    contrib.set(target, [...(contrib.get(target) ?? []), c]);
  };
  f.outputs.forEach((y, k) => push(y, E.dy(k)));
  for (let i = order.length - 1; i >= 0; i--) {
    const y = order[i];
    const terms = contrib.get(y);
    if (!terms || !y.args.length) continue;
    const A = E.sum(terms);
    const [a, b, c] = y.args;
    switch (y.op) {
      case 'add':
        push(a, A);
        push(b, A);
        break;
      case 'sub':
        push(a, A);
        push(b, E.neg(A));
        break;
      case 'mul':
        push(a, E.mul(A, b));
        push(b, E.mul(A, a));
        break;
      case 'div':
        push(a, E.div(A, b));
        push(b, E.neg(E.mul(A, E.div(y, b))));
        break;
      case 'max':
        push(a, E.mul(A, E.cmp('ge', a, b)));
        push(b, E.mul(A, E.cmp('lt', a, b)));
        break;
      case 'min':
        push(a, E.mul(A, E.cmp('le', a, b)));
        push(b, E.mul(A, E.cmp('gt', a, b)));
        break;
      case 'select':
        push(b, E.select(a, A, E.const(0)));
        push(c, E.select(a, E.const(0), A));
        break;
      case 'neg':
        push(a, E.neg(A));
        break;
      case 'exp':
        push(a, E.mul(A, y));
        break;
      case 'log':
        push(a, E.div(A, a));
        break;
      case 'sqrt':
        push(a, E.div(E.mul(E.const(0.5), A), y));
        break;
      case 'rsqrt':
        // d/da a^(-1/2) = -1/2 · y³
        push(a, E.mul(E.mul(E.const(-0.5), A), E.mul(y, E.mul(y, y))));
        break;
      case 'sigmoid':
        push(a, E.mul(A, E.mul(y, E.sub(E.const(1), y))));
        break;
      case 'silu': {
        // d/da a·σ(a) = σ(a) · (1 + a · (1 - σ(a)))
        const s = E.sigmoid(a);
        push(a, E.mul(A, E.mul(s, E.add(E.const(1), E.mul(a, E.sub(E.const(1), s))))));
        break;
      }
      case 'tanh':
        push(a, E.mul(A, E.sub(E.const(1), E.mul(y, y))));
        break;
      case 'rowsum':
        push(a, A);
        break;
      case 'gt':
      case 'ge':
      case 'lt':
      case 'le':
      case 'eq':
        break; // piecewise constant: zero gradient
      default:
        throw new Error(`no derivative for ${y.op}`);
    }
  }
  return f.inputs.map((kind, i) => {
    const terms = contrib.get(E.input(i, kind));
    return terms ? E.sum(terms) : null;
  });
}

/** Replace forward outputs (non-leaf, per-element) inside the gradient expressions by reads of the saved outputs. */
function substituteOutputs(grads: (Expr | null)[], outputs: readonly Expr[], E: ExprBuilder): (Expr | null)[] {
  const repl = new Map<Expr, Expr>();
  outputs.forEach((y, k) => {
    if (y.args.length && (y.cls === 'elem' || y.cls === 'vec') && !repl.has(y)) repl.set(y, E.out(k));
  });
  const memo = new Map<Expr, Expr>();
  const go = (e: Expr): Expr => {
    const r = repl.get(e);
    if (r) return r;
    const m = memo.get(e);
    if (m) return m;
    const out = e.args.length ? E.make(e.op, e.args.map(go)) : e;
    memo.set(e, out);
    return out;
  };
  return grads.map((g) => (g ? go(g) : null));
}

function toSlots(f: FusedExpr, grads: (Expr | null)[], usesOutputs: boolean): Backward {
  const slots: GradSlot[] = [];
  const index = grads.map((g, i) => {
    if (!g) return null;
    const reduce = f.inputs[i] === 'vec' ? 'cols' : 'none';
    const s = slots.findIndex((x) => x.expr === g && x.reduce === reduce);
    if (s >= 0) {
      slots[s].inputs.push(i);
      return s;
    }
    slots.push({ expr: g, inputs: [i], reduce });
    return slots.length - 1;
  });
  const reads = new Set(topo(slots.map((s) => s.expr)).map((e) => e.op));
  return { slots, grads: index, usesOutputs: usesOutputs && reads.has('out') };
}

/** Leaves of the backward that need a buffer: the inputs, saved outputs and upstream gradients it reads. */
export function backwardReads(b: Backward): { inputs: number[]; outputs: number[]; dys: number[] } {
  const leaves = topo(b.slots.map((s) => s.expr)).filter((e) => e.op === 'in' || e.op === 'out' || e.op === 'dy');
  const pick = (op: Op) => [...new Set(leaves.filter((e) => e.op === op).map((e) => e.value))].sort((x, y) => x - y);
  return { inputs: pick('in'), outputs: pick('out'), dys: pick('dy') };
}

/** Storage buffers the forward binds: every input and every output. */
export const forwardBindings = (f: FusedExpr): number => f.inputs.length + f.outputs.length;

/** Storage buffers the backward binds: what it reads, one buffer per slot, and a reduced gradient per `vec` slot. */
export function backwardBindings(_f: FusedExpr, b: Backward): number {
  const r = backwardReads(b);
  return r.inputs.length + r.outputs.length + r.dys.length + b.slots.length + b.slots.filter((s) => s.reduce === 'cols').length;
}

// --- the interpreter -------------------------------------------------------------------------------------------

export type Precision = 'f32' | 'f64';
type Arr = Float32Array | Float64Array;

export interface EvalEnv {
  rows: number;
  cols: number;
  /** One array per input: rows*cols for `elem`, cols for `vec` (row-major). */
  inputs: ArrayLike<number>[];
  /** Saved forward outputs (rows*cols each), for backward expressions that read them. */
  outputs?: ArrayLike<number>[];
  /** Upstream gradients (rows*cols each), for backward expressions. */
  dys?: ArrayLike<number>[];
  /** f32 (default) rounds after every operation as the GPU does; f64 is for finite-difference checks. */
  precision?: Precision;
}

/** Evaluate expressions elementwise; each result is a rows*cols array (row-major). */
export function evaluate(roots: readonly Expr[], env: EvalEnv): Arr[] {
  const { rows, cols } = env;
  const n = rows * cols;
  const f64 = env.precision === 'f64';
  const make = (): Arr => (f64 ? new Float64Array(n) : new Float32Array(n));
  const val = new Map<Expr, Arr>();
  const leaf = (src: ArrayLike<number> | undefined, what: string, vec: boolean): Arr => {
    if (!src) throw new Error(`evaluate: ${what} is not given`);
    if (src.length !== (vec ? cols : n)) throw new Error(`evaluate: ${what} has ${src.length} elements, expected ${vec ? cols : n}`);
    const a = make();
    for (let i = 0; i < n; i++) a[i] = src[vec ? i % cols : i];
    return a;
  };
  for (const e of topo(roots)) {
    let r: Arr;
    switch (e.op) {
      case 'in':
        r = leaf(env.inputs[e.value], `input ${e.value}`, e.kind === 'vec');
        break;
      case 'out':
        r = leaf(env.outputs?.[e.value], `saved output ${e.value}`, false);
        break;
      case 'dy':
        r = leaf(env.dys?.[e.value], `upstream gradient ${e.value}`, false);
        break;
      case 'const':
        r = make().fill(e.value);
        break;
      case 'cols':
        r = make().fill(cols);
        break;
      case 'rowsum': {
        const a = val.get(e.args[0])!;
        r = make();
        for (let row = 0; row < rows; row++) {
          let s = 0;
          for (let c = 0; c < cols; c++) s += a[row * cols + c];
          r.fill(s, row * cols, (row + 1) * cols);
        }
        break;
      }
      case 'select': {
        const [c, a, b] = e.args.map((x) => val.get(x)!);
        r = make();
        for (let i = 0; i < n; i++) r[i] = c[i] !== 0 ? a[i] : b[i];
        break;
      }
      default: {
        r = make();
        if (isUnary(e.op)) {
          const fn = unaryFn[e.op];
          const a = val.get(e.args[0])!;
          for (let i = 0; i < n; i++) r[i] = fn(a[i]);
        } else {
          const fn = binaryFn[e.op as BinaryOp | CmpOp];
          const a = val.get(e.args[0])!;
          const b = val.get(e.args[1])!;
          for (let i = 0; i < n; i++) r[i] = fn(a[i], b[i]);
        }
      }
    }
    val.set(e, r);
  }
  return roots.map((e) => val.get(e)!);
}

export function evaluateForward(f: FusedExpr, env: Omit<EvalEnv, 'outputs' | 'dys'>): Arr[] {
  return evaluate(f.outputs, env);
}

/** Gradients of every input (rows*cols for `elem`, cols for `vec`; zeros where the gradient is zero). */
export function evaluateBackward(f: FusedExpr, b: Backward, env: EvalEnv): Arr[] {
  const { rows, cols } = env;
  const f64 = env.precision === 'f64';
  const outputs = env.outputs ?? (b.usesOutputs ? evaluateForward(f, env) : undefined);
  const slotVals = evaluate(
    b.slots.map((s) => s.expr),
    { ...env, outputs },
  );
  return f.inputs.map((kind, i) => {
    const size = kind === 'vec' ? cols : rows * cols;
    const g = f64 ? new Float64Array(size) : new Float32Array(size);
    const s = b.grads[i];
    if (s === null) return g;
    const v = slotVals[s];
    if (kind === 'elem') {
      g.set(v);
      return g;
    }
    for (let c = 0; c < cols; c++) {
      let acc = 0;
      for (let row = 0; row < rows; row++) acc += v[row * cols + c];
      g[c] = acc;
    }
    return g;
  });
}

// --- the patterns the fusion pass builds ------------------------------------------------------------------------

/** Qwen2/Llama RMSNorm: x · rsqrt(mean(x²) + eps) · w (w omitted when absent). */
export function rmsnormExpr(E: ExprBuilder, x: Expr, w: Expr | undefined, eps: number): Expr {
  const r = E.rsqrt(E.add(E.rowmean(E.mul(x, x)), E.const(eps)));
  const y = E.mul(x, r);
  return w ? E.mul(y, w) : y;
}

/** SwiGLU: silu(gate) · up. */
export const swigluExpr = (E: ExprBuilder, gate: Expr, up: Expr): Expr => E.mul(E.silu(gate), up);

/** Σ_i s_i · x_i (a scale of 1 adds no multiply). */
export function naryAddExpr(E: ExprBuilder, terms: Expr[], scales: number[] = []): Expr {
  return E.sum(terms.map((t, i) => E.mul(E.const(scales[i] ?? 1), t)));
}
