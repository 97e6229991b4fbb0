import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { passes } from '../../../src/compiler/4-optimize/index.js';
import { eliminateDeadAdapters } from '../../../src/compiler/4-optimize/passes/eliminate-dead-adapters.js';
import { expandSites } from '../../../src/compiler/4-optimize/passes/expand-sites.js';
import { fuseElementwise, MAX_STORAGE_BUFFERS } from '../../../src/compiler/4-optimize/passes/fuse-elementwise.js';
import type { Pass } from '../../../src/compiler/4-optimize/pass.js';
import { deserialise, evaluateBackward, evaluateForward, ExprBuilder, type Backward, type InputKind, type SerialProgram } from '../../../src/compiler/fusion/expr.js';
import { compileFile, nodeHost } from '../../../src/compiler/index.js';
import { verifyIR } from '../../../src/compiler/ir/verify.js';
import type { Plan, PlanKernel, PlanStage } from '../../../src/plan/types.js';
import { maxRelError, numericGrads, randomArray, rng } from '../fusion/gradcheck.js';
import { validPipelines } from '../../support/pipelines.js';

const root = fileURLToPath(new URL('../../../', import.meta.url));
const FUSIBLE = ['add', 'rmsnorm', 'swiglu'];

function compile(path: string, list: Pass[], optLevel: 0 | 1 = 1) {
  const res = compileFile(path, nodeHost(root, root), {}, { optLevel, verify: true, passes: list });
  if (!res.plan || !res.ir) throw new Error(`${path} did not compile: ${res.diagnostics.map((d) => d.message).join('; ')}`);
  return { ir: res.ir, plan: res.plan, reports: res.passes! };
}

/** What the kernel-count assertions look at, per stage. */
function counts(plan: Plan) {
  return Object.fromEntries(
    plan.stages.map((s) => [
      s.name,
      {
        forward: s.forward.length,
        backward: s.backward.length,
        dispatchesPerStep: s.estimates.dispatchesPerStep,
        elementwise: s.forward.filter((f) => FUSIBLE.includes(f.op)).length,
        fused: s.forward.filter((f) => f.op === 'fused_elementwise').length,
      },
    ]),
  );
}

const fusedSteps = (s: PlanStage) => s.forward.filter((f) => f.op === 'fused_elementwise');
const withoutFusion = passes.filter((p) => p !== fuseElementwise);
/** The pass list without fold-trainable-lora: every LoRA's output is still added at its site. */
const withoutStepMerge = passes.filter((p) => p.name !== 'fold-trainable-lora');

