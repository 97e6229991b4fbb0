import { describe, expect, it } from 'vitest';
import { base, compile, forwardFlops, inline, nodesOf, P } from './helpers.js';

describe('fold-frozen-lora', () => {
  const before = compile('pipelines/medcare.mcp', base);
  const after = compile('pipelines/medcare.mcp', [...base, P.foldFrozenLora]);
  const align0 = before.stage('align');
  const align1 = after.stage('align');
  const knowledgeOps = (st: typeof align0.ir) => st.graph.nodes.filter((n) => n.adapter === 'knowledge' && (n.op === 'lora_down' || n.op === 'lora_up'));

  it('folds knowledge at the 12 FFN sites of MedCare stage 2', () => {
    expect(after.changes['fold-frozen-lora']).toBe(12);
    expect(knowledgeOps(align0.ir)).toHaveLength(24);
    expect(knowledgeOps(align1.ir)).toHaveLength(0);
    // 12 lora_down + 12 lora_up + the 12 adds that summed them in.
    expect(align0.ir.graph.nodes.length - align1.ir.graph.nodes.length).toBe(36);
    expect(align1.ir.entry).toHaveLength(1);
    expect(align1.ir.entry[0]).toMatchObject({ op: 'fold', adapter: 'knowledge' });
    const fold = align1.ir.entry[0] as { sites: string[]; note: string };
    expect(fold.sites).toHaveLength(12);
    expect(fold.note).toContain('W + 2·B·A');
    expect(align1.plan.adapters.folded).toEqual(['knowledge']);
    expect(align1.plan.adapters.frozen).toEqual([]);
    expect(align0.plan.adapters.frozen).toEqual(['knowledge']);
  });

  it('marks the tensors folded in that stage only, and the base GEMM reads the stage copy', () => {
    const knowledge = [...after.ir.params.values()].filter((p) => p.owner === 'knowledge');
    expect(knowledge).toHaveLength(24);
    expect(knowledge.filter((p) => p.states.align === 'folded')).toHaveLength(24);
    expect(knowledge.filter((p) => p.states.aggregate === 'trainable')).toHaveLength(24);
    const linears = nodesOf(align1.ir, 'linear').filter((n) => n.site?.includes('.mlp.'));
    expect(linears).toHaveLength(12);
    for (const n of linears) {
      expect(n.inputs[1]).toBe(`${n.site}.weight.folded`);
      expect(align1.ir.graph.values.get(n.inputs[1])).toMatchObject({ kind: 'const', shape: after.ir.params.get(`base.${n.site}.weight`)!.shape });
      expect(n.attrs).toMatchObject({ foldedFrom: `base.${n.site}.weight`, folded: ['knowledge'] });
    }
  });

  it('keeps A as a constant of the orthogonality term', () => {
    const ortho = nodesOf(align1.ir, 'ortho_penalty');
    expect(ortho).toHaveLength(12);
    expect(ortho.filter((n) => n.inputs.some((i) => i.startsWith('knowledge.') && i.endsWith('.A')))).toHaveLength(12);
  });

  it('saves exactly the FLOPs of the folded adapter ops; stage 1 is untouched', () => {
    const isKnowledge = (f: { adapter?: string; op: string }) => f.adapter === 'knowledge';
    const saved = forwardFlops(align0.plan, isKnowledge);
    expect(saved).toBeGreaterThan(0);
    const adds = (st: typeof align0.plan) => forwardFlops(st, (f) => f.op === 'add');
    const total = (st: typeof align0.plan) => st.forward.reduce((s, f) => s + f.flops, 0);
    // The 12 removed adds: T tokens x (gate 176 + up 176 + down 64) outputs in each of 4 layers.
    const T = align0.plan.estimates.tokensPerMicroBatch;
    expect(adds(align0.plan) - adds(align1.plan)).toBe(T * 4 * (176 + 176 + 64));
    expect(total(align0.plan) - total(align1.plan)).toBe(saved + T * 4 * (176 + 176 + 64));
    expect(forwardFlops(align1.plan, isKnowledge)).toBe(0);
    expect(after.stage('aggregate').ir.graph.nodes.length).toBe(before.stage('aggregate').ir.graph.nodes.length);
  });

  it('folds every frozen LoRA of the three-stage pipeline into one stage copy per site', () => {
    const c = compile('pipelines/medcare-3stage.mcp', [...base, P.foldFrozenLora]);
    expect(c.changes['fold-frozen-lora']).toBe(36);
    const safety = c.stage('safety').ir;
    expect(safety.adapters.folded).toEqual(['knowledge', 'align']);
    expect(safety.entry.map((t) => t.op === 'fold' && [t.adapter, t.sites.length])).toEqual([
      ['knowledge', 12],
      ['align', 12],
    ]);
    const mlp = nodesOf(safety, 'linear').filter((n) => n.site?.includes('.mlp.'));
    expect(mlp.every((n) => JSON.stringify(n.attrs.folded) === '["knowledge","align"]')).toBe(true);
    expect(safety.graph.nodes.filter((n) => n.op === 'lora_down')).toHaveLength(12); // safety only
  });

  it('leaves mixtures, adapters with dropout and stages that train the base alone', () => {
    // expert-pruning: noise (a mixture) stays frozen in stage align; knowledge is folded.
    const ep = compile('examples/variants/expert-pruning.mcp', [...base, P.foldFrozenLora]);
    expect(ep.stage('align').ir.adapters).toMatchObject({ frozen: ['noise'], folded: ['knowledge'] });
    expect(nodesOf(ep.stage('align').ir, 'expert_down').length).toBeGreaterThan(0);

    const src = (dropout: number, second: string) => `pipeline p
model base = builtin("qwen2-micro")
data d = jsonl("d.jsonl")
adapter a = lora(r: 4, alpha: 8, dropout: ${dropout}) at layers[*].mlp.{gate, up}
stage one {
  train a on d
  batch 8
  max_len 64
  then {
    freeze a
  }
}
stage two {
  ${second}
  batch 8
  max_len 64
}
`;
    const withB = inline(src(0, 'adapter b = lora(r: 4, alpha: 8) at layers[*].mlp.down\n  train b on d'));
    expect(compile(withB.path, [...base, P.foldFrozenLora], { dir: withB.dir }).changes['fold-frozen-lora']).toBe(4);
    const dropout = inline(src(0.1, 'adapter b = lora(r: 4, alpha: 8) at layers[*].mlp.down\n  train b on d'));
    const d = compile(dropout.path, [...base, P.foldFrozenLora], { dir: dropout.dir });
    expect(d.changes['fold-frozen-lora']).toBe(0);
    expect(d.stage('two').ir.adapters.frozen).toEqual(['a']);
    const full = inline(src(0, 'train base on d'));
    const f = compile(full.path, [...base, P.foldFrozenLora], { dir: full.dir });
    expect(f.stage('two').ir.trainBase).toBe(true);
    expect(f.stage('two').ir.adapters.frozen).toEqual(['a']);
    expect(f.changes['fold-frozen-lora']).toBe(0);
  });
});
