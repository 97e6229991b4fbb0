/**
 * The training bench's pipeline and micro-batch (bench/train-step.ts, bench/stage-profile.ts): a tiny MedCare-like
 * pipeline (the demo base model's shape: Qwen2, hidden 64, 4 layers, 4 query / 2 KV heads, SwiGLU 176, byte
 * vocabulary; attention LoRA r16, a 2-expert shared LoRA r16 and an 8-expert top-2 mixture r16 in stage one; an
 * r32 alignment LoRA held orthogonal to the knowledge adapter in stage two) at micro-batch rows x seq.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { compileFile, nodeHost } from '../../src/compiler/index.js';
import type { Pass } from '../../src/compiler/4-optimize/pass.js';
import type { MicroBatch } from '../../src/runtime/data/batch.js';
import type { Plan } from '../../src/plan/types.js';

/** The pipeline's source at micro-batch rows x seq (both stages take the same settings). */
export function benchPipeline(rows: number, seq: number): string {
  const settings = ['steps 100', 'lr 2e-4', 'schedule constant', `batch ${rows}`, `micro_batch ${rows}`, `max_len ${seq}`].join('\n  ');
  return `pipeline bench
model base = builtin("qwen2-tiny", hidden: 64, ffn: 176, heads: 4, kv_heads: 2)
data mixed = jsonl("d.jsonl")

adapter attn      = lora(r: 16, alpha: 32)                           at layers[*].attn.{q, k, v, o}
adapter knowledge = lora(r: 16, alpha: 32, experts: 2)               at layers[*].mlp.{gate, up, down}
adapter noise     = moe_lora(experts: 8, top_k: 2, r: 16, alpha: 32) at layers[*].mlp.{gate, up, down}

stage aggregate {
  train attn, knowledge, noise on mixed
  ${settings}
  then {
    merge attn into base
    drop noise
    freeze knowledge
  }
}

stage align {
  adapter align = lora(r: 32, alpha: 32) at layers[*].mlp.{gate, up, down}
  train align on mixed
  ${settings}
  constrain orthogonal(align.A, knowledge.A) weight 1.0 norm l1
}
`;
}

/** The bench pipeline compiled with each of `opts` (optimization level, and the pass list where given). */
export function compileBench(rows: number, seq: number, opts: { optLevel: 0 | 1; passes?: Pass[] }[]): Plan[] {
  const dir = mkdtempSync(join(tmpdir(), 'mcpc-bench-step-'));
  try {
    writeFileSync(join(dir, 'd.jsonl'), JSON.stringify({ messages: [{ role: 'user', content: 'q' }, { role: 'assistant', content: 'a' }] }) + '\n');
    writeFileSync(join(dir, 'p.mcp'), benchPipeline(rows, seq));
    return opts.map((o) => {
      const res = compileFile(join(dir, 'p.mcp'), nodeHost(dir, dir), {}, o);
      if (!res.plan) throw new Error(`the bench pipeline does not compile:\n${res.diagnostics.map((d) => d.message).join('\n')}`);
      return res.plan;
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** A packed micro-batch of random bytes: two examples per row, 3 padding positions, ~70% of targets in the loss. */
export function benchMicroBatch(rows: number, seq: number, seed: number): MicroBatch {
  let s = seed >>> 0;
  const rnd = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
  const T = rows * seq;
  const mb: MicroBatch = { rows, seqLen: seq, tokens: new Int32Array(T), labels: new Int32Array(T), mask: new Float32Array(T), positions: new Int32Array(T), segments: new Int32Array(T), packed: true, examples: [], lossTokens: 0 };
  for (let r = 0; r < rows; r++) {
    const split = Math.floor((seq - 3) / 2);
    for (let t = 0; t < seq; t++) {
      const i = r * seq + t;
      mb.tokens[i] = Math.floor(rnd() * 256);
      mb.labels[i] = Math.floor(rnd() * 256);
      if (t >= seq - 3) continue;
      mb.segments[i] = t < split ? 1 : 2;
      mb.positions[i] = t < split ? t : t - split;
      mb.mask[i] = rnd() < 0.7 ? 1 : 0;
      mb.lossTokens += mb.mask[i]!;
    }
  }
  return mb;
}
