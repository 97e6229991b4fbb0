/**
 * The probes on a tiny built-in model: logits read from the stage graph, the multiple-choice scorer with an
 * LM head set so that a known letter wins, greedy generation against a step-by-step reference, and runPlan
 * writing probe results to metrics.jsonl, the summary and the stage record (reused stages report them).
 */
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { compileFile, nodeHost } from '../../../src/compiler/index.js';
import type { Plan } from '../../../src/plan/types.js';
import { createStageRunner, type StageRunner } from '../../../src/runtime/executor.js';
import { generateGreedy, lookupDraft, type GenerateStats } from '../../../src/runtime/eval/generate.js';
import { argmax, runnerLogits, type LogitsModel } from '../../../src/runtime/eval/model.js';
import { parseOptions, prepareProbe, runProbe } from '../../../src/runtime/eval/probes.js';
import { runPlan } from '../../../src/runtime/run.js';
import { ByteTokenizer } from '../../../src/runtime/tokenizer/bytes.js';
import { lcg, RECORDS, TINY } from '../executor/helpers.js';

const PIPELINE = `pipeline probes
model base = ${TINY}
data d = jsonl("d.jsonl")
data exam = jsonl("exam.jsonl")
data forms = jsonl("forms.jsonl")
probe mc = multiple_choice(exam)
probe js = json_format(forms)
probe ppl = perplexity(d)
adapter a = lora(r: 2, alpha: 4) at layers[*].attn.{q, v}
stage s {
  train a on d
  steps 4
  batch 2
  micro_batch 2
  max_len 64
  eval mc, js every 2
  eval ppl
}
`;

const question = (q: string, options: string[], answer: string) => ({
  messages: [
    { role: 'user', content: `${q}\n${options.map((o, i) => `${'ABCD'[i]}) ${o}`).join('\n')}` },
    { role: 'assistant', content: `${answer}) ${options['ABCD'.indexOf(answer)]}` },
  ],
  answer,
});
const EXAM = [
  question('Which is an NSAID?', ['aspirin', 'ibuprofen', 'naproxen', 'warfarin'], 'C'),
  question('Antidote for heparin?', ['naloxone', 'vitamin K', 'protamine', 'flumazenil'], 'C'),
  question('Class of metoprolol?', ['beta blocker', 'diuretic', 'statin', 'ACE inhibitor'], 'A'),
];
const FORMS = [
  { messages: [{ role: 'user', content: 'JSON for ibuprofen: drug, class.' }, { role: 'assistant', content: '{"drug":"ibuprofen","class":"NSAID"}' }], expected: { drug: 'ibuprofen', class: 'NSAID' } },
  { messages: [{ role: 'user', content: 'JSON: normal sodium, unit and low.' }, { role: 'assistant', content: '{"unit":"mmol/L","low":135}' }], expected: { unit: 'mmol/L', low: 135 } },
  { messages: [{ role: 'user', content: 'JSON: antidote of methanol.' }, { role: 'assistant', content: '{"antidote":"fomepizole"}' }] },
];

let dir: string;
let plan: Plan;
const tok = new ByteTokenizer();

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'mcpc-probes-'));
  const jsonl = (rows: object[]) => rows.map((r) => JSON.stringify(r)).join('\n') + '\n';
  writeFileSync(join(dir, 'd.jsonl'), jsonl(RECORDS));
  writeFileSync(join(dir, 'exam.jsonl'), jsonl(EXAM));
  writeFileSync(join(dir, 'forms.jsonl'), jsonl(FORMS));
  writeFileSync(join(dir, 'p.mcp'), PIPELINE);
  const res = compileFile(join(dir, 'p.mcp'), nodeHost(dir, dir), {}, { optLevel: 1 });
  if (!res.plan) throw new Error(res.diagnostics.map((d) => d.message).join('\n'));
  plan = res.plan;
});

/** Greedy decoding one token per forward, the whole sequence each time: the definition. */
async function stepByStep(model: LogitsModel, prompt: readonly number[], eos: number, maxNew: number): Promise<number[]> {
  const out: number[] = [];
  while (out.length < maxNew) {
    const seq = [...prompt, ...out];
    const g = argmax((await model.logits([seq], [[seq.length - 1]]))[0]![0]!);
    if (g === eos) break;
    out.push(g);
  }
  return out;
}

