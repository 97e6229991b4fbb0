import { describe, expect, it } from 'vitest';
import {
  backwardBindings,
  backwardReads,
  cmpOps,
  countFlops,
  deriveBackward,
  deserialise,
  evaluate,
  evaluateBackward,
  evaluateForward,
  ExprBuilder,
  format,
  naryAddExpr,
  rmsnormExpr,
  serialise,
  swigluExpr,
  unaryOps,
  type Expr,
  type FusedExpr,
  type InputKind,
  type UnaryOp,
} from '../../../src/compiler/fusion/expr.js';
import { gradCheck, randomArray, rng } from './gradcheck.js';

const ROWS = 3;
const COLS = 5;
const TOL = 1e-6;

/** A kernel from a builder callback over inputs of the given kinds. */
function kernel(kinds: InputKind[], body: (E: ExprBuilder, x: Expr[]) => Expr[]): { E: ExprBuilder; f: FusedExpr } {
  const E = new ExprBuilder();
  const x = kinds.map((k, i) => E.input(i, k));
  return { E, f: { inputs: kinds, outputs: body(E, x) } };
}

/** Domains that keep each primitive differentiable and away from its singularities. */
const domain: Partial<Record<UnaryOp, [number, number]>> = { log: [0.3, 3], sqrt: [0.3, 3], rsqrt: [0.3, 3] };

describe('symbolic backward = finite differences of the interpreted forward', () => {
  it.each(unaryOps)('unary %s', (op) => {
    const { E, f } = kernel(['elem'], (E, [x]) => [E.unary(op, x)]);
    const res = gradCheck(f, deriveBackward(f, E), ROWS, COLS, 1, domain[op]);
    expect(res.error).toBeLessThan(TOL);
  });

  it.each(['add', 'sub', 'mul', 'div', 'max', 'min'] as const)('binary %s', (op) => {
    const { E, f } = kernel(['elem', 'elem'], (E, [a, b]) => [E.make(op, [a, op === 'div' ? E.add(E.mul(b, b), E.const(0.5)) : b])]);
    expect(gradCheck(f, deriveBackward(f, E), ROWS, COLS, 2).error).toBeLessThan(TOL);
  });

  it.each(cmpOps)('select on %s (the comparison itself has a zero gradient)', (op) => {
    const { E, f } = kernel(['elem', 'elem'], (E, [a, b]) => [E.select(E.cmp(op, a, b), E.mul(a, b), E.exp(b)), E.mul(E.cmp(op, a, b), a)]);
    expect(gradCheck(f, deriveBackward(f, E), ROWS, COLS, 3).error).toBeLessThan(TOL);
  });

  it('rowsum and rowmean (reduction over the last axis, broadcast back)', () => {
    const { E, f } = kernel(['elem'], (E, [x]) => [E.mul(E.rowsum(E.mul(x, x)), x), E.sub(x, E.rowmean(x))]);
    expect(gradCheck(f, deriveBackward(f, E), ROWS, COLS, 4).error).toBeLessThan(TOL);
  });

  it('nested reductions (a LayerNorm: mean, then variance of the centred row)', () => {
    const { E, f } = kernel(['elem', 'vec', 'vec'], (E, [x, g, b]) => {
      const c = E.sub(x, E.rowmean(x));
      const y = E.mul(c, E.rsqrt(E.add(E.rowmean(E.mul(c, c)), E.const(1e-5))));
      return [E.add(E.mul(y, g), b)];
    });
    expect(gradCheck(f, deriveBackward(f, E), ROWS, COLS, 5).error).toBeLessThan(TOL);
  });

  it('broadcast (vec) inputs inside expressions, their gradients summed over rows', () => {
    const { E, f } = kernel(['elem', 'vec'], (E, [x, w]) => [E.mul(E.exp(w), E.tanh(E.add(x, w))), E.rowsum(E.mul(w, w))]);
    const b = deriveBackward(f, E);
    expect(b.slots.find((s) => s.inputs.includes(1))!.reduce).toBe('cols');
    const res = gradCheck(f, b, ROWS, COLS, 6);
    expect(res.analytic[1]).toHaveLength(COLS);
    expect(res.error).toBeLessThan(TOL);
  });

  it('an input read twice (x*x, repeated operands)', () => {
    const { E, f } = kernel(['elem'], (E, [x]) => [E.add(E.mul(x, x), E.add(x, x))]);
    expect(gradCheck(f, deriveBackward(f, E), ROWS, COLS, 7).error).toBeLessThan(TOL);
  });
});

