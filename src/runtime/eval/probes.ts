/**
 * The plan's evaluation probes (`probe NAME = kind(data)`, run by a stage's `eval`), measured on a stage
 * runner's model. The first `max_examples` records of the probe's data are used, in file order; without
 * `max_examples`, every record, except json_format: 32 (it generates, which costs a forward per token).
 *
 * - multiple_choice → `accuracy`: one forward per question (several per micro-batch). The options are the
 *   lines `X) text` of the last user message; at the first response position the option whose first token
 *   (of `X) text`, under the byte tokenizer just the letter) has the highest logit is the model's answer, and
 *   it is right when it is the record's `answer` letter (else the letter the reference answer starts with).
 * - json_format → `json_match`: greedy generation (generate.ts) after the prompt, at most 16 tokens more
 *   than the reference answer (an answer cut there is judged as it stands); the share of answers that are one JSON object with exactly the expected
 *   keys and values (json-match.ts), the expected object being the record's `expected` (else the reference
 *   answer parsed). A row stops as soon as its answer can no longer match, so the share is exact.
 * - perplexity → `perplexity`: exp of the mean cross-entropy over the response tokens (the end-of-turn token
 *   included, as in training; every token of a text source), records encoded as the stage encodes its data.
 *
 * Records come from the data entry's file (`answer` and `expected` are kept by the JSONL reader); a record a
 * probe cannot use is a DataError naming its line.
 */
import type { Plan } from '../../plan/types.js';
import { DataError } from '../data/errors.js';
import { readJsonl } from '../data/jsonl.js';
import type { ChatRecord, RecordFormat } from '../data/records.js';
import { loadDataSource, resolveInside } from '../data/source.js';
import { defaultChatTemplate, encodePrompt, endOfTurnId, type ChatTemplate } from '../data/template.js';
import type { Tokenizer } from '../tokenizer/types.js';
import { generateGreedy, type GenerateStats } from './generate.js';
import { judgeJson } from './json-match.js';
import { argmax, ProbeError, type LogitsModel } from './model.js';

export type ProbeSpec = Plan['probes'][number];
export type ProbeKind = ProbeSpec['kind'];

/** json_format: an answer may be this many tokens longer than its reference answer. */
export const JSON_SLACK = 16;

/** json_format's number of examples when the probe gives no `max_examples`. */
export const DEFAULT_JSON_EXAMPLES = 32;

export interface ProbeResult {
  probe: string;
  kind: ProbeKind;
  metric: 'accuracy' | 'json_match' | 'perplexity';
  value: number;
  /** Examples measured (for perplexity: records; `tokens` counts the targets). */
  examples: number;
  tokens?: number;
  /** Forwards run. */
  forwards: number;
  secs: number;
}

export interface ProbeDataOptions {
  root: string;
  tokenizer: Tokenizer;
  template?: ChatTemplate;
  skipBadRecords?: boolean;
  allowOutsideRoot?: boolean;
}

interface ChoiceItem {
  prompt: number[];
  /** First token of each option. */
  tokens: number[];
  letters: string[];
  answer: number;
}

interface JsonItem {
  prompt: number[];
  draft: number[];
  expected: Record<string, unknown>;
}

/** A probe's examples, encoded once and measured on any model. */
export type PreparedProbe =
  | { spec: ProbeSpec; kind: 'multiple_choice'; items: ChoiceItem[] }
  | { spec: ProbeSpec; kind: 'json_format'; items: JsonItem[]; eos: number; tokenizer: Tokenizer }
  | { spec: ProbeSpec; kind: 'perplexity'; items: { tokens: Int32Array; labels: Int32Array; mask: Uint8Array }[] };

