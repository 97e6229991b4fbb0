/**
 * The executor trains: the loss falls on real (tiny) data, a merge changes nothing the model computes, a
 * NaN step changes nothing at all, conditional expert drops follow the measured router load, gradient
 * accumulation is the mean over micro-batches, and no step leaks tensors.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { DataLoader, loadDataSource } from '../../../src/runtime/data/index.js';
import { createStageRunner, RunnerError } from '../../../src/runtime/executor.js';
import { ByteTokenizer } from '../../../src/runtime/tokenizer/index.js';
import { tf } from '../../../src/runtime/tfjs/index.js';
import type { Plan } from '../../../src/plan/types.js';
import { compileInline, relErr, syntheticBatch, TINY, worst } from './helpers.js';

const LORA = `pipeline lora_then_merge
model base = ${TINY}
data d = jsonl("d.jsonl")
adapter attn  = lora(r: 4, alpha: 8) at layers[*].attn.{q, k, v, o}
adapter mlp   = lora(r: 4, alpha: 8) at layers[*].mlp.{gate, up, down}
stage one {
  train attn, mlp on d
  steps 20
  lr 1e-2
  schedule cosine(warmup: 2)
  batch 2
  micro_batch 2
  max_len 32
  then {
    merge attn into base
    freeze mlp
  }
}
stage two {
  adapter extra = lora(r: 2, alpha: 4) at layers[*].attn.{q, v}
  train extra on d
  steps 2
  batch 2
  micro_batch 2
  max_len 32
}
`;

const FULL = `pipeline full
model base = ${TINY}
data d = jsonl("d.jsonl")
stage pre {
  train base on d
  steps 20
  lr 1e-2
  schedule cosine(warmup: 2)
  batch 2
  micro_batch 2
  max_len 32
}
`;

const MOE = `pipeline prune
model base = ${TINY}
data d = jsonl("d.jsonl")
adapter m = moe_lora(experts: 4, top_k: 1, r: 2, alpha: 4) at layers[*].mlp.{gate, up}
stage one {
  train m on d
  steps 2
  lr 1e-2
  schedule constant
  batch 2
  micro_batch 2
  max_len 32
  then {
    drop m.experts where load < 20%
    freeze m
  }
}
stage two {
  adapter a = lora(r: 2, alpha: 4) at layers[*].mlp.down
  train a on d
  steps 1
  batch 2
  micro_batch 2
  max_len 32
}
`;

describe('training with the reference executor', () => {
  let lora: { dir: string; plan: Plan };
  beforeAll(() => {
    const c = compileInline(LORA, [1]);
    lora = { dir: c.dir, plan: c.plans[0] };
  });

  it('the loss falls over 20 steps on the tiny model, with real data through the data pipeline', async () => {
    const { dir, plans } = compileInline(FULL, [1]);
    const plan = plans[0];
    const st = plan.stages[0];
    const tokenizer = new ByteTokenizer();
    const data = await loadDataSource(plan.data[0], { root: dir, tokenizer, maxLen: st.settings.maxLen });
    const loader = new DataLoader(data.examples, { microBatch: 2, accumulation: 1, maxLen: 32, layout: 'pad-max', seed: st.settings.seed, padId: tokenizer.pad });
    const runner = await createStageRunner(plan, 'pre', { root: dir });
    const steps = [...loader.steps({ epoch: 0, index: 0 }, 10)].slice(0, 20);
    expect(steps).toHaveLength(20);
    const probe = steps.slice(0, 2).flatMap((s) => s.microBatches);
    const before = (await runner.evalLoss(probe)).loss;
    const results = [];
    for (const s of steps) results.push(await runner.step(s.microBatches));
    const after = (await runner.evalLoss(probe)).loss;
    expect(results.every((r) => r.applied)).toBe(true);
    expect(results[0].lr).toBeCloseTo(5e-3, 12); // warmup: (0 + 1) / 2 of the peak
    expect(results[19].lr).toBeLessThan(1e-4); // cosine to 0
    expect(after).toBeLessThan(before * 0.7);
    expect(results.at(-1)!.loss).toBeLessThan(results[0].loss);
    runner.dispose();
  });

  it('merging then running the next stage gives the unmerged outputs (within 1e-5)', async () => {
    const { plan } = lora;
    const one = await createStageRunner(plan, 'one');
    const mbs = [syntheticBatch(2, 32, 5)];
    for (let i = 0; i < 3; i++) await one.step(mbs); // B != 0
    const ids = ['x.final', 'L0.resid_attn'];
    const unmerged = await one.forward(mbs[0], ids);
    const lossBefore = (await one.evalLoss(mbs)).ce;
    const report = await one.applyExit();
    expect(report.merged.map((m) => m.adapter)).toEqual(['attn']);
    expect(report.frozen).toEqual(['mlp']);
    const two = await createStageRunner(plan, 'two', { parameters: await one.parameters() });
    // The merge changed the base weight, so the stage-two graph (no attn LoRA) must reproduce it.
    expect(relErr((await two.parameters()).get('base.layers[0].attn.q.weight')!, (await one.parameters()).get('base.layers[0].attn.q.weight')!)).toBe(0);
    const merged = await two.forward(mbs[0], ids);
    for (const id of ids) expect(relErr(merged.get(id)!, unmerged.get(id)!), id).toBeLessThan(1e-5);
    expect(relErr([(await two.evalLoss(mbs)).ce], [lossBefore])).toBeLessThan(1e-5);
    // Stage one may not train after its exit.
    await expect(one.step(mbs)).rejects.toThrow(RunnerError);
    one.dispose();
    two.dispose();
  });

  it('a NaN in a micro-batch skips the step: weights and optimizer state stay bit-identical', async () => {
    const runner = await createStageRunner(lora.plan, 'one');
    const good = [syntheticBatch(2, 32, 7), syntheticBatch(2, 32, 8)];
    await runner.step(good);
    const weights = await runner.parameters();
    const state = await runner.optimizerState();
    const bad = syntheticBatch(2, 32, 9);
    bad.mask[3] = NaN;
    const r = await runner.step([good[0], bad]);
    expect(r.applied).toBe(false);
    expect(r.skipped).toMatch(/loss is NaN/);
    const w2 = await runner.parameters();
    const s2 = await runner.optimizerState();
    for (const [id, w] of weights) expect(Buffer.from(w2.get(id)!.buffer).equals(Buffer.from(w.buffer)), id).toBe(true);
    expect(s2.t).toBe(state.t);
    for (const [id, s] of state.slots) {
      expect(Buffer.from(s2.slots.get(id)!.m.buffer).equals(Buffer.from(s.m.buffer)), id).toBe(true);
      expect(Buffer.from(s2.slots.get(id)!.v!.buffer).equals(Buffer.from(s.v!.buffer)), id).toBe(true);
    }
    // The schedule moved on (the step's data was consumed); the next good step applies.
    expect(s2.scheduleStep).toBe(state.scheduleStep + 1);
    expect((await runner.step(good)).applied).toBe(true);
    expect((await runner.optimizerState()).t).toBe(state.t + 1);
    runner.dispose();
  });

  it('gradient accumulation is the mean over micro-batches; nothing leaks', async () => {
    const start = tf.memory().numTensors;
    const runner = await createStageRunner(lora.plan, 'one');
    const held = tf.memory().numTensors;
    const [a, b] = [syntheticBatch(2, 32, 21), syntheticBatch(2, 32, 22)];
    const both = await runner.gradients([a, b]);
    const ga = await runner.gradients([a]);
    const gb = await runner.gradients([b]);
    expect(relErr([both.loss], [(ga.loss + gb.loss) / 2])).toBeLessThan(1e-6);
    const mean = new Map([...ga.grads].map(([id, g]) => [id, g.map((x, i) => (x + gb.grads.get(id)![i]) / 2)]));
    expect(worst(both.grads, mean).err).toBeLessThan(1e-5);
    expect(tf.memory().numTensors).toBe(held);
    await runner.step([a, b]);
    await runner.evalLoss([a]);
    await runner.forward(a, ['x.final']);
    expect(tf.memory().numTensors).toBe(held);
    await runner.step([a]);
    await runner.step([b]);
    expect(tf.memory().numTensors).toBe(held);
    await runner.loadParameters(await runner.parameters());
    runner.loadOptimizerState(await runner.optimizerState());
    expect(tf.memory().numTensors).toBe(held);
    runner.dispose();
    expect(tf.memory().numTensors).toBe(start);
  });

  it('router load on the wasm backend (gates counted where they lie in its heap) equals the cpu backend\'s', async () => {
    const [plan] = compileInline(MOE, [1]).plans;
    const mbs = [syntheticBatch(2, 32, 31), syntheticBatch(2, 32, 32)];
    const load = async (backend: 'cpu' | 'wasm') => {
      const r = await createStageRunner(plan, 'one', { backend });
      await r.step(mbs);
      const l = r.routerLoad().map((x) => ({ site: x.site, counts: [...x.counts] }));
      r.dispose();
      return l;
    };
    const [wasm, cpu] = [await load('wasm'), await load('cpu')];
    expect(wasm.length).toBe(2);
    expect(wasm).toEqual(cpu);
    expect(wasm.every((l) => l.counts.reduce((x, y) => x + y, 0) === 2 * 58)).toBe(true);
  });

  it('drop X.experts where load < v: the under-used experts of each site leave the routing for good', async () => {
    const [plan] = compileInline(MOE, [1]).plans;
    const one = await createStageRunner(plan, 'one');
    const mbs = [syntheticBatch(2, 32, 31), syntheticBatch(2, 32, 32)];
    await one.step(mbs);
    await one.step(mbs);
    const load = one.routerLoad();
    expect(load.map((l) => l.site).sort()).toEqual(['layers[0].mlp.gate', 'layers[0].mlp.up']);
    for (const l of load) {
      expect(l.share.reduce((x, y) => x + y, 0)).toBeCloseTo(1, 12);
      // top-1 over the real tokens of 2 steps x 2 micro-batches (2 rows x 29 real tokens each)
      expect(l.counts.reduce((x, y) => x + y, 0)).toBe(2 * 2 * 58);
    }
    const report = await one.applyExit();
    expect(report.droppedExperts).toHaveLength(2);
    for (const d of report.droppedExperts) {
      const l = load.find((x) => x.site === d.site)!;
      expect(d.load).toEqual(l.share);
      expect(d.experts).toEqual(l.share.map((s, e) => (s < 0.2 ? e : -1)).filter((e) => e >= 0));
    }
    const params = await one.parameters();
    // Deterministic (seeded init, fixed batches): one expert of the up projection got under 20% of the tokens.
    const dropped = report.droppedExperts.find((d) => d.experts.length > 0)!;
    expect(dropped).toMatchObject({ site: 'layers[0].mlp.up', experts: [2] });
    const two = await createStageRunner(plan, 'two', { parameters: params });
    await two.step(mbs);
    const e = dropped.experts[0];
    expect(params.get(`m.${dropped.site}.router_b`)![e]).toBe(Math.fround(-1e9));
    const B = params.get(`m.${dropped.site}.expert_B`)!;
    const per = B.length / 4;
    expect(B.slice(e * per, (e + 1) * per).every((x) => x === 0)).toBe(true);
    // In stage two no token is routed to it (the mixture is frozen there; the runner still counts routing).
    const l2 = two.routerLoad().find((x) => x.site === dropped.site)!;
    expect(l2.counts[e]).toBe(0);
    expect(l2.counts.reduce((x, y) => x + y, 0)).toBe(2 * 58);
    one.dispose();
    two.dispose();
  });
});
