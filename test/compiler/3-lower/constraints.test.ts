/**
 * Orthogonality terms read only tensors their stage holds: after `drop noise.experts` a constraint on
 * `noise.A` covers the mixture's shared experts, never the dropped routed ones (found by the torch emitter's
 * differential test: the -O1 plan read `noise...expert_A` and `mcpc run` refused it).
 */
import { describe, expect, it } from 'vitest';
import { compileInline } from '../../runtime/executor/helpers.js';

const PIPELINE = `pipeline dropped_parts
model base = builtin("qwen2-micro", layers: 1, hidden: 32, ffn: 64, heads: 2, kv_heads: 1)
data d = jsonl("d.jsonl")
adapter knowledge = lora(r: 4, alpha: 8) at layers[*].mlp.{gate, up}
adapter noise = moe_lora(experts: 4, top_k: 2, r: 4, alpha: 8, shared: 1) at layers[*].mlp.{gate, up}
stage one {
  train knowledge, noise on d
  steps 1
  batch 2
  max_len 16
  then {
    drop noise.experts
    freeze knowledge
  }
}
stage two {
  adapter align = lora(r: 4, alpha: 8) at layers[*].mlp.{gate, up}
  train align on d
  steps 1
  batch 2
  max_len 16
  constrain orthogonal(align.A, knowledge.A, noise.A) weight 1.0 norm l1
}
`;

describe('orthogonality terms and dropped parts', () => {
  it('read no tensor dropped in their stage, at -O0 and -O1, and keep the shared experts', () => {
    for (const plan of compileInline(PIPELINE).plans) {
      const two = plan.stages.find((s) => s.name === 'two')!;
      const state = new Map(plan.parameters.map((p) => [p.id, p.states.two]));
      const ortho = two.forward.filter((f) => f.op === 'ortho_penalty' || f.op === 'ortho_penalty_batched');
      expect(ortho.length).toBeGreaterThan(0);
      const read = ortho.flatMap((f) => f.inputs);
      for (const id of read) if (state.has(id)) expect(state.get(id), id).not.toBe('dropped');
      expect(read.some((id) => id.startsWith('noise.') && id.endsWith('.shared_A'))).toBe(true);
      expect(read.some((id) => id.includes('expert_A'))).toBe(false);
    }
  });
});
