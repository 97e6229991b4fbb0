import { describe, expect, it } from 'vitest';
import { passes } from '../../../src/compiler/4-optimize/index.js';
import { verifyIR } from '../../../src/compiler/ir/verify.js';
import type { Node, StageIR } from '../../../src/compiler/ir/types.js';
import { base, compile, concatAt, inline, nodesOf, P } from './helpers.js';

type Part = { kind: string; out: number; params: string[]; node: string; site?: string; bias?: string; activation?: string; adapter?: string };
const partsOf = (n: Node): Part[] => n.attrs.parts as Part[];
const siteSet = (n: Node) => new Set(partsOf(n).map((p) => p.site));
/** concat_linear nodes spanning more than one site. */
const mergedOf = (st: StageIR) => nodesOf(st, 'concat_linear').filter((n) => siteSet(n).size > 1);
/** Every value some node produces. */
const produced = (st: StageIR) => new Set(st.graph.nodes.flatMap((n) => n.outputs));
/** Per value, the ids of the nodes that read it (excluding the GEMMs the pass rewrites). */
const readers = (st: StageIR) => {
  const m = new Map<string, string[]>();
  for (const n of st.graph.nodes) for (const i of n.inputs) m.set(i, [...(m.get(i) ?? []), n.id]);
  return m;
};

const one = (adapters: string, extra = '') => `pipeline p
model base = builtin("qwen2-micro")
data d = jsonl("d.jsonl")
${adapters}
stage one {
  train ${extra}${adapters.split('\n').map((l) => /^adapter (\w+)/.exec(l)?.[1]).filter(Boolean).join(', ')} on d
  batch 8
  max_len 64
}
`;