describe('logits from the stage graph', () => {
  it('give the cross-entropy the executor computes for a target', async () => {
    const runner = await createStageRunner(plan, 's', { root: dir });
    try {
      const seq = tok.encode('<|user|>\nWhat is 2+2?\n<|assistant|>\n4');
      const t = seq.length - 2;
      const [[logits]] = await runnerLogits(runner, 2, tok.pad).logits([seq], [[t]]);
      const max = Math.max(...logits!);
      const lse = max + Math.log(logits!.reduce((a, v) => a + Math.exp(v - max), 0));
      const n = seq.length;
      const mask = new Float32Array(n);
      mask[t] = 1;
      const labels = new Int32Array(n);
      labels[t] = seq[t + 1]!;
      const ce = (await runner.forward({ rows: 1, seqLen: n, tokens: Int32Array.from(seq), labels, mask, positions: Int32Array.from(seq.keys()), segments: new Int32Array(n).fill(1), packed: false, examples: [], lossTokens: 1 }, ['loss.ce'])).get('loss.ce')![0]!;
      expect(lse - logits![seq[t + 1]!]!).toBeCloseTo(ce, 4);
    } finally {
      runner.dispose();
    }
  });
});

describe('multiple_choice', () => {
  it('parses the option lines', () => {
    expect(parseOptions('Pick one.\nA) x\nB. y\n(C) z\nnot D) w\nE)')).toEqual([
      { letter: 'A', line: 'A) x' },
      { letter: 'B', line: 'B. y' },
      { letter: 'C', line: '(C) z' },
    ]);
  });

  /**
   * Dimension 0 of the residual stream is the embedding's column 0 (every layer's output row 0 zeroed) and
   * the final norm keeps only it, so x.final = (c, 0, ..., 0) with c > 0 and the tied head's logit of byte v
   * is c·E[v, 0]: the byte with the largest E[v, 0] wins at every position.
   */
  async function runnerPreferring(letter: string): Promise<StageRunner> {
    const runner = await createStageRunner(plan, 's', { root: dir });
    const p = await runner.parameters();
    const hidden = plan.model.config.hidden;
    const E = p.get('base.embed.weight')!;
    for (let v = 0; v < plan.model.config.vocab; v++) E[v * hidden] = v === letter.charCodeAt(0) ? 2 : 1;
    const norm = new Float32Array(hidden);
    norm[0] = 1;
    const set = new Map([['base.embed.weight', E], ['base.norm.weight', norm]]);
    for (let l = 0; l < plan.model.config.layers; l++) {
      for (const id of [`base.layers[${l}].attn.o.weight`, `base.layers[${l}].mlp.down.weight`]) {
        const W = p.get(id)!;
        W.fill(0, 0, W.length / hidden); // row 0 of [hidden, in]
        set.set(id, W);
      }
    }
    await runner.loadParameters(set);
    return runner;
  }

  it('picks the option whose letter the head prefers, one forward per micro-batch', async () => {
    const probe = await prepareProbe(plan, 'mc', 64, { root: dir, tokenizer: tok });
    for (const [letter, accuracy] of [['C', 2 / 3], ['A', 1 / 3], ['B', 0]] as const) {
      const runner = await runnerPreferring(letter);
      try {
        const r = await runProbe(runnerLogits(runner, 2, tok.pad), probe);
        expect(r).toMatchObject({ probe: 'mc', kind: 'multiple_choice', metric: 'accuracy', examples: 3, forwards: 2 });
        expect(r.value).toBeCloseTo(accuracy, 12);
      } finally {
        runner.dispose();
      }
    }
  });

  it('names the record when a question has no answer among its options', async () => {
    writeFileSync(join(dir, 'bad-exam.jsonl'), JSON.stringify({ ...EXAM[0], answer: 'E' }) + '\n');
    const bad = { ...plan, data: plan.data.map((d) => (d.name === 'exam' ? { ...d, path: 'bad-exam.jsonl' } : d)) };
    await expect(prepareProbe(bad, 'mc', 64, { root: dir, tokenizer: tok })).rejects.toThrow(/bad-exam\.jsonl:1: probe mc: the answer "E" is none of the options A, B, C, D/);
  });
});

