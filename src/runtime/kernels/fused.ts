/**
 * The reference of a `fused_elementwise` step: its serialised expression (src/plan/fused.ts) evaluated with
 * tfjs ops, so tfjs autodiff differentiates it (the generated backward in the kernel table is for the WGSL
 * path; a test holds the two to each other).
 *
 * Broadcasting does the work of the expression's classes: an `elem` input is [rows, cols], a `vec` input
 * [cols], `rowsum` keeps its axis ([rows, 1]) and a constant is a scalar, so every binary op broadcasts as
 * the expression means. Outputs are broadcast to [rows, cols] at the end. Comparisons (and the condition
 * of `select`) carry no gradient, as in the derivative the compiler generates.
 */
import type { FusedExprAttrs, FusedInputKind, FusedSerialNode, FusedSerialProgram } from '../../plan/fused.js';
import { tf, type Tensor } from '../tfjs/index.js';
import { dims, noGrad, type CustomGradFn } from './autodiff.js';

const unary: Record<string, (a: Tensor) => Tensor> = {
  neg: (a) => tf.neg(a),
  exp: (a) => tf.exp(a),
  log: (a) => tf.log(a),
  sqrt: (a) => tf.sqrt(a),
  rsqrt: (a) => tf.rsqrt(a),
  sigmoid: (a) => tf.sigmoid(a),
  silu: (a) => tf.mul(a, tf.sigmoid(a)),
  tanh: (a) => tf.tanh(a),
};
const binary: Record<string, (a: Tensor, b: Tensor) => Tensor> = {
  add: (a, b) => tf.add(a, b),
  sub: (a, b) => tf.sub(a, b),
  mul: (a, b) => tf.mul(a, b),
  div: (a, b) => tf.div(a, b),
  max: (a, b) => tf.maximum(a, b),
  min: (a, b) => tf.minimum(a, b),
};
const compare: Record<string, (a: Tensor, b: Tensor) => Tensor> = {
  gt: (a, b) => tf.greater(a, b),
  ge: (a, b) => tf.greaterEqual(a, b),
  lt: (a, b) => tf.less(a, b),
  le: (a, b) => tf.lessEqual(a, b),
  eq: (a, b) => tf.equal(a, b),
};

/** A comparison as 0/1 floats, constant on the tape (its operands get no gradient through it). */
function cmp(fn: (a: Tensor, b: Tensor) => Tensor, a: Tensor, b: Tensor): Tensor {
  const f = tf.customGrad(((x: Tensor, y: Tensor) => ({ value: tf.cast(fn(x, y), 'float32'), gradFunc: () => [tf.zerosLike(x), tf.zerosLike(y)] })) as unknown as CustomGradFn);
  return f(a, b);
}

const broadcastShape = (shapes: number[][]): number[] => {
  const rank = Math.max(...shapes.map((s) => s.length));
  const out: number[] = [];
  for (let i = 0; i < rank; i++) out.push(Math.max(...shapes.map((s) => s[s.length - rank + i] ?? 1)));
  return out;
};
const widen = (t: Tensor, shape: number[]): Tensor => (t.rank === shape.length && dims(t).every((d, i) => d === shape[i]) ? t : tf.broadcastTo(t, shape));