describe('the fused patterns of the pass', () => {
  const eps = 1e-6;
  const cases: [string, InputKind[], (E: ExprBuilder, x: Expr[]) => Expr[]][] = [
    ['rmsnorm', ['elem', 'vec'], (E, [x, w]) => [rmsnormExpr(E, x, w, eps)]],
    ['rmsnorm without weight', ['elem'], (E, [x]) => [rmsnormExpr(E, x, undefined, eps)]],
    [
      'add + rmsnorm (two outputs: the residual sum and the norm)',
      ['elem', 'elem', 'vec'],
      (E, [x, o, w]) => {
        const s = naryAddExpr(E, [x, o]);
        return [s, rmsnormExpr(E, s, w, eps)];
      },
    ],
    ['swiglu', ['elem', 'elem'], (E, [g, u]) => [swigluExpr(E, g, u)]],
    ['n-ary add with scales', ['elem', 'elem', 'elem', 'elem'], (E, x) => [naryAddExpr(E, x, [1, 2, 0.5, 1])]],
    [
      'adapter sums + swiglu',
      ['elem', 'elem', 'elem', 'elem'],
      (E, [g0, g1, u0, u1]) => [swigluExpr(E, naryAddExpr(E, [g0, g1], [1, 2]), naryAddExpr(E, [u0, u1], [1, 2]))],
    ],
    [
      'down sum + residual + next rmsnorm',
      ['elem', 'elem', 'elem', 'elem', 'vec'],
      (E, [d0, d1, d2, x, w]) => {
        const s = naryAddExpr(E, [naryAddExpr(E, [d0, d1, d2]), x]);
        return [s, rmsnormExpr(E, s, w, eps)];
      },
    ],
  ];

  it.each(cases)('%s', (_, kinds, body) => {
    const { E, f } = kernel(kinds, body);
    for (const useOutputs of [false, true]) {
      const b = deriveBackward(f, E, { useOutputs });
      for (const [rows, cols, seed] of [
        [ROWS, COLS, 11],
        [2, 9, 12],
      ]) {
        expect(gradCheck(f, b, rows, cols, seed).error).toBeLessThan(TOL);
      }
    }
  });

  it('RMSNorm matches its definition y = x / sqrt(mean(x²) + eps) · w', () => {
    const { f } = kernel(['elem', 'vec'], (E, [x, w]) => [rmsnormExpr(E, x, w, 1e-6)]);
    const r = rng(3);
    const x = randomArray(ROWS * COLS, r);
    const w = randomArray(COLS, r);
    const [y] = evaluateForward(f, { rows: ROWS, cols: COLS, inputs: [x, w], precision: 'f64' });
    for (let row = 0; row < ROWS; row++) {
      let ms = 0;
      for (let c = 0; c < COLS; c++) ms += x[row * COLS + c] ** 2 / COLS;
      for (let c = 0; c < COLS; c++) expect(y[row * COLS + c]).toBeCloseTo((x[row * COLS + c] / Math.sqrt(ms + 1e-6)) * w[c], 12);
    }
  });

  it('the add + rmsnorm backward reads the saved sum instead of recomputing it, and binds fewer buffers', () => {
    const { E, f } = kernel(['elem', 'elem', 'elem', 'vec'], (E, [a, b, x, w]) => {
      const s = naryAddExpr(E, [a, b, x]);
      return [s, rmsnormExpr(E, s, w, eps)];
    });
    const plain = deriveBackward(f, E, { useOutputs: false });
    const auto = deriveBackward(f, E);
    expect(auto.usesOutputs).toBe(true);
    expect(backwardReads(auto)).toEqual({ inputs: [3], outputs: [0], dys: [0, 1] });
    expect(backwardReads(plain).inputs).toEqual([0, 1, 2, 3]);
    expect(backwardBindings(f, auto)).toBeLessThan(backwardBindings(f, plain));
    // Every term of the sum shares one gradient slot; the weight has its own (a column reduction).
    expect(auto.slots.map((s) => [s.inputs, s.reduce])).toEqual([
      [[0, 1, 2], 'none'],
      [[3], 'cols'],
    ]);
  });

  it('a plain sum passes the upstream gradient through: one slot that is exactly dy', () => {
    const { E, f } = kernel(['elem', 'elem', 'elem'], (E, x) => [naryAddExpr(E, x)]);
    const b = deriveBackward(f, E);
    expect(b.slots).toHaveLength(1);
    expect(b.slots[0].expr).toBe(E.dy(0));
    expect(b.grads).toEqual([0, 0, 0]);
  });
});

