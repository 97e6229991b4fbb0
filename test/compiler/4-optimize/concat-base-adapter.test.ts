import { describe, expect, it } from 'vitest';
import { base, compile, gemmOps, inline, nodesOf, P } from './helpers.js';
import type { StageIR } from '../../../src/compiler/ir/types.js';

/** Per site: the number of GEMM-like ops of that site reading the site's input. */
function gemmsPerSite(st: StageIR): Map<string, number> {
  const out = new Map<string, number>();
  for (const n of st.graph.nodes) {
    if ((n.op !== 'linear' && n.op !== 'concat_linear') || !n.site) continue;
    const x = n.inputs[0];
    out.set(n.site, st.graph.nodes.filter((m) => m.site === n.site && gemmOps.has(m.op) && m.inputs[0] === x).length);
  }
  return out;
}

describe('concat-base-adapter', () => {
  const pre = [...base, P.foldFrozenLora, P.batchExperts];
  const before = compile('pipelines/medcare.mcp', pre);
  const after = compile('pipelines/medcare.mcp', [...pre, P.concatBaseAdapter]);

  it('MedCare: every adapted site reads its input with one GEMM', () => {
    expect(after.changes['concat-base-adapter']).toBe(40);
    const counts = (name: string, c = before) => [...gemmsPerSite(c.stage(name).ir).values()];
    // Stage 1: 16 attention sites (base + attn LoRA) and 12 FFN sites (base + knowledge + router + experts' A).
    expect(counts('aggregate').sort()).toEqual([...Array(16).fill(2), ...Array(12).fill(4)]);
    expect(counts('aggregate', after)).toEqual(Array(28).fill(1));
    // Stage 2: attention is merged (plain GEMMs), FFN sites: folded base + align.
    expect(counts('align').sort()).toEqual([...Array(16).fill(1), ...Array(12).fill(2)]);
    expect(counts('align', after)).toEqual(Array(28).fill(1));
    expect(nodesOf(after.stage('align').ir, 'concat_linear')).toHaveLength(12);
    expect(nodesOf(after.stage('align').ir, 'linear')).toHaveLength(16);
  });

  it('one output per part, the same values as before, biases on their own parts', () => {
    const st = after.stage('aggregate').ir;
    const mlp = nodesOf(st, 'concat_linear').find((n) => n.site === 'layers[1].mlp.up')!;
    expect(mlp.outputs).toEqual(['layers[1].mlp.up.base', 'layers[1].mlp.up.knowledge.h', 'layers[1].mlp.up.noise.probs', 'layers[1].mlp.up.noise.hcat']);
    const parts = mlp.attrs.parts as { kind: string; out: number; params: string[]; bias?: string; activation?: string }[];
    expect(parts.map((p) => [p.kind, p.out])).toEqual([
      ['linear', 176],
      ['lora_down', 32],
      ['router', 8],
      ['moe_down_batched', 128],
    ]);
    expect(mlp.attrs).toMatchObject({ in: 64, totalOut: 176 + 32 + 8 + 128 });
    expect(parts[2]).toMatchObject({ params: ['noise.layers[1].mlp.up.router_W'], bias: 'noise.layers[1].mlp.up.router_b', activation: 'softmax' });
    const q = nodesOf(st, 'concat_linear').find((n) => n.site === 'layers[0].attn.q')!;
    const qp = q.attrs.parts as { kind: string; bias?: string }[];
    expect(qp[0]).toMatchObject({ kind: 'linear', bias: 'base.layers[0].attn.q.bias' });
    expect(qp[1].bias).toBeUndefined();
  });

  it('leaves the FLOPs estimate unchanged (forward and backward)', () => {
    for (const name of ['aggregate', 'align']) {
      const a = before.stage(name).plan.estimates;
      const b = after.stage(name).plan.estimates;
      expect(b.forwardFlopsPerStep).toBe(a.forwardFlopsPerStep);
      expect(b.backwardFlopsPerStep).toBe(a.backwardFlopsPerStep);
      expect(b.kernels).toBeLessThan(a.kernels);
    }
  });

  it('sites without adapters stay plain GEMMs', () => {
    const c = compile('examples/variants/expert-pruning.mcp', [...pre, P.concatBaseAdapter]);
    expect(nodesOf(c.stage('warmup').ir, 'concat_linear')).toHaveLength(0);
    expect(c.changes['concat-base-adapter']).toBe(24);
  });

  it('in a stage that trains the base too, the backward still matches the separate GEMMs', () => {
    const { path, dir } = inline(`pipeline p
model base = builtin("qwen2-micro")
data d = jsonl("d.jsonl")
adapter a = lora(r: 4, alpha: 8) at layers[*].attn.{q, v}
stage one {
  train base, a on d
  batch 8
  max_len 64
}
`);
    const b = compile(path, base, { dir }).stage('one').plan;
    const c = compile(path, [...base, P.concatBaseAdapter], { dir });
    const a = c.stage('one').plan;
    expect(c.changes['concat-base-adapter']).toBe(4);
    expect(a.estimates.forwardFlopsPerStep).toBe(b.estimates.forwardFlopsPerStep);
    expect(a.estimates.backwardFlopsPerStep).toBe(b.estimates.backwardFlopsPerStep);
    const q = a.backward.find((s) => s.gradInputs.includes('base.layers[0].attn.q.weight'))!;
    expect(q.kernel).toBe('gemm_concat.backward');
    expect(q.gradInputs).toEqual(expect.arrayContaining(['base.layers[0].attn.q.weight', 'base.layers[0].attn.q.bias', 'a.layers[0].attn.q.A']));
  });

  it('an adapter with dropout keeps its own lora_down on the site input (it reads dropout(x) in training)', () => {
    const { path, dir } = inline(`pipeline p
model base = builtin("qwen2-micro")
data d = jsonl("d.jsonl")
adapter a = lora(r: 4, alpha: 8, dropout: 0.1) at layers[*].attn.q
adapter b = lora(r: 4, alpha: 8) at layers[*].attn.v
stage one {
  train a, b on d
  batch 8
  max_len 64
}
`);
    const c = compile(path, [...base, P.concatBaseAdapter], { dir });
    const st = c.stage('one').ir;
    expect(c.changes['concat-base-adapter']).toBe(2);
    const downs = nodesOf(st, 'lora_down');
    expect(downs.map((n) => n.adapter)).toEqual(['a', 'a']);
    for (const d of downs) expect(st.graph.nodes.find((n) => n.op === 'linear' && n.site === d.site)!.inputs[0]).toBe(d.inputs[0]);
    const cat = nodesOf(st, 'concat_linear');
    expect(cat.map((n) => n.site)).toEqual(['layers[0].attn.v', 'layers[1].attn.v']);
  });
  it('a mixture with router_noise keeps its own router on the site input (its logits get noise in training)', () => {
    const src = (noise: number) => inline(`pipeline p
model base = builtin("qwen2-micro")
data d = jsonl("d.jsonl")
adapter m = moe_lora(experts: 4, top_k: 2, r: 4, alpha: 8, dropout: 0.1, router_noise: ${noise}) at layers[*].mlp.up
stage one {
  train m on d
  batch 8
  max_len 64
}
`);
    const noisy = src(0.2);
    const c = compile(noisy.path, [...base, P.concatBaseAdapter], { dir: noisy.dir });
    const st = c.stage('one').ir;
    expect(nodesOf(st, 'concat_linear')).toEqual([]);
    const routers = nodesOf(st, 'router');
    expect(routers.map((n) => n.adapter)).toEqual(['m', 'm']);
    for (const r of routers) expect(st.graph.nodes.find((n) => n.op === 'linear' && n.site === r.site)!.inputs[0]).toBe(r.inputs[0]);
    // Without noise the router joins the base GEMM (the dropped A still does not).
    const quiet = src(0);
    const q = compile(quiet.path, [...base, P.concatBaseAdapter], { dir: quiet.dir }).stage('one').ir;
    const cat = nodesOf(q, 'concat_linear');
    expect(cat.length).toBe(2);
    for (const n of cat) expect((n.attrs.parts as { kind: string }[]).map((p) => p.kind)).toEqual(['linear', 'router']);
    expect(nodesOf(q, 'router')).toEqual([]);
  });
});
