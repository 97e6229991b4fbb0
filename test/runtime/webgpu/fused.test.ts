/**
 * The plan's fused elementwise WGSL on webgpu (src/runtime/webgpu/fused.ts, through the kernel table of
 * src/runtime/kernels/webgpu.ts) against the reference kernel (the expression as tfjs ops, autodiff) on the
 * cpu backend: every fused kernel of MedCare's -O1 plan, forward and the gradient of every input, at one row
 * and at several, at the plan's width and at one past the workgroup that is not a multiple of it; an
 * expression built here with what MedCare lacks (an input with no gradient, two vec gradients, two outputs,
 * select and comparison); gradients of some inputs only (a frozen norm weight: no column sum; a shared
 * slot; the last input alone; one of two vec inputs); how many
 * kernels a forward and backward record; no tensor left behind; the fallbacks (no WGSL in the plan,
 * MCPC_FUSED_WGSL=0).
 */
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { deriveBackward, ExprBuilder, serialise, type Backward, type FusedExpr } from '../../../src/compiler/fusion/expr.js';
import { generateWgsl, WORKGROUP_SIZE } from '../../../src/compiler/fusion/wgsl.js';
import { compileFile, nodeHost } from '../../../src/compiler/index.js';
import type { FusedExprAttrs } from '../../../src/plan/fused.js';
import type { Plan, PlanKernel, PlanStep } from '../../../src/plan/types.js';
import { reference, type KernelContext } from '../../../src/runtime/kernels/reference.js';
import { fusedWgslEnabled, webgpuKernelTable } from '../../../src/runtime/kernels/webgpu.js';
import { FUSED_GRAD_KERNEL, FUSED_KERNEL, fusedWgslOf, savedForBackward } from '../../../src/runtime/webgpu/fused.js';
import { initBackend, tf, type Tensor } from '../../../src/runtime/tfjs/index.js';
import { compare, describeGpu, randn, type Arg } from './kernels-support.js';

const root = fileURLToPath(new URL('../../../', import.meta.url));

const ctx = (): KernelContext => ({ rows: 1, seqLen: 1, positions: new Int32Array(1), segments: new Int32Array(1), cache: new Map() });

/** The plan kernel and step of an expression, as the fuse-elementwise pass writes them. */
function planKernel(f: FusedExpr, bw: Backward): { kernel: PlanKernel; step: PlanStep } {
  const gen = generateWgsl(f, bw);
  const forward = serialise(f.outputs) as FusedExprAttrs['forward'];
  const kernel: PlanKernel = {
    id: 'fused.test',
    op: 'fused_elementwise',
    reference: 'ref.fused:test',
    wgsl: { forward: gen.forward.code, backward: gen.backward.code },
    attrs: {
      expr: {
        inputs: f.inputs,
        forward,
        backward: {
          program: serialise(bw.slots.map((x) => x.expr)),
          slots: bw.slots.map((x) => ({ inputs: x.inputs, reduce: x.reduce, ...(x.expr.op === 'dy' ? { identityOf: x.expr.value } : {}) })),
          grads: bw.grads,
        },
      },
      workgroupSize: WORKGROUP_SIZE,
      bindings: { forward: gen.forward.bindings, backward: gen.backward.bindings },
      entryPoints: { forward: gen.forward.entryPoints, backward: gen.backward.entryPoints },
    },
  };
  const step: PlanStep = { node: 'n', op: 'fused_elementwise', kernel: kernel.id, inputs: f.inputs.map((_, i) => `x${i}`), outputs: f.outputs.map((_, k) => `y${k}`), attrs: { expr: { inputs: f.inputs, forward } }, flops: 0, bytes: 0 };
  return { kernel, step };
}

