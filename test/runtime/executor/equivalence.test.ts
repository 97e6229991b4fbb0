/**
 * THE optimisation-preservation test: the -O0 plan (no optimisation pass) and the -O1 plan (every pass) of
 * the same pipeline, executed by the same runtime, give the same loss, the same gradient of every trainable
 * tensor on the same micro-batches, and the same weights after optimizer steps and stage transitions.
 *
 * The pipeline exercises every pass: a mixture with shared experts, routed experts and a load-balancing
 * term (batch-experts, concat-base-adapter; run again with routed experts only, whose A projections -O1
 * computes for each token's top-k only: route-expert-down), an attention LoRA merged at the end of stage one, a mixture
 * dropped, a LoRA frozen then folded into its base weights in stage two (fold-frozen-lora), an adapter that
 * is declared but only trained in stage two (eliminate-dead-adapters removes it from stage one), an
 * orthogonality constraint over three sites (batch-orthogonality), and the elementwise chains of the
 * decoder (fuse-elementwise when present). concat-shared-input (the sites on one input in one GEMM) is also held
 * to the -O1 plan without it, on the reference and on the wasm kernel table (the last describe).
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { passes } from '../../../src/compiler/4-optimize/index.js';
import type { Pass } from '../../../src/compiler/4-optimize/pass.js';
import { compileFile, nodeHost } from '../../../src/compiler/index.js';
import { createStageRunner, type StageRunner } from '../../../src/runtime/executor.js';
import type { Plan } from '../../../src/plan/types.js';
import { tf } from '../../../src/runtime/tfjs/index.js';
import { compileInline, expectSameTraining, relErr, syntheticBatch, TINY, worst } from './helpers.js';

const PIPELINE = `pipeline equiv
model base = ${TINY}
data d = jsonl("d.jsonl")

adapter attn      = lora(r: 4, alpha: 8)                                                   at layers[*].attn.{q, k, v, o}
adapter knowledge = lora(r: 4, alpha: 8, experts: 2)                                       at layers[*].mlp.{gate, up, down}
adapter noise     = moe_lora(experts: 4, top_k: 2, r: 4, alpha: 8, shared: 1, load_balance: 0.01) at layers[*].mlp.{gate, up, down}
adapter later     = lora(r: 4, alpha: 8)                                                   at layers[*].attn.{q, v}

stage one {
  train attn, knowledge, noise on d
  steps 3
  lr 1e-2
  schedule constant
  weight_decay 0.01
  batch 4
  micro_batch 2
  max_len 32
  then {
    merge attn into base
    drop noise
    freeze knowledge
  }
}

stage two {
  adapter align = lora(r: 4, alpha: 8) at layers[*].mlp.{gate, up, down}
  train align, later on d
  steps 3
  lr 1e-2
  schedule cosine(warmup: 1)
  batch 4
  micro_batch 2
  max_len 32
  constrain orthogonal(align.A, knowledge.A) weight 0.5 norm l1
}
`;

const TOL = 1e-4;
const ops = (plan: Plan, stage: string) => new Set(plan.stages.find((s) => s.name === stage)!.forward.map((f) => f.op));

describe.each([1, 0])('-O0 and -O1 plans train to the same result (noise shared: %i)', (shared) => {
  let p0: Plan;
  let p1: Plan;
  const runners: StageRunner[] = [];
  const mbs = [syntheticBatch(2, 32, 11), syntheticBatch(2, 32, 12)];

  beforeAll(() => {
    [p0, p1] = compileInline(PIPELINE.replace('shared: 1,', `shared: ${shared},`)).plans;
  });
  afterAll(() => runners.forEach((r) => r.dispose()));

  it('the two plans differ: -O1 has the optimised kernels, -O0 none of them', () => {
    const one1 = ops(p1, 'one');
    const two1 = ops(p1, 'two');
    for (const op of ['moe_up_grouped', 'concat_linear']) expect(one1.has(op as never)).toBe(true);
    // The batched A GEMM of each mixture is a part of its site's concatenated GEMM.
    const parts = p1.stages[0].forward.filter((f) => f.op === 'concat_linear').flatMap((f) => (f.attrs.parts as { kind: string }[]).map((x) => x.kind));
    expect(parts.filter((k) => k === 'moe_down_batched')).toHaveLength(shared ? 3 : 0);
    // Routed experts only: their A on each token's top-k (moe_down_routed), not in the concatenated GEMM.
    expect(p1.stages[0].forward.filter((f) => f.op === 'moe_down_routed')).toHaveLength(shared ? 0 : 3);
    expect(parts.filter((k) => k === 'router')).toHaveLength(3);
    expect(two1.has('ortho_penalty_batched')).toBe(true);
    expect(p1.stages[1].entry.map((t) => t.op)).toEqual(['fold']);
    const one0 = ops(p0, 'one');
    for (const op of ['moe_down_batched', 'moe_down_routed', 'moe_up_grouped', 'concat_linear', 'fused_elementwise']) expect(one0.has(op as never)).toBe(false);
    expect(one0.has('expert_down')).toBe(true);
    expect(ops(p0, 'two').has('ortho_penalty')).toBe(true);
    expect(p0.stages[1].entry).toEqual([]);
    // `later` is inactive in stage one: -O1 removes it, -O0 runs it (B = 0).
    expect(p1.parameters.find((p) => p.id === 'later.layers[0].attn.q.A')!.states.one).toBe('absent');
    expect(p0.parameters.find((p) => p.id === 'later.layers[0].attn.q.A')!.states.one).toBe('frozen');
  });

  it('stage one, stage transitions and stage two: same loss, gradients and weights', async () => {
    const a = await createStageRunner(p0, 'one');
    const b = await createStageRunner(p1, 'one');
    runners.push(a, b);
    expect([...a.trainable].sort()).toEqual([...b.trainable].sort());
    // Same initial tensors: initialisation depends on (seed, id) only. -O0 also holds the inactive `later`.
    const [ia, ib] = [await a.parameters(), await b.parameters()];
    expect([...ia.keys()].filter((k) => !ib.has(k)).every((k) => k.startsWith('later.'))).toBe(true);
    expect(worst(ib, ia).err).toBe(0);

    const ga = await a.gradients(mbs);
    const gb = await b.gradients(mbs);
    expect(ga.balance).toBeGreaterThan(0);
    expect(relErr([ga.loss], [gb.loss])).toBeLessThan(TOL);
    expect([...ga.grads.keys()].sort()).toEqual([...gb.grads.keys()].sort());
    expect(worst(ga.grads, gb.grads).err).toBeLessThan(TOL);
    // The gradients are not trivially zero: B of every adapter gets one at init (A does not: B = 0).
    expect(Math.max(...[...ga.grads.entries()].filter(([k]) => k.endsWith('.B')).map(([, g]) => Math.max(...g.map(Math.abs))))).toBeGreaterThan(1e-4);

    for (let i = 0; i < 3; i++) {
      const sa = await a.step(mbs);
      const sb = await b.step(mbs);
      expect(sa.applied && sb.applied).toBe(true);
      expect(relErr([sa.loss], [sb.loss])).toBeLessThan(TOL);
    }
    expect(worst(await b.parameters(), await a.parameters()).err).toBeLessThan(TOL);
    // After 3 steps A gets gradients too.
    const g2a = await a.gradients(mbs);
    const g2b = await b.gradients(mbs);
    expect(worst(g2a.grads, g2b.grads).err).toBeLessThan(TOL);

    const ea = await a.applyExit();
    const eb = await b.applyExit();
    expect(ea).toEqual(eb);
    expect(ea.merged[0]).toMatchObject({ adapter: 'attn' });
    expect(ea.dropped.some((id) => id.startsWith('noise.'))).toBe(true);
    const pa = await a.parameters();
    const pb = await b.parameters();
    expect([...pa.keys()].some((k) => k.startsWith('noise.'))).toBe(false);
    expect(worst(pb, pa).err).toBeLessThan(TOL);

    // Stage two starts from each plan's own stage-one result.
    const a2 = await createStageRunner(p0, 'two', { parameters: pa });
    const b2 = await createStageRunner(p1, 'two', { parameters: pb });
    runners.push(a2, b2);
    const h0 = await a2.gradients(mbs);
    const h1 = await b2.gradients(mbs);
    expect(h0.constraint).toBeGreaterThan(0);
    expect(relErr([h0.loss], [h1.loss])).toBeLessThan(TOL);
    expect(relErr([h0.constraint], [h1.constraint])).toBeLessThan(TOL);
    expect([...h0.grads.keys()].sort()).toEqual([...h1.grads.keys()].sort());
    expect([...h0.grads.keys()].some((k) => k.startsWith('later.'))).toBe(true);
    expect(worst(h0.grads, h1.grads).err).toBeLessThan(TOL);
    for (let i = 0; i < 3; i++) {
      const sa = await a2.step(mbs);
      const sb = await b2.step(mbs);
      expect(relErr([sa.loss], [sb.loss])).toBeLessThan(TOL);
    }
    expect(worst(await a2.parameters(), await b2.parameters()).err).toBeLessThan(TOL);
    expect(tf.memory().numTensors).toBeGreaterThan(0);
  });
});

/** The -O1 plans of `text` without the pass `name` and with every pass (each verified after every pass). */
function plansWithout(text: string, name: string): [Plan, Plan] {
  const { dir } = compileInline(text, []);
  const at = (list: Pass[]) => {
    const res = compileFile(join(dir, 'p.mcp'), nodeHost(dir, dir), {}, { optLevel: 1, verify: true, passes: list });
    if (!res.plan) throw new Error(res.diagnostics.map((d) => d.message).join('\n'));
    return res.plan;
  };
  return [at(passes.filter((p) => p.name !== name)), at(passes)];
}

