/**
 * `export peft` as a user of Hugging Face tooling reads it: the model source plus every folder the manifest's
 * `apply_together` names must be the trained model, i.e. what `export merged` writes. Trained for real
 * (runPlan) on a pipeline that merges one adapter into the base between its stages (MedCare's `attn`) and
 * drops a mixture's routed experts (its shared experts live on): both are part of the trained model, so both
 * must be in the export.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import type { Plan } from '../../../src/plan/types.js';
import { runPlan } from '../../../src/runtime/run.js';
import { checkpointParameters, loadHfCheckpoint } from '../../../src/runtime/weights/hf.js';
import { loraViews, maxAbsDiff, mergeLora } from '../../../src/runtime/weights/merge.js';
import { initialParameters } from '../../../src/runtime/weights/params.js';
import { importPeftAdapter } from '../../../src/runtime/weights/peft.js';
import { compileInline, TINY } from '../executor/helpers.js';

const PIPELINE = `pipeline rebuild
model base = ${TINY}
data d = jsonl("d.jsonl")
adapter a = lora(r: 4, alpha: 8) at layers[*].attn.{q, v}
adapter m = moe_lora(experts: 3, top_k: 2, r: 2, alpha: 4, shared: 1) at layers[*].mlp.{gate, down}
stage one {
  train a, m on d
  steps 2
  lr 1e-2
  batch 4
  micro_batch 2
  max_len 32
  then {
    merge a into base
    drop m.experts
    freeze m
  }
}
stage two {
  adapter b = lora(r: 2, alpha: 4) at layers[*].mlp.up
  train b on d
  steps 2
  lr 1e-2
  batch 4
  micro_batch 2
  max_len 32
}
export peft "out/adapters"
export merged "out/model"
`;

describe('export peft rebuilds the trained model', () => {
  let dir: string;
  let plan: Plan;
  let text = '';
  beforeAll(async () => {
    ({ dir, plans: [plan] } = compileInline(PIPELINE, [1]) as { dir: string; plans: [Plan] });
    const r = await runPlan(plan, { root: dir, runDir: join(dir, 'run'), write: (t) => void (text += t) });
    expect(r.code).toBe(0);
  }, 120_000);

  it('the default list holds the merged adapter and the mixture reduced to its shared experts', () => {
    expect(plan.exports.find((e) => e.format === 'peft')!.adapters).toEqual(['a', 'm', 'b']);
    const manifest = JSON.parse(readFileSync(join(dir, 'out/adapters/mcpc_export.json'), 'utf8'));
    expect(manifest).toMatchObject({ merged_into_base: ['a'], apply_together: ['a', 'm', 'b'], not_exported: [] });
    expect(manifest.adapters.map((x: { name: string; layout: string }) => `${x.name}:${x.layout}`)).toEqual(['a:peft', 'm:peft', 'b:peft']);
    expect(manifest.adapters[0]).toMatchObject({ merged_into_base: true, apply_with: ['m', 'b'] });
    expect(manifest.note).toMatch(/^The trained model is the model source with every adapter in apply_together applied at once/);
    expect(text).toMatch(/exported peft -> .*out\/adapters \(a, m, b\)\n/);
  });

  it('model source + every folder of apply_together = export merged, to rounding; without the merged one it is not', () => {
    const source = initialParameters(plan, plan.stages[0]!.settings.seed, dir).params;
    const rebuild = (names: string[]) => {
      const w = new Map(checkpointParameters(plan).map((p) => [p.id, Float32Array.from(source.get(p.id)!)]));
      for (const name of names) {
        const back = importPeftAdapter(plan, name, join(dir, 'out/adapters', name));
        expect(back.warnings).toEqual([]);
        for (const v of loraViews(plan, name)) mergeLora(w.get(v.weight)!, back.params.get(v.A)!, back.params.get(v.B)!, v.scale, v.out, v.in);
      }
      return w;
    };
    const merged = loadHfCheckpoint(plan, join(dir, 'out/model')).weights;
    const worst = (w: Map<string, Float32Array>) => Math.max(...[...merged].map(([id, v]) => maxAbsDiff(w.get(id)!, v)));
    const all = JSON.parse(readFileSync(join(dir, 'out/adapters/mcpc_export.json'), 'utf8')).apply_together as string[];
    expect(worst(rebuild(all))).toBeLessThan(1e-6);
    // What the export held before: the adapters alive at the end only. The attention weights lack a's update.
    expect(worst(rebuild(['b']))).toBeGreaterThan(1e-3);
  });

  it('an export that leaves a part out says so in the manifest and the run log', async () => {
    const { dir: d2, plans: [p2] } = compileInline(PIPELINE.replace('export peft "out/adapters"', 'export peft b "out/only-b"').replace('export merged "out/model"\n', ''), [1]);
    let log = '';
    const r = await runPlan(p2!, { root: d2, runDir: join(d2, 'run'), write: (t) => void (log += t) });
    expect(r.code).toBe(0);
    const manifest = JSON.parse(readFileSync(join(d2, 'out/only-b/mcpc_export.json'), 'utf8'));
    expect(manifest.apply_together).toEqual(['b']);
    expect(manifest.not_exported.map((n: { adapter: string }) => n.adapter)).toEqual(['a', 'm']);
    expect(manifest.note).toMatch(/Not in this export: a, m \(see not_exported\); without them the folders do not reproduce the trained model\.$/);
    expect(log).toMatch(/warning: export peft .*only-b: a is not in it: not in this export's adapter list\n/);
  }, 120_000);
});
