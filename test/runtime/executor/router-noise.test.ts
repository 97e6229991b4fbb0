/**
 * Router noise in the executor (moe_lora(router_noise: σ), src/runtime/dropout.ts): ε ~ N(0, σ²) added to the
 * router logits in training steps only. The draw's statistics and purity (its own stream, not a dropout
 * mask's); the kernels (reference, CPU and WebGPU tables) add a noise input to the logits; noise changes the
 * training loss and is deterministic; -O0 and -O1 plans draw the same noise (-O1 keeps the noisy router out
 * of the base GEMM); evaluation sees none.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dropoutStreamId, routerNoise, routerNoiseStreamId } from '../../../src/runtime/dropout.js';
import { createStageRunner, type StageRunner } from '../../../src/runtime/executor.js';
import { cpuKernels } from '../../../src/runtime/kernels/cpu.js';
import { reference, type KernelStep } from '../../../src/runtime/kernels/reference.js';
import { webgpuKernels } from '../../../src/runtime/kernels/webgpu.js';
import { tf } from '../../../src/runtime/tfjs/index.js';
import type { Plan } from '../../../src/plan/types.js';
import { compileInline, expectSameTraining, lcg, relErr, syntheticBatch, TINY, worst } from './helpers.js';

const pipeline = (sigma: number, act = 'softmax') => `pipeline noisy
model base = ${TINY}
data d = jsonl("d.jsonl")
adapter attn  = lora(r: 4, alpha: 8) at layers[*].attn.{q, v}
adapter mix   = moe_lora(experts: 4, top_k: 2, r: 4, alpha: 8, shared: 1, router: ${act}, router_noise: ${sigma}) at layers[*].mlp.{gate, up}
stage one {
  train attn, mix on d
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

describe('router noise', () => {
  let p0: Plan;
  let p1: Plan;
  let plain: Plan;
  const runners: StageRunner[] = [];
  const mbs = [syntheticBatch(2, 32, 21), syntheticBatch(2, 32, 22)];

  beforeAll(() => {
    [p0, p1] = compileInline(pipeline(0.5)).plans;
    [plain] = compileInline(pipeline(0), [1]).plans;
  });
  afterAll(() => runners.forEach((r) => r.dispose()));

  /** Random router weights and B, so the routing and the adapter branch matter. */
  const init = async (r: StageRunner) => {
    const ps = await r.parameters();
    const rnd = lcg(5);
    for (const [id, v] of ps) if (/\.(B|expert_B|shared_B|router_W)$/.test(id)) ps.set(id, v.map(() => (rnd() - 0.5) * 0.4));
    return ps;
  };

  it('the noise: N(0, σ²), a pure function of its key, its own stream (not a dropout mask)', () => {
    const n = 200_000;
    const e = routerNoise(draw, 'a', 'layers[0].mlp.up', n, 0.5);
    const mean = e.reduce((a, b) => a + b, 0) / n;
    const sd = Math.sqrt(e.reduce((a, b) => a + (b - mean) ** 2, 0) / n);
    expect(Math.abs(mean)).toBeLessThan(0.01);
    expect(Math.abs(sd - 0.5)).toBeLessThan(0.01);
    // Both halves of each Box-Muller pair are used: odd and even elements have the same spread.
    const odd = e.filter((_, i) => i % 2 === 1);
    expect(Math.abs(Math.sqrt(odd.reduce((a, b) => a + b * b, 0) / odd.length) - 0.5)).toBeLessThan(0.01);
    const a = routerNoise(draw, 'a', 's', 999, 1);
    expect(routerNoise({ ...draw }, 'a', 's', 999, 1)).toEqual(a);
    expect(a[998]).not.toBe(0);
    expect(routerNoise(draw, 'a', 's', 999, 2)).toEqual(a.map((v) => Math.fround(2 * v)));
    for (const other of [routerNoise({ ...draw, step: 4 }, 'a', 's', 999, 1), routerNoise({ ...draw, microBatch: 0 }, 'a', 's', 999, 1), routerNoise({ ...draw, seed: 7 }, 'a', 's', 999, 1), routerNoise(draw, 'a', 't', 999, 1), routerNoise(draw, 'b', 's', 999, 1)]) {
      expect(other).not.toEqual(a);
    }
    expect(routerNoiseStreamId(draw, 'a', 's')).not.toBe(dropoutStreamId(draw, 'a', 's'));
    expect(routerNoise(draw, 'a', 's', 10, 0).every((v) => v === 0)).toBe(true);
  });

  it('the router kernel adds a noise input to the logits before the activation (reference, CPU and WebGPU tables)', () => {
    const rnd = lcg(11);
    const r = (n: number) => Float32Array.from({ length: n }, () => rnd() - 0.5);
    for (const activation of ['softmax', 'sigmoid']) {
      const step: KernelStep = { node: 'r', op: 'router', inputs: [], outputs: [], attrs: { activation } };
      const noisy: KernelStep = { ...step, attrs: { activation, noise: true } };
      const ctx = { rows: 1, seqLen: 5, positions: new Int32Array(5), segments: new Int32Array(5).fill(1), cache: new Map() };
      const got = tf.tidy(() => {
        const [x, w, b, eps] = [tf.tensor(r(5 * 8), [5, 8]), tf.tensor(r(3 * 8), [3, 8]), tf.tensor(r(3), [3]), tf.tensor(r(15), [5, 3])];
        const want = reference.router([x, w, tf.add(b, eps)], step, ctx)[0].dataSync();
        const outs = [reference, cpuKernels(p1), webgpuKernels].map((t) => t.router([x, w, b, eps], noisy, ctx)[0].dataSync());
        const none = reference.router([x, w, b], step, ctx)[0].dataSync();
        return { want, outs, none };
      });
      for (const o of got.outs) expect(relErr(o, got.want)).toBeLessThan(1e-6);
      expect(relErr(got.none, got.want)).toBeGreaterThan(1e-3);
    }
  });

  it('-O1 keeps the noisy router out of the base GEMM; -O0 and -O1 draw the same noise (same loss, gradients, weights)', async () => {
    const parts = p1.stages[0].forward.filter((f) => f.op === 'concat_linear').flatMap((f) => (f.attrs.parts as { kind: string }[]).map((x) => x.kind));
    expect(parts).not.toContain('router');
    expect(p1.stages[0].forward.filter((f) => f.op === 'router' && f.adapter === 'mix').length).toBe(2);
    // Without noise the router joins the base GEMM.
    expect(plain.stages[0].forward.filter((f) => f.op === 'concat_linear').flatMap((f) => (f.attrs.parts as { kind: string }[]).map((x) => x.kind))).toContain('router');
    const a = await createStageRunner(p0, 'one');
    const b = await createStageRunner(p1, 'one');
    runners.push(a, b);
    const ps = await init(a);
    await a.loadParameters(ps);
    await b.loadParameters(ps);
    await expectSameTraining(a, b, mbs, TOL);
  });

  it('noise changes the training losses, deterministically; evaluation sees none', async () => {
    const train = async (plan: Plan) => {
      const r = await createStageRunner(plan, 'one');
      runners.push(r);
      await r.loadParameters(await init(r));
      const ev = (await r.evalLoss(mbs)).loss;
      const g = await r.gradients(mbs);
      const losses: number[] = [];
      for (let i = 0; i < 3; i++) losses.push((await r.step(mbs)).loss);
      return { r, ev, g, losses };
    };
    const [n1, n2, z] = [await train(p1), await train(p1), await train(plain)];
    // Deterministic: two runners give bit-identical losses and gradients.
    expect(n2.losses).toEqual(n1.losses);
    expect(n2.g.loss).toBe(n1.g.loss);
    expect(worst(n1.g.grads, n2.g.grads).err).toBe(0);
    // The noise is in play: training losses and gradients differ from σ = 0.
    for (let i = 0; i < 3; i++) expect(n1.losses[i]).not.toBe(z.losses[i]);
    expect(n1.g.loss).not.toBe(z.g.loss);
    expect(worst(n1.g.grads, z.g.grads).err).toBeGreaterThan(1e-4);
    // Evaluation applies none: the same weights give the σ = 0 plan's evaluation loss, bit for bit.
    expect(n1.ev).toBe(z.ev);
    // Without noise a training step's loss is the evaluation loss; with it, not.
    const fresh = async (plan: Plan) => {
      const r = await createStageRunner(plan, 'one');
      runners.push(r);
      await r.loadParameters(await init(r));
      return r;
    };
    const [rn, rz] = [await fresh(p1), await fresh(plain)];
    expect((await rz.gradients(mbs)).loss).toBe((await rz.evalLoss(mbs)).loss);
    expect((await rn.evalLoss(mbs)).loss).toBe((await rz.evalLoss(mbs)).loss);
    expect((await rn.gradients(mbs)).loss).not.toBe((await rn.evalLoss(mbs)).loss);
    const out = p1.stages[0].loss;
    expect((await rn.forward(mbs[0], [out])).get(out)).toEqual((await rz.forward(mbs[0], [out])).get(out));
  });
});