describe('greedy generation', () => {
  let runner: StageRunner;
  let model: LogitsModel;
  const rnd = lcg(7);
  const prompts = Array.from({ length: 5 }, (_, i) => tok.encode(`<|user|>\nquestion ${i}: ${'xyz'.repeat(i)}\n<|assistant|>\n`));
  beforeAll(async () => {
    runner = await createStageRunner(plan, 's', { root: dir });
    // Random weights everywhere (the adapters' B too), so the outputs are not one repeated byte.
    const p = await runner.parameters();
    for (const [id, a] of p) if (!id.includes('norm')) for (let i = 0; i < a.length; i++) a[i] = (rnd() - 0.5) * (id.startsWith('base.embed') ? 2 : 0.6);
    await runner.loadParameters(p);
    model = runnerLogits(runner, 2, tok.pad);
    return () => runner.dispose();
  });

  it('equals step-by-step decoding, whatever the drafts', async () => {
    const free = await Promise.all(prompts.map((p) => stepByStep(model, p, -1, 12)));
    // An end-of-turn id that some outputs reach: the 4th token of the first output.
    const eos = free[0]![3]!;
    const want = await Promise.all(prompts.map((p) => stepByStep(model, p, eos, 12)));
    expect(want[0]!.length).toBeLessThan(4);
    const draftSets = [undefined, want.map((w) => [...w, eos]), prompts.map(() => Array.from({ length: 20 }, () => Math.floor(rnd() * 256))), want.map((w) => [...w.slice(0, 2), 0, ...w.slice(3)])];
    for (const drafts of draftSets) {
      const got = await generateGreedy(model, prompts, { eos, maxNew: 12, ...(drafts ? { drafts } : {}) });
      expect(got.map((g) => g.tokens)).toEqual(want);
      expect(got.map((g) => g.end)).toEqual(want.map((w) => (w.length < 12 ? 'eos' : 'length')));
    }
  });

  it('takes one forward per batch of rows when the draft is the output', async () => {
    const want = await Promise.all(prompts.slice(0, 2).map((p) => stepByStep(model, p, -1, 10)));
    const stats: GenerateStats = { forwards: 0, tokens: 0 };
    const got = await generateGreedy(model, prompts.slice(0, 2), { eos: -1, maxNew: 10, drafts: want }, stats);
    expect(got.map((g) => g.tokens)).toEqual(want);
    expect(stats.forwards).toBe(1);
  });

  it('stops a row when asked, with a prefix of its greedy output', async () => {
    const want = await Promise.all(prompts.map((p) => stepByStep(model, p, -1, 8)));
    const got = await generateGreedy(model, prompts, { eos: -1, maxNew: [8, 8, 8, 8, 3], stop: (i, out) => i === 1 && out.length >= 1 });
    expect(got[1]).toEqual({ tokens: want[1]!.slice(0, 1), end: 'stopped' }); // no draft: the first forward accepts one token
    expect(want[1]!.slice(0, got[1]!.tokens.length)).toEqual(got[1]!.tokens);
    expect(got[4]).toEqual({ tokens: want[4]!.slice(0, 3), end: 'length' });
    expect(got[0]).toEqual({ tokens: want[0], end: 'length' });
  });

  it('drafts by lookup: the reference first, then a repeating context', () => {
    expect(lookupDraft([9, 1, 2], [5, 1, 2, 7, 8])).toEqual([7, 8]);
    expect(lookupDraft([4, 4, 4], [1, 2], 5)).toEqual([4, 4, 4, 4, 4]);
    expect(lookupDraft([1, 2, 3, 1, 2], [], 4)).toEqual([3, 1, 2, 3]);
    expect(lookupDraft([7], [1, 2])).toBeUndefined();
  });
});

describe('runPlan with eval', () => {
  it('writes probe lines every N steps and at the stage end, and a reused stage reports its results', async () => {
    const runDir = join(dir, 'run');
    const out: string[] = [];
    const r = await runPlan(plan, { root: dir, runDir, write: (t) => out.push(t) });
    expect(r.code).toBe(0);
    const lines = readFileSync(join(runDir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    const probes = lines.filter((l) => l.probe !== undefined).map((l) => `${l.step}:${l.probe}:${l.metric}:${l.examples}`);
    expect(probes).toEqual(['1:mc:accuracy:3', '1:js:json_match:3', '3:mc:accuracy:3', '3:js:json_match:3', '3:ppl:perplexity:4']);
    expect(lines.filter((l) => l.loss !== undefined)).toHaveLength(4);
    const evals = r.stages[0]!.evals!;
    expect(evals.map((e) => e.probe)).toEqual(['mc', 'js', 'ppl']);
    const ppl = evals[2]!;
    expect(ppl.value).toBeGreaterThan(1);
    expect(ppl.value).toBeLessThan(256 * 4);
    expect(out.join('')).toMatch(/stage s eval after step 4: ppl perplexity [0-9.]+ \(4 records, \d+ tokens, 2 forwards/);
    const again = await runPlan(plan, { root: dir, runDir, write: () => {} });
    expect(again.stages[0]).toMatchObject({ reused: true });
    expect(again.stages[0]!.evals).toEqual(evals);
  }, 120_000);
});
