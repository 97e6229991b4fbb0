/**
 * fused_elementwise compiled to WebAssembly SIMD (src/runtime/kernels/fused-wasm.ts) against the JavaScript
 * version (fused-js.ts): every op on awkward row lengths, exp/log/tanh/sigmoid/silu accuracy over wide
 * ranges and special values, every fused kernel of MedCare's -O1 plan forward and every backward slot (on
 * plain arrays, through the copy, and in place on tfjs-backend-wasm's heap, and through tfjs on `wasm` with
 * MCPC_FUSED_WASM on and off), and random well-formed expressions.
 */
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { compileFile, nodeHost } from '../../../src/compiler/index.js';
import type { FusedExprAttrs, FusedInputKind, FusedSerialNode, FusedUnaryOp } from '../../../src/plan/fused.js';
import type { Plan } from '../../../src/plan/types.js';
import { fusedOp, keptLogisticCount, releaseFusedGrads } from '../../../src/runtime/kernels/cpu-ops.js';
import { compileFused, compileFusedJs, keepLogistic } from '../../../src/runtime/kernels/fused-js.js';
import { emitFused, fusedWasmCalls, fusedWasmEnabled, instantiateFused, shareLogistic, type WasmRoot } from '../../../src/runtime/kernels/fused-wasm.js';
import { initBackend, tf, type Tensor } from '../../../src/runtime/tfjs/index.js';
import type { WasmBackendLike } from '../../../src/runtime/tfjs/wasm-extra.js';
import { lcg } from '../executor/helpers.js';

const root = fileURLToPath(new URL('../../../', import.meta.url));
const COLS = [1, 3, 4, 5, 17, 64, 176];

type Fn = ReturnType<typeof compileFusedJs>;
const wasmFn = (nodes: FusedSerialNode[], kinds: FusedInputKind[], roots: WasmRoot[]): Fn => instantiateFused(emitFused(nodes, kinds, roots));

const rnd = lcg(2024);
const randn = (n: number, scale = 1) => Float32Array.from({ length: n }, () => (rnd() * 2 - 1) * scale);

/** |a − b| within atol + rtol·|b| elementwise (NaN matches NaN, ±∞ itself). Returns the first offender. */
function mismatch(a: Float32Array, b: Float32Array, rtol: number, atol: number): string | null {
  if (a.length !== b.length) return `length ${a.length} vs ${b.length}`;
  for (let i = 0; i < a.length; i++) {
    const x = a[i]!;
    const y = b[i]!;
    if (Number.isNaN(x) && Number.isNaN(y)) continue;
    if (x === y) continue;
    if (!(Math.abs(x - y) <= atol + rtol * Math.abs(y))) return `[${i}]: ${x} vs ${y}`;
  }
  return null;
}

/** Run a program both ways on the same inputs; the outputs of each. */
function both(nodes: FusedSerialNode[], kinds: FusedInputKind[], roots: WasmRoot[], rows: number, cols: number, ins: Float32Array[], ys: Float32Array[] = [], dys: Float32Array[] = []) {
  const size = (r: WasmRoot) => (r.reduce === 'cols' ? cols : rows * cols);
  const a = roots.map((r) => new Float32Array(size(r)).fill(12345));
  const b = roots.map((r) => new Float32Array(size(r)));
  wasmFn(nodes, kinds, roots)(rows, cols, ins, ys, dys, a);
  compileFusedJs(nodes, kinds, roots)(rows, cols, ins, ys, dys, b);
  return { wasm: a, js: b };
}

beforeAll(() => initBackend('cpu'));