describe('fuse-elementwise: kernel counts on pipelines/medcare.mcp', () => {
  // Pinned to expand-sites + eliminate-dead-adapters so these numbers do not move with the other passes.
  const pinned: Pass[] = [expandSites, eliminateDeadAdapters];

  it('after site expansion alone: 61 + 45 elementwise ops become 30 + 18 fused kernels', () => {
    const before = counts(compile('pipelines/medcare.mcp', pinned).plan);
    const after = counts(compile('pipelines/medcare.mcp', [...pinned, fuseElementwise]).plan);
    expect(before).toEqual({
      aggregate: { forward: 384, backward: 379, dispatchesPerStep: 1630, elementwise: 61, fused: 0 },
      align: { forward: 144, backward: 126, dispatchesPerStep: 564, elementwise: 45, fused: 0 },
    });
    expect(after).toEqual({
      aggregate: { forward: 353, backward: 348, dispatchesPerStep: 1506, elementwise: 0, fused: 30 },
      align: { forward: 117, backward: 102, dispatchesPerStep: 462, elementwise: 0, fused: 18 },
    });
  });

  it('in the pass list without fold-trainable-lora: 61 -> 30 (stage 1) and 33 -> 13 (stage 2) kernels, 124 and 78 fewer dispatches per step', () => {
    const before = counts(compile('pipelines/medcare.mcp', withoutStepMerge.filter((p) => p !== fuseElementwise)).plan);
    const after = counts(compile('pipelines/medcare.mcp', withoutStepMerge).plan);
    expect([before.aggregate.elementwise, after.aggregate.fused, before.align.elementwise, after.align.fused]).toEqual([61, 30, 33, 13]);
    expect(after.aggregate.elementwise + after.align.elementwise).toBe(0);
    // One forward and (where a gradient flows) one backward step fewer per op fused away, twice per step (2 micro-batches).
    expect(before.aggregate.forward - after.aggregate.forward).toBe(61 - 30);
    expect(before.align.forward - after.align.forward).toBe(33 - 13);
    expect(before.aggregate.dispatchesPerStep - after.aggregate.dispatchesPerStep).toBe(124);
    expect(before.align.dispatchesPerStep - after.align.dispatchesPerStep).toBe(78);
  });

  it('fuses the intended patterns in each decoder layer', () => {
    // Without fold-trainable-lora, so that every LoRA term is still an add at its site.
    const { ir } = compile('pipelines/medcare.mcp', withoutStepMerge);
    const st = ir.stages.find((s) => s.name === 'aggregate')!;
    const producer = (v: string) => st.graph.nodes.find((n) => n.outputs.includes(v))!;
    for (let l = 0; l < 4; l++) {
      // attention output sum + residual add + post-attention RMSNorm: one kernel, two outputs.
      const attn = producer(`L${l}.mlp_in`);
      expect(attn.op).toBe('fused_elementwise');
      expect(attn.outputs).toEqual([`L${l}.resid_attn`, `L${l}.mlp_in`]);
      expect(attn.attrs.fusedOps).toEqual(['add', 'add', 'rmsnorm']);
      // gate site sum (base + knowledge + noise) + SwiGLU.
      expect(producer(`L${l}.act`).attrs.fusedOps).toEqual(['add', 'add', 'swiglu']);
      // down site sum + residual add + the next RMSNorm (the final one after the last layer is left alone:
      // with the weight's gradient it would bind more than MAX_STORAGE_BUFFERS buffers).
      const down = producer(`L${l}.resid_mlp`);
      expect(down.attrs.fusedOps).toEqual(l < 3 ? ['add', 'add', 'add', 'rmsnorm'] : ['add', 'add', 'add']);
      if (l < 3) expect(down.outputs).toEqual([`L${l}.resid_mlp`, `L${l + 1}.attn_in`]);
      // q, k, v: base + LoRA, an n-ary add each.
      for (const p of ['q', 'k', 'v']) expect(producer(`L${l}.${p}`).attrs.fusedOps).toEqual(['add']);
    }
    expect(producer('L0.attn_in').attrs.fusedOps).toEqual(['rmsnorm']);
    expect(producer('x.final').attrs.fusedOps).toEqual(['rmsnorm']);
    // Stage 2 (knowledge folded, attention merged): gate and up sums both join SwiGLU.
    const align = ir.stages.find((s) => s.name === 'align')!;
    expect(align.graph.nodes.find((n) => n.outputs.includes('L0.act'))!.attrs.fusedOps).toEqual(['add', 'add', 'swiglu']);
    expect(align.graph.nodes.find((n) => n.outputs.includes('L0.act'))!.inputs).toHaveLength(4);
  });

  it('with the full pass list, the LoRA terms merged every step leave their adds: what remains fuses', () => {
    const { ir } = compile('pipelines/medcare.mcp', passes);
    const st = ir.stages.find((s) => s.name === 'aggregate')!;
    const producer = (v: string) => st.graph.nodes.find((n) => n.outputs.includes(v))!;
    for (let l = 0; l < 4; l++) {
      // attention output (o's LoRA merged) + residual add + post-attention RMSNorm.
      expect(producer(`L${l}.mlp_in`).attrs.fusedOps).toEqual(['add', 'rmsnorm']);
      // gate and up site sums (base + noise each; knowledge merged) + SwiGLU.
      expect(producer(`L${l}.act`).attrs.fusedOps).toEqual(['add', 'add', 'swiglu']);
      // down site sum (base + noise) + residual + the next RMSNorm; after the last layer the final RMSNorm now
      // fits the buffer limit too.
      const down = producer(l < 3 ? `L${l}.resid_mlp` : 'x.final');
      expect(down.attrs.fusedOps).toEqual(['add', 'add', 'rmsnorm']);
      // q, k, v: one GEMM over their merged weights (the attention LoRA is in them), no add before rope.
      for (const p of ['q', 'k', 'v']) expect(producer(`layers[${l}].attn.${p}.base`).op).toBe('concat_linear');
      expect(producer(`L${l}.q_rot`).inputs.slice(0, 2)).toEqual([`layers[${l}].attn.q.base`, `layers[${l}].attn.k.base`]);
    }
    // Stage 2: the alignment LoRA merged where its input needs a gradient (layers 1-3): SwiGLU alone on the gate
    // and up GEMMs' outputs. In layer 0 nothing below needs a gradient, so the adapter's products skip dx and
    // stay cheaper than dW' of the merged weight (the cost model's choice): its two adds still join SwiGLU.
    const align = ir.stages.find((s) => s.name === 'align')!;
    const act = (l: number) => align.graph.nodes.find((n) => n.outputs.includes(`L${l}.act`))!.attrs.fusedOps;
    expect([0, 1, 2, 3].map(act)).toEqual([['add', 'add', 'swiglu'], ['swiglu'], ['swiglu'], ['swiglu']]);
  });

  it('identical expressions share one kernel; every kernel is in the table with WGSL and its reference', () => {
    const { plan, ir } = compile('pipelines/medcare.mcp', passes);
    const steps = plan.stages.flatMap(fusedSteps);
    const ids = [...new Set(steps.map((s) => s.kernel))];
    expect(steps).toHaveLength(26);
    expect(ids).toHaveLength(7);
    expect(ir.kernels.size).toBe(7);
    for (const id of ids) {
      const k = plan.kernels.find((x) => x.id === id)!;
      expect(k.op).toBe('fused_elementwise');
      expect(k.reference).toBe(`ref.fused:${(k.attrs!.fusedOps as string[]).join('+')}`);
      expect(k.wgsl!.forward).toContain('@compute @workgroup_size(256)');
      expect(k.wgsl!.backward).toContain('@compute @workgroup_size(256)');
      const lim = k.attrs!.requiredLimits as { maxStorageBuffersPerShaderStage: number };
      expect(lim.maxStorageBuffersPerShaderStage).toBeLessThanOrEqual(MAX_STORAGE_BUFFERS);
    }
    for (const s of steps) {
      expect(s.kernel).toMatch(/^fused\.[a-z0-9_]+\.[0-9a-f]{10}$/);
      expect(s.attrs).toMatchObject({ kernel: s.kernel, rows: 'T' });
      expect(s.attrs.expr).toEqual({ inputs: (plan.kernels.find((k) => k.id === s.kernel)!.attrs!.expr as { inputs: unknown }).inputs, forward: expect.any(Object) });
    }
  });

  it('the FLOPs of a fused node are those of the ops it replaced (elementwise cost model)', () => {
    const before = compile('pipelines/medcare.mcp', withoutFusion).plan;
    const after = compile('pipelines/medcare.mcp', passes).plan;
    for (const name of ['aggregate', 'align']) {
      const b = before.stages.find((s) => s.name === name)!;
      const a = after.stages.find((s) => s.name === name)!;
      const ew = b.forward.filter((f) => FUSIBLE.includes(f.op)).reduce((s, f) => s + f.flops, 0);
      const fused = fusedSteps(a).reduce((s, f) => s + f.flops, 0);
      // add: 1 per element and term, rmsnorm: 4 per element (+3 per row), swiglu: 5 per element.
      expect(fused).toBeGreaterThanOrEqual(ew);
      expect(fused).toBeLessThan(ew * 1.01);
    }
  });

  it('compiles to the same bytes twice', () => {
    const a = JSON.stringify(compile('pipelines/medcare.mcp', passes).plan);
    const b = JSON.stringify(compile('pipelines/medcare.mcp', passes).plan);
    expect(a).toBe(b);
  });

  it('-O0 does not fuse', () => {
    const { plan, ir, reports } = compile('pipelines/medcare.mcp', passes, 0);
    expect(reports.find((r) => r.name === 'fuse-elementwise')).toMatchObject({ ran: false, changes: 0 });
    expect(plan.stages.flatMap(fusedSteps)).toHaveLength(0);
    expect(ir.kernels.size).toBe(0);
    expect(plan.kernels.filter((k) => k.wgsl)).toHaveLength(0);
  });

  it('runs after batch-orthogonality and before fuse-optimizer and plan-memory', () => {
    const names = passes.map((p) => p.name);
    const i = names.indexOf('fuse-elementwise');
    expect(i).toBeGreaterThan(names.indexOf('batch-orthogonality'));
    for (const later of ['fuse-optimizer', 'plan-memory']) if (names.includes(later)) expect(i).toBeLessThan(names.indexOf(later));
    expect(fuseElementwise.required).toBeFalsy();
  });
});

