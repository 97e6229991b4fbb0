/**
 * fold-trainable-lora: plain LoRA merged into its base weight every step (lora_merge) where the cost model
 * says one base GEMM with its dW' costs less than the adapter's products; never for large projections, never
 * for an adapter with dropout. The numerics (-O0 and -O1 train alike) are the executor's equivalence tests.
 */
import { describe, expect, it } from 'vitest';
import { passes } from '../../../src/compiler/4-optimize/index.js';
import { base, compile, inline, nodesOf, P } from './helpers.js';

const tiny = (model: string, extra = '') =>
  inline(`pipeline t
model base = ${model}
data d = jsonl("d.jsonl")
adapter attn  = lora(r: 16, alpha: 32${extra}) at layers[*].attn.{q, k, v, o}
adapter align = lora(r: 32, alpha: 32) at layers[*].mlp.{gate, up, down}
stage one {
  train attn, align on d
  steps 10
  lr 1e-4
  batch 8
  micro_batch 8
  max_len 256
}
`);

describe('fold-trainable-lora', () => {
  const p = tiny('builtin("qwen2-tiny", hidden: 64, ffn: 176, heads: 4, kv_heads: 2)');
  const before = compile(p.path, base, { dir: p.dir });
  const after = compile(p.path, [...base, P.foldTrainableLora], { dir: p.dir });
  const st0 = before.stage('one');
  const st1 = after.stage('one');

  it('merges the trained LoRA of a 64-wide model into its base weights at every site', () => {
    const merges = nodesOf(st1.ir, 'lora_merge');
    const sites = merges.map((n) => n.site!);
    expect(sites.filter((s) => s.includes('.attn.'))).toHaveLength(16);
    expect(sites.filter((s) => s.includes('.mlp.'))).toHaveLength(12);
    expect(after.changes['fold-trainable-lora']).toBe(28);
    // Each merge removed a lora_down, a lora_up and an add, and added itself.
    expect(st0.ir.graph.nodes.length - st1.ir.graph.nodes.length).toBe(2 * 28);
  });

  it('follows the cost model: a rank-4 adapter on 64x64 projections stays unmerged, and so does an MLP site whose input needs no gradient where the adapter is cheaper then', () => {
    const low = inline(`pipeline t
model base = builtin("qwen2-tiny", hidden: 64, ffn: 176, heads: 4, kv_heads: 2)
data d = jsonl("d.jsonl")
adapter attn  = lora(r: 4, alpha: 8) at layers[*].attn.{q, k, v, o}
adapter align = lora(r: 16, alpha: 32) at layers[*].mlp.{gate, up, down}
stage one {
  train align on d
  steps 10
  lr 1e-4
  batch 8
  micro_batch 8
  max_len 256
}
stage two {
  train attn on d
  steps 10
  lr 1e-4
  batch 8
  micro_batch 8
  max_len 256
}
`);
    const c = compile(low.path, [...base, P.foldTrainableLora], { dir: low.dir });
    // Stage two trains attn (r 4): per token its four products forward and backward (~3K FLOPs at q) cost less
    // than dW' of a merged 64x64 weight (8K): no merge, and the note says so.
    expect(nodesOf(c.stage('two').ir, 'lora_merge').filter((n) => n.adapter === 'attn')).toHaveLength(0);
    // (align is frozen there: without fold-frozen-lora in this list, its per-step merge costs one small product
    // a step and no backward, so all 12 sites merge; the full list folds it once at stage entry instead.)
    expect(nodesOf(c.stage('two').ir, 'lora_merge').filter((n) => n.adapter === 'align')).toHaveLength(12);
    const notes = c.plan.compiler.passes.find((r) => r.name === 'fold-trainable-lora')!.notes.join('\n');
    expect(notes).toMatch(/two: 16 LoRA sites left unmerged: the merged form costs more at 2048 tokens a micro-batch/);
    // Stage one trains align (r 16) and nothing below the MLP: at layer 0's gate and up (input mlp_in, whose
    // gradient nobody needs) the adapter skips dx and costs 21,168 FLOPs a token against dW' 22,528: unmerged;
    // elsewhere dx is needed (23,216 against 22,528): merged.
    const one = nodesOf(c.stage('one').ir, 'lora_merge').map((n) => n.site!);
    expect(one).toHaveLength(10);
    expect(one).not.toContain('layers[0].mlp.gate');
    expect(one).not.toContain('layers[0].mlp.up');
    expect(one).toContain('layers[0].mlp.down');
    // The frozen attn of stage one is folded at entry by fold-frozen-lora, not here (that pass is not in this list).
    expect(nodesOf(c.stage('one').ir, 'lora_merge').some((n) => n.adapter === 'attn')).toBe(false);
  });

  it('the linear reads W + s·B·A from a merge at the head of the graph, over the same parameters', () => {
    const merges = nodesOf(st1.ir, 'lora_merge');
    expect(st1.ir.graph.nodes.slice(0, merges.length).every((n) => n.op === 'lora_merge')).toBe(true);
    for (const m of merges) {
      const site = m.site!;
      expect(m.inputs).toEqual([`base.${site}.weight`, `${m.adapter}.${site}.A`, `${m.adapter}.${site}.B`]);
      expect(m.attrs).toMatchObject(m.adapter === 'attn' ? { scale: 2, rank: 16 } : { scale: 1, rank: 32 });
      const linear = nodesOf(st1.ir, 'linear').find((n) => n.site === site)!;
      expect(linear.inputs[1]).toBe(m.outputs[0]);
      expect(st1.ir.graph.values.get(m.outputs[0])!.shape).toEqual(after.ir.params.get(`base.${site}.weight`)!.shape);
      expect(nodesOf(st1.ir, 'lora_down').some((n) => n.site === site)).toBe(false);
    }
    // The trained tensors are the same parameters, still trainable.
    expect(st1.plan.trainable).toEqual(st0.plan.trainable);
  });

  it('costs less arithmetic per step in the cost model, and says what it did in explain notes', () => {
    expect(st1.plan.estimates.flopsPerStep).toBeLessThan(st0.plan.estimates.flopsPerStep * 0.9);
    const report = after.plan.compiler.passes.find((r) => r.name === 'fold-trainable-lora')!;
    expect(report.notes).toEqual([
      'one: attn merged into the base weight every step at 16 sites (32 adapter GEMMs and 16 adds removed; the base GEMMs\' dW\' gives dA and dB)',
      'one: align merged into the base weight every step at 12 sites (24 adapter GEMMs and 12 adds removed; the base GEMMs\' dW\' gives dA and dB)',
    ]);
  });

  it('leaves a 7B model alone: its projections are far larger than the adapters', () => {
    const big = tiny('builtin("qwen2-7b")');
    const c = compile(big.path, [...base, P.foldTrainableLora], { dir: big.dir });
    expect(c.changes['fold-trainable-lora']).toBe(0);
    expect(nodesOf(c.stage('one').ir, 'lora_merge')).toHaveLength(0);
  });

  it('never merges an adapter with dropout (its A reads dropout(x) in training)', () => {
    const d = tiny('builtin("qwen2-tiny", hidden: 64, ffn: 176, heads: 4, kv_heads: 2)', ', dropout: 0.1');
    const c = compile(d.path, [...base, P.foldTrainableLora], { dir: d.dir });
    const merges = nodesOf(c.stage('one').ir, 'lora_merge');
    expect(merges.some((n) => n.adapter === 'attn')).toBe(false);
    expect(merges.filter((n) => n.adapter === 'align')).toHaveLength(12);
  });

  it('in the full pass list, the merged weights join the concatenated GEMMs (q, k, v; gate, up)', () => {
    const full = compile(p.path, passes, { dir: p.dir });
    const st = full.stage('one').ir;
    const qkv = st.graph.nodes.find((n) => n.op === 'concat_linear' && n.inputs.includes('layers[1].attn.q.weight.step'))!;
    for (const p of ['k', 'v']) expect(qkv.inputs).toContain(`layers[1].attn.${p}.weight.step`);
    const gateUp = st.graph.nodes.find((n) => n.op === 'concat_linear' && n.inputs.includes('layers[1].mlp.gate.weight.step'))!;
    expect(gateUp.inputs).toContain('layers[1].mlp.up.weight.step');
    expect(nodesOf(st, 'lora_merge')).toHaveLength(28);
  });
});
