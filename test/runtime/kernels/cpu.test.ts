/**
 * The CPU kernel table (src/runtime/kernels/cpu.ts) against the reference kernels, forward and gradients, on
 * random inputs of awkward shapes (one row, odd widths, GQA groups, padding), on the `cpu` backend (the same
 * kernels run on wasm: one case there too):
 * - fused_elementwise: the JavaScript compiled from an expression (fused-js.ts) against the compiler's own
 *   interpreter (forward and generated backward), including nested row sums, `vec` gradients, select and
 *   comparisons; every fused kernel of MedCare's -O1 plan against the reference evaluator and its autodiff;
 * - attention (GQA without Tile) and rope (one pass) against the reference;
 * - -O0 and -O1 of the executor's equivalence pipeline through the table: the reference's losses and
 *   gradients; weights after AdamW steps agree as far as Adam lets them (see the last test).
 */
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { compileFile, nodeHost } from '../../../src/compiler/index.js';
import { deriveBackward, evaluate, evaluateBackward, ExprBuilder, serialise, type FusedExpr } from '../../../src/compiler/fusion/expr.js';
import type { FusedExprAttrs } from '../../../src/plan/fused.js';
import type { Plan, PlanOp, PlanStep } from '../../../src/plan/types.js';
import { createStageRunner } from '../../../src/runtime/executor.js';
import { cpuKernels, cpuKernelTable } from '../../../src/runtime/kernels/cpu.js';
import { compileFused } from '../../../src/runtime/kernels/fused-js.js';
import { reference, type Kernel, type KernelContext } from '../../../src/runtime/kernels/reference.js';
import { heapGemmCalls } from '../../../src/runtime/tfjs/gemm-heap.js';
import { initBackend, tf, type Tensor } from '../../../src/runtime/tfjs/index.js';
import { compileInline, lcg, relErr, syntheticBatch, TINY, worst } from '../executor/helpers.js';

const root = fileURLToPath(new URL('../../../', import.meta.url));
const rnd = lcg(4321);
const randn = (n: number, scale = 1) => Float32Array.from({ length: n }, () => (rnd() * 2 - 1) * scale);

beforeAll(() => initBackend('cpu'));

/** A packed context: row r holds two examples split at S/2 + r, then `pad` padding positions. */
function context(rows: number, S: number, pad = 0): KernelContext {
  const positions = new Int32Array(rows * S);
  const segments = new Int32Array(rows * S);
  for (let r = 0; r < rows; r++) {
    const split = Math.min(S - pad, Math.floor(S / 2) + r);
    for (let t = 0; t < S - pad; t++) {
      segments[r * S + t] = t < split ? 1 : 2;
      positions[r * S + t] = t < split ? t : t - split;
    }
  }
  return { rows, seqLen: S, positions, segments, cache: new Map() };
}

/** Outputs and the gradient of Σ_k <R_k, y_k> with respect to every float input, through `table`. */
function valueAndGrads(table: Record<PlanOp, Kernel>, step: PlanStep, inputs: Tensor[], ctx: KernelContext, Rs: Tensor[]): { ys: Float32Array[]; gs: Float32Array[] } {
  return tf.tidy(() => {
    ctx.cache.clear();
    const ys = table[step.op](inputs, step, ctx).map((y) => Float32Array.from(y.dataSync()));
    ctx.cache.clear();
    const f = (...xs: Tensor[]) => tf.addN(table[step.op](xs, step, ctx).map((y, k) => tf.sum(tf.mul(y, Rs[k]!)))) as tf.Scalar;
    const gs = tf.grads(f)(inputs).map((g) => Float32Array.from(g.dataSync()));
    ctx.cache.clear();
    return { ys, gs };
  });
}