// --- every fused kernel against its reference: the original ops, forward and gradients ---------------------

type Vals = Map<string, Float64Array>;

/** The library ops the fused kernels replace, in f64: the reference a fused kernel must match. */
function referenceOp(op: string, ins: Float64Array[], attrs: Record<string, unknown>, rows: number, cols: number): Float64Array {
  const n = rows * cols;
  const at = (a: Float64Array, i: number) => (a.length === cols && n !== cols ? a[i % cols] : a[i]);
  const out = new Float64Array(n);
  if (op === 'add') for (let i = 0; i < n; i++) out[i] = ins.reduce((s, a) => s + at(a, i), 0);
  else if (op === 'swiglu') for (let i = 0; i < n; i++) out[i] = (ins[0][i] / (1 + Math.exp(-ins[0][i]))) * ins[1][i];
  else if (op === 'rmsnorm') {
    for (let r = 0; r < rows; r++) {
      let ms = 0;
      for (let c = 0; c < cols; c++) ms += ins[0][r * cols + c] ** 2;
      const inv = 1 / Math.sqrt(ms / cols + (attrs.eps as number));
      for (let c = 0; c < cols; c++) out[r * cols + c] = ins[0][r * cols + c] * inv * (ins[1] ? ins[1][c] : 1);
    }
  } else throw new Error(`no reference for ${op}`);
  return out;
}

