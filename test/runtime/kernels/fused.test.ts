/**
 * fused_elementwise on the reference path: the runtime's tfjs evaluator of the serialised expression
 * (src/runtime/kernels/fused.ts) against (1) the ops the kernel replaced, run through their reference
 * kernels, and (2) for gradients, tfjs autodiff of the evaluator against the backward the compiler generated
 * for the WGSL path (evaluated by the compiler's own interpreter). Every fused kernel of MedCare's -O1 plan.
 */
import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';
import { compileFile, nodeHost } from '../../../src/compiler/index.js';
import { deserialise, evaluate, ExprBuilder, type InputKind, type SerialProgram } from '../../../src/compiler/fusion/expr.js';
import type { Plan, PlanOp, PlanStep } from '../../../src/plan/types.js';
import { checkFusedExpr, evalFused } from '../../../src/runtime/kernels/fused.js';
import { reference, type KernelContext } from '../../../src/runtime/kernels/reference.js';
import { initBackend, tf, type Tensor } from '../../../src/runtime/tfjs/index.js';
import { lcg, relErr } from '../executor/helpers.js';

const root = fileURLToPath(new URL('../../../', import.meta.url));
const ROWS = 5;

interface FusedAttrs {
  expr: { inputs: InputKind[]; forward: SerialProgram };
  cols: number;
  fusedNodes: { id: string; op: PlanOp; inputs: string[]; outputs: string[]; attrs: Record<string, unknown> }[];
}

let plan: Plan;
/** One step per distinct fused kernel. */
let steps: PlanStep[];

beforeAll(async () => {
  await initBackend('cpu');
  const res = compileFile('pipelines/medcare.mcp', nodeHost(root, root), {}, { optLevel: 1 });
  plan = res.plan!;
  const seen = new Map<string, PlanStep>();
  for (const st of plan.stages) for (const f of st.forward) if (f.op === 'fused_elementwise' && !seen.has(f.kernel)) seen.set(f.kernel, f);
  steps = [...seen.values()];
});

const rnd = lcg(99);
const randn = (n: number) => Float32Array.from({ length: n }, () => rnd() * 2 - 1);
const ctx: KernelContext = { rows: 1, seqLen: ROWS, positions: new Int32Array(ROWS), segments: new Int32Array(ROWS).fill(1), cache: new Map() };

function inputsOf(step: PlanStep): Tensor[] {
  const a = step.attrs as unknown as FusedAttrs;
  return a.expr.inputs.map((k) => (k === 'vec' ? tf.tensor1d(randn(a.cols)) : tf.tensor2d(randn(ROWS * a.cols), [ROWS, a.cols])));
}