function sameAsReference(step: PlanStep, inputs: Tensor[], ctx: KernelContext, tol = 1e-5, nonzero = true): void {
  const fused = cpuKernels({ kernels: [] });
  const outs = reference[step.op](inputs, step, ctx);
  const Rs = outs.map((o) => tf.tensor(randn(o.size), o.shape));
  tf.dispose(outs);
  const a = valueAndGrads(reference, step, inputs, ctx, Rs);
  const b = valueAndGrads(fused, step, inputs, ctx, Rs);
  a.ys.forEach((y, k) => expect(relErr(b.ys[k]!, y), `${step.op} output ${k}`).toBeLessThan(tol));
  a.gs.forEach((g, i) => {
    if (nonzero) expect(Math.max(...g.map(Math.abs)), `${step.op}: the gradient of input ${i} checks something`).toBeGreaterThan(0);
    expect(relErr(b.gs[i]!, g), `${step.op} gradient of input ${i}`).toBeLessThan(tol);
  });
  tf.dispose(Rs);
}

const stepOf = (op: PlanOp, attrs: Record<string, unknown>, inputs = 3, outputs = 1): PlanStep => ({
  node: 'n',
  op,
  kernel: '',
  inputs: Array.from({ length: inputs }, (_, i) => `i${i}`),
  outputs: Array.from({ length: outputs }, (_, i) => `o${i}`),
  attrs,
  flops: 0,
  bytes: 0,
});