describe('fused expressions in WebAssembly SIMD', () => {
  it('is on here (Node has WebAssembly SIMD; MCPC_FUSED_WASM=0 turns it off)', () => {
    const was = process.env.MCPC_FUSED_WASM;
    expect(fusedWasmEnabled()).toBe(was !== '0');
    process.env.MCPC_FUSED_WASM = '0';
    expect(fusedWasmEnabled()).toBe(false);
    if (was === undefined) delete process.env.MCPC_FUSED_WASM;
    else process.env.MCPC_FUSED_WASM = was;
  });

  const unaries = ['neg', 'exp', 'log', 'sqrt', 'rsqrt', 'sigmoid', 'silu', 'tanh'] as const;
  const binaries = ['add', 'sub', 'mul', 'div', 'max', 'min', 'gt', 'ge', 'lt', 'le', 'eq'] as const;

  it('every op, elem and vec operands, on row lengths off the 4-lane width', () => {
    for (const cols of COLS)
      for (const rows of [1, 3]) {
        // Some equal values so the comparisons, max and min see ties; zeros and negatives for log and sqrt.
        // NaN, ±0 and ±∞ too: max/min/comparisons/select must treat them as the JavaScript does.
        const x = randn(rows * cols, 3).map((v, i) => (i % 5 === 0 ? 0 : i % 7 === 0 ? 1 : i % 11 === 2 ? NaN : i % 13 === 4 ? Infinity : v));
        const y = randn(rows * cols, 3).map((v, i) => (i % 7 === 0 ? 1 : i % 3 === 1 ? -0 : i % 9 === 6 ? NaN : i % 13 === 9 ? -Infinity : v));
        const w = randn(cols, 2);
        for (const op of unaries) {
          const { wasm, js } = both([['in', 0], [op, 0]], ['elem'], [{ node: 1, reduce: 'none' }], rows, cols, [x]);
          expect(mismatch(wasm[0]!, js[0]!, 4e-7, 1e-30), `${op} at ${rows}x${cols}`).toBeNull();
        }
        for (const op of binaries) {
          const { wasm, js } = both([['in', 0], ['in', 1], ['in', 2], [op, 0, 1], [op, 2, 0]], ['elem', 'elem', 'vec'], [{ node: 3, reduce: 'none' }, { node: 4, reduce: 'none' }], rows, cols, [x, y, w]);
          wasm.forEach((o, k) => expect(mismatch(o, js[k]!, 1e-7, 0), `${op} (root ${k}) at ${rows}x${cols}`).toBeNull());
        }
        const sel = both([['in', 0], ['in', 1], ['in', 2], ['select', 0, 1, 2], ['gt', 0, 1], ['select', 4, 2, 0]], ['elem', 'elem', 'vec'], [{ node: 3, reduce: 'none' }, { node: 5, reduce: 'none' }], rows, cols, [x, y, w]);
        sel.wasm.forEach((o, k) => expect(mismatch(o, sel.js[k]!, 0, 0), `select ${k} at ${rows}x${cols}`).toBeNull());
        // consts (incl. non-finite), cols, a rowsum, a second level of rowsum, and a vec gradient summed over the rows.
        const nodes: FusedSerialNode[] = [
          ['in', 0], ['in', 1], ['cols'], ['const', 1e-5], ['rowsum', 0], ['div', 4, 2], ['sub', 0, 5], ['mul', 6, 6],
          ['rowsum', 7], ['div', 8, 2], ['add', 9, 3], ['rsqrt', 10], ['mul', 6, 11], ['mul', 12, 1], ['const', Infinity], ['min', 13, 14],
        ];
        const r = both(nodes, ['elem', 'vec'], [{ node: 15, reduce: 'none' }, { node: 13, reduce: 'cols' }, { node: 11, reduce: 'none' }], rows, cols, [x, w]);
        r.wasm.forEach((o, k) => expect(mismatch(o, r.js[k]!, 2e-5, 2e-5), `normalisation root ${k} at ${rows}x${cols}`).toBeNull());
      }
  });

  it('out and dy leaves, and rows = 0', () => {
    const nodes: FusedSerialNode[] = [['out', 0], ['dy', 0], ['dy', 1], ['mul', 0, 1], ['add', 3, 2]];
    const ys = [randn(15)];
    const dys = [randn(15), randn(15)];
    const r = both(nodes, [], [{ node: 4, reduce: 'none' }], 3, 5, [], ys, dys);
    expect(mismatch(r.wasm[0]!, r.js[0]!, 1e-6, 1e-7)).toBeNull(); // y·d + d' rounded twice in f32, once in f64
    const z = both(nodes, [], [{ node: 4, reduce: 'cols' }], 0, 5, [], [new Float32Array(0)], [new Float32Array(0), new Float32Array(0)]);
    expect(Array.from(z.wasm[0]!)).toEqual([0, 0, 0, 0, 0]);
  });
});

// --- accuracy of the math functions -------------------------------------------------------------------------------

const f32bits = new Int32Array(1);
const f32 = new Float32Array(f32bits.buffer);
/** Distance in units in the last place between two f32 values of the same sign. */
function ulps(a: number, b: number): number {
  if (a === b) return 0;
  f32[0] = a;
  const ia = f32bits[0]!;
  f32[0] = b;
  const ib = f32bits[0]!;
  if (ia < 0 !== ib < 0) return Infinity;
  return Math.abs(ia - ib);
}

