/** Shared by the executor tests: inline pipelines compiled in the test, synthetic micro-batches, comparisons. */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { compileFile, nodeHost } from '../../../src/compiler/index.js';
import type { MicroBatch } from '../../../src/runtime/data/batch.js';
import type { Plan } from '../../../src/plan/types.js';
import type { StageRunner } from '../../../src/runtime/executor.js';
import { expect } from 'vitest';

/** The smallest model the tests train: one layer, hidden 32, two heads sharing one kv head. */
export const TINY = 'builtin("qwen2-micro", layers: 1, hidden: 32, ffn: 64, heads: 2, kv_heads: 1)';

/**
 * Two stages on TINY for run-level tests: LoRA on q, v merged into the base after two steps (max_bad_steps 2),
 * then an MLP LoRA for three steps with a checkpoint after each.
 */
export const TWO_STAGES = `pipeline small
model base = ${TINY}
data d = jsonl("d.jsonl")
adapter a = lora(r: 4, alpha: 8) at layers[*].attn.{q, v}
stage one {
  train a on d
  steps 2
  lr 1e-2
  batch 4
  micro_batch 2
  max_len 32
  max_bad_steps 2
  then {
    merge a into base
  }
}
stage two {
  adapter b = lora(r: 2, alpha: 4) at layers[*].mlp.up
  train b on d
  steps 3
  lr 1e-2
  batch 4
  micro_batch 2
  max_len 32
  checkpoint_every 1
}
`;

/** A few chat records. */
export const RECORDS = [
  ['What is a first-line drug for hypertension?', 'A thiazide diuretic.'],
  ['Normal fasting glucose?', '70 to 99 mg/dL.'],
  ['Antidote for paracetamol?', 'N-acetylcysteine.'],
  ['Class of metformin?', 'A biguanide.'],
].map(([user, assistant]) => ({ messages: [{ role: 'user', content: user }, { role: 'assistant', content: assistant }] }));

/** Write `text` as p.mcp beside d.jsonl (RECORDS) in a fresh folder; compile it at `levels`. */
export function compileInline(text: string, levels: (0 | 1)[] = [0, 1]): { dir: string; plans: Plan[] } {
  const dir = mkdtempSync(join(tmpdir(), 'mcpc-exec-'));
  writeFileSync(join(dir, 'd.jsonl'), RECORDS.map((r) => JSON.stringify(r)).join('\n') + '\n');
  writeFileSync(join(dir, 'p.mcp'), text);
  const plans = levels.map((optLevel) => {
    const res = compileFile(join(dir, 'p.mcp'), nodeHost(dir, dir), {}, { optLevel, verify: true });
    if (!res.plan) throw new Error(`did not compile:\n${res.diagnostics.map((d) => d.message).join('\n')}`);
    return res.plan;
  });
  return { dir, plans };
}

/** A deterministic LCG in [0, 1). */
export function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

/**
 * A synthetic micro-batch: random tokens and labels; each row packs two examples (segments 1 and 2,
 * positions restarting at 0) followed by `pad` padding positions (segment 0, mask 0); ~70% of the real
 * positions are in the loss.
 */
export function syntheticBatch(rows: number, seqLen: number, seed: number, opts: { vocab?: number; pad?: number } = {}): MicroBatch {
  const rnd = lcg(seed);
  const V = opts.vocab ?? 256;
  const pad = opts.pad ?? 3;
  const T = rows * seqLen;
  const tokens = new Int32Array(T);
  const labels = new Int32Array(T);
  const mask = new Float32Array(T);
  const positions = new Int32Array(T);
  const segments = new Int32Array(T);
  let lossTokens = 0;
  for (let r = 0; r < rows; r++) {
    const split = Math.floor((seqLen - pad) / 2) + r;
    for (let t = 0; t < seqLen; t++) {
      const i = r * seqLen + t;
      tokens[i] = Math.floor(rnd() * V);
      labels[i] = Math.floor(rnd() * V);
      if (t >= seqLen - pad) continue;
      segments[i] = t < split ? 1 : 2;
      positions[i] = t < split ? t : t - split;
      mask[i] = rnd() < 0.7 ? 1 : 0;
      lossTokens += mask[i];
    }
  }
  return { rows, seqLen, tokens, labels, mask, positions, segments, packed: true, examples: [], lossTokens };
}

/** max |a − b| / max(max |a|, max |b|, floor): an error relative to the tensor's scale. */
export function relErr(a: ArrayLike<number>, b: ArrayLike<number>, floor = 1e-12): number {
  if (a.length !== b.length) return Infinity;
  let diff = 0;
  let scale = floor;
  for (let i = 0; i < a.length; i++) {
    diff = Math.max(diff, Math.abs(a[i] - b[i]));
    scale = Math.max(scale, Math.abs(a[i]), Math.abs(b[i]));
  }
  return diff / scale;
}

/** The largest relErr over the common keys of two maps, and the key where it occurs. */
export function worst(a: Map<string, ArrayLike<number>>, b: Map<string, ArrayLike<number>>): { key: string; err: number } {
  let out = { key: '', err: 0 };
  for (const [k, v] of a) {
    const e = relErr(v, b.get(k) ?? []);
    if (e > out.err) out = { key: k, err: e };
  }
  return out;
}

/**
 * Two runners of equivalent plans train alike: the same loss and gradients on `mbs`, the same losses over two
 * optimizer steps, then the same parameters, each within `tol` (relative).
 */
export async function expectSameTraining(a: StageRunner, b: StageRunner, mbs: MicroBatch[], tol: number): Promise<void> {
  const ga = await a.gradients(mbs);
  const gb = await b.gradients(mbs);
  expect(relErr([ga.loss], [gb.loss])).toBeLessThan(tol);
  expect([...ga.grads.keys()].sort()).toEqual([...gb.grads.keys()].sort());
  expect(worst(ga.grads, gb.grads).err).toBeLessThan(tol);
  for (let i = 0; i < 2; i++) {
    const sa = await a.step(mbs);
    const sb = await b.step(mbs);
    expect(relErr([sa.loss], [sb.loss])).toBeLessThan(tol);
  }
  expect(worst(await b.parameters(), await a.parameters()).err).toBeLessThan(tol);
}