interface FusedAttrs {
  fusedNodes: { op: string; inputs: string[]; outputs: string[]; attrs: Record<string, unknown> }[];
  inputs: { value: string; kind: InputKind }[];
  outputs: { value: string }[];
}

function referenceForward(a: FusedAttrs, xs: Float64Array[], rows: number, cols: number): Float64Array[] {
  const vals: Vals = new Map(a.inputs.map((x, i) => [x.value, xs[i]]));
  for (const m of a.fusedNodes)
    vals.set(
      m.outputs[0],
      referenceOp(
        m.op,
        m.inputs.map((v) => vals.get(v)!),
        m.attrs,
        rows,
        cols,
      ),
    );
  return a.outputs.map((o) => vals.get(o.value)!);
}

/** The kernel as the runtime sees it: rebuilt from the plan's JSON alone. */
function kernelFromPlan(k: PlanKernel) {
  const expr = k.attrs!.expr as { inputs: InputKind[]; forward: SerialProgram; backward: { program: SerialProgram; slots: { inputs: number[]; reduce: 'none' | 'cols' }[]; grads: (number | null)[] } };
  const E = new ExprBuilder();
  const outputs = deserialise(expr.forward, expr.inputs, E);
  const slotExprs = deserialise(expr.backward.program, expr.inputs, E);
  const usesOutputs = expr.backward.program.nodes.some((n) => n[0] === 'out');
  const backward: Backward = { slots: expr.backward.slots.map((s, i) => ({ ...s, expr: slotExprs[i] })), grads: expr.backward.grads, usesOutputs };
  return { fused: { inputs: expr.inputs, outputs }, backward };
}