describe('silu as x·sigmoid(x) where the program has sigmoid(x) (shareLogistic)', () => {
  it('rewrites only then, and agrees with the direct silu within 2 ulp, at 0, ±∞, NaN and saturation too', () => {
    const nodes: FusedSerialNode[] = [['in', 0], ['sigmoid', 0], ['silu', 0]];
    expect(shareLogistic(nodes, new Set([0, 1, 2]))[2]).toEqual(['mul', 0, 1]);
    expect(shareLogistic(nodes, new Set([0, 2]))[2]).toEqual(['silu', 0]); // sigmoid not needed: silu as it is
    expect(shareLogistic([['in', 0], ['silu', 0], ['sigmoid', 0]], new Set([0, 1, 2]))[1]).toEqual(['silu', 0]); // sigmoid after it
    const x = Float32Array.from([0, -0, 1e-30, -1e-30, 0.5, -0.5, 3, -3, 20, -20, 88, -88, 100, -100, 1e30, -1e30, Infinity, -Infinity, NaN, ...randn(997, 30)]);
    const cols = x.length;
    const alone = new Float32Array(cols);
    wasmFn(nodes, ['elem'], [{ node: 2, reduce: 'none' }])(1, cols, [x], [], [], [alone]);
    const both = [new Float32Array(cols), new Float32Array(cols)];
    wasmFn(nodes, ['elem'], [{ node: 1, reduce: 'none' }, { node: 2, reduce: 'none' }])(1, cols, [x], [], [], both);
    expect(mismatch(both[1]!, alone, 2.5e-7, 1e-38)).toBeNull();
  });
});

describe('exp, log, tanh, sigmoid, silu accuracy (f32)', () => {
  const specials = [0, -0, 1, -1, 1e-45, -1e-45, 1e-40, 1.17549435e-38, 1e-30, 0.5, 0.625, -0.625, 0.6249, 2, 10, -10, 20, -20, 50, -50, 80, 87, 88, 88.5, 88.72, 88.73, 89, 100, -87, -87.4, -88, -100, -103, -103.9, -104, -105, -200, 1e10, -1e10, 3.4e38, -3.4e38, Infinity, -Infinity, NaN];
  const grid = (lo: number, hi: number, n: number) => Float32Array.from({ length: n }, (_, i) => lo + ((hi - lo) * i) / (n - 1));
  const sample = (xs: Float32Array) => {
    const out = new Float32Array(xs.length);
    wasmFn([['in', 0], [op, 0]], ['elem'], [{ node: 1, reduce: 'none' }])(1, xs.length, [xs], [], [], [out]);
    return out;
  };
  let op: FusedUnaryOp = 'exp';
  const run = (name: FusedUnaryOp, xs: Float32Array) => {
    op = name;
    return sample(xs);
  };
  const cat = (...as: ArrayLike<number>[]) => Float32Array.from(as.flatMap((a) => Array.from(a)));

  it('exp: within 2 ulp over [−104, 89] (denormal results within 1e-45), 0 below, ∞ above, NaN kept', () => {
    const xs = cat(grid(-104, 89, 40001), grid(-1, 1, 4001), specials);
    const got = run('exp', xs);
    for (let i = 0; i < xs.length; i++) {
      const want = Math.fround(Math.exp(xs[i]!));
      const g = got[i]!;
      if (Number.isNaN(want)) expect(g, `exp(${xs[i]})`).toBeNaN();
      else if (want === 0 || want === Infinity) expect(g, `exp(${xs[i]})`).toBe(want);
      else if (want < 1.17549435e-38) expect(Math.abs(g - want), `exp(${xs[i]})`).toBeLessThanOrEqual(1.5e-45);
      else expect(ulps(g, want), `exp(${xs[i]}) = ${g} vs ${want}`).toBeLessThanOrEqual(2);
    }
    expect(run('exp', Float32Array.from([-Infinity, Infinity, 1000, -1000]))).toEqual(Float32Array.from([0, Infinity, Infinity, 0]));
  });

  it('log: within 2 ulp on (0, 3.4e38] incl. denormals; log 0 = −∞, log of a negative = NaN, log ∞ = ∞', () => {
    const pos = Float32Array.from({ length: 40000 }, (_, i) => Math.fround(Math.exp(-103 + (190 * i) / 39999)));
    const xs = cat(pos, grid(0.5, 2, 4001), specials);
    const got = run('log', xs);
    for (let i = 0; i < xs.length; i++) {
      const x = xs[i]!;
      const want = Math.fround(Math.log(x));
      const g = got[i]!;
      if (Number.isNaN(want)) expect(g, `log(${x})`).toBeNaN();
      else if (!Number.isFinite(want) || want === 0) expect(g, `log(${x})`).toBe(want);
      else expect(ulps(g, want), `log(${x}) = ${g} vs ${want}`).toBeLessThanOrEqual(2);
    }
  });

  it('tanh, sigmoid, silu: relative error < 1e-6 (absolute near 0), saturated without NaN', () => {
    const xs = cat(grid(-30, 30, 30001), grid(-1e-3, 1e-3, 2001), specials);
    for (const [name, ref] of [
      ['tanh', Math.tanh],
      ['sigmoid', (x: number) => 1 / (1 + Math.exp(-x))],
      ['silu', (x: number) => x / (1 + Math.exp(-x))],
    ] as const) {
      const got = run(name, xs);
      for (let i = 0; i < xs.length; i++) {
        const want = Math.fround(ref(xs[i]!));
        const g = got[i]!;
        if (Number.isNaN(want)) expect(g, `${name}(${xs[i]})`).toBeNaN();
        else if (!Number.isFinite(want)) expect(g, `${name}(${xs[i]})`).toBe(want);
        else expect(Math.abs(g - want), `${name}(${xs[i]}) = ${g} vs ${want}`).toBeLessThanOrEqual(1e-6 * Math.abs(want) + 1e-37);
      }
    }
    const big = Float32Array.from([-1e30, -1e4, -200, 200, 1e4, 1e30, -Infinity, Infinity]);
    expect(Array.from(run('sigmoid', big))).toEqual([0, 0, 0, 1, 1, 1, 0, 1]);
    expect(Array.from(run('tanh', big))).toEqual([-1, -1, -1, 1, 1, 1, -1, 1]);
    const s = run('silu', big);
    expect(Array.from(s.slice(0, 6)).map((v) => (Object.is(v, -0) ? 0 : v))).toEqual(Array.from(Float32Array.from([0, 0, 0, 200, 1e4, 1e30])));
    expect(s[7]).toBe(Infinity);
    // silu(−∞) = −∞ / ∞ is NaN in the JavaScript version too.
    expect(s[6]).toBeNaN();
  });
});