describe('fused_elementwise compiled to JavaScript', () => {
  /** The expression with its generated backward, serialised as the plan carries it. */
  function attrsOf(f: FusedExpr, E: ExprBuilder): FusedExprAttrs {
    const b = deriveBackward(f, E);
    return {
      inputs: [...f.inputs],
      forward: serialise(f.outputs) as FusedExprAttrs['forward'],
      backward: { program: serialise(b.slots.map((s) => s.expr)) as FusedExprAttrs['forward'], slots: b.slots.map((s) => ({ inputs: s.inputs, reduce: s.reduce, ...(s.expr.op === 'dy' ? { identityOf: s.expr.value } : {}) })), grads: b.grads },
    };
  }

  it('matches the compiler interpreter: nested row sums, vec gradients, select, comparisons, max, two outputs', () => {
    const E = new ExprBuilder();
    const x = E.input(0, 'elem');
    const y = E.input(1, 'elem');
    const w = E.input(2, 'vec');
    // softmax-like with a second level of row reduction, a clamp, and a select on a comparison
    const z = E.mul(E.add(x, E.mul(y, w)), E.const(0.7));
    const m = E.rowmean(z);
    const c = E.sub(z, m);
    const v = E.rowmean(E.mul(c, c));
    const n = E.mul(c, E.rsqrt(E.add(v, E.const(1e-5))));
    const s = E.select(E.cmp('gt', x, E.const(0)), E.silu(n), E.tanh(E.max(n, y)));
    const out2 = E.add(E.exp(E.mul(E.sigmoid(y), w)), E.rowsum(E.mul(s, s)));
    const f: FusedExpr = { inputs: ['elem', 'elem', 'vec'], outputs: [s, out2] };
    const attrs = attrsOf(f, E);
    const p = compileFused(attrs);
    const b = deriveBackward(f, E);
    // (Not 1 or 2 columns: normalised over them, n is constant (±1), and its gradient is rounding noise.)
    for (const [rows, cols] of [
      [1, 3],
      [1, 7],
      [5, 3],
      [9, 33],
    ] as const) {
      const ins = [randn(rows * cols), randn(rows * cols), randn(cols)];
      const outs = [new Float32Array(rows * cols), new Float32Array(rows * cols)];
      p.forward(rows, cols, ins, outs);
      const want = evaluate(f.outputs, { rows, cols, inputs: ins });
      outs.forEach((o, k) => expect(relErr(o, want[k]!), `forward ${k} at ${rows}x${cols}`).toBeLessThan(1e-5));
      const dys = [randn(rows * cols), randn(rows * cols)];
      const wantG = evaluateBackward(f, b, { rows, cols, inputs: ins, outputs: outs, dys });
      p.grads.forEach((slot, i) => {
        if (slot === null) return;
        const g = new Float32Array(attrs.inputs[i] === 'vec' ? cols : rows * cols);
        p.backward(slot)(rows, cols, ins, outs, dys, [g]);
        expect(relErr(g, wantG[i]!), `gradient of input ${i} at ${rows}x${cols}`).toBeLessThan(1e-4);
      });
    }
  });

  let plan: Plan;
  let steps: PlanStep[];
  beforeAll(() => {
    plan = compileFile('pipelines/medcare.mcp', nodeHost(root, root), {}, { optLevel: 1 }).plan!;
    const seen = new Map<string, PlanStep>();
    for (const st of plan.stages) for (const f of st.forward) if (f.op === 'fused_elementwise' && !seen.has(f.kernel)) seen.set(f.kernel, f);
    steps = [...seen.values()];
  });

  it('every fused kernel of MedCare -O1: forward and gradients of the reference evaluator (tfjs autodiff)', () => {
    expect(steps.length).toBeGreaterThanOrEqual(5);
    const fused = cpuKernels(plan);
    for (const step of steps) {
      const a = step.attrs as { expr: FusedExprAttrs; cols: number };
      for (const rows of [1, 6]) {
        const ctx = context(1, rows);
        const inputs = a.expr.inputs.map((k) => (k === 'vec' ? tf.tensor1d(randn(a.cols)) : tf.tensor2d(randn(rows * a.cols), [rows, a.cols])));
        const Rs = step.outputs.map(() => tf.tensor2d(randn(rows * a.cols), [rows, a.cols]));
        const ref = valueAndGrads(reference, step, inputs, ctx, Rs);
        const got = valueAndGrads(fused, step, inputs, ctx, Rs);
        ref.ys.forEach((y, k) => expect(relErr(got.ys[k]!, y), `${step.kernel} output ${k}`).toBeLessThan(1e-5));
        ref.gs.forEach((g, i) => expect(relErr(got.gs[i]!, g), `${step.kernel} gradient ${i} (rows ${rows})`).toBeLessThan(1e-5));
        tf.dispose([...inputs, ...Rs]);
      }
    }
  });

  it('runs one kernel forward and one gradient pass for all slots (or one per slot), and frees what it makes', async () => {
    const step = steps.find((s) => s.kernel.includes('rmsnorm') && (s.attrs as { expr: FusedExprAttrs }).expr.inputs.filter((k) => k === 'elem').length >= 2)!;
    const a = step.attrs as { expr: FusedExprAttrs; cols: number };
    const fused = cpuKernels(plan);
    const inputs = a.expr.inputs.map((k) => (k === 'vec' ? tf.tensor1d(randn(a.cols)) : tf.tensor2d(randn(4 * a.cols), [4, a.cols])));
    const was = process.env.MCPC_FUSED_GRAD_ONEPASS;
    try {
      // Every elem input shares one slot (a sum feeds the norm), the vec weight has its own: one pass for both, or one each.
      for (const [flag, passes] of [[undefined, 1], ['0', 2]] as const) {
        if (flag === undefined) delete process.env.MCPC_FUSED_GRAD_ONEPASS;
        else process.env.MCPC_FUSED_GRAD_ONEPASS = flag;
        const before = tf.memory().numTensors;
        const info = await tf.profile(() => {
          tf.tidy(() => {
            const f = (...xs: Tensor[]) => tf.sum(fused.fused_elementwise(xs, step, context(1, 4))[0]!) as tf.Scalar;
            tf.grads(f)(inputs).forEach((g) => g.dataSync());
          });
        });
        const count = (name: string) => info.kernels.filter((k) => k.name === name).length;
        expect(count('McpcFused')).toBe(1);
        expect(count('McpcFusedGrad'), `MCPC_FUSED_GRAD_ONEPASS=${flag}`).toBe(passes);
        expect(tf.memory().numTensors).toBe(before);
      }
    } finally {
      if (was === undefined) delete process.env.MCPC_FUSED_GRAD_ONEPASS;
      else process.env.MCPC_FUSED_GRAD_ONEPASS = was;
    }
    tf.dispose(inputs);
  });
});