describe('concat-shared-input', () => {
  const pre = [...base, P.foldFrozenLora, P.batchExperts, P.routeExpertDown, P.concatBaseAdapter];
  const before = compile('pipelines/medcare.mcp', pre);
  const after = compile('pipelines/medcare.mcp', [...pre, P.concatSharedInput]);

  it('MedCare: per layer, q, k, v one GEMM and gate, up one GEMM, in both stages', () => {
    // 4 layers x (3 -> 1 and 2 -> 1) = 12 GEMMs removed per stage.
    expect(after.changes['concat-shared-input']).toBe(24);
    for (const name of ['aggregate', 'align']) {
      const st = after.stage(name).ir;
      const merged = mergedOf(st);
      expect(merged).toHaveLength(8);
      expect(merged.map((n) => [...siteSet(n)].map((s) => s!.split('.').pop()))).toEqual(Array.from({ length: 4 }, () => [['q', 'k', 'v'], ['gate', 'up']]).flat());
      for (const n of merged) {
        expect(n.site).toBeUndefined();
        expect(n.layer).toBe(Number(/layers\[(\d+)\]/.exec(partsOf(n)[0]!.site!)![1]));
        expect(n.attrs.totalOut).toBe(partsOf(n).reduce((s, p) => s + p.out, 0));
      }
      // o and down read their own inputs: left alone.
      const single = nodesOf(st, 'concat_linear').filter((n) => siteSet(n).size === 1);
      // (In align the attention LoRA is merged into the base: o is a plain linear there.)
      expect(single.map((n) => n.site!.split('.').pop()).sort()).toEqual(name === 'aggregate' ? [...Array(4).fill('down'), ...Array(4).fill('o')] : Array(4).fill('down'));
      // No consumer changes: the same values are produced, and read by the same nodes outside the GEMMs.
      const b = before.stage(name).ir;
      expect(produced(st)).toEqual(produced(b));
      const gemm = (g: StageIR) => new Set(g.graph.nodes.filter((n) => n.op === 'concat_linear' || n.op === 'linear').map((n) => n.id));
      const [ra, rb] = [readers(st), readers(b)];
      const [ga, gb] = [gemm(st), gemm(b)];
      for (const [v, ids] of rb) expect((ra.get(v) ?? []).filter((i) => !ga.has(i)), v).toEqual(ids.filter((i) => !gb.has(i)));
    }
    expect(after.plan.compiler.passes.find((p) => p.name === 'concat-shared-input')!.notes).toEqual([
      'aggregate: 8 shared inputs read by one GEMM each (20 GEMMs became 8)',
      'align: 8 shared inputs read by one GEMM each (20 GEMMs became 8)',
    ]);
  });

  it('the parts in order, each with its own params, bias, activation and outputs; the inputs x then each part', () => {
    const st = after.stage('aggregate').ir;
    const qkv = mergedOf(st)[0]!;
    expect(partsOf(qkv).map((p) => [p.kind, p.site, p.out, p.bias])).toEqual([
      ['linear', 'layers[0].attn.q', 64, 'base.layers[0].attn.q.bias'],
      ['lora_down', 'layers[0].attn.q', 16, undefined],
      ['linear', 'layers[0].attn.k', 32, 'base.layers[0].attn.k.bias'],
      ['lora_down', 'layers[0].attn.k', 16, undefined],
      ['linear', 'layers[0].attn.v', 32, 'base.layers[0].attn.v.bias'],
      ['lora_down', 'layers[0].attn.v', 16, undefined],
    ]);
    expect(qkv.inputs[0]).toBe(before.stage('aggregate').ir.graph.nodes.find((n) => n.site === 'layers[0].attn.q')!.inputs[0]);
    expect(qkv.inputs.slice(1)).toEqual(partsOf(qkv).flatMap((p) => [...p.params, ...(p.bias ? [p.bias] : [])]));
    expect(qkv.outputs).toEqual(['q', 'k', 'v'].flatMap((s) => [`layers[0].attn.${s}.base`, `layers[0].attn.${s}.attn.h`]));
    const gu = mergedOf(st)[1]!;
    expect(partsOf(gu).map((p) => [p.kind, p.site!.split('.').pop(), p.activation])).toEqual([
      ['linear', 'gate', undefined],
      ['lora_down', 'gate', undefined],
      ['router', 'gate', 'softmax'],
      ['linear', 'up', undefined],
      ['lora_down', 'up', undefined],
      ['router', 'up', 'softmax'],
    ]);
    expect(partsOf(gu).filter((p) => p.kind === 'router').map((p) => p.bias)).toEqual(['noise.layers[0].mlp.gate.router_b', 'noise.layers[0].mlp.up.router_b']);
    // route-expert-down's moe_down_routed is not a part: it stays on its own, reading the same x after the gates.
    const routed = nodesOf(st, 'moe_down_routed').filter((n) => n.layer === 0 && !n.site!.endsWith('.down'));
    expect(routed.map((n) => n.inputs[0])).toEqual([gu.inputs[0], gu.inputs[0]]);
    const idx = (n: Node) => st.graph.nodes.indexOf(n);
    for (const r of routed) expect(idx(r)).toBeGreaterThan(idx(gu));
    expect(() => verifyIR(after.ir, 'concat-shared-input', { expanded: true })).not.toThrow();
  });

  it('leaves the FLOPs estimate unchanged (forward and backward), with fewer kernels', () => {
    for (const name of ['aggregate', 'align']) {
      const a = before.stage(name).plan.estimates;
      const b = after.stage(name).plan.estimates;
      expect(b.forwardFlopsPerStep).toBe(a.forwardFlopsPerStep);
      expect(b.backwardFlopsPerStep).toBe(a.backwardFlopsPerStep);
      expect(a.kernels - b.kernels).toBeGreaterThanOrEqual(12);
    }
  });

  it('leaves a GEMM alone when it is the only reader of its input (o, down), and does nothing at -O0', () => {
    const { path, dir } = inline(one('adapter a = lora(r: 4, alpha: 8) at layers[*].attn.o\nadapter b = lora(r: 4, alpha: 8) at layers[*].mlp.down'));
    const b = compile(path, pre, { dir });
    const c = compile(path, [...pre, P.concatSharedInput], { dir });
    for (const s of ['layers[0].attn.o', 'layers[1].mlp.down']) expect(concatAt(c.stage('one').ir, s)!.attrs).toEqual(concatAt(b.stage('one').ir, s)!.attrs);
    const o0 = compile('pipelines/medcare.mcp', [...pre, P.concatSharedInput], { optLevel: 0 });
    expect(o0.changes['concat-shared-input']).toBe(0);
    expect(o0.ir.stages.flatMap((s) => nodesOf(s, 'concat_linear'))).toEqual([]);
  });

  it('an adapter with dropout keeps its own lora_down on x; the base GEMMs still merge', () => {
    const { path, dir } = inline(one('adapter a = lora(r: 4, alpha: 8, dropout: 0.1) at layers[*].attn.{q, k, v}'));
    const c = compile(path, [...pre, P.concatSharedInput], { dir });
    const st = c.stage('one').ir;
    const downs = nodesOf(st, 'lora_down');
    expect(downs).toHaveLength(6);
    const merged = mergedOf(st).filter((n) => partsOf(n).some((p) => p.site?.includes('attn')));
    expect(merged).toHaveLength(2);
    for (const m of merged) {
      expect(partsOf(m).map((p) => p.kind)).toEqual(['linear', 'linear', 'linear']);
      for (const d of downs.filter((d) => d.layer === m.layer)) expect(d.inputs[0]).toBe(m.inputs[0]);
    }
    // Nothing of the dropout adapter in any GEMM; the verifier refuses one that is.
    expect(nodesOf(st, 'concat_linear').flatMap(partsOf).filter((p) => p.adapter === 'a')).toEqual([]);
    const m = merged[0]!;
    const d = downs.find((x) => x.layer === m.layer)!;
    m.inputs.push(d.inputs[1]!);
    m.outputs.push(d.outputs[0]!);
    partsOf(m).push({ kind: 'lora_down', out: 4, params: [d.inputs[1]!], node: d.id, adapter: 'a' });
    m.attrs.totalOut = partsOf(m).reduce((s, p) => s + p.out, 0);
    st.graph.nodes = st.graph.nodes.filter((n) => n !== d);
    expect(() => verifyIR(c.ir, 'some-pass', { expanded: true })).toThrow(/part lora_down of a is altered in training/);
  });

  it('a router with router_noise stays a plain router node; the rest of gate and up merges', () => {
    const { path, dir } = inline(one('adapter m = moe_lora(experts: 4, top_k: 2, r: 4, alpha: 8, router_noise: 0.2) at layers[*].mlp.{gate, up}'));
    const c = compile(path, [...pre, P.concatSharedInput], { dir });
    const st = c.stage('one').ir;
    expect(nodesOf(st, 'router')).toHaveLength(4);
    const mlp = mergedOf(st).filter((n) => partsOf(n).some((p) => p.site?.includes('mlp')));
    expect(mlp).toHaveLength(2);
    for (const n of mlp) expect(partsOf(n).map((p) => p.kind)).not.toContain('router');
  });

  it('GEMMs whose outputs need no gradient do not join those whose outputs do', () => {
    // Only q is adapted: in layer 0 the input is not downstream of anything trainable, so k and v (frozen,
    // no gradient) merge with each other but not with q's GEMM; in layer 1 all three need one and merge.
    const { path, dir } = inline(one('adapter a = lora(r: 4, alpha: 8) at layers[*].attn.q'));
    const b = compile(path, pre, { dir });
    const c = compile(path, [...pre, P.concatSharedInput], { dir });
    const st = c.stage('one').ir;
    const l0 = st.graph.nodes.filter((n) => n.layer === 0 && n.op === 'concat_linear').map((n) => [...siteSet(n)].map((s) => s!.split('.').pop()));
    expect(l0).toContainEqual(['q']);
    expect(l0).toContainEqual(['k', 'v']);
    const l1 = st.graph.nodes.filter((n) => n.layer === 1 && n.op === 'concat_linear').map((n) => [...siteSet(n)].map((s) => s!.split('.').pop()));
    expect(l1).toContainEqual(['q', 'k', 'v']);
    const [eb, ec] = [b.stage('one').plan.estimates, c.stage('one').plan.estimates];
    expect(ec.backwardFlopsPerStep).toBe(eb.backwardFlopsPerStep);
    // The backward steps ask for the same gradients (no new value on the gradient's path).
    const grads = (p: typeof b) => new Set(p.stage('one').plan.backward.flatMap((s) => s.gradInputs));
    expect(grads(c)).toEqual(grads(b));
  });

  it('in a stage that trains the base: dW and db of every merged weight, the same backward FLOPs', () => {
    const { path, dir } = inline(one('adapter a = lora(r: 4, alpha: 8) at layers[*].attn.{q, v}', 'base, '));
    const b = compile(path, pre, { dir });
    const c = compile(path, [...pre, P.concatSharedInput], { dir });
    const pa = c.stage('one').plan;
    expect(pa.estimates.forwardFlopsPerStep).toBe(b.stage('one').plan.estimates.forwardFlopsPerStep);
    expect(pa.estimates.backwardFlopsPerStep).toBe(b.stage('one').plan.estimates.backwardFlopsPerStep);
    const qkv = pa.backward.find((s) => s.gradInputs.includes('base.layers[1].attn.k.weight'))!;
    expect(qkv.kernel).toBe('gemm_concat.backward');
    expect(qkv.gradInputs).toEqual(
      expect.arrayContaining(['q', 'k', 'v'].flatMap((s) => [`base.layers[1].attn.${s}.weight`, `base.layers[1].attn.${s}.bias`]).concat(['a.layers[1].attn.q.A', 'a.layers[1].attn.v.A'])),
    );
  });

  it('plan-memory with recompute: the merged nodes keep their layer, so the same values are recomputed at the same cost', () => {
    const { path, dir } = inline(one('adapter a = lora(r: 4, alpha: 8) at layers[*].attn.{q, k, v}').replace('  max_len 64', '  max_len 64\n  recompute true'));
    const without = compile(path, passes.filter((p) => p.name !== 'concat-shared-input'), { dir }).stage('one').plan;
    const withIt = compile(path, passes, { dir }).stage('one').plan;
    expect(withIt.memory.recompute && without.memory.recompute).toBe(true);
    expect(withIt.memory.recomputed!.flops).toBe(without.memory.recomputed!.flops);
    expect(withIt.memory.recomputed!.nodes).toBeLessThan(without.memory.recomputed!.nodes);
    expect(withIt.estimates.flopsPerStep).toBe(without.estimates.flopsPerStep);
    expect(withIt.memory.bytes.peak).toBeLessThanOrEqual(without.memory.bytes.peak);
    for (const f of withIt.forward.filter((x) => x.op === 'concat_linear')) expect(f.layer).toBeDefined();
  });

  it('the verifier refuses a concat_linear whose inputs do not follow its parts', () => {
    const c = compile('pipelines/medcare.mcp', [...pre, P.concatSharedInput]);
    const n = mergedOf(c.stage('align').ir)[0]!;
    [n.inputs[1], n.inputs[2]] = [n.inputs[2]!, n.inputs[1]!];
    expect(() => verifyIR(c.ir, 'some-pass', { expanded: true })).toThrow(/concat_linear inputs .* are not x then each part's params and bias/);
  });
});