// --- the real kernels ------------------------------------------------------------------------------------------

describe('the fused kernels of a compiled plan', () => {
  let plan: Plan;
  const kernels: { name: string; expr: FusedExprAttrs; cols: number }[] = [];
  beforeAll(() => {
    plan = compileFile('pipelines/medcare.mcp', nodeHost(root, root), {}, { optLevel: 1 }).plan!;
    const table = new Map(plan.kernels.map((k) => [k.id, k.attrs as { expr?: FusedExprAttrs } | undefined]));
    const seen = new Set<string>();
    for (const st of plan.stages)
      for (const step of st.forward) {
        if (step.op !== 'fused_elementwise' || seen.has(step.kernel)) continue;
        seen.add(step.kernel);
        const expr = table.get(step.kernel)?.expr;
        if (expr?.backward) kernels.push({ name: step.kernel, expr, cols: (step.attrs as { cols: number }).cols });
      }
  });

  /** Inputs, saved outputs and upstream gradients of a kernel at [rows, cols]. */
  function data(expr: FusedExprAttrs, rows: number, cols: number) {
    const ins = expr.inputs.map((k) => randn(k === 'vec' ? cols : rows * cols));
    const ys = expr.forward.roots.map(() => new Float32Array(rows * cols));
    compileFusedJs(expr.forward.nodes, expr.inputs, expr.forward.roots.map((node) => ({ node, reduce: 'none' })))(rows, cols, ins, [], [], ys);
    const dys = expr.forward.roots.map(() => randn(rows * cols));
    return { ins, ys, dys };
  }

  it('MedCare -O1 has several, with backward slots summed over the rows', () => {
    expect(kernels.length).toBeGreaterThanOrEqual(5);
    expect(kernels.some((k) => k.expr.backward!.slots.some((s) => s.reduce === 'cols'))).toBe(true);
  });

  it('forward and every backward slot agree with JavaScript, at the plan’s width and at awkward ones', () => {
    for (const { name, expr, cols: planCols } of kernels)
      for (const [rows, cols] of [
        [1, planCols],
        [7, planCols],
        [3, 5],
        [2, 17],
      ] as const) {
        const { ins, ys, dys } = data(expr, rows, cols);
        const f = both(expr.forward.nodes, expr.inputs, expr.forward.roots.map((node) => ({ node, reduce: 'none' as const })), rows, cols, ins);
        f.wasm.forEach((o, k) => expect(mismatch(o, f.js[k]!, 1e-5, 1e-6), `${name} forward ${k} at ${rows}x${cols}`).toBeNull());
        const bw = expr.backward!;
        bw.slots.forEach((s, slot) => {
          const g = both(bw.program.nodes, expr.inputs, [{ node: bw.program.roots[slot]!, reduce: s.reduce }], rows, cols, ins, ys, dys);
          // Gradients through a normalisation over few columns are differences of nearly equal terms: absolute tolerance.
          expect(mismatch(g.wasm[0]!, g.js[0]!, 1e-4, 1e-5 * Math.max(1, rows)), `${name} slot ${slot} (${s.reduce}) at ${rows}x${cols}`).toBeNull();
        });
      }
  });

  it('every backward slot in one pass (one root per slot) equals each slot alone: bit for bit in JavaScript, within a few ulp in WebAssembly', () => {
    for (const { name, expr, cols: planCols } of kernels)
      for (const [rows, cols] of [
        [7, planCols],
        [3, 5],
      ] as const) {
        const { ins, ys, dys } = data(expr, rows, cols);
        const bw = expr.backward!;
        const all = bw.slots.map((s, slot) => ({ node: bw.program.roots[slot]!, reduce: s.reduce }));
        const one = both(bw.program.nodes, expr.inputs, all, rows, cols, ins, ys, dys);
        all.forEach((r, slot) => {
          const alone = both(bw.program.nodes, expr.inputs, [r], rows, cols, ins, ys, dys);
          // WebAssembly: silu as x·sigmoid(x) where the program has sigmoid(x) too (fused-wasm.ts shareLogistic), a few ulp.
          expect(mismatch(one.wasm[slot]!, alone.wasm[0]!, 1e-6, 1e-7), `${name} slot ${slot} (${r.reduce}) at ${rows}x${cols}, wasm`).toBeNull();
          expect(mismatch(one.js[slot]!, alone.js[0]!, 0, 0), `${name} slot ${slot} (${r.reduce}) at ${rows}x${cols}, js`).toBeNull();
        });
        // And through compileFused, slots in any order.
        const c = compileFused(expr);
        const order = all.map((_, k) => k).reverse();
        const outs = order.map((s) => new Float32Array(bw.slots[s]!.reduce === 'cols' ? cols : rows * cols));
        c.backwardSlots(order)(rows, cols, ins, ys, dys, outs);
        order.forEach((s, k) => expect(mismatch(outs[k]!, one.wasm[s]!, 0, 0), `${name} backwardSlots slot ${s}`).toBeNull());
      }
  });

  it('the SwiGLU kernels keep their logistic (keepLogistic); with it given, the backward equals the one that computes it, the forward within 2 ulp', () => {
    const keeps = kernels.filter((k) => keepLogistic(k.expr));
    expect(keeps.map((k) => k.name.split('.')[1]).sort()).toEqual(['add2_swiglu', 'swiglu']);
    expect(kernels.filter((k) => k.name.includes('rmsnorm')).every((k) => !keepLogistic(k.expr))).toBe(true);
    for (const { name, expr, cols: planCols } of keeps)
      for (const [rows, cols] of [[7, planCols], [3, 5], [2, 17]] as const) {
        const c = compileFused(expr);
        const { ins, ys, dys } = data(expr, rows, cols);
        c.forward(rows, cols, ins, ys);
        const sig = new Float32Array(rows * cols).fill(NaN);
        const ys2 = expr.forward.roots.map(() => new Float32Array(rows * cols));
        c.keep!.forward(rows, cols, ins, [...ys2, sig]);
        ys2.forEach((y, k) => expect(mismatch(y, ys[k]!, 3e-7, 1e-7), `${name} forward ${k} at ${rows}x${cols}`).toBeNull());
        expect(sig.every((v) => v >= 0 && v <= 1), `${name}: the kept logistic is written`).toBe(true);
        const slots = c.slots.map((_, i) => i);
        const size = (sl: number) => (c.slots[sl]!.reduce === 'cols' ? cols : rows * cols);
        const [o1, o2] = [slots.map((sl) => new Float32Array(size(sl))), slots.map((sl) => new Float32Array(size(sl)))];
        c.backwardSlots(slots)(rows, cols, ins, ys, dys, o1);
        c.keep!.backwardSlots(slots)(rows, cols, [...ins, sig], ys, dys, o2);
        o2.forEach((o, k) => expect(mismatch(o, o1[k]!, 0, 0), `${name} slot ${k} at ${rows}x${cols}`).toBeNull());
      }
  });

  describe('on the wasm backend', () => {
    beforeAll(() => initBackend('wasm'));
    afterAll(() => initBackend('cpu'));

    it('through tfjs under a tape the forward keeps the logistic for its backward: the same gradients as MCPC_FUSED_KEEP=0, the blocks freed', () => {
      const { expr, cols } = kernels.find((k) => k.name.includes('.swiglu'))!;
      const rows = 12;
      const p = compileFused(expr);
      const ins = expr.inputs.map(() => randn(rows * cols));
      const dy = randn(rows * cols);
      const run = () =>
        tf.tidy(() => {
          const xs = ins.map((a) => tf.tensor2d(a, [rows, cols]));
          const f = (...t: Tensor[]) => tf.sum(tf.mul(fusedOp(p, t, rows, cols)[0]!, tf.tensor2d(dy, [rows, cols])));
          return tf.grads(f)(xs).map((g) => Float32Array.from(g.dataSync()));
        });
      const kept = run();
      expect(keptLogisticCount(), 'kept until the next forward sweeps it').toBe(1);
      process.env.MCPC_FUSED_KEEP = '0';
      let plain: Float32Array[];
      try {
        plain = run();
      } finally {
        delete process.env.MCPC_FUSED_KEEP;
      }
      expect(keptLogisticCount(), 'swept by the next forward').toBe(0);
      kept.forEach((g, i) => expect(mismatch(g, plain[i]!, 0, 0), `gradient ${i}`).toBeNull());
      // no tape: nothing kept
      tf.tidy(() => fusedOp(p, ins.map((a) => tf.tensor2d(a, [rows, cols])), rows, cols));
      expect(keptLogisticCount()).toBe(0);
    });

    it('runs in place on the heap (same results as through the copy)', () => {
      const backend = tf.backend() as unknown as WasmBackendLike;
      for (const { name, expr, cols } of kernels.slice(0, 6)) {
        const rows = 9;
        const { ins, ys, dys } = data(expr, rows, cols);
        const bw = expr.backward!;
        const progs = [
          { nodes: expr.forward.nodes, roots: expr.forward.roots.map((node) => ({ node, reduce: 'none' as const })) },
          ...bw.slots.map((s, i) => ({ nodes: bw.program.nodes, roots: [{ node: bw.program.roots[i]!, reduce: s.reduce }] })),
        ];
        for (const p of progs) {
          const fn = wasmFn(p.nodes, expr.inputs, p.roots);
          const size = (r: WasmRoot) => (r.reduce === 'cols' ? cols : rows * cols);
          const viaCopy = p.roots.map((r) => new Float32Array(size(r)));
          fn(rows, cols, ins, ys, dys, viaCopy);
          const tensors = [...ins, ...ys, ...dys].map((a) => tf.tensor1d(a));
          const outs = p.roots.map((r) => tf.fill([size(r)], 7) as Tensor); // not zero: the kernel must overwrite
          const view = (t: Tensor) => backend.typedArrayFromHeap(t) as Float32Array;
          const v = tensors.map(view);
          const n = ins.length;
          const k = ys.length;
          const before = v.map((a) => Float32Array.from(a));
          const calls = { ...fusedWasmCalls };
          fn(rows, cols, v.slice(0, n), v.slice(n, n + k), v.slice(n + k), outs.map(view));
          expect(fusedWasmCalls.inPlace, 'ran in place').toBe(calls.inPlace + 1);
          expect(fusedWasmCalls.copied).toBe(calls.copied);
          outs.forEach((o, i) => expect(mismatch(o.dataSync() as Float32Array, viaCopy[i]!, 0, 0), `${name} in place`).toBeNull());
          v.forEach((a, i) => expect(mismatch(view(tensors[i]!), before[i]!, 0, 0), `${name}: inputs untouched`).toBeNull());
          tf.dispose([...tensors, ...outs]);
        }
      }
    });

    it('through tfjs (fusedOp and its gradient, on a heap of freed NaNs): MCPC_FUSED_WASM on and off agree', () => {
      const was = process.env.MCPC_FUSED_WASM;
      try {
        for (const { name, expr, cols } of kernels) {
          const rows = 6;
          const p = compileFused(expr);
          const ins = expr.inputs.map((k) => randn(k === 'vec' ? cols : rows * cols));
          const dys = expr.forward.roots.map(() => randn(rows * cols));
          const run = () =>
            tf.tidy(() => {
              // Freed NaNs where the kernels' outputs will be allocated: McpcFused and McpcFusedGrad write every
              // element (writesAll: no zero fill), so none may survive into a result.
              tf.dispose(tf.fill([4 * rows * cols + 64], NaN));
              const xs = ins.map((a, i) => (expr.inputs[i] === 'vec' ? tf.tensor1d(a) : tf.tensor2d(a, [rows, cols])));
              const f = (...t: Tensor[]) => {
                const outs = fusedOp(p, t, rows, cols);
                return outs.reduce<Tensor>((s, o, i) => tf.add(s, tf.sum(tf.mul(o, tf.tensor2d(dys[i]!, [rows, cols])))), tf.scalar(0));
              };
              const outs = fusedOp(p, xs, rows, cols).map((t) => t.dataSync() as Float32Array);
              const grads = tf.grads(f)(xs).map((t) => t.dataSync() as Float32Array);
              return [...outs, ...grads].map((a) => Float32Array.from(a));
            });
          process.env.MCPC_FUSED_WASM = '0';
          const js = run();
          delete process.env.MCPC_FUSED_WASM;
          const calls = { ...fusedWasmCalls };
          const wasm = run();
          expect(fusedWasmCalls.inPlace, `${name}: the tfjs kernels ran in place`).toBeGreaterThan(calls.inPlace);
          expect(fusedWasmCalls.copied).toBe(calls.copied);
          wasm.forEach((a, i) => expect(mismatch(a, js[i]!, 1e-4, 1e-5), `${name} result ${i}`).toBeNull());
        }
      } finally {
        if (was === undefined) delete process.env.MCPC_FUSED_WASM;
        else process.env.MCPC_FUSED_WASM = was;
      }
    });
  });
});