describe('simplification', () => {
  const E = new ExprBuilder();
  const x = E.input(0);
  const y = E.input(1);

  it('folds constants and drops neutral elements', () => {
    expect(E.mul(x, E.const(1))).toBe(x);
    expect(E.add(E.const(0), x)).toBe(x);
    expect(E.sub(x, E.const(0))).toBe(x);
    expect(E.div(x, E.const(1))).toBe(x);
    expect(E.mul(x, E.const(0))).toEqual(E.const(0));
    expect(E.add(E.const(2), E.mul(E.const(3), E.const(4)))).toBe(E.const(14));
    expect(E.exp(E.const(0))).toBe(E.const(1));
    expect(E.sub(x, x)).toBe(E.const(0));
    expect(E.neg(E.neg(x))).toBe(x);
    expect(E.mul(E.const(2), E.mul(E.const(3), x))).toBe(E.mul(E.const(6), x));
    expect(E.add(x, E.neg(y))).toBe(E.sub(x, y));
    expect(E.select(E.const(1), x, y)).toBe(x);
    expect(E.cmp('gt', E.const(2), E.const(1))).toBe(E.const(1));
  });

  it('does not fold to values WGSL cannot write', () => {
    expect(E.exp(E.const(1000)).op).toBe('exp');
    expect(E.div(E.const(1), E.const(0)).op).toBe('div');
    expect(E.log(E.const(0)).op).toBe('log');
  });

  it('shares common subexpressions, whatever the operand order of commutative ops', () => {
    expect(E.mul(x, y)).toBe(E.mul(y, x));
    expect(E.add(E.exp(x), E.exp(x))).toBe(E.mul(E.const(2), E.exp(x)));
    const other = new ExprBuilder();
    const a = other.input(1);
    const b = other.input(0);
    expect(serialise([other.mul(a, b)])).toEqual(serialise([E.mul(x, y)]));
    expect(other.mul(a, b).hash).toBe(E.mul(x, y).hash);
  });

  it('pulls per-row factors out of row sums', () => {
    const r = E.rowsum(E.mul(x, x));
    const s = E.rowsum(E.mul(r, y));
    expect(s).toBe(E.mul(r, E.rowsum(y)));
    expect(E.rowsum(r)).toBe(E.mul(r, E.cols()));
  });

  it('counts FLOPs per element and per row', () => {
    const F = new ExprBuilder();
    const [xx, w] = [F.input(0), F.input(1, 'vec')];
    // x·x, rowsum, x·r, ·w per element; /cols, +eps, rsqrt once per row: the 4 per element of the cost model.
    expect(countFlops([rmsnormExpr(F, xx, w, 1e-6)])).toEqual({ perElement: 4, perRow: 3 });
  });

  it('formats readably', () => {
    expect(format(E.mul(E.add(x, y), E.sigmoid(x)))).toMatch(/^\(in[01] \+ in[01]\) \* sigmoid\(in0\)$|^sigmoid\(in0\) \* \(in[01] \+ in[01]\)$/);
  });
});

describe('serialisation and the interpreter', () => {
  const { E, f } = kernel(['elem', 'vec'], (E, [x, w]) => {
    const s = E.add(x, E.silu(x));
    return [s, rmsnormExpr(E, s, w, 1e-6)];
  });
  const b = deriveBackward(f, E);

  it('round-trips through JSON to the same expressions', () => {
    const text = JSON.stringify(serialise(f.outputs));
    const back = deserialise(JSON.parse(text), f.inputs);
    expect(back.map((e) => e.hash)).toEqual(f.outputs.map((e) => e.hash));
    expect(JSON.stringify(serialise(back))).toBe(text);
    const r = rng(9);
    const inputs = [randomArray(ROWS * COLS, r), randomArray(COLS, r)];
    expect(evaluate(back, { rows: ROWS, cols: COLS, inputs })).toEqual(evaluate(f.outputs, { rows: ROWS, cols: COLS, inputs }));
  });

  it('f32 evaluation rounds every step and stays close to f64', () => {
    const r = rng(10);
    const inputs = [randomArray(ROWS * COLS, r), randomArray(COLS, r)];
    const dys = f.outputs.map(() => randomArray(ROWS * COLS, r));
    const y32 = evaluateForward(f, { rows: ROWS, cols: COLS, inputs });
    const y64 = evaluateForward(f, { rows: ROWS, cols: COLS, inputs, precision: 'f64' });
    expect(y32[0]).toBeInstanceOf(Float32Array);
    const g32 = evaluateBackward(f, b, { rows: ROWS, cols: COLS, inputs, dys });
    const g64 = evaluateBackward(f, b, { rows: ROWS, cols: COLS, inputs, dys, precision: 'f64' });
    for (const [a, c] of [
      [y32, y64],
      [g32, g64],
    ])
      a.forEach((v, i) => v.forEach((z, j) => expect(Math.abs(z - c[i][j])).toBeLessThan(1e-4 * Math.max(1, Math.abs(c[i][j])))));
  });

  it('says what is missing instead of reading garbage', () => {
    expect(() => evaluate([E.dy(0)], { rows: 1, cols: 1, inputs: [] })).toThrow(/upstream gradient 0 is not given/);
    expect(() => evaluate([E.input(0)], { rows: 2, cols: 2, inputs: [[1, 2, 3]] })).toThrow(/has 3 elements, expected 4/);
  });
});
