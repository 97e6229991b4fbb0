import { describe, expect, it } from 'vitest';
import { backwardFlops, base, compile, forwardFlops, nodesOf, P } from './helpers.js';

const isOrtho = (f: { op: string }) => f.op === 'ortho_penalty' || f.op === 'ortho_penalty_batched';

describe('batch-orthogonality', () => {
  const pre = [...base, P.foldFrozenLora];
  const before = compile('pipelines/medcare.mcp', pre);
  const after = compile('pipelines/medcare.mcp', [...pre, P.batchOrthogonality]);

  it('lowering gives every penalty term its FLOPs: 2·r_t·r_o·d + r_t·r_o', () => {
    const st = compile('pipelines/medcare.mcp', base, { optLevel: 0 }).stage('align').ir;
    const terms = nodesOf(st, 'ortho_penalty');
    expect(terms).toHaveLength(12);
    for (const n of terms) {
      const d = n.site!.endsWith('.down') ? 176 : 64; // align A is [16, in], knowledge A [32, in]; in = ffn for down, hidden otherwise
      expect(n.attrs.flops).toBe(2 * 16 * 32 * d + 16 * 32);
    }
  });

  it('MedCare stage 2: 12 penalty nodes become 1, with the same total FLOPs', () => {
    const a = before.stage('align');
    const b = after.stage('align');
    expect(after.changes['batch-orthogonality']).toBe(12);
    expect(nodesOf(a.ir, 'ortho_penalty')).toHaveLength(12);
    expect(nodesOf(b.ir, 'ortho_penalty')).toHaveLength(0);
    expect(nodesOf(b.ir, 'ortho_penalty_batched')).toHaveLength(1);
    const total = 4 * (2 * (2 * 16 * 32 * 64 + 16 * 32) + (2 * 16 * 32 * 176 + 16 * 32));
    expect(forwardFlops(a.plan, isOrtho)).toBe(total);
    expect(forwardFlops(b.plan, isOrtho)).toBe(total);
    expect(nodesOf(b.ir, 'ortho_penalty_batched')[0].attrs.flops).toBe(total);
    // Only A_align gets a gradient (knowledge is folded): one backward GEMM per term, before and after.
    expect(backwardFlops(a.plan, isOrtho)).toBe(total);
    expect(backwardFlops(b.plan, isOrtho)).toBe(total);
    // Everything else is unchanged but the loss sum, which now adds 2 values instead of 13.
    const rest = (st: typeof a.plan) => forwardFlops(st, (f) => f.op !== 'loss_sum');
    expect(rest(b.plan)).toBe(rest(a.plan));
    expect(forwardFlops(a.plan, (f) => f.op === 'loss_sum') - forwardFlops(b.plan, (f) => f.op === 'loss_sum')).toBe(2 * 13 - 2 * 2);
  });

  it('the loss sum reads one pre-weighted penalty', () => {
    const st = after.stage('align').ir;
    const sum = nodesOf(st, 'loss_sum')[0];
    expect(sum.inputs).toEqual(['loss.ce', 'ortho.batched']);
    expect(sum.attrs.weights).toEqual([1, 1]);
    const node = nodesOf(st, 'ortho_penalty_batched')[0];
    const terms = node.attrs.terms as { target: string; other: string; targetParams: string[]; otherParams: string[]; weight: number; norm: string }[];
    expect(terms).toHaveLength(12);
    expect(terms[0]).toMatchObject({ target: 'align', other: 'knowledge', targetParams: ['align.layers[0].mlp.gate.A'], otherParams: ['knowledge.layers[0].mlp.gate.A'], weight: 1, norm: 'l1' });
    expect(node.inputs).toHaveLength(24);
  });

  it('several constraints and weights: O-LoRA keeps each term’s weight and norm', () => {
    const b = compile('examples/variants/olora-continual.mcp', [...pre]);
    const c = compile('examples/variants/olora-continual.mcp', [...pre, P.batchOrthogonality]);
    expect(c.changes['batch-orthogonality']).toBe(18);
    const third = c.stage('third').ir;
    const node = nodesOf(third, 'ortho_penalty_batched')[0];
    const terms = node.attrs.terms as { other: string; weight: number; norm: string }[];
    expect(terms).toHaveLength(12);
    expect(new Set(terms.map((t) => `${t.other} ${t.weight} ${t.norm}`))).toEqual(new Set(['t1 0.5 l2', 't2 0.5 l2']));
    expect(nodesOf(third, 'loss_sum')[0].attrs.weights).toEqual([1, 1]);
    // t3.A is read by two terms per site but is one input.
    expect(node.inputs.filter((i) => i.startsWith('t3.'))).toHaveLength(3 * 2);
    for (const name of ['second', 'third']) {
      expect(forwardFlops(c.stage(name).plan, isOrtho)).toBe(forwardFlops(b.stage(name).plan, isOrtho));
      expect(backwardFlops(c.stage(name).plan, isOrtho)).toBe(backwardFlops(b.stage(name).plan, isOrtho));
    }
  });

  it('the three-stage pipeline: 24 safety terms (12 sites × 2 earlier adapters) in one node', () => {
    const c = compile('pipelines/medcare-3stage.mcp', [...pre, P.batchOrthogonality]);
    expect(c.changes['batch-orthogonality']).toBe(12 + 24);
    const safety = c.stage('safety').ir;
    expect(nodesOf(safety, 'ortho_penalty_batched')).toHaveLength(1);
    expect((nodesOf(safety, 'ortho_penalty_batched')[0].attrs.terms as unknown[]).length).toBe(24);
  });
});