describe('the gradient in one pass through tfjs (MCPC_FUSED_GRAD_ONEPASS)', () => {
  let kernels: { name: string; expr: FusedExprAttrs; cols: number }[] = [];
  beforeAll(async () => {
    await initBackend('wasm');
    const plan = compileFile('pipelines/medcare.mcp', nodeHost(root, root), {}, { optLevel: 1 }).plan!;
    const seen = new Set<string>();
    for (const k of plan.kernels) {
      const expr = (k.attrs as { expr?: FusedExprAttrs } | undefined)?.expr;
      if (!expr?.backward || seen.has(JSON.stringify(expr))) continue;
      seen.add(JSON.stringify(expr));
      const step = plan.stages.flatMap((st) => st.forward).find((f) => f.kernel === k.id);
      if (step) kernels.push({ name: k.id, expr, cols: (step.attrs as { cols: number }).cols });
    }
    kernels = kernels.slice(0, 8);
  });
  afterAll(() => initBackend('cpu'));

  /** The gradients of Σ dy·output w.r.t. the inputs in `wrt` (the others constants), and the McpcFusedGrad calls. */
  async function gradsOf(expr: FusedExprAttrs, rows: number, cols: number, ins: Float32Array[], dys: Float32Array[], wrt: number[], onePass: boolean) {
    if (onePass) delete process.env.MCPC_FUSED_GRAD_ONEPASS;
    else process.env.MCPC_FUSED_GRAD_ONEPASS = '0';
    const p = compileFused(expr);
    const before = tf.memory().numTensors;
    let out: Float32Array[] = [];
    const info = await tf.profile(() => {
      out = tf.tidy(() => {
        const xs = ins.map((a, i) => (expr.inputs[i] === 'vec' ? tf.tensor1d(a) : tf.tensor2d(a, [rows, cols])));
        const f = () => {
          const outs = fusedOp(p, xs, rows, cols);
          return outs.reduce<Tensor>((s, o, i) => tf.add(s, tf.sum(tf.mul(o, tf.tensor2d(dys[i]!, [rows, cols])))), tf.scalar(0)) as tf.Scalar;
        };
        const { grads } = tf.engine().gradients(f, wrt.map((i) => xs[i]!), undefined, true);
        const r = grads.map((g) => Float32Array.from(g!.dataSync() as Float32Array));
        releaseFusedGrads();
        return r;
      });
    });
    expect(tf.memory().numTensors, 'no tensor left behind').toBe(before);
    return { grads: out, passes: info.kernels.filter((k) => k.name === 'McpcFusedGrad').length };
  }

  it('equals the per-slot gradient (within a few ulp), for every input and for parts of them, in fewer passes', async () => {
    const was = process.env.MCPC_FUSED_GRAD_ONEPASS;
    try {
      let fewer = 0;
      for (const { name, expr, cols } of kernels) {
        const rows = 5;
        const n = expr.inputs.length;
        const ins = expr.inputs.map((k) => randn(k === 'vec' ? cols : rows * cols));
        const dys = expr.forward.roots.map(() => randn(rows * cols));
        const subsets = [Array.from({ length: n }, (_, i) => i), [0], [n - 1], Array.from({ length: n }, (_, i) => i).filter((i) => expr.inputs[i] === 'elem'), Array.from({ length: n }, (_, i) => i).filter((i) => i % 2 === 1)];
        for (const wrt of subsets) {
          if (!wrt.length) continue;
          // Twice each: the second call runs after the first taught the kernel which slots went untaken.
          for (let rep = 0; rep < 2; rep++) {
            const per = await gradsOf(expr, rows, cols, ins, dys, wrt, false);
            const one = await gradsOf(expr, rows, cols, ins, dys, wrt, true);
            one.grads.forEach((g, k) => expect(mismatch(g, per.grads[k]!, 1e-6, 1e-7), `${name} gradient of input ${wrt[k]} (wrt ${wrt.join(',')})`).toBeNull());
            expect(one.passes).toBeLessThanOrEqual(per.passes);
            if (one.passes < per.passes) fewer++;
          }
        }
      }
      expect(fewer, 'some gradient took fewer passes').toBeGreaterThan(0);
    } finally {
      if (was === undefined) delete process.env.MCPC_FUSED_GRAD_ONEPASS;
      else process.env.MCPC_FUSED_GRAD_ONEPASS = was;
    }
  });

  it('frees the slots nobody took in a microtask after the backward pass, without releaseFusedGrads', async () => {
    const { expr, cols } = kernels.find((k) => k.expr.inputs.length >= 2 && new Set(k.expr.backward!.grads.filter((g) => g !== null)).size >= 2)!;
    const rows = 3;
    const p = compileFused(expr);
    const before = tf.memory().numTensors;
    tf.tidy(() => {
      const xs = expr.inputs.map((k) => (k === 'vec' ? tf.tensor1d(randn(cols)) : tf.tensor2d(randn(rows * cols), [rows, cols])));
      const f = () => tf.sum(fusedOp(p, xs, rows, cols)[0]!) as tf.Scalar;
      tf.engine().gradients(f, [xs[0]!], undefined, true).grads[0]!.dataSync();
    });
    await Promise.resolve();
    expect(tf.memory().numTensors).toBe(before);
  });
});

