/** Finite-difference checks of fused expressions, shared by the fusion and fuse-elementwise tests. */
import { evaluateBackward, evaluateForward, type Backward, type FusedExpr } from '../../../src/compiler/fusion/expr.js';

/** A small deterministic PRNG (mulberry32), so failures reproduce. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export const randomArray = (n: number, r: () => number, lo = -2, hi = 2): Float64Array => Float64Array.from({ length: n }, () => lo + (hi - lo) * r());

/** The scalar L = Σ_k <dy_k, y_k> whose gradient the backward computes. */
export function objective(forward: (inputs: Float64Array[]) => ArrayLike<number>[], inputs: Float64Array[], dys: Float64Array[]): number {
  const ys = forward(inputs);
  let s = 0;
  ys.forEach((y, k) => {
    for (let i = 0; i < y.length; i++) s += dys[k][i] * y[i];
  });
  return s;
}

/** Central differences of `objective` with respect to every element of every input. */
export function numericGrads(forward: (inputs: Float64Array[]) => ArrayLike<number>[], inputs: Float64Array[], dys: Float64Array[], h = 1e-6): Float64Array[] {
  return inputs.map((x, i) =>
    Float64Array.from(x, (_, j) => {
      const plus = inputs.map((a) => a.slice());
      const minus = inputs.map((a) => a.slice());
      plus[i][j] += h;
      minus[i][j] -= h;
      return (objective(forward, plus, dys) - objective(forward, minus, dys)) / (2 * h);
    }),
  );
}

/** Largest |a - b| / max(1, |b|) over all elements. */
export function maxRelError(a: ArrayLike<number>[], b: ArrayLike<number>[]): number {
  let m = 0;
  a.forEach((x, i) => {
    if (x.length !== b[i].length) throw new Error(`length ${x.length} vs ${b[i].length}`);
    for (let j = 0; j < x.length; j++) m = Math.max(m, Math.abs(x[j] - b[i][j]) / Math.max(1, Math.abs(b[i][j])));
  });
  return m;
}

export interface GradCheck {
  analytic: Float64Array[];
  numeric: Float64Array[];
  error: number;
}

/** Symbolic backward (interpreted in f64) against central differences of the interpreted forward. */
export function gradCheck(f: FusedExpr, b: Backward, rows: number, cols: number, seed: number, domain: [number, number] = [-2, 2]): GradCheck {
  const r = rng(seed);
  const inputs = f.inputs.map((k) => randomArray(k === 'vec' ? cols : rows * cols, r, ...domain));
  const dys = f.outputs.map(() => randomArray(rows * cols, r));
  const forward = (xs: Float64Array[]) => evaluateForward(f, { rows, cols, inputs: xs, precision: 'f64' });
  const analytic = evaluateBackward(f, b, { rows, cols, inputs, dys, precision: 'f64' }) as Float64Array[];
  const numeric = numericGrads(forward, inputs, dys);
  return { analytic, numeric, error: maxRelError(analytic, numeric) };
}