describe('attention and rope', () => {
  const T3 = (T: number, w: number) => tf.tensor2d(randn(T * w), [T, w]);

  it('attention: GQA, multi-head and single-head, causal or not, padding, against the reference', () => {
    for (const [rows, S, H, KV, d, causal, pad] of [
      [2, 7, 4, 2, 4, true, 2],
      [1, 5, 3, 3, 2, true, 0],
      [3, 4, 4, 1, 6, false, 1],
      [1, 1, 2, 1, 4, true, 0],
    ] as const) {
      const ctx = context(rows, S, pad);
      const T = rows * S;
      // One key per query (S = 1): q and k get a zero gradient, which must still match.
      sameAsReference(stepOf('attention', { heads: H, kvHeads: KV, headDim: d, causal }), [T3(T, H * d), T3(T, KV * d), T3(T, KV * d)], ctx, 1e-5, S > 1);
    }
  });

  it('rope: heads and kv heads, packed positions, against the reference', () => {
    for (const [rows, S, H, KV, d] of [
      [2, 6, 4, 2, 8],
      [1, 3, 1, 1, 2],
      [3, 5, 3, 1, 6],
    ] as const) {
      const ctx = context(rows, S, 1);
      const T = rows * S;
      sameAsReference(stepOf('rope', { heads: H, kvHeads: KV, headDim: d, theta: 10000 }, 2, 2), [T3(T, H * d), T3(T, KV * d)], ctx);
    }
  });

  it('lora_up (the scale on B): against the reference, scales 1 and 2.5, one token', () => {
    for (const [T, r, out, scale] of [
      [7, 4, 9, 2.5],
      [1, 3, 5, 1],
      [33, 16, 176, 0.5],
    ] as const) sameAsReference(stepOf('lora_up', { scale, rank: r }, 2, 1), [T3(T, r), T3(out, r)], context(1, T));
  });

  it('the same kernels on the wasm backend', async () => {
    await initBackend('wasm');
    try {
      const ctx = context(2, 6, 1);
      sameAsReference(stepOf('attention', { heads: 4, kvHeads: 2, headDim: 4, causal: true }), [T3(12, 16), T3(12, 8), T3(12, 8)], ctx, 1e-4);
      sameAsReference(stepOf('rope', { heads: 2, kvHeads: 1, headDim: 4, theta: 10000 }, 2, 2), [T3(12, 8), T3(12, 4)], ctx, 1e-4);
    } finally {
      await initBackend('cpu');
    }
  });
});