/**
 * concat-shared-input on its own: the -O1 plan with and without it (every other pass the same) trains to the same
 * result on the reference (`cpu`) and on the wasm kernel table: q, k and v (base weights with biases, the attention
 * LoRA's A) and gate and up (base, knowledge A, router, experts' A) each one GEMM per shared input.
 */
describe('concat-shared-input: the -O1 plan with and without it', () => {
  const plansOf = (text: string) => plansWithout(text, 'concat-shared-input');
  const mbs = [syntheticBatch(2, 32, 21), syntheticBatch(2, 32, 22)];
  const runners: StageRunner[] = [];
  afterAll(() => runners.forEach((r) => r.dispose()));
  const merged = (plan: Plan, stage: string) =>
    plan.stages.find((s) => s.name === stage)!.forward.filter((f) => f.op === 'concat_linear' && new Set((f.attrs.parts as { site?: string }[]).map((p) => p.site)).size > 1);

  it.each(['cpu', 'wasm'] as const)('MedCare-like stages one and two on %s: same loss, gradients and weights', async (backend) => {
    const [a0, a1] = plansOf(PIPELINE);
    expect(merged(a0, 'one')).toEqual([]);
    // One layer: q, k, v on one x; gate, up on another (stage two: base + align A each).
    expect(merged(a1, 'one').map((f) => (f.attrs.parts as { site: string }[]).map((p) => p.site.split('.').pop()))).toEqual([
      ['q', 'q', 'k', 'k', 'v', 'v'],
      ['gate', 'gate', 'gate', 'gate', 'up', 'up', 'up', 'up'],
    ]);
    expect(merged(a1, 'two')).toHaveLength(2);
    const a = await createStageRunner(a0, 'one', { backend });
    const b = await createStageRunner(a1, 'one', { backend });
    runners.push(a, b);
    await expectSameTraining(a, b, mbs, TOL);
    expect(await a.applyExit()).toEqual(await b.applyExit());
    const a2 = await createStageRunner(a0, 'two', { backend, parameters: await a.parameters() });
    const b2 = await createStageRunner(a1, 'two', { backend, parameters: await b.parameters() });
    runners.push(a2, b2);
    const h0 = await a2.gradients(mbs);
    const h1 = await b2.gradients(mbs);
    expect(relErr([h0.loss], [h1.loss])).toBeLessThan(TOL);
    expect(worst(h0.grads, h1.grads).err).toBeLessThan(TOL);
  });

  it('a stage that trains the base too: dW and db of every merged base weight', async () => {
    const [p0, p1] = plansOf(`pipeline p
model base = ${TINY}
data d = jsonl("d.jsonl")
adapter a = lora(r: 4, alpha: 8) at layers[*].attn.{q, v}
stage one {
  train base, a on d
  steps 2
  batch 4
  micro_batch 2
  max_len 32
}
`);
    expect(merged(p1, 'one')).toHaveLength(2);
    const a = await createStageRunner(p0, 'one');
    const b = await createStageRunner(p1, 'one');
    runners.push(a, b);
    const ga = await a.gradients(mbs);
    const gb = await b.gradients(mbs);
    expect(relErr([ga.loss], [gb.loss])).toBeLessThan(TOL);
    expect([...ga.grads.keys()].sort()).toEqual([...gb.grads.keys()].sort());
    for (const id of ['base.layers[0].attn.k.weight', 'base.layers[0].attn.k.bias', 'base.layers[0].mlp.up.weight']) expect(gb.grads.has(id)).toBe(true);
    expect(worst(ga.grads, gb.grads).err).toBeLessThan(TOL);
  });
});