describe('fused_elementwise reference', () => {
  it('MedCare -O1 has fused kernels of several shapes', () => {
    expect(steps.length).toBeGreaterThanOrEqual(5);
    expect(steps.some((s) => s.outputs.length > 1)).toBe(true);
    expect(steps.some((s) => (s.attrs as unknown as FusedAttrs).expr.inputs.includes('vec'))).toBe(true);
  });

  it('every fused kernel computes what the ops it replaced compute', () => {
    for (const step of steps) {
      const a = step.attrs as unknown as FusedAttrs;
      const xs = inputsOf(step);
      const got = evalFused(a.expr, xs, step.outputs.length, (m) => new Error(m));
      const values = new Map(step.inputs.map((id, i) => [id, xs[i]]));
      for (const n of a.fusedNodes) {
        const outs = reference[n.op](n.inputs.map((i) => values.get(i)!), { node: n.id, op: n.op, inputs: n.inputs, outputs: n.outputs, attrs: n.attrs }, ctx);
        n.outputs.forEach((o, i) => values.set(o, outs[i]));
      }
      step.outputs.forEach((o, i) => expect(relErr(got[i].dataSync(), values.get(o)!.dataSync()), `${step.kernel} output ${o}`).toBeLessThan(1e-5));
    }
  });

  it('tfjs autodiff of the evaluator equals the backward the compiler generated for the WGSL path', () => {
    for (const step of steps) {
      const k = plan.kernels.find((x) => x.id === step.kernel)!;
      const kexpr = (k.attrs as { expr: { inputs: InputKind[]; forward: SerialProgram; backward: { program: SerialProgram; slots: { inputs: number[]; reduce: 'none' | 'cols' }[]; grads: (number | null)[] } } }).expr;
      const cols = (step.attrs as unknown as FusedAttrs).cols;
      const xs = inputsOf(step);
      const dys = step.outputs.map(() => tf.tensor2d(randn(ROWS * cols), [ROWS, cols]));
      const f = (...ins: Tensor[]) => tf.addN(evalFused(kexpr, ins, step.outputs.length, (m) => new Error(m)).map((y, i) => tf.sum(tf.mul(y, dys[i])))) as tf.Scalar;
      const { grads } = tf.engine().gradients(() => f(...xs), xs, undefined, true);
      // The compiler's backward: slot expressions over in / out / dy leaves, `cols` slots summed over rows.
      const E = new ExprBuilder();
      const fwd = deserialise(kexpr.forward, kexpr.inputs, E);
      const env = { rows: ROWS, cols, inputs: xs.map((x) => x.dataSync()), dys: dys.map((d) => d.dataSync()) };
      const outputs = evaluate(fwd, env);
      const slots = evaluate(deserialise(kexpr.backward.program, kexpr.inputs, E), { ...env, outputs });
      kexpr.inputs.forEach((kind, i) => {
        const s = kexpr.backward.grads[i];
        const size = kind === 'vec' ? cols : ROWS * cols;
        let want: ArrayLike<number> = new Float32Array(size);
        if (s !== null) {
          const v = slots[s];
          want = kexpr.backward.slots[s].reduce === 'cols' ? Float32Array.from({ length: cols }, (_, c) => Array.from({ length: ROWS }, (_, r) => v[r * cols + c]).reduce((p, q) => p + q, 0)) : v;
        }
        const got = grads[i] ? grads[i]!.dataSync() : new Float32Array(size);
        expect(relErr(got, want), `${step.kernel} d/d input ${i}`).toBeLessThan(1e-4);
      });
    }
  });

  it('malformed expressions are refused with a message, not evaluated', () => {
    const ok = { inputs: ['elem'], forward: { nodes: [['in', 0], ['exp', 0]], roots: [1] } };
    expect(checkFusedExpr(ok)).toEqual(ok);
    expect(checkFusedExpr({ inputs: ['elem'], forward: { nodes: [['in', 0], ['cube', 0]], roots: [1] } })).toMatch(/unknown op 'cube'/);
    expect(checkFusedExpr({ inputs: ['elem'], forward: { nodes: [['exp', 1], ['in', 0]], roots: [0] } })).toMatch(/not before it/);
    expect(checkFusedExpr({ inputs: ['elem'], forward: { nodes: [['in', 3]], roots: [0] } })).toMatch(/reads input 3/);
    expect(checkFusedExpr({ inputs: ['elem'], forward: { nodes: [['dy', 0]], roots: [0] } })).toMatch(/backward/);
    expect(checkFusedExpr(undefined)).toMatch(/missing/);
  });

  it('select, comparisons, max/min, tanh, constants and row sums broadcast as the expression means', () => {
    // y0 = select(x > 0, tanh(x), min(x, -0.5)) · w ; y1 = rowsum(max(x, 0)) / cols + 2 (a `row` root)
    const expr = {
      inputs: ['elem', 'vec'],
      forward: {
        nodes: [['in', 0], ['const', 0], ['gt', 0, 1], ['tanh', 0], ['const', -0.5], ['min', 0, 4], ['select', 2, 3, 5], ['in', 1], ['mul', 6, 7], ['max', 0, 1], ['rowsum', 9], ['cols'], ['div', 10, 11], ['const', 2], ['add', 12, 13]],
        roots: [8, 14],
      },
    };
    const x = tf.tensor2d(randn(12), [3, 4]);
    const w = tf.tensor1d(randn(4));
    const [y0, y1] = evalFused(expr, [x, w], 2, (m) => new Error(m));
    const X = x.dataSync();
    const W = w.dataSync();
    const want0 = Array.from(X, (v, i) => (v > 0 ? Math.tanh(v) : Math.min(v, -0.5)) * W[i % 4]);
    const want1 = Array.from(X, (_, i) => {
      const r = Math.floor(i / 4);
      return Array.from(X.slice(r * 4, r * 4 + 4)).reduce((s, v) => s + Math.max(v, 0), 0) / 4 + 2;
    });
    expect(relErr(y0.dataSync(), want0)).toBeLessThan(1e-6);
    expect(y1.shape).toEqual([3, 4]);
    expect(relErr(y1.dataSync(), want1)).toBeLessThan(1e-6);
    // The comparison and the select condition carry no gradient; the branches do.
    const g = tf.grad((t: Tensor) => tf.sum(evalFused(expr, [t, w], 2, (m) => new Error(m))[0]))(x);
    expect(relErr(g.dataSync(), Array.from(X, (v, i) => (v > 0 ? 1 - Math.tanh(v) ** 2 : v < -0.5 ? 1 : 0) * W[i % 4]))).toBeLessThan(1e-5);
  });
});
