/**
 * One process that trains on wasm, then on webgpu, then on wasm again (a library user comparing backends, a
 * bench): mcpc's CPU kernel table and its WGSL kernels share some kernel names (McpcMoeUp, McpcTopkGate, ...)
 * whose gradients save different tensors, and tfjs keeps one gradient per name. Before the gradients were
 * registered per kernel family (src/runtime/tfjs/index.ts registerFamilyGradient), the second backend's
 * backward crashed ("Kernel 'McpcMoeUpU' not registered for backend 'wasm'", "the last tape node is not the op
 * just run").
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { runPlan } from '../../../src/runtime/run.js';
import { compileInline, TINY } from '../executor/helpers.js';
import { describeGpu } from './kernels-support.js';

const PIPELINE = `pipeline switch
model base = ${TINY}
data d = jsonl("d.jsonl")
adapter m = moe_lora(experts: 3, top_k: 2, r: 2, alpha: 4, shared: 1, load_balance: 0.1) at layers[*].mlp.{gate, up}
stage one {
  train m on d
  steps 1
  lr 5e-2
  batch 2
  micro_batch 2
  max_len 16
}
`;

describeGpu('training on wasm, webgpu and wasm again in one process', () => {
  it('every run trains, to the same losses', async () => {
    const { dir, plans } = compileInline(PIPELINE, [1]);
    const losses: number[][] = [];
    for (const [i, backend] of (['wasm', 'webgpu', 'wasm'] as const).entries()) {
      let log = '';
      const r = await runPlan(plans[0]!, { root: dir, runDir: join(dir, `run${i}`), backend, write: (t) => void (log += t) });
      expect(r.code, log).toBe(0);
      losses.push(readFileSync(join(dir, `run${i}`, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l)).filter((m) => m.loss !== undefined && m.probe === undefined).map((m) => m.loss as number));
    }
    expect(losses[2]).toEqual(losses[0]);
    losses[1]!.forEach((l, k) => expect(Math.abs(l - losses[0]![k]!) / Math.abs(l)).toBeLessThan(1e-4));
  }, 600_000);
});