describe('concat_linear', () => {
  const T2 = (r: number, c: number) => tf.tensor2d(randn(r * c), [r, c]);
  const parts: { kind: string; out: number; params: string[]; bias?: string; [k: string]: unknown }[] = [
    { kind: 'linear', out: 5, params: ['W'], node: 'a', bias: 'b', attrs: { out: 5 } },
    { kind: 'lora_down', out: 2, params: ['A'], node: 'c', adapter: 'l', attrs: { rank: 2 } },
    { kind: 'moe_down_batched', out: 8, params: ['Ash', 'Ae'], node: 'd', adapter: 'm', attrs: { rows: 8, sharedRank: 2, rank: 2, experts: 3 } },
    { kind: 'router', out: 3, params: ['Wr'], node: 'e', adapter: 'm', bias: 'br', activation: 'softmax', attrs: { experts: 3, activation: 'softmax' } },
  ];
  const inputs = (T: number, inF: number) => [T2(T, inF), T2(5, inF), tf.tensor1d(randn(5)), T2(2, inF), T2(2, inF), tf.tensor3d(randn(3 * 2 * inF), [3, 2, inF]), T2(3, inF), tf.tensor1d(randn(3))];
  const step = (p = parts) => stepOf('concat_linear', { parts: p }, 1 + p.reduce((n, q) => n + q.params.length + (q.bias ? 1 : 0), 0), p.length);

  it('one GEMM split into parts (bias, stacked experts, softmax and sigmoid routers): forward and every gradient', () => {
    for (const [T, inF] of [[7, 5], [1, 9], [12, 3]] as const) sameAsReference(step(), inputs(T, inF), context(1, T));
    const sig = parts.map((p) => (p.kind === 'router' ? { ...p, activation: 'sigmoid' } : p));
    sameAsReference(step(sig), inputs(6, 4), context(1, 6));
    // Two parts without biases.
    sameAsReference(step(parts.slice(1, 3)), [T2(5, 4), T2(2, 4), T2(2, 4), tf.tensor3d(randn(24), [3, 2, 4])], context(1, 5));
  });

  it('differentiates only what is asked (a frozen weight): the same gradients of x and the adapter', () => {
    const ctx = context(1, 6);
    const xs = inputs(6, 4);
    const st = step();
    const R = tf.tensor2d(randn(6 * 18), [6, 18]);
    const g = (table: Record<PlanOp, Kernel>) =>
      tf.tidy(() => {
        const f = (x: Tensor, A: Tensor) => tf.sum(tf.mul(tf.concat(table.concat_linear([x, xs[1]!, xs[2]!, A, ...xs.slice(4)], st, ctx), 1), R)) as tf.Scalar;
        return tf.grads(f)([xs[0]!, xs[3]!]).map((t) => Float32Array.from(t.dataSync()));
      });
    const want = g(reference);
    const got = g(cpuKernels({ kernels: [] }));
    want.forEach((w, i) => expect(relErr(got[i]!, w)).toBeLessThan(1e-5));
  });

  it('parts nobody reads get no gradient and cost nothing wrong: gradients when only some outputs feed the loss', () => {
    const ctx = context(1, 7);
    const xs = inputs(7, 5);
    const st = step();
    const R = [tf.tensor2d(randn(7 * 5), [7, 5]), tf.tensor2d(randn(7 * 8), [7, 8])];
    const g = (table: Record<PlanOp, Kernel>) =>
      tf.tidy(() => {
        const f = (x: Tensor, W: Tensor, Ae: Tensor) => {
          const ys = table.concat_linear([x, W, xs[2]!, xs[3]!, xs[4]!, Ae, ...xs.slice(6)], st, ctx);
          return tf.add(tf.sum(tf.mul(ys[0]!, R[0]!)), tf.sum(tf.mul(ys[2]!, R[1]!))) as tf.Scalar;
        };
        return tf.grads(f)([xs[0]!, xs[1]!, xs[5]!]).map((t) => Float32Array.from(t.dataSync()));
      });
    const want = g(reference);
    const got = g(cpuKernels({ kernels: [] }));
    want.forEach((w, i) => expect(relErr(got[i]!, w)).toBeLessThan(1e-5));
  });

  // concat-shared-input: q, k, v (each base weight with its bias, an adapter A on q and v) on one x, then the
  // gate/up pair of a mixture site (base + router with bias each): several linear parts, biases on each.
  const shared: { kind: string; out: number; params: string[]; bias?: string; [k: string]: unknown }[] = [
    { kind: 'linear', out: 6, params: ['Wq'], node: 'q', site: 'q', bias: 'bq', attrs: { out: 6 } },
    { kind: 'lora_down', out: 2, params: ['Aq'], node: 'qa', site: 'q', adapter: 'l', attrs: { rank: 2 } },
    { kind: 'linear', out: 3, params: ['Wk'], node: 'k', site: 'k', bias: 'bk', attrs: { out: 3 } },
    { kind: 'linear', out: 3, params: ['Wv'], node: 'v', site: 'v', bias: 'bv', attrs: { out: 3 } },
    { kind: 'lora_down', out: 2, params: ['Av'], node: 'va', site: 'v', adapter: 'l', attrs: { rank: 2 } },
    { kind: 'router', out: 3, params: ['Wr'], node: 'r', site: 'v', adapter: 'm', bias: 'br', activation: 'softmax', attrs: { experts: 3, activation: 'softmax' } },
  ];
  const sharedInputs = (T: number, inF: number) => [T2(T, inF), T2(6, inF), tf.tensor1d(randn(6)), T2(2, inF), T2(3, inF), tf.tensor1d(randn(3)), T2(3, inF), tf.tensor1d(randn(3)), T2(2, inF), T2(3, inF), tf.tensor1d(randn(3))];

  it('several linear parts with their own biases (sites merged on one x): forward and every gradient', () => {
    for (const [T, inF] of [[7, 5], [1, 9], [16, 8]] as const) sameAsReference(step(shared), sharedInputs(T, inF), context(1, T));
    // Base parts only (q, k, v without adapters), each with a bias.
    const bases = shared.filter((p) => p.kind === 'linear');
    const xs = sharedInputs(5, 4);
    sameAsReference(step(bases), [xs[0]!, xs[1]!, xs[2]!, xs[4]!, xs[5]!, xs[6]!, xs[7]!], context(1, 5));
  });

  it('on the wasm backend', async () => {
    await initBackend('wasm');
    try {
      sameAsReference(step(), inputs(9, 6), context(1, 9), 1e-4);
      sameAsReference(step(shared), sharedInputs(9, 6), context(1, 9), 1e-4);
    } finally {
      await initBackend('cpu');
    }
  });

  it('in place on the wasm heap where rows are a multiple of 4 and widths of 8: the same forward and gradients', async () => {
    // Widths 16, 8, 4 + 4 (two stacked weights in one part: dW of each read at its columns), 8, 8; x [16, 8].
    const aligned = [
      { kind: 'linear', out: 16, params: ['W'], node: 'a', bias: 'b', attrs: { out: 16 } },
      { kind: 'lora_down', out: 8, params: ['A'], node: 'c', adapter: 'l', attrs: { rank: 8 } },
      { kind: 'moe_down_batched', out: 8, params: ['Ash', 'Ae'], node: 'd', adapter: 'm', attrs: { rows: 8, sharedRank: 4, rank: 2, experts: 2 } },
      { kind: 'router', out: 8, params: ['Wr'], node: 'e', adapter: 'm', bias: 'br', activation: 'softmax', attrs: { experts: 8, activation: 'softmax' } },
      { kind: 'router', out: 8, params: ['Ws'], node: 'f', adapter: 'n', bias: 'bs', activation: 'sigmoid', attrs: { experts: 8, activation: 'sigmoid' } },
    ];
    const xs = (T: number, inF: number) => [T2(T, inF), T2(16, inF), tf.tensor1d(randn(16)), T2(8, inF), T2(4, inF), tf.tensor3d(randn(2 * 2 * inF), [2, 2, inF]), T2(8, inF), tf.tensor1d(randn(8)), T2(8, inF), tf.tensor1d(randn(8))];
    await initBackend('wasm');
    try {
      const before = { ...heapGemmCalls };
      for (const [T, inF] of [[16, 8], [4, 16], [12, 3]] as const) sameAsReference(step(aligned), xs(T, inF), context(1, T), 1e-4);
      // [16, 8] and [4, 16] run every product in place; [12, 3] (K = 3) the forward only.
      expect(heapGemmCalls.forward - before.forward).toBeGreaterThanOrEqual(3);
      expect(heapGemmCalls.dx - before.dx).toBeGreaterThanOrEqual(2);
      expect(heapGemmCalls.dw - before.dw).toBeGreaterThanOrEqual(2 * 6);
      // the routers' softmax and sigmoid gradients and the biases' column sums in WebAssembly on the heap, every case
      expect(heapGemmCalls.activationGrad - before.activationGrad).toBeGreaterThanOrEqual(3 * 2);
      expect(heapGemmCalls.columnSums - before.columnSums).toBeGreaterThanOrEqual(3 * 3);
    } finally {
      await initBackend('cpu');
    }
  });
});

