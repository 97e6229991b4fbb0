/**
 * fuse-optimizer: one optimizer dispatch per stage over flat buffers of every trainable tensor. Counts are
 * asserted as numbers against the plan, before (-O0, or the pass list without the pass) and after.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { explainPlan, renderExplanation } from '../../../src/cli/commands/explain.js';
import { passes } from '../../../src/compiler/4-optimize/index.js';
import { fuseOptimizer, OPTIMIZER_ALIGN } from '../../../src/compiler/4-optimize/passes/fuse-optimizer.js';
import { compileFile, nodeHost } from '../../../src/compiler/index.js';
import type { Pass } from '../../../src/compiler/4-optimize/pass.js';
import type { Plan, PlanStage } from '../../../src/plan/types.js';

const repo = fileURLToPath(new URL('../../../', import.meta.url));

function compile(path: string, opts: { optLevel?: 0 | 1; dir?: string; passes?: Pass[] } = {}) {
  const dir = opts.dir ?? repo;
  const res = compileFile(path, nodeHost(dir, dir), {}, { optLevel: opts.optLevel ?? 1, verify: true, ...(opts.passes ? { passes: opts.passes } : {}) });
  if (!res.plan || !res.ir) throw new Error(`${path} did not compile: ${res.diagnostics.map((d) => d.message).join('; ')}`);
  return { plan: res.plan, ir: res.ir, reports: res.passes! };
}

/** Trainable tensors of a plan stage, counted from the parameter table (independent of the pass). */
function trainableTensors(plan: Plan, st: PlanStage): string[] {
  const inGraph = new Set(st.values.filter((v) => v.kind === 'param').map((v) => v.id));
  return plan.parameters.filter((p) => p.states[st.name] === 'trainable' && inGraph.has(p.id)).map((p) => p.id);
}

const numel = (shape: number[]) => shape.reduce((a, b) => a * b, 1);

describe('fuse-optimizer', () => {
  const o1 = compile('pipelines/medcare.mcp');
  const o0 = compile('pipelines/medcare.mcp', { optLevel: 0 });
  const without = compile('pipelines/medcare.mcp', { passes: passes.filter((p) => p !== fuseOptimizer) });

  it('MedCare: dispatches per stage go from one per trainable tensor (104 and 24) to 1', () => {
    const counts = o1.plan.stages.map((st) => trainableTensors(o1.plan, st).length);
    expect(counts).toEqual([104, 24]);
    for (const [i, st] of o1.plan.stages.entries()) {
      expect(without.plan.stages[i].optimizer).toMatchObject({ fused: false, dispatches: counts[i] });
      expect(o0.plan.stages[i].optimizer).toMatchObject({ fused: false, dispatches: counts[i] });
      expect(st.optimizer).toMatchObject({ fused: true, dispatches: 1 });
      expect([...st.optimizer.params].sort()).toEqual(trainableTensors(o1.plan, st).sort());
      // The saving shows in the launch counts too (per micro-batch and per step).
      expect(without.plan.stages[i].estimates.kernels - st.estimates.kernels).toBe(counts[i] - 1);
    }
    expect(o1.reports.find((r) => r.name === 'fuse-optimizer')!.changes).toBe(103 + 23);
  });

  it('records a flat layout: aligned, non-overlapping, one slice per trainable tensor of its exact size', () => {
    for (const st of o1.plan.stages) {
      const opt = st.optimizer;
      const layout = opt.layout!;
      expect(layout.map((e) => e.param)).toEqual(opt.params);
      expect(opt.align).toBe(OPTIMIZER_ALIGN);
      let end = 0;
      for (const e of layout) {
        const prm = o1.plan.parameters.find((p) => p.id === e.param)!;
        expect(e.size).toBe(numel(prm.shape));
        expect(e.offset % OPTIMIZER_ALIGN).toBe(0);
        expect(e.offset).toBeGreaterThanOrEqual(end);
        end = e.offset + e.size;
      }
      expect(opt.size).toBe(Math.ceil(end / OPTIMIZER_ALIGN) * OPTIMIZER_ALIGN);
      const elems = layout.reduce((s, e) => s + e.size, 0);
      expect(elems).toBe(st.estimates.trainableParams);
      expect(opt.size! - elems).toBeLessThan(OPTIMIZER_ALIGN * layout.length);
    }
    // MedCare's stage 1: 499,296 trainable parameters, 672 elements of padding (the 1-D router biases); stage 2: align, 46,080.
    expect(o1.plan.stages[0].optimizer.size).toBe(499_296 + 672);
    expect(o1.plan.stages[1].optimizer.size).toBe(46_080);
  });

  it('-O0 runs neither fuse-optimizer nor plan-memory, and explain says so', () => {
    const text = renderExplanation(explainPlan(o0.plan));
    expect(text).toMatch(/fuse-optimizer +off \(-O0\)/);
    expect(text).toMatch(/plan-memory +off \(-O0\)/);
    for (const name of ['fuse-optimizer', 'plan-memory']) expect(o0.reports.find((r) => r.name === name)).toMatchObject({ ran: false, changes: 0 });
    for (const st of o0.plan.stages) {
      expect(st.optimizer.layout).toBeUndefined();
      expect(st.memory.notes).toEqual(['no memory planning (every activation has its own buffer)']);
    }
  });

  it('a stage with SGD is fused the same way; a model trained in full fuses every base tensor', () => {
    const dir = mkdtempSync(join(tmpdir(), 'mcpc-fuse-'));
    writeFileSync(join(dir, 'd.jsonl'), '{"prompt": "q", "response": "a"}\n');
    writeFileSync(
      join(dir, 'p.mcp'),
      `pipeline fuse
model base = builtin("qwen2-micro")
data d = jsonl("d.jsonl")
adapter a = lora(r: 4, alpha: 8) at layers[*].attn.{q, v}
stage one {
  train a on d
  optimizer sgd(momentum: 0.9)
  batch 4
  max_len 32
}
stage two {
  train base on d
  batch 4
  max_len 32
}
`,
    );
    const c = compile(join(dir, 'p.mcp'), { dir });
    const [one, two] = c.plan.stages;
    expect(one.optimizer).toMatchObject({ kind: 'sgd', fused: true, dispatches: 1 });
    expect(one.optimizer.layout).toHaveLength(2 * 2 * 2); // 2 layers x {q, v} x {A, B}
    const baseTensors = c.plan.parameters.filter((p) => p.owner === 'base').length;
    expect(trainableTensors(c.plan, two).length).toBe(baseTensors);
    expect(two.optimizer).toMatchObject({ fused: true, dispatches: 1 });
    expect(two.optimizer.layout).toHaveLength(baseTensors);
    expect(c.reports.find((r) => r.name === 'fuse-optimizer')!.changes).toBe(8 - 1 + baseTensors - 1);
  });
});