/** Checks the JSON shape of `attrs.expr`; returns it typed, or a message. */
export function checkFusedExpr(expr: unknown): FusedExprAttrs | string {
  if (!expr || typeof expr !== 'object') return 'attrs.expr is missing';
  const e = expr as Partial<FusedExprAttrs>;
  if (!Array.isArray(e.inputs) || !e.inputs.every((k) => k === 'elem' || k === 'vec')) return 'attrs.expr.inputs must list elem|vec';
  const p = e.forward as Partial<FusedSerialProgram> | undefined;
  if (!p || !Array.isArray(p.nodes) || !Array.isArray(p.roots)) return 'attrs.expr.forward must have nodes and roots';
  for (let i = 0; i < p.nodes.length; i++) {
    const n = p.nodes[i] as unknown;
    if (!Array.isArray(n) || typeof n[0] !== 'string') return `node ${i} is not [op, ...]`;
    const [op, ...rest] = n as FusedSerialNode;
    if (!rest.every((x) => typeof x === 'number')) return `node ${i} (${op}) has a non-number argument`;
    if (op === 'const' || op === 'cols') continue;
    if (op === 'in') {
      if (!(rest[0] >= 0 && rest[0] < e.inputs.length)) return `node ${i} reads input ${rest[0]} of ${e.inputs.length}`;
      continue;
    }
    if (op === 'out' || op === 'dy') return `node ${i}: '${op}' belongs to backward programs`;
    const want = op in unary || op === 'rowsum' ? 1 : op in binary || op in compare ? 2 : op === 'select' ? 3 : -1;
    if (want < 0) return `node ${i}: unknown op '${op}'`;
    if (rest.length !== want) return `node ${i}: ${op} takes ${want} arguments, got ${rest.length}`;
    if (!rest.every((a) => Number.isInteger(a) && a >= 0 && a < i)) return `node ${i}: ${op} refers to a node not before it`;
  }
  const count = p.nodes.length;
  if (!p.roots.every((r) => Number.isInteger(r) && r >= 0 && r < count)) return 'a root is out of range';
  return e as FusedExprAttrs;
}

/**
 * Evaluate a fused step: `inputs` in the order of `expr.inputs` (elem [rows, cols], vec [cols]); returns one
 * [rows, cols] tensor per root. `fail` turns a malformed expression into the caller's error.
 */
export function evalFused(expr: unknown, inputs: Tensor[], outputs: number, fail: (message: string) => Error): Tensor[] {
  const e = checkFusedExpr(expr);
  if (typeof e === 'string') throw fail(e);
  if (inputs.length !== e.inputs.length) throw fail(`${inputs.length} inputs for an expression of ${e.inputs.length}`);
  if (e.forward.roots.length !== outputs) throw fail(`${e.forward.roots.length} roots for ${outputs} outputs`);
  const elem = inputs.find((t, i) => e.inputs[i] === 'elem');
  const cols = dims(inputs[0])[inputs[0].rank - 1];
  const rowsColsOf = (kind: FusedInputKind, t: Tensor) => (kind === 'vec' ? t.rank === 1 && dims(t)[0] === cols : t.rank === 2 && dims(t)[1] === cols);
  inputs.forEach((t, i) => {
    if (!rowsColsOf(e.inputs[i], t)) throw fail(`input ${i} (${e.inputs[i]}) has shape [${t.shape}], expected ${e.inputs[i] === 'vec' ? `[${cols}]` : `[rows, ${cols}]`}`);
  });
  const vals: Tensor[] = [];
  for (const [op, ...a] of e.forward.nodes) {
    let v: Tensor;
    if (op === 'in') v = inputs[a[0]];
    else if (op === 'const') v = tf.scalar(a[0]);
    else if (op === 'cols') v = tf.scalar(cols);
    else if (op === 'rowsum') v = tf.sum(vals[a[0]], -1, true);
    else if (op === 'select') {
      const [c, x, y] = a.map((i) => vals[i]);
      const shape = broadcastShape([dims(c), dims(x), dims(y)]);
      const cond = noGrad(widen(c, shape), (t) => tf.notEqual(t, 0));
      v = tf.where(cond, widen(x, shape), widen(y, shape));
    } else if (op in unary) v = unary[op](vals[a[0]]);
    else if (op in binary) v = binary[op](vals[a[0]], vals[a[1]]);
    else v = cmp(compare[op], vals[a[0]], vals[a[1]]);
    vals.push(v);
  }
  const rows = elem ? dims(elem)[0] : 1;
  return e.forward.roots.map((r) => {
    const v = vals[r];
    return v.rank === 2 && dims(v)[0] === rows && dims(v)[1] === cols ? v : tf.broadcastTo(v, [rows, cols]);
  });
}