/**
 * fold-trainable-lora on its own: LoRA merged into its base weight every step (lora_merge, W + s·B·A; autodiff
 * reaches A and B through the base GEMM's dW') trains to the same result as the adapter's own products, on the
 * reference (`cpu`) and on the wasm kernel table; also where the base trains too (dW = dW') and where a frozen
 * LoRA is merged in a stage that trains the base (fold-frozen-lora cannot fold it there).
 */
describe('fold-trainable-lora: the -O1 plan with and without it', () => {
  const plansOf = (text: string) => plansWithout(text, 'fold-trainable-lora');
  const mbs = [syntheticBatch(2, 32, 31), syntheticBatch(2, 32, 32)];
  const runners: StageRunner[] = [];
  afterAll(() => runners.forEach((r) => r.dispose()));
  const merges = (plan: Plan, stage: string) => plan.stages.find((s) => s.name === stage)!.forward.filter((f) => f.op === 'lora_merge');
  // Rank 16 on a 32-wide model: the merged form is the cheaper one at every site (the cost model's choice).
  const text = `pipeline m
model base = ${TINY}
data d = jsonl("d.jsonl")
adapter attn  = lora(r: 16, alpha: 32) at layers[*].attn.{q, k, v, o}
adapter mlp   = lora(r: 16, alpha: 16) at layers[*].mlp.{gate, up, down}
stage one {
  train attn, mlp on d
  steps 3
  lr 1e-2
  schedule constant
  weight_decay 0.01
  batch 4
  micro_batch 2
  max_len 32
  then { freeze mlp }
}
stage two {
  train base, attn on d
  steps 2
  lr 1e-3
  batch 4
  micro_batch 2
  max_len 32
}
`;

  it.each(['cpu', 'wasm'] as const)('adapters trained, then the base trained beside a frozen merged LoRA, on %s: same loss, gradients and weights', async (backend) => {
    const [p0, p1] = plansOf(text);
    expect(merges(p0, 'one')).toEqual([]);
    expect(merges(p1, 'one').map((f) => f.adapter)).toEqual(['attn', 'attn', 'attn', 'attn', 'mlp', 'mlp', 'mlp']);
    // Stage two trains the base: the frozen mlp LoRA cannot be folded once at entry, so it is merged every step.
    expect(merges(p1, 'two').map((f) => f.adapter).sort()).toEqual(['attn', 'attn', 'attn', 'attn', 'mlp', 'mlp', 'mlp']);
    const a = await createStageRunner(p0, 'one', { backend });
    const b = await createStageRunner(p1, 'one', { backend });
    runners.push(a, b);
    await expectSameTraining(a, b, mbs, TOL);
    expect(await a.applyExit()).toEqual(await b.applyExit());
    // Stage two (the base trained) from the same weights: the loss and every gradient, then the losses of two
    // steps. Not the weights after them: the key bias's gradient is 0 up to rounding (softmax ignores a shift
    // common to all keys), ~6e-9 here, and AdamW's first steps move a weight by about lr whatever its gradient's
    // size, so any two summation orders end ~1e-3 apart there (as the test above, which trains the base, shows
    // by comparing gradients only).
    const start = await a.parameters();
    const a2 = await createStageRunner(p0, 'two', { backend, parameters: start });
    const b2 = await createStageRunner(p1, 'two', { backend, parameters: start });
    runners.push(a2, b2);
    const [h0, h1] = [await a2.gradients(mbs), await b2.gradients(mbs)];
    for (const id of ['base.layers[0].attn.q.weight', 'base.layers[0].mlp.down.weight', 'attn.layers[0].attn.o.A']) expect(h1.grads.has(id)).toBe(true);
    expect(relErr([h0.loss], [h1.loss])).toBeLessThan(TOL);
    expect([...h0.grads.keys()].sort()).toEqual([...h1.grads.keys()].sort());
    expect(worst(h0.grads, h1.grads).err).toBeLessThan(TOL);
    for (let i = 0; i < 2; i++) expect(relErr([(await a2.step(mbs)).loss], [(await b2.step(mbs)).loss])).toBeLessThan(TOL);
  });
});
