/**
 * LoRA dropout in the executor (src/runtime/dropout.ts): the mask's rate and scale, its purity, -O0 and -O1
 * plans drawing the same masks (the key is adapter + site, not a node id), no dropout on evaluation paths,
 * dropout 0 unchanged, and a finite-difference gradient check through the masked branch.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dropoutMask } from '../../../src/runtime/dropout.js';
import { createStageRunner, type StageRunner } from '../../../src/runtime/executor.js';
import type { Plan } from '../../../src/plan/types.js';
import { compileInline, lcg, relErr, syntheticBatch, TINY, worst } from './helpers.js';

const pipeline = (p: number, q: number, shared = 1) => `pipeline dropping
model base = ${TINY}
data d = jsonl("d.jsonl")
adapter attn  = lora(r: 4, alpha: 8, dropout: ${p}) at layers[*].attn.{q, v}
adapter noise = moe_lora(experts: 4, top_k: 2, r: 4, alpha: 8, shared: ${shared}, dropout: ${q}) at layers[*].mlp.{gate, up}
stage one {
  train attn, noise on d
  steps 3
  lr 1e-2
  schedule constant
  batch 4
  micro_batch 2
  max_len 32
}
`;

const TOL = 1e-4;
const draw = { seed: 42, stage: 'one', step: 3, microBatch: 1 };

describe('LoRA dropout', () => {
  let p0: Plan;
  let p1: Plan;
  let plain: Plan;
  const runners: StageRunner[] = [];
  const mbs = [syntheticBatch(2, 32, 21), syntheticBatch(2, 32, 22)];

  beforeAll(() => {
    [p0, p1] = compileInline(pipeline(0.25, 0.1)).plans;
    [plain] = compileInline(pipeline(0, 0), [1]).plans;
  });
  afterAll(() => runners.forEach((r) => r.dispose()));

  /** Random B (and everything else as initialised), so the adapter branch matters. */
  const withB = async (r: StageRunner) => {
    const ps = await r.parameters();
    const rnd = lcg(5);
    for (const [id, v] of ps) if (/\.(B|expert_B|shared_B)$/.test(id)) ps.set(id, v.map(() => (rnd() - 0.5) * 0.2));
    return ps;
  };

  it('the mask: rate p, kept elements scaled by 1/(1 − p), a pure function of its key', () => {
    const n = 400_000;
    for (const p of [0.05, 0.3]) {
      const m = dropoutMask(draw, 'a', 'layers[0].attn.q', n, p);
      const zeros = m.filter((v) => v === 0).length;
      expect(Math.abs(zeros / n - p)).toBeLessThan(4 * Math.sqrt((p * (1 - p)) / n));
      expect(new Set(m.filter((v) => v !== 0))).toEqual(new Set([Math.fround(1 / (1 - p))]));
      const mean = m.reduce((a, b) => a + b, 0) / n;
      expect(Math.abs(mean - 1)).toBeLessThan(0.01);
    }
    const a = dropoutMask(draw, 'a', 's', 1000, 0.5);
    expect(dropoutMask({ ...draw }, 'a', 's', 1000, 0.5)).toEqual(a);
    for (const other of [dropoutMask({ ...draw, step: 4 }, 'a', 's', 1000, 0.5), dropoutMask({ ...draw, microBatch: 0 }, 'a', 's', 1000, 0.5), dropoutMask({ ...draw, seed: 7 }, 'a', 's', 1000, 0.5), dropoutMask(draw, 'a', 't', 1000, 0.5), dropoutMask(draw, 'b', 's', 1000, 0.5)]) {
      expect(other).not.toEqual(a);
    }
    expect(dropoutMask(draw, 'a', 's', 10, 0).every((v) => v === 1)).toBe(true);
  });

  it('-O1 keeps each dropped A on its own GEMM; -O0 and -O1 draw the same masks (same loss, gradients, weights)', async () => {
    const parts = p1.stages[0].forward.filter((f) => f.op === 'concat_linear').flatMap((f) => (f.attrs.parts as { kind: string; adapter?: string }[]).map((x) => x.kind));
    expect(parts).not.toContain('lora_down');
    expect(parts).not.toContain('moe_down_batched');
    const a = await createStageRunner(p0, 'one');
    const b = await createStageRunner(p1, 'one');
    runners.push(a, b);
    const init = await withB(a);
    await a.loadParameters(init);
    await b.loadParameters(init);
    const ga = await a.gradients(mbs);
    const gb = await b.gradients(mbs);
    expect(relErr([ga.loss], [gb.loss])).toBeLessThan(TOL);
    expect(worst(ga.grads, gb.grads).err).toBeLessThan(TOL);
    // The masks are in play: the training loss differs from the evaluation loss (no dropout).
    expect(Math.abs(ga.loss - (await a.evalLoss(mbs)).loss)).toBeGreaterThan(1e-5);
    for (let i = 0; i < 2; i++) {
      const sa = await a.step(mbs);
      const sb = await b.step(mbs);
      expect(relErr([sa.loss], [sb.loss])).toBeLessThan(TOL);
    }
    expect(worst(await b.parameters(), await a.parameters()).err).toBeLessThan(TOL);
  });

  it('routed experts only (-O1: moe_down_routed reads the dropped x): -O0 and -O1 the same, reference and fused CPU table', async () => {
    const [q0, q1] = compileInline(pipeline(0.25, 0.1, 0)).plans as [Plan, Plan];
    const routed = q1.stages[0].forward.filter((f) => f.op === 'moe_down_routed');
    expect(routed).toHaveLength(2);
    const parts = q1.stages[0].forward.filter((f) => f.op === 'concat_linear').flatMap((f) => (f.attrs.parts as { kind: string }[]).map((x) => x.kind));
    expect(parts).not.toContain('moe_down_batched');
    const saved = process.env.MCPC_KERNELS;
    const make = async (plan: Plan, kernels: string) => {
      process.env.MCPC_KERNELS = kernels;
      try {
        return await createStageRunner(plan, 'one');
      } finally {
        if (saved === undefined) delete process.env.MCPC_KERNELS;
        else process.env.MCPC_KERNELS = saved;
      }
    };
    const a = await make(q0, 'reference');
    const bs = [await make(q1, 'reference'), await make(q1, 'fused')];
    runners.push(a, ...bs);
    const init = await withB(a);
    await a.loadParameters(init);
    for (const b of bs) await b.loadParameters(init);
    const ga = await a.gradients(mbs);
    expect(Math.abs(ga.loss - (await a.evalLoss(mbs)).loss)).toBeGreaterThan(1e-5);
    for (const b of bs) {
      const gb = await b.gradients(mbs);
      expect(relErr([ga.loss], [gb.loss])).toBeLessThan(TOL);
      expect(worst(ga.grads, gb.grads).err).toBeLessThan(TOL);
    }
    for (let i = 0; i < 2; i++) {
      const sa = await a.step(mbs);
      for (const b of bs) expect(relErr([(await b.step(mbs)).loss], [sa.loss])).toBeLessThan(TOL);
    }
    for (const b of bs) expect(worst(await b.parameters(), await a.parameters()).err).toBeLessThan(TOL);
  });

  it('evaluation paths see no dropout; dropout 0 is the plain path', async () => {
    const d = await createStageRunner(p1, 'one');
    const z = await createStageRunner(plain, 'one');
    runners.push(d, z);
    const ps = await withB(d);
    await d.loadParameters(ps);
    await z.loadParameters(ps);
    // evalLoss and forward of the dropout plan are bit-identical to the plan without dropout.
    expect((await d.evalLoss(mbs)).loss).toBe((await z.evalLoss(mbs)).loss);
    const ids = ['layers[0].attn.q.attn.h'].filter((id) => p1.stages[0].values.some((v) => v.id === id));
    const out = p1.stages[0].loss;
    const [fd, fz] = [await d.forward(mbs[0], [out, ...ids]), await z.forward(mbs[0], [out, ...ids])];
    for (const k of fd.keys()) expect(fd.get(k)).toEqual(fz.get(k));
    // Without dropout, a training step's loss is the evaluation loss, bit for bit.
    const gz = await z.gradients(mbs);
    expect(gz.loss).toBe((await z.evalLoss(mbs)).loss);
    const gd = await d.gradients(mbs);
    expect(gd.loss).not.toBe(gz.loss);
    expect(worst(gd.grads, gz.grads).err).toBeGreaterThan(1e-3);
  });

  it('gradient check through the masked branch (finite differences of the training loss at the same step)', async () => {
    const r = await createStageRunner(p1, 'one');
    runners.push(r);
    const ps = await withB(r);
    const rnd = lcg(9);
    for (const [id, v] of ps) if (/\.(A|expert_A|shared_A)$/.test(id)) ps.set(id, v.map(() => (rnd() - 0.5) * 0.5));
    await r.loadParameters(ps);
    const g = await r.gradients(mbs, { step: 1 });
    const checks = ['attn.layers[0].attn.q.A', 'noise.layers[0].mlp.up.expert_A', 'noise.layers[0].mlp.gate.shared_A'].filter((id) => ps.has(id));
    expect(checks.length).toBeGreaterThanOrEqual(2);
    const h = 1e-2;
    for (const id of checks) {
      const grad = g.grads.get(id)!;
      // The entry with the largest gradient (well above f32 noise).
      let j = 0;
      for (let i = 0; i < grad.length; i++) if (Math.abs(grad[i]) > Math.abs(grad[j])) j = i;
      const at = async (dx: number) => {
        const v = Float32Array.from(ps.get(id)!);
        v[j] += dx;
        await r.loadParameters(new Map([[id, v]]));
        return (await r.gradients(mbs, { step: 1 })).loss;
      };
      const fd = ((await at(h)) - (await at(-h))) / (2 * h);
      await r.loadParameters(new Map([[id, ps.get(id)!]]));
      expect(Math.abs(fd - grad[j]) / Math.abs(grad[j])).toBeLessThan(0.05);
    }
  });
});
