import { describe, expect, it } from 'vitest';
import { base, backwardFlops, compile, forwardFlops, inline, nodesOf, P } from './helpers.js';
import type { StageIR } from '../../../src/compiler/ir/types.js';

/** Ops at `site` that read the site's input x and compute a down projection (A) of `adapter`. */
function downProjections(st: StageIR, site: string, adapter: string) {
  const x = st.graph.nodes.find((n) => n.op === 'linear' && n.site === site)!.inputs[0];
  return st.graph.nodes.filter((n) => n.site === site && n.adapter === adapter && n.inputs[0] === x && ['lora_down', 'expert_down', 'moe_down_batched'].includes(n.op));
}

const moePipeline = (experts: number, k: number, shared = 0) => `pipeline moe
model base = builtin("qwen2-micro")
data d = jsonl("d.jsonl")
adapter m = moe_lora(experts: ${experts}, top_k: ${k}, shared: ${shared}, r: 8, alpha: 16) at layers[*].mlp.{gate, up, down}
stage one {
  train m on d
  batch 8
  micro_batch 4
  max_len 128
}
`;

describe('batch-experts', () => {
  it('MedCare stage 1: one GEMM computes every A projection of each of the 12 mixture sites', () => {
    const before = compile('pipelines/medcare.mcp', base).stage('aggregate').ir;
    const c = compile('pipelines/medcare.mcp', [...base, P.batchExperts]);
    const st = c.stage('aggregate').ir;
    expect(c.changes['batch-experts']).toBe(12);
    const sites = [...new Set(nodesOf(before, 'gate_combine').map((n) => n.site!))];
    expect(sites).toHaveLength(12);
    for (const site of sites) {
      expect(downProjections(before, site, 'noise')).toHaveLength(8);
      expect(downProjections(st, site, 'noise')).toHaveLength(1);
      expect(downProjections(st, site, 'noise')[0]).toMatchObject({ op: 'moe_down_batched', attrs: { rows: 8 * 16, sharedRank: 0 } });
    }
    for (const op of ['expert_down', 'expert_up', 'gate_combine'] as const) expect(nodesOf(st, op)).toHaveLength(0);
    expect(nodesOf(st, 'moe_up_grouped')).toHaveLength(12);
    expect(nodesOf(st, 'moe_up_grouped')[0].attrs).toMatchObject({ k: 2, rank: 16, experts: 8, sharedRank: 0, scale: 2 });
    // Router and top-k stay; stage 2 has no mixture.
    expect(nodesOf(st, 'router')).toHaveLength(12);
    expect(nodesOf(st, 'topk_gate')).toHaveLength(12);
    expect(nodesOf(c.stage('align').ir, 'moe_up_grouped')).toHaveLength(0);
  });

  it('shared experts join the same A GEMM and the same grouped B GEMM (LoRAMoE)', () => {
    const before = compile('examples/variants/loramoe.mcp', base).stage('mixture').ir;
    const c = compile('examples/variants/loramoe.mcp', [...base, P.batchExperts]);
    const st = c.stage('mixture').ir;
    expect(c.changes['batch-experts']).toBe(12);
    const site = 'layers[0].mlp.up';
    // 1 shared lora_down + 6 expert_down before, one GEMM after.
    expect(downProjections(before, site, 'experts')).toHaveLength(7);
    const [down] = downProjections(st, site, 'experts');
    expect(downProjections(st, site, 'experts')).toHaveLength(1);
    expect(down.inputs.slice(1)).toEqual([`experts.${site}.shared_A`, `experts.${site}.expert_A`]);
    expect(down.attrs).toMatchObject({ rows: 8 + 6 * 8, sharedRank: 8, rank: 8, experts: 6 });
    const up = nodesOf(st, 'moe_up_grouped').find((n) => n.site === site)!;
    expect(up.inputs.slice(2)).toEqual([`experts.${site}.shared_B`, `experts.${site}.expert_B`]);
    expect(up.attrs).toMatchObject({ k: 2, rank: 8, sharedRank: 8, experts: 6 });
    expect(st.graph.nodes.filter((n) => n.adapter === 'experts' && (n.op === 'lora_down' || n.op === 'lora_up'))).toHaveLength(0);
    // The shared experts' add is gone: one add fewer per site.
    expect(nodesOf(before, 'add').length - nodesOf(st, 'add').length).toBe(12);
    // load_balance still reads the router's probabilities and the gates.
    expect(nodesOf(st, 'load_balance')).toHaveLength(12);
  });

  const bSide = (experts: number, k: number, passes = [...base, P.batchExperts]) => {
    const { path, dir } = inline(moePipeline(experts, k));
    const st = compile(path, passes, { dir }).stage('one').plan;
    const micro = st.estimates.microBatchesPerStep;
    const isB = (f: { op: string }) => f.op === 'moe_up_grouped' || f.op === 'expert_up' || f.op === 'gate_combine';
    return { forward: forwardFlops(st, isB) * micro, backward: backwardFlops(st, isB) * micro };
  };

  it('B-side FLOPs per step are proportional to top_k', () => {
    const [k1, k2, k4] = [1, 2, 4].map((k) => bSide(8, k));
    expect(k1.forward).toBeGreaterThan(0);
    expect(k2.forward / k1.forward).toBe(2);
    expect(k4.forward / k1.forward).toBe(4);
    expect(k2.backward / k1.backward).toBe(2);
    expect(k4.backward / k1.backward).toBe(4);
  });

  it('B-side FLOPs per step do not depend on the number of experts (they did before batching)', () => {
    const [e4, e8] = [4, 8].map((e) => bSide(e, 2));
    expect(e8.forward).toBe(e4.forward);
    expect(e8.backward).toBe(e4.backward);
    const [u4, u8] = [4, 8].map((e) => bSide(e, 2, base));
    expect(u8.forward / u4.forward).toBe(2);
    // Batched: k/experts of the dense B work (plus gating), here a quarter.
    expect(e8.forward).toBeLessThan(u8.forward / 3);
  });
});
