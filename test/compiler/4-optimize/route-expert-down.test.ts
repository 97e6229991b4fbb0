import { describe, expect, it } from 'vitest';
import { passes } from '../../../src/compiler/4-optimize/index.js';
import { verifyIR } from '../../../src/compiler/ir/verify.js';
import { base, backwardFlops, compile, concatAt, forwardFlops, inline, nodesOf, P, partKindsAt } from './helpers.js';
import type { StageIR } from '../../../src/compiler/ir/types.js';

const moePipeline = (opts: { experts?: number; k?: number; shared?: number; extra?: string } = {}) => `pipeline moe
model base = builtin("qwen2-micro")
data d = jsonl("d.jsonl")
adapter m = moe_lora(experts: ${opts.experts ?? 8}, top_k: ${opts.k ?? 2}, shared: ${opts.shared ?? 0}, r: 8, alpha: 16${opts.extra ?? ''}) at layers[*].mlp.{gate, up, down}
stage one {
  train m on d
  batch 8
  micro_batch 4
  max_len 128
}
`;

/** Per mixture site: the ops of adapter `name` in graph order. */
function siteOps(st: StageIR, site: string): string[] {
  return st.graph.nodes.filter((n) => n.site === site && (n.adapter !== undefined || n.op === 'concat_linear')).map((n) => n.op);
}

