/**
 * Stage exits that read an adapter the -O1 passes had touched: the -O0 and -O1 plans of each pipeline, run by
 * runPlan on the wasm backend, must train the same (losses step by step, final weights). Each pipeline is one
 * an equivalence fuzz found (-O1 crashed or trained something else before the fix):
 *  - a never-trained LoRA merged (or frozen) at a stage's end: eliminate-dead-adapters had left its tensors out;
 *  - `drop X.experts where load ...` on a mixture the stage does not train: -O1 measured no loads, dropped nothing;
 *  - a frozen LoRA folded into the base in a stage whose exit drops it: the runner rebuilt the fold after the drop;
 *  - a load condition every expert of a site meets: a site keeps top_k experts (else the router chose among
 *    barred experts tied at -1e9, and -O0 and -O1 broke the tie differently).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { Plan } from '../../src/plan/types.js';
import { runPlan } from '../../src/runtime/run.js';
import { parseRunState } from '../../src/runtime/run-state.js';
import { compileInline, TINY } from './executor/helpers.js';

const SETTINGS = 'steps 2\n  lr 2e-2\n  batch 4\n  micro_batch 2\n  max_len 32';

const CASES: Record<string, string> = {
  'merge of a never-trained LoRA': `adapter a0 = lora(r: 4, alpha: 4) at layers[0].attn.q
adapter a1 = lora(r: 4, alpha: 4) at layers[0].attn.v
stage st0 {
  train a1 on d
  ${SETTINGS}
  then { merge a0 into base; freeze a1 }
}`,
  'freeze of a never-trained LoRA, trained frozen after': `adapter a0 = lora(r: 4, alpha: 4) at layers[0].attn.q
adapter a1 = lora(r: 4, alpha: 4) at layers[0].attn.v
stage st0 {
  train a1 on d
  ${SETTINGS}
  then { freeze a0 }
}
stage st1 {
  train a1 on d
  ${SETTINGS}
}`,
  'drop by load of a mixture the stage does not train': `adapter a0 = moe_lora(experts: 4, top_k: 2, r: 2, alpha: 4, load_balance: 0.1) at layers[0].mlp.up
adapter a1 = lora(r: 4, alpha: 4) at layers[0].attn.v
stage st0 {
  train a1 on d
  ${SETTINGS}
  then { drop a0.experts where load < 20% }
}
stage st1 {
  train a0 on d
  ${SETTINGS}
}`,
  'a folded LoRA dropped at the end of the stage that folds it': `adapter a1 = lora(r: 4, alpha: 1, experts: 2) at layers[-1].mlp.{gate, up}
stage st0 {
  train a1 on d
  ${SETTINGS}
  then { freeze a1 }
}
stage st1 {
  adapter l1 = lora(r: 4, alpha: 4) at layers[-1].mlp.down
  train l1 on d
  ${SETTINGS}
  then { drop a1 }
}
stage st2 {
  train l1 on d
  ${SETTINGS}
}`,
  'a constraint against an adapter never trained': `adapter a0 = lora(r: 1, alpha: 1) at layers[*].attn.v
stage st0 {
  adapter l0 = lora(r: 2, alpha: 1) at layers[0].attn.v
  train l0 on d
  ${SETTINGS}
  constrain orthogonal(l0.A, a0.A)
}`,
  'a load condition every expert meets': `adapter a0 = moe_lora(experts: 4, top_k: 2, r: 2, alpha: 4, load_balance: 0.1) at layers[*].mlp.up
adapter a1 = lora(r: 4, alpha: 4) at layers[0].attn.v
stage st0 {
  train a0, a1 on d
  ${SETTINGS}
  then { drop a0.experts where load <= 100% }
}
stage st1 {
  train a0 on d
  ${SETTINGS}
}`,
};

async function train(plan: Plan, dir: string, name: string): Promise<{ losses: number[]; log: string }> {
  let log = '';
  const r = await runPlan(plan, { root: dir, runDir: join(dir, name), backend: 'wasm', write: (t) => void (log += t) });
  expect(r.code, log).toBe(0);
  const lines = readFileSync(join(dir, name, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { loss?: number; probe?: string });
  return { losses: lines.filter((l) => l.loss !== undefined && l.probe === undefined).map((l) => l.loss!), log };
}

describe('stage exits agree at -O0 and -O1', () => {
  for (const [name, body] of Object.entries(CASES)) {
    it(name, async () => {
      const { dir, plans } = compileInline(`pipeline exits\nmodel base = ${TINY}\ndata d = jsonl("d.jsonl")\n${body}\n`, [0, 1]);
      const [o0, o1] = [await train(plans[0]!, dir, 'o0'), await train(plans[1]!, dir, 'o1')];
      expect(o1.losses).toHaveLength(o0.losses.length);
      o0.losses.forEach((l, i) => expect(Math.abs(o1.losses[i]! - l) / Math.abs(l)).toBeLessThan(1e-4));
      if (name === 'a load condition every expert meets') {
        // Both keep the two most loaded experts of each site (top_k 2) and say so.
        for (const o of [o0, o1]) expect(o.log).toMatch(/warning: stage st0: the drop condition of a0 matched 4 of the live experts at layers\[0\]\.mlp\.up; kept experts \d,\d, the most loaded/);
        expect(o0.log.match(/kept experts (\d,\d)/g)).toEqual(o1.log.match(/kept experts (\d,\d)/g));
      }
    }, 60_000);
  }
});

describe('a load drop after a resume', () => {
  it('counts the routed tokens of the whole stage, as an uninterrupted run does (the checkpoint keeps them)', async () => {
    const body = `adapter a0 = moe_lora(experts: 4, top_k: 1, r: 2, alpha: 4, load_balance: 0.01) at layers[*].mlp.{gate, up}
stage st0 {
  train a0 on d
  steps 2
  lr 5e-2
  batch 2
  micro_batch 2
  max_len 24
  checkpoint_every 1
  then { drop a0.experts where load < 40% }
}
stage st1 {
  train a0 on d
  ${SETTINGS}
}`;
    const { dir, plans } = compileInline(`pipeline resumed\nmodel base = ${TINY}\ndata d = jsonl("d.jsonl")\n${body}\n`, [1]);
    const plan = plans[0]!;
    let full = '';
    expect((await runPlan(plan, { root: dir, runDir: join(dir, 'full'), backend: 'wasm', write: (t) => void (full += t) })).code).toBe(0);
    expect((await runPlan(plan, { root: dir, runDir: join(dir, 'cut'), backend: 'wasm', stopAfter: 1, write: () => {} })).code).toBe(1);
    const state = JSON.parse(readFileSync(join(dir, 'cut', 'checkpoints', 'step-000001', 'state.json'), 'utf8'));
    expect(state.routerLoad.map((l: { site: string }) => l.site).sort()).toEqual(['layers[0].mlp.gate', 'layers[0].mlp.up']);
    expect(state.routerLoad[0].counts.reduce((a: number, b: number) => a + b, 0)).toBeGreaterThan(0);
    // A routerLoad the plan's mixture cannot have makes the checkpoint unusable (skipped like a damaged one).
    const edited = (f: (l: { counts: unknown[] }) => void) => {
      const s = JSON.parse(JSON.stringify(state));
      f(s.routerLoad[0]);
      return JSON.stringify(s);
    };
    expect(() => parseRunState(edited((l) => l.counts.pop()), plan)).toThrow(/"routerLoad"\[0\]\.counts is not 4 counts/);
    expect(() => parseRunState(edited((l) => (l.counts[0] = -1)), plan)).toThrow(/"routerLoad"\[0\]\.counts\[0\] is -1, not a count/);
    expect(parseRunState(JSON.stringify(state), plan).routerLoad).toEqual(state.routerLoad);
    let resumed = '';
    expect((await runPlan(plan, { root: dir, runDir: join(dir, 'cut'), backend: 'wasm', resume: true, write: (t) => void (resumed += t) })).code).toBe(0);
    const exit = (log: string) => /stage st0 exit: (.*)/.exec(log)?.[1];
    expect(exit(full)).toMatch(/dropped experts/);
    expect(exit(resumed)).toBe(exit(full));
    const losses = (run: string) => readFileSync(join(dir, run, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l)).filter((m) => m.loss !== undefined && m.probe === undefined).map((m) => m.loss);
    expect(losses('cut')).toEqual(losses('full'));
  }, 60_000);
});