describe('the table on the executor', () => {
  const saved = process.env.MCPC_KERNELS;
  afterAll(() => {
    if (saved === undefined) delete process.env.MCPC_KERNELS;
    else process.env.MCPC_KERNELS = saved;
  });

  it('is the fused table on wasm, the reference on cpu, and MCPC_KERNELS overrides', () => {
    delete process.env.MCPC_KERNELS;
    expect(cpuKernelTable({ kernels: [] }, 'cpu')).toBe(reference);
    expect(cpuKernelTable({ kernels: [] }, 'wasm')).not.toBe(reference);
    process.env.MCPC_KERNELS = 'reference';
    expect(cpuKernelTable({ kernels: [] }, 'wasm')).toBe(reference);
    process.env.MCPC_KERNELS = 'fused';
    expect(cpuKernelTable({ kernels: [] }, 'cpu')).not.toBe(reference);
    expect(cpuKernelTable({ kernels: [] }, 'webgpu')).toBe(reference);
    process.env.MCPC_KERNELS = 'fast';
    expect(() => cpuKernelTable({ kernels: [] }, 'cpu')).toThrow(/MCPC_KERNELS/);
  });

  // shared: 0 — routed experts only: -O1 has moe_down_routed (the A side on the top-k only) in the fused table.
  it.each([1, 0])('-O0 and -O1 through the fused table (mixture shared: %i): the reference -O0 loss and gradients; weights after AdamW steps', async (shared) => {
    const src = `pipeline equiv
model base = ${TINY}
data d = jsonl("d.jsonl")
adapter attn  = lora(r: 4, alpha: 8)                                                                   at layers[*].attn.{q, k, v, o}
adapter knowledge = lora(r: 4, alpha: 8, experts: 2)                                                   at layers[*].mlp.{gate, up, down}
adapter noise = moe_lora(experts: 4, top_k: 2, r: 4, alpha: 8, shared: ${shared}, load_balance: 0.01)          at layers[*].mlp.{gate, up, down}
stage one {
  train attn, knowledge, noise on d
  steps 3
  lr 1e-2
  schedule constant
  batch 4
  micro_batch 2
  max_len 32
}
`;
    const [p0, p1] = compileInline(src).plans as [Plan, Plan];
    expect(p1.stages[0].forward.filter((f) => f.op === 'moe_down_routed')).toHaveLength(shared ? 0 : 3);
    const mbs = [syntheticBatch(2, 32, 11), syntheticBatch(2, 32, 12)];
    process.env.MCPC_KERNELS = 'reference';
    const ref = await createStageRunner(p0, 'one');
    process.env.MCPC_KERNELS = 'fused';
    const runners = [await createStageRunner(p0, 'one'), await createStageRunner(p1, 'one')];
    try {
      const g = await ref.gradients(mbs);
      for (const r of runners) {
        const h = await r.gradients(mbs);
        expect(relErr([h.loss], [g.loss])).toBeLessThan(1e-5);
        expect(worst(h.grads, g.grads).err).toBeLessThan(1e-4);
      }
      for (let i = 0; i < 3; i++) {
        const want = (await ref.step(mbs)).loss;
        for (const r of runners) expect(relErr([(await r.step(mbs)).loss], [want])).toBeLessThan(1e-4);
      }
      // Adam divides by sqrt(v): an entry whose gradient is near Adam's eps (1e-8) turns f32 summation-order
      // noise into a step difference of a sizeable part of lr, so weights agree to a small fraction of lr
      // absolutely (observed: 1.1e-5 with lr 1e-2), not to 1e-4 relatively.
      const w = await ref.parameters();
      for (const r of runners) {
        const p = await r.parameters();
        let diff = 0;
        for (const [k, v] of w) {
          const u = p.get(k);
          if (u) for (let i = 0; i < v.length; i++) diff = Math.max(diff, Math.abs(v[i]! - u[i]!));
        }
        expect(diff).toBeLessThan(1e-2 * 1e-2);
      }
    } finally {
      [ref, ...runners].forEach((r) => r.dispose());
    }
  });
});