/** Reads and encodes probe `name` of the plan. `maxLen` bounds perplexity records (the stage's `max_len`). */
export async function prepareProbe(plan: Plan, name: string, maxLen: number, opts: ProbeDataOptions): Promise<PreparedProbe> {
  const spec = plan.probes.find((p) => p.name === name);
  if (!spec) throw new ProbeError(`no probe '${name}' in the plan`);
  const data = plan.data.find((d) => d.name === spec.data);
  if (!data) throw new ProbeError(`probe ${name}: no data entry '${spec.data}' in the plan`);
  const tok = opts.tokenizer;
  const template = opts.template ?? defaultChatTemplate(tok);
  const limit = spec.maxExamples ?? (spec.kind === 'json_format' ? DEFAULT_JSON_EXAMPLES : undefined);
  const maxRecords = Math.min(limit ?? Infinity, data.maxRecords ?? Infinity);
  const max = Number.isFinite(maxRecords) ? maxRecords : undefined;

  if (spec.kind === 'perplexity') {
    const set = await loadDataSource(max !== undefined ? { ...data, maxRecords: max } : data, { root: opts.root, tokenizer: tok, template, maxLen, lossOn: 'response', skipBadRecords: opts.skipBadRecords ?? false, allowOutsideRoot: opts.allowOutsideRoot ?? false });
    return { spec, kind: 'perplexity', items: set.examples.slice(0, max).map((e) => ({ tokens: e.tokens, labels: e.labels, mask: e.mask })) };
  }
  if (data.kind !== 'jsonl' || (data.format !== 'chat' && data.format !== 'instruction')) {
    throw new ProbeError(`probe ${name}: ${spec.kind} needs chat or instruction records, and data ${data.name} is ${data.kind === 'text' ? 'text' : `${data.format} records`}`);
  }
  const path = resolveInside(opts.root, data.path, opts.allowOutsideRoot ?? false);
  const read = await readJsonl(path, { format: data.format as RecordFormat, skipBadRecords: opts.skipBadRecords ?? false, requireResponse: false, ...(max !== undefined ? { maxRecords: max } : {}) }, data.path);
  const bad = (rec: ChatRecord, problem: string) => new DataError(rec.source.file, rec.source.line, `probe ${name}: ${problem}`);
  const split = (rec: ChatRecord) => {
    const last = rec.messages[rec.messages.length - 1]!;
    return last.role === 'assistant' ? { prompt: rec.messages.slice(0, -1), reference: last.content } : { prompt: rec.messages, reference: undefined };
  };

  if (spec.kind === 'multiple_choice') {
    const items = read.records.map((rec): ChoiceItem => {
      const { prompt, reference } = split(rec);
      const question = [...prompt].reverse().find((m) => m.role === 'user');
      const options = question ? parseOptions(question.content) : [];
      if (options.length < 2) throw bad(rec, 'no options found: the question needs two or more lines `A) ...`, `B) ...`');
      const given = rec.extra.answer;
      const letter = typeof given === 'string' ? given.trim() : reference !== undefined ? /^\s*\(?([A-Z])\b/.exec(reference)?.[1] : undefined;
      if (letter === undefined) throw bad(rec, 'no answer: give `"answer": "<letter>"` or a reference answer that starts with the letter');
      const answer = options.findIndex((o) => o.letter === letter);
      if (answer < 0) throw bad(rec, `the answer ${JSON.stringify(letter)} is none of the options ${options.map((o) => o.letter).join(', ')}`);
      const tokens = options.map((o) => tok.encode(o.line)[0]!);
      if (new Set(tokens).size !== tokens.length) throw bad(rec, 'two options start with the same token, so one forward cannot tell them apart');
      return { prompt: encodePrompt(tok, template, prompt), tokens, letters: options.map((o) => o.letter), answer };
    });
    return { spec, kind: 'multiple_choice', items };
  }

  const items = read.records.map((rec): JsonItem => {
    const { prompt, reference } = split(rec);
    let expected = rec.extra.expected;
    if (expected === undefined && reference !== undefined) {
      try {
        expected = JSON.parse(reference);
      } catch {
        /* reported below */
      }
    }
    if (typeof expected !== 'object' || expected === null || Array.isArray(expected)) {
      throw bad(rec, 'no expected record: give `"expected": {...}` or a reference answer that is a JSON object');
    }
    const text = reference ?? JSON.stringify(expected);
    return { prompt: encodePrompt(tok, template, prompt), draft: [...tok.encode(text), endOfTurnId(tok, template)], expected: expected as Record<string, unknown> };
  });
  return { spec, kind: 'json_format', items, eos: endOfTurnId(tok, template), tokenizer: tok };
}

/** The options `X) text` (or `X. text`) of a question, one per line. */
export function parseOptions(question: string): { letter: string; line: string }[] {
  const out: { letter: string; line: string }[] = [];
  for (const raw of question.split('\n')) {
    const m = /^\s*\(?([A-Z])[).]\s+\S/.exec(raw);
    if (m && !out.some((o) => o.letter === m[1])) out.push({ letter: m[1]!, line: raw.trim() });
  }
  return out;
}

/** Measures a prepared probe on a model. */
export async function runProbe(model: LogitsModel, probe: PreparedProbe): Promise<ProbeResult> {
  const t0 = performance.now();
  const base = { probe: probe.spec.name, kind: probe.kind };
  const done = (r: Omit<ProbeResult, 'probe' | 'kind' | 'secs'>): ProbeResult => ({ ...base, ...r, secs: (performance.now() - t0) / 1000 });
  if (probe.kind === 'multiple_choice') {
    const { correct, forwards } = await scoreChoices(model, probe.items);
    return done({ metric: 'accuracy', value: correct / probe.items.length, examples: probe.items.length, forwards });
  }
  if (probe.kind === 'json_format') {
    const { matched, stats } = await scoreJson(model, probe.items, probe.eos, probe.tokenizer);
    return done({ metric: 'json_match', value: matched / probe.items.length, examples: probe.items.length, forwards: stats.forwards });
  }
  let nll = 0;
  let count = 0;
  let forwards = 0;
  for (let i = 0; i < probe.items.length; i += model.rows) {
    const chunk = probe.items.slice(i, i + model.rows);
    const at = chunk.map((e) => [...e.mask.keys()].filter((t) => e.mask[t] === 1));
    const logits = await model.logits(chunk.map((e) => [...e.tokens]), at);
    forwards++;
    chunk.forEach((e, r) =>
      at[r]!.forEach((t, k) => {
        nll -= logSoftmaxAt(logits[r]![k]!, e.labels[t]!);
        count++;
      }),
    );
  }
  if (!count) throw new ProbeError(`probe ${probe.spec.name}: no response tokens to measure`);
  return done({ metric: 'perplexity', value: Math.exp(nll / count), examples: probe.items.length, tokens: count, forwards });
}

/** Questions whose highest-logit option is the answer, one forward per `model.rows` questions. */
export async function scoreChoices(model: LogitsModel, items: readonly ChoiceItem[]): Promise<{ correct: number; picked: number[]; forwards: number }> {
  const picked: number[] = [];
  let forwards = 0;
  for (let i = 0; i < items.length; i += model.rows) {
    const chunk = items.slice(i, i + model.rows);
    const logits = await model.logits(chunk.map((q) => q.prompt), chunk.map((q) => [q.prompt.length - 1]));
    forwards++;
    chunk.forEach((q, r) => picked.push(argmax(q.tokens.map((t) => logits[r]![0]![t]!))));
  }
  return { correct: picked.filter((p, i) => p === items[i]!.answer).length, picked, forwards };
}

/** Answers that match their expected record, and the generation's cost. */
export async function scoreJson(model: LogitsModel, items: readonly JsonItem[], eos: number, tok: Tokenizer): Promise<{ matched: number; answers: string[]; stats: GenerateStats }> {
  const stats: GenerateStats = { forwards: 0, tokens: 0 };
  const gens = await generateGreedy(
    model,
    items.map((q) => q.prompt),
    { eos, maxNew: items.map((q) => q.draft.length - 1 + JSON_SLACK), drafts: items.map((q) => q.draft), stop: (i, out) => judgeJson(tok.decode(out), items[i]!.expected, false) === 'fail' },
    stats,
  );
  const answers = gens.map((g) => tok.decode(g.tokens));
  const matched = gens.filter((g, i) => g.end !== 'stopped' && judgeJson(answers[i]!, items[i]!.expected, true) === 'match').length;
  return { matched, answers, stats };
}

function logSoftmaxAt(logits: Float32Array, target: number): number {
  let max = -Infinity;
  for (const v of logits) max = Math.max(max, v);
  let sum = 0;
  for (const v of logits) sum += Math.exp(v - max);
  return logits[target]! - max - Math.log(sum);
}

/** One line for messages: `knowledge_retention accuracy 0.4412 (136 examples, 17 forwards, 2.1s)`. */
export function describeProbe(r: ProbeResult): string {
  const value = r.metric === 'perplexity' ? r.value.toFixed(3) : r.value.toFixed(4);
  const what = r.tokens !== undefined ? `${r.examples} records, ${r.tokens} tokens` : `${r.examples} examples`;
  return `${r.probe} ${r.metric} ${value} (${what}, ${r.forwards} forward${r.forwards === 1 ? '' : 's'}, ${r.secs.toFixed(1)}s)`;
}