describeGpu('fused_elementwise runs the plan WGSL on webgpu, as the reference computes it', () => {
  let plan: Plan;
  let steps: PlanStep[];
  beforeAll(() => {
    plan = compileFile('pipelines/medcare.mcp', nodeHost(root, root), {}, { optLevel: 1 }).plan!;
    const seen = new Map<string, PlanStep>();
    for (const st of plan.stages) for (const f of st.forward) if (f.op === 'fused_elementwise' && !seen.has(f.kernel)) seen.set(f.kernel, f);
    steps = [...seen.values()];
  });
  afterAll(() => initBackend('cpu'));

  /** The kernel table's copy of the expression (the step's has no backward). */
  const exprOf = (step: PlanStep) => (plan.kernels.find((k) => k.id === step.kernel)!.attrs as { expr: FusedExprAttrs }).expr;
  const argsOf = (step: PlanStep, rows: number, cols: number, seed: number, diff: (i: number) => boolean = () => true): Arg[] =>
    exprOf(step).inputs.map((k, i) => randn(seed + i, k === 'vec' ? [cols] : [rows, cols], 1, diff(i)));

  it('every MedCare -O1 kernel has WGSL the runtime takes; the forward saves only what its backward reads', () => {
    expect(steps.length).toBeGreaterThanOrEqual(5);
    for (const s of steps) {
      const p = fusedWgslOf(plan.kernels.find((k) => k.id === s.kernel));
      if (typeof p === 'string') throw new Error(`${s.kernel}: ${p}`);
      // tfjs clones (one Identity kernel) every tensor a gradient saves: a pure sum saves nothing, the others less than all.
      const saved = savedForBackward(p);
      const count = saved.inputs.length + saved.outputs.filter(Boolean).length;
      if (p.backward.slots.every((x) => x.identityOf !== undefined)) expect(count, s.kernel).toBe(0);
      else expect(count, s.kernel).toBeLessThan(p.inputs.length + p.outputs);
    }
  });

  it('every MedCare -O1 kernel: outputs and every gradient (one row, several; the plan width and 300 columns)', async () => {
    const table = webgpuKernelTable(plan, true);
    const cols0 = (steps[0]!.attrs as { cols: number }).cols;
    expect(cols0 % 256).not.toBe(0);
    for (const step of steps)
      for (const [rows, cols] of [
        [1, cols0],
        [7, cols0],
        [1, 300],
        [5, 300],
        [300, 3],
      ] as const) {
        const r = await compare(
          (xs) => table.fused_elementwise(xs, step, ctx()),
          (xs) => reference.fused_elementwise(xs, step, ctx()),
          argsOf(step, rows, cols, 11),
        );
        expect(r.worst, `${step.kernel} at ${rows}x${cols}: ${r.what}`).toBeLessThan(1e-4);
        // Every gradient checks something (none is zero for these kernels).
        r.ref.grads.forEach((g, i) => expect(Math.max(...g.map(Math.abs)), `${step.kernel} gradient ${i}`).toBeGreaterThan(0));
      }
  });

  it('gradients of some inputs only: each as the reference gives it', async () => {
    const table = webgpuKernelTable(plan, true);
    for (const step of steps) {
      const n = exprOf(step).inputs.length;
      const subsets: ((i: number) => boolean)[] = [(i) => exprOf(step).inputs[i] === 'elem', (i) => i === n - 1, (i) => i === 0, (i) => i % 2 === 1];
      for (const pick of subsets) {
        const r = await compare(
          (xs) => table.fused_elementwise(xs, step, ctx()),
          (xs) => reference.fused_elementwise(xs, step, ctx()),
          argsOf(step, 3, 40, 5, pick),
        );
        expect(r.worst, `${step.kernel}: ${r.what}`).toBeLessThan(1e-4);
      }
    }
  });

  it('an expression with an input of no gradient, two vec gradients, two outputs, select, a row sum: any shape, any subset', async () => {
    // The plan kernel and step as the fuse-elementwise pass writes them.
    const E = new ExprBuilder();
    const x = E.input(0, 'elem');
    const c = E.input(1, 'elem');
    const w = E.input(2, 'vec');
    const b = E.input(3, 'vec');
    const sel = E.select(E.cmp('gt', c, E.const(0)), E.silu(E.mul(x, w)), E.add(E.tanh(x), b));
    const normed = E.mul(sel, E.rsqrt(E.add(E.rowmean(E.mul(sel, sel)), E.const(1e-5))));
    const f: FusedExpr = { inputs: ['elem', 'elem', 'vec', 'vec'], outputs: [normed, E.add(E.mul(E.sigmoid(x), b), E.mul(normed, w))] };
    const bw = deriveBackward(f, E);
    const { kernel, step } = planKernel(f, bw);
    expect(typeof fusedWgslOf(kernel)).toBe('object'); // the WGSL path takes it (the forward reads every input)
    expect(bw.grads[1]).toBeNull();
    expect(bw.slots.filter((x) => x.reduce === 'cols').length).toBe(2);
    const table = webgpuKernelTable({ kernels: [kernel] }, true);
    const all = () => true;
    for (const [rows, cols, pick] of [
      [1, 3, all],
      [1, 257, all],
      [5, 300, all],
      [300, 7, all],
      [2, 1000, all],
      [4, 33, (i: number) => i === 3],
      [4, 33, (i: number) => i === 2],
      [4, 33, (i: number) => i === 1 || i === 3],
    ] as const) {
      const args = f.inputs.map((k, i) => randn(40 + i, k === 'vec' ? [cols] : [rows, cols], 1, pick(i)));
      const r = await compare(
        (xs) => table.fused_elementwise(xs, step, ctx()),
        (xs) => reference.fused_elementwise(xs, step, ctx()),
        args,
      );
      expect(r.worst, `${rows}x${cols}: ${r.what}`).toBeLessThan(1e-4);
    }
  });

  it('row sums that read row sums, one nested level (LayerNorm) and two (LayerNorm then RMSNorm): outputs and every gradient, 17 to 1000 columns', async () => {
    // The generated wg_reduce once handed every invocation the sum by a read of wg_scratch[0] after a barrier;
    // on llvmpipe (Mesa 22.3) that read moved below the next reduction's writes for all but the first 8
    // invocations, so a row sum reading a row sum was wrong by percents (see src/compiler/fusion/wgsl.ts, REDUCE, and the
    // minimal reproduction in test/compiler/fusion/wgsl-dawn.test.ts).
    const E = new ExprBuilder();
    const x = E.input(0, 'elem');
    const w = E.input(1, 'vec');
    const b = E.input(2, 'vec');
    const d = E.sub(x, E.rowmean(x));
    const ln = E.add(E.mul(E.mul(d, E.rsqrt(E.add(E.rowmean(E.mul(d, d)), E.const(1e-5)))), w), b); // a row sum of a row sum: one nested level
    const lnRms = E.mul(ln, E.rsqrt(E.add(E.rowmean(E.mul(ln, ln)), E.const(1e-6)))); // and a row sum of that: two nested levels
    for (const [name, f] of [
      ['layernorm', { inputs: ['elem', 'vec', 'vec'], outputs: [ln] }],
      ['layernorm then rmsnorm', { inputs: ['elem', 'vec', 'vec'], outputs: [lnRms, ln] }],
    ] as [string, FusedExpr][]) {
      const { kernel, step } = planKernel(f, deriveBackward(f, E));
      expect(kernel.wgsl!.forward, name).toContain(`wg_total: array<f32, ${name === 'layernorm' ? 2 : 3}>`);
      const table = webgpuKernelTable({ kernels: [kernel] }, true);
      for (const [rows, cols] of [
        [3, 64],
        [3, 65],
        [2, 128],
        [2, 176],
        [2, 1000],
        [1, 17],
      ] as const) {
        const args = f.inputs.map((k, i) => randn(60 + i, k === 'vec' ? [cols] : [rows, cols], 1));
        const r = await compare(
          (xs) => table.fused_elementwise(xs, step, ctx()),
          (xs) => reference.fused_elementwise(xs, step, ctx()),
          args,
        );
        expect(r.worst, `${name} at ${rows}x${cols}: ${r.what}`).toBeLessThan(1e-4);
      }
    }
  });

  /** The kernels a forward and the gradients of `wrt` record, by name; and the tensors left afterwards. */
  async function recorded(step: PlanStep, wrt: number[], fused = true, kernels: PlanKernel[] = plan.kernels): Promise<{ counts: Map<string, number>; leaked: number; gradOutputs: number[][][] }> {
    await initBackend('webgpu');
    const table = webgpuKernelTable({ kernels }, fused);
    const kinds = (kernels.find((k) => k.id === step.kernel)!.attrs as { expr: FusedExprAttrs }).expr.inputs;
    const inputs = kinds.map((k, i) => randn(3 + i, k === 'vec' ? [64] : [4, 64])).map((a) => tf.tensor(a.data as Float32Array, a.shape));
    const before = tf.memory().numTensors;
    const info = await tf.profile(async () => {
      const gs = tf.tidy(() => {
        const f = (...xs: Tensor[]) => {
          const all = inputs.slice();
          wrt.forEach((k, j) => (all[k] = xs[j]!));
          return tf.addN(table.fused_elementwise(all, step, ctx()).map((y) => tf.sum(y))) as tf.Scalar;
        };
        return tf.grads(f)(wrt.map((k) => inputs[k]!));
      });
      await Promise.all(gs.map((g) => g.data()));
      tf.dispose(gs);
      return [];
    });
    await Promise.resolve();
    const counts = new Map<string, number>();
    // The forward kernels are named per plan kernel (McpcFusedWgsl:<id>): counted together.
    for (const k of info.kernels) {
      const name = k.name.startsWith(`${FUSED_KERNEL}:`) ? FUSED_KERNEL : k.name;
      counts.set(name, (counts.get(name) ?? 0) + 1);
    }
    const leaked = tf.memory().numTensors - before;
    tf.dispose(inputs);
    const gradOutputs = info.kernels.filter((k) => k.name === FUSED_GRAD_KERNEL).map((k) => k.outputShapes as number[][]);
    return { counts, leaked, gradOutputs };
  }

  /** With MCPC_FUSED_GRAD_ONEPASS set to `v` (undefined: unset). */
  async function withOnePass<T>(v: string | undefined, f: () => Promise<T>): Promise<T> {
    const was = process.env.MCPC_FUSED_GRAD_ONEPASS;
    if (v === undefined) delete process.env.MCPC_FUSED_GRAD_ONEPASS;
    else process.env.MCPC_FUSED_GRAD_ONEPASS = v;
    try {
      return await f();
    } finally {
      if (was === undefined) delete process.env.MCPC_FUSED_GRAD_ONEPASS;
      else process.env.MCPC_FUSED_GRAD_ONEPASS = was;
    }
  }

  it('one forward and one backward kernel for a residual add + RMSNorm, frozen weight or not; nothing left behind', async () => {
    const step = steps.find((s) => s.kernel.startsWith('fused.add_rmsnorm.'))!;
    expect(step).toBeDefined();
    const frozen = await recorded(step, [0, 1]);
    expect(frozen.counts.get(FUSED_KERNEL)).toBe(1);
    expect(frozen.counts.get(FUSED_GRAD_KERNEL)).toBe(1);
    expect(frozen.leaked).toBe(0);
    await recorded(step, [0, 1, 2]); // the weight's slot asked for: computed ahead from now on
    const all = await recorded(step, [0, 1, 2]);
    expect(all.counts.get(FUSED_KERNEL)).toBe(1);
    // The elem slot and the weight's (with its column sum) in one backward kernel, as the first input asks.
    expect(all.counts.get(FUSED_GRAD_KERNEL)).toBe(1);
    expect(all.leaked).toBe(0);
    // MCPC_FUSED_GRAD_ONEPASS=0: the weight's slot when asked for.
    const perSlot = await withOnePass('0', () => recorded(step, [0, 1, 2]));
    expect(perSlot.counts.get(FUSED_GRAD_KERNEL)).toBe(2);
    expect(perSlot.leaked).toBe(0);
    const ref = await recorded(step, [0, 1, 2], false);
    expect(ref.counts.get(FUSED_KERNEL)).toBeUndefined();
    const total = (c: Map<string, number>) => [...c.values()].reduce((a, b) => a + b, 0);
    expect(total(all.counts)).toBeLessThan(total(ref.counts) / 2);
  });

  it('SwiGLU after two adds: both gradient slots in one backward dispatch; speculative results freed', async () => {
    const step = steps.find((s) => s.kernel.startsWith('fused.add2_swiglu.') && exprOf(s).backward!.slots.length === 2 && exprOf(s).backward!.grads[0] === 0)!;
    const r = await recorded(step, exprOf(step).inputs.map((_, i) => i));
    expect(r.counts.get(FUSED_GRAD_KERNEL)).toBe(1);
    expect(r.leaked).toBe(0);
    // Only the later input asked for: its slot alone.
    const last = await recorded(step, [exprOf(step).inputs.length - 1]);
    expect(last.counts.get(FUSED_GRAD_KERNEL)).toBe(1);
    expect(last.leaked).toBe(0);
  });

  it('a slot computed ahead and never taken is not computed ahead again, until an input asks for it', async () => {
    // A fresh expression (its own program): x·rsqrt(mean(x²)+ε)·w + y, inputs x, y (elem) and w (vec).
    const E = new ExprBuilder();
    const x = E.input(0, 'elem');
    const y = E.input(1, 'elem');
    const w = E.input(2, 'vec');
    const f: FusedExpr = { inputs: ['elem', 'elem', 'vec'], outputs: [E.add(E.mul(E.mul(x, E.rsqrt(E.add(E.rowmean(E.mul(x, x)), E.const(3e-6)))), w), E.mul(y, E.const(0.5)))] };
    const bw = deriveBackward(f, E);
    const { kernel, step } = planKernel(f, bw);
    kernel.id = 'fused.test.ahead';
    step.kernel = kernel.id;
    const hasVec = (shapes: number[][]) => shapes.some((sh) => sh.length === 1);
    // x alone: the first time y's and w's slots come with x's (one kernel), w's [cols] among them; not taken.
    const first = await recorded(step, [0], true, [kernel]);
    expect(first.gradOutputs.length).toBe(1);
    expect(hasVec(first.gradOutputs[0]!)).toBe(true);
    expect(first.leaked).toBe(0);
    // The second time neither y's nor w's slot is computed ahead.
    const second = await recorded(step, [0], true, [kernel]);
    expect(second.gradOutputs).toEqual([[[4, 64]]]);
    // x and w: w's slot in a kernel of its own (once), then with x's again.
    const asked = await recorded(step, [0, 2], true, [kernel]);
    expect(asked.gradOutputs.map(hasVec)).toEqual([false, true]);
    const again = await recorded(step, [0, 2], true, [kernel]);
    expect(again.gradOutputs.length).toBe(1);
    expect(hasVec(again.gradOutputs[0]!)).toBe(true);
    expect(again.leaked).toBe(0);
  });

  it('a pure add: forward one kernel, backward the upstream gradient itself (no dispatch)', async () => {
    // MedCare -O1 has no pure add group since fold-trainable-lora: one built here, as the pass would write it.
    const E = new ExprBuilder();
    const f: FusedExpr = { inputs: ['elem', 'elem', 'elem'], outputs: [E.add(E.add(E.input(0, 'elem'), E.input(1, 'elem')), E.input(2, 'elem'))] };
    const { kernel, step } = planKernel(f, deriveBackward(f, E));
    kernel.id = 'fused.test.add2';
    step.kernel = kernel.id;
    const r = await recorded(step, [0, 1, 2], true, [kernel]);
    expect(r.counts.get(FUSED_KERNEL)).toBe(1);
    expect(r.counts.get(FUSED_GRAD_KERNEL)).toBeUndefined();
    expect(r.leaked).toBe(0);
  });

  it('falls back to the reference without WGSL in the plan, and under MCPC_FUSED_WGSL=0', async () => {
    const step = steps.find((s) => s.kernel.startsWith('fused.add_rmsnorm.'))!;
    const bare = { kernels: plan.kernels.map((k) => (k.id === step.kernel ? { ...k, wgsl: undefined } : k)) } as Plan;
    expect(fusedWgslOf(bare.kernels.find((k) => k.id === step.kernel))).toMatch(/no WGSL/);
    const saved = plan;
    plan = bare;
    try {
      const r = await recorded(step, [0, 1, 2]);
      expect(r.counts.get(FUSED_KERNEL)).toBeUndefined();
    } finally {
      plan = saved;
    }
    const before = process.env.MCPC_FUSED_WGSL;
    try {
      process.env.MCPC_FUSED_WGSL = '0';
      expect(fusedWgslEnabled()).toBe(false);
      expect(webgpuKernelTable(plan).fused_elementwise).toBe(reference.fused_elementwise);
      process.env.MCPC_FUSED_WGSL = 'yes';
      expect(() => fusedWgslEnabled()).toThrow(/MCPC_FUSED_WGSL/);
      process.env.MCPC_FUSED_WGSL = '1';
      expect(webgpuKernelTable(plan).fused_elementwise).not.toBe(reference.fused_elementwise);
    } finally {
      if (before === undefined) delete process.env.MCPC_FUSED_WGSL;
      else process.env.MCPC_FUSED_WGSL = before;
    }
  });
});