describe('every fused kernel of the MedCare plan matches the ops it replaces', () => {
  const { plan } = compile('pipelines/medcare.mcp', passes);
  const byKernel = new Map<string, PlanStage['forward'][number]>();
  for (const s of plan.stages.flatMap(fusedSteps)) if (!byKernel.has(s.kernel)) byKernel.set(s.kernel, s);

  it.each([...byKernel.keys()])('%s: forward and gradients', (id) => {
    const step = byKernel.get(id)!;
    const attrs = step.attrs as unknown as FusedAttrs;
    const { fused, backward } = kernelFromPlan(plan.kernels.find((k) => k.id === id)!);
    for (const [rows, cols, seed] of [
      [3, 7, 1],
      [2, 33, 2],
    ]) {
      const r = rng(seed);
      const xs = fused.inputs.map((kind) => randomArray(kind === 'vec' ? cols : rows * cols, r));
      const dys = fused.outputs.map(() => randomArray(rows * cols, r));
      const got = evaluateForward(fused, { rows, cols, inputs: xs, precision: 'f64' });
      const want = referenceForward(attrs, xs, rows, cols);
      expect(maxRelError(got, want)).toBeLessThan(1e-12);
      const grads = evaluateBackward(fused, backward, { rows, cols, inputs: xs, dys, precision: 'f64' });
      const numeric = numericGrads((x) => referenceForward(attrs, x, rows, cols), xs, dys);
      expect(maxRelError(grads, numeric)).toBeLessThan(1e-5);
      // In f32, as the GPU computes it, within f32 rounding of the f64 result.
      const got32 = evaluateForward(fused, { rows, cols, inputs: xs });
      expect(maxRelError(got32, want)).toBeLessThan(1e-5);
    }
  });
});

// --- the verifier after the pass, on every pipeline ---------------------------------------------------------

const pipelineFiles = (): string[] => validPipelines(root);

describe('fuse-elementwise on every pipeline', () => {
  const files = pipelineFiles();
  it('finds the pipelines', () => expect(files.length).toBeGreaterThanOrEqual(10));

  it.each(files)('%s: the IR verifies after the pass and every fused kernel is well-formed', (file) => {
    let checked = false;
    const res = compileFile(file, nodeHost(root, root), {}, {
      optLevel: 1,
      verify: true,
      passes,
      onPass: (name, ir) => {
        if (name !== 'fuse-elementwise') return;
        verifyIR(ir, name, { expanded: true });
        checked = true;
      },
    });
    expect(res.plan, res.diagnostics.map((d) => d.message).join('\n')).toBeDefined();
    expect(checked).toBe(true);
    for (const st of res.plan!.stages) {
      for (const step of fusedSteps(st)) {
        const k = res.plan!.kernels.find((x) => x.id === step.kernel)!;
        expect(k.wgsl?.forward).toBeTruthy();
        const ins = (step.attrs as unknown as FusedAttrs).inputs;
        expect(ins.map((x) => x.value)).toEqual(step.inputs);
        // Every value the fused node writes is read by someone (or is the loss).
        for (const o of step.outputs) expect(st.forward.some((f) => f.inputs.includes(o)) || o === st.loss).toBe(true);
      }
    }
  });
});