// --- random expressions -------------------------------------------------------------------------------------

/**
 * A random well-formed program over 2 elem inputs, 1 vec input, a saved output and an upstream gradient.
 * Every op of the format appears; divisions, logs and square roots get arguments kept away from 0 and
 * exp's argument is clamped (by nodes of the program itself), so the f32 and f64 versions stay comparable.
 */
const programArb = fc
  .record({
    steps: fc.array(
      fc.record({
        op: fc.constantFrom('neg', 'exp', 'log', 'sqrt', 'rsqrt', 'sigmoid', 'silu', 'tanh', 'add', 'sub', 'mul', 'div', 'max', 'min', 'gt', 'ge', 'lt', 'le', 'eq', 'select', 'rowmean', 'const'),
        a: fc.nat(),
        b: fc.nat(),
        c: fc.nat(),
        v: fc.double({ min: -3, max: 3, noNaN: true }),
      }),
      { minLength: 1, maxLength: 14 },
    ),
    roots: fc.array(fc.record({ pick: fc.nat(), cols: fc.boolean() }), { minLength: 1, maxLength: 3 }),
    rows: fc.integer({ min: 1, max: 4 }),
    cols: fc.constantFrom(1, 2, 3, 4, 5, 7, 8, 13, 17, 64),
  })
  .map(({ steps, roots, rows, cols }) => {
    const nodes: FusedSerialNode[] = [['in', 0], ['in', 1], ['in', 2], ['out', 0], ['dy', 0]];
    const push = (n: FusedSerialNode) => nodes.push(n) - 1;
    const pick = (k: number) => k % nodes.length;
    const positive = (x: number) => push(['add', push(['mul', x, x]), push(['const', 0.25])]);
    for (const s of steps) {
      const [a, b, c] = [pick(s.a), pick(s.b), pick(s.c)];
      const op = s.op;
      if (op === 'const') push(['const', Math.fround(s.v)]);
      else if (op === 'rowmean') push(['div', push(['rowsum', a]), push(['cols'])]);
      else if (op === 'log' || op === 'sqrt' || op === 'rsqrt') push([op, positive(a)]);
      else if (op === 'div') push(['div', a, positive(b)]);
      else if (op === 'exp') push(['exp', push(['min', push(['max', a, push(['const', -30])]), push(['const', 8])])]);
      else if (op === 'select') push(['select', a, b, c]);
      else if (op === 'neg' || op === 'sigmoid' || op === 'silu' || op === 'tanh') push([op, a]);
      else if (op === 'mul') push(['mul', a, push(['tanh', b])]); // keeps magnitudes bounded
      else push([op, a, b]);
    }
    return { nodes, roots: roots.map((r) => ({ node: 5 + (r.pick % (nodes.length - 5)), reduce: (r.cols ? 'cols' : 'none') as 'cols' | 'none' })), rows, cols };
  });

describe('random well-formed expressions', () => {
  it('compile, run, and agree with JavaScript within f32 tolerance', () => {
    fc.assert(
      fc.property(programArb, ({ nodes, roots, rows, cols }) => {
        const n = rows * cols;
        const ins = [randn(n, 2), randn(n, 2), randn(cols, 2)];
        const r = both(nodes, ['elem', 'elem', 'vec'], roots, rows, cols, ins, [randn(n, 2)], [randn(n, 2)]);
        r.wasm.forEach((o, k) => {
          // Relative to the output's scale: f32 intermediates against f64 ones.
          let scale = 1;
          for (const v of r.js[k]!) if (Number.isFinite(v)) scale = Math.max(scale, Math.abs(v));
          const bad = mismatch(o, r.js[k]!, 1e-4, 1e-4 * scale);
          if (bad) throw new Error(`root ${k} (${roots[k]!.reduce}) ${bad}\n${JSON.stringify(nodes)}`);
        });
      }),
      { numRuns: 300, seed: 17 },
    );
  });
});