describe('route-expert-down', () => {
  const pre = [...base, P.foldFrozenLora, P.batchExperts];

  it('MedCare at -O1: the 12 mixture sites compute the experts’ A on each token’s top-k only, after topk_gate', () => {
    const c = compile('pipelines/medcare.mcp', passes);
    const st = c.stage('aggregate').ir;
    expect(c.changes['route-expert-down']).toBe(12);
    const routed = nodesOf(st, 'moe_down_routed');
    expect(routed).toHaveLength(12);
    expect(nodesOf(st, 'moe_down_batched').filter((n) => n.attrs.sharedRank === 0)).toHaveLength(0);
    expect(routed[0]!.attrs).toMatchObject({ in: 64, rank: 16, experts: 8, k: 2 });
    for (const n of routed) {
      const site = n.site!;
      const topk = st.graph.nodes.find((m) => m.op === 'topk_gate' && m.site === site)!;
      const up = st.graph.nodes.find((m) => m.op === 'moe_up_grouped' && m.site === site)!;
      expect(n.inputs[1]).toBe(topk.outputs[0]);
      expect(up.inputs.slice(0, 2)).toEqual([n.outputs[0], topk.outputs[0]]);
      expect(n.inputs[2]).toBe(`noise.${site}.expert_A`);
      // router (in the concat GEMM) → topk_gate → moe_down_routed → moe_up_grouped
      const idx = (m: { id: string }) => st.graph.nodes.findIndex((x) => x.id === m.id);
      const concat = concatAt(st, site)!;
      expect(idx(concat)).toBeLessThan(idx(topk));
      expect(idx(n)).toBe(idx(topk) + 1);
      expect(idx(up)).toBeGreaterThan(idx(n));
      // It reads the site's x, and does not join the base GEMM; the router still does.
      expect(n.inputs[0]).toBe(concat.inputs[0]);
      // (The knowledge LoRA is merged into the base weight every step: fold-trainable-lora.)
      expect(partKindsAt(concat, site)).toEqual(['linear', 'router']);
    }
    expect(c.plan.compiler.passes.find((p) => p.name === 'route-expert-down')!.notes).toEqual(["aggregate: 12 mixture sites compute the experts' A for each token's top-k only"]);
    expect(() => verifyIR(c.ir, 'test', { expanded: true })).not.toThrow();
  });

  it('-O0 is unchanged: no moe_down_routed, the pass does not run', () => {
    const c = compile('pipelines/medcare.mcp', passes, { optLevel: 0 });
    expect(c.ir.stages.flatMap((s) => nodesOf(s, 'moe_down_routed'))).toHaveLength(0);
    expect(c.plan.compiler.passes.find((p) => p.name === 'route-expert-down')).toMatchObject({ ran: false, changes: 0 });
    expect(nodesOf(c.stage('aggregate').ir, 'expert_down')).toHaveLength(12 * 8);
  });

  it('A-side FLOPs: k/E of the dense batched GEMM, forward and backward', () => {
    const before = compile('pipelines/medcare.mcp', pre).stage('aggregate').plan;
    const after = compile('pipelines/medcare.mcp', [...pre, P.routeExpertDown]).stage('aggregate').plan;
    const dense = (f: { op: string }) => f.op === 'moe_down_batched';
    const routed = (f: { op: string }) => f.op === 'moe_down_routed';
    expect(forwardFlops(after, routed) / forwardFlops(before, dense)).toBe(2 / 8);
    expect(backwardFlops(after, routed) / backwardFlops(before, dense)).toBe(2 / 8);
    // Everything else is the same.
    const rest = (f: { op: string }) => !dense(f) && !routed(f);
    expect(forwardFlops(after, rest)).toBe(forwardFlops(before, rest));
    expect(after.estimates.forwardFlopsPerStep).toBeLessThan(before.estimates.forwardFlopsPerStep);
  });

  it('top_k = experts: nothing to skip, left dense (and says so)', () => {
    const { path, dir } = inline(moePipeline({ experts: 4, k: 4 }));
    const c = compile(path, [...pre, P.routeExpertDown], { dir });
    expect(c.changes['route-expert-down']).toBe(0);
    expect(nodesOf(c.stage('one').ir, 'moe_down_batched')).toHaveLength(6);
    expect(c.plan.compiler.passes.find((p) => p.name === 'route-expert-down')!.notes).toEqual(['one: 6 mixture sites keep every expert (top_k = experts), left dense']);
  });

  it('mixtures with shared experts keep their one dense A GEMM (LoRAMoE)', () => {
    const c = compile('examples/variants/loramoe.mcp', [...pre, P.routeExpertDown]);
    expect(c.changes['route-expert-down']).toBe(0);
    expect(nodesOf(c.stage('mixture').ir, 'moe_down_routed')).toHaveLength(0);
    expect(nodesOf(c.stage('mixture').ir, 'moe_down_batched').every((n) => (n.attrs.sharedRank as number) > 0)).toBe(true);
  });

  it('router_noise > 0 (a plain router node) and LoRA dropout: still routed; the dropped A stays out of the base GEMM', () => {
    const { path, dir } = inline(moePipeline({ extra: ', router_noise: 0.1, dropout: 0.1' }));
    const c = compile(path, passes, { dir });
    const st = c.stage('one').ir;
    expect(c.changes['route-expert-down']).toBe(6);
    expect(nodesOf(st, 'moe_down_routed')).toHaveLength(6);
    expect(nodesOf(st, 'router')).toHaveLength(6);
    for (const n of nodesOf(st, 'moe_down_routed')) {
      const ops = siteOps(st, n.site!);
      expect(ops.indexOf('router')).toBeLessThan(ops.indexOf('topk_gate'));
      expect(ops.indexOf('moe_down_routed')).toBe(ops.indexOf('topk_gate') + 1);
      expect(ops.indexOf('moe_up_grouped')).toBeGreaterThan(ops.indexOf('moe_down_routed'));
      const linear = st.graph.nodes.find((m) => m.site === n.site && m.op === 'linear') ?? concatAt(st, n.site!)!;
      expect(n.inputs[0]).toBe(linear.inputs[0]);
    }
  });

  it('the verifier refuses a moe_down_routed output read other than by moe_up_grouped on the same gates', () => {
    const c = compile('pipelines/medcare.mcp', passes);
    const st = c.stage('aggregate').ir;
    const n = nodesOf(st, 'moe_down_routed')[0]!;
    const up = st.graph.nodes.find((m) => m.op === 'moe_up_grouped' && m.inputs[0] === n.outputs[0])!;
    // The router's probabilities (an output of the concat_linear holding the site's router part).
    const probs = `${n.site}.noise.probs`;
    expect(st.graph.nodes.some((m) => m.outputs.includes(probs))).toBe(true);
    up.inputs[1] = probs;
    expect(() => verifyIR(c.ir, 'some-pass', { expanded: true })).toThrow(/reads .*hcat, the top-k-only output of moe_down_routed/);
  });
});
