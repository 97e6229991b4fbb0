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
