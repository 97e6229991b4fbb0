/**
 * Builds the MedCare demo data set (data/medcare/) in memory from the fact table. Pure and deterministic:
 * the only randomness is a seeded PRNG per output file, so the same source always yields the same bytes.
 * `scripts/make-medcare-data.ts` writes (or checks) the files; tests call `generateMedcareData` directly.
 */

import {
  ANTIDOTES, CONDITIONS, DRUGS, EMERGENCY_ADVERSE_EFFECTS, FACTS, LABS, NAME_ATTR, VITAMINS,
  attributes, formatNumber, holds, withUnit,
  type AntidoteFact, type Category, type DrugFact, type Fact, type LabFact,
} from './facts.js';
import {
  CORPUS_TEMPLATES, EXTRACT_FIELDS, EXTRACT_TEMPLATES, FLAG_TEMPLATES, JSON_FRAMES, JSON_RECALL, MCQ_SPECS,
  NUMERIC_KEYS, POISONING_URGENCY, SAFETY_ADVICE, STAGE3_TEMPLATES, type JsonRecallSpec, type McqSpec,
} from './templates.js';

// ---------------------------------------------------------------------------------------------------------
// Seeded PRNG (mulberry32, seeded by FNV-1a of a name so each file has its own independent stream).

export interface Rng {
  /** Uniform in [0, 1). */
  next(): number;
  /** Uniform integer in [0, n). */
  int(n: number): number;
  pick<T>(items: readonly T[]): T;
  /** Fisher-Yates, in place; returns the array. */
  shuffle<T>(items: T[]): T[];
}

function fnv1a(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h;
}

export function makeRng(seedName: string): Rng {
  let state = fnv1a(seedName);
  const next = (): number => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (n: number): number => Math.floor(next() * n);
  return {
    next,
    int,
    pick: (items) => {
      if (items.length === 0) throw new Error('pick from an empty list');
      return items[int(items.length)]!;
    },
    shuffle: (items) => {
      for (let i = items.length - 1; i > 0; i--) {
        const j = int(i + 1);
        [items[i], items[j]] = [items[j]!, items[i]!];
      }
      return items;
    },
  };
}

// ---------------------------------------------------------------------------------------------------------
// Text helpers.

export function capitalize(text: string): string {
  return text.length === 0 ? text : text[0]!.toUpperCase() + text.slice(1);
}

/** Fills `{attr}` / `{Attr}` placeholders from a fact's attributes; an unknown name is a bug, so it throws. */
export function fill(template: string, attrs: Readonly<Record<string, string>>): string {
  return template.replace(/\{([A-Za-z]\w*)\}/g, (_, key: string) => {
    const lower = key[0]!.toLowerCase() + key.slice(1);
    const value = attrs[lower];
    if (value === undefined) throw new Error(`template ${JSON.stringify(template)}: no attribute "${lower}"`);
    return key === lower ? value : capitalize(value);
  });
}

function fillFrame(frame: string, subject: string, keys: readonly string[]): string {
  const keysAnd = keys.length > 1 ? `${keys.slice(0, -1).join(', ')} and ${keys[keys.length - 1]}` : keys.join('');
  const parts: Record<string, string> = {
    subject, Subject: capitalize(subject), keys: keys.join(', '), keysAnd,
  };
  return frame.replace(/<(\w+)>/g, (_, key: string) => {
    const value = parts[key];
    if (value === undefined) throw new Error(`frame ${JSON.stringify(frame)}: no part "${key}"`);
    return value;
  });
}

// ---------------------------------------------------------------------------------------------------------
// Examples.

export type Kind = 'knowledge' | 'alignment';
export type JsonValue = string | number;

/** One line of a JSONL file, keys in the documented order. */
export interface Example {
  id: string;
  task: string;
  kind: Kind;
  messages: [{ role: 'user'; content: string }, { role: 'assistant'; content: string }];
  answer?: string;
  expected?: Record<string, JsonValue>;
}

/** An example before it gets its id (ids are numbered after the file is shuffled). */
interface Draft {
  task: string;
  kind: Kind;
  factId: string;
  qkind: string;
  user: string;
  assistant: string;
  answer?: string;
  expected?: Record<string, JsonValue>;
}

export const LETTERS = ['A', 'B', 'C', 'D'] as const;

function factsOf(category: Category): readonly Fact[] {
  return FACTS.filter((f) => f.category === category);
}

/**
 * Three wrong options for a question about `fact`: values (or, for reverse questions, row names) taken
 * from other rows of the same category, never one that is arguably also right (see `exclude` in facts.ts).
 * For lab ranges, options with the same unit come first so the unit alone does not give the answer away.
 */
function distractors(rng: Rng, fact: Fact, spec: McqSpec, correct: string): string[] {
  const nameAttr = NAME_ATTR[fact.category];
  const asked = attributes(fact)[spec.ask]!;
  const preferred: string[] = [];
  const rest: string[] = [];
  for (const other of factsOf(fact.category)) {
    if (other.id === fact.id) continue;
    const option = attributes(other)[spec.reverse ? nameAttr : spec.ask]!;
    const wrong = spec.reverse ? !holds(other, spec.ask, asked) : !holds(fact, spec.ask, option);
    if (!wrong || option === correct) continue;
    const sameUnit = fact.category === 'lab' && (other as LabFact).unit === (fact as LabFact).unit;
    (sameUnit ? preferred : rest).push(option);
  }
  const ordered = [...rng.shuffle([...new Set(preferred)]), ...rng.shuffle([...new Set(rest)])];
  const chosen = [...new Set(ordered)].slice(0, 3);
  if (chosen.length < 3) throw new Error(`${fact.id} ${spec.qkind}: only ${chosen.length} distractors`);
  return chosen;
}

function mcq(rng: Rng, fact: Fact, spec: McqSpec, template: string): Draft {
  const attrs = attributes(fact);
  const correct = attrs[spec.reverse ? NAME_ATTR[fact.category] : spec.ask]!;
  const options = distractors(rng, fact, spec, correct);
  const position = rng.int(4);
  options.splice(position, 0, correct);
  const letter = LETTERS[position]!;
  const lines = [fill(template, attrs), ...options.map((o, i) => `${LETTERS[i]}) ${o}`)];
  return {
    task: 'mcq', kind: 'knowledge', factId: fact.id, qkind: spec.qkind,
    user: lines.join('\n'), assistant: `${letter}) ${correct}`, answer: letter,
  };
}

function jsonObject(attrs: Readonly<Record<string, string>>, fields: JsonRecallSpec['fields']): Record<string, JsonValue> {
  const out: Record<string, JsonValue> = {};
  for (const [key, attr] of fields) {
    const value = attrs[attr]!;
    out[key] = NUMERIC_KEYS.has(key) ? Number(value) : value;
  }
  return out;
}

function recall(fact: Fact, spec: JsonRecallSpec, frame: string): Draft {
  const attrs = attributes(fact);
  const expected = jsonObject(attrs, spec.fields);
  return {
    task: spec.task, kind: 'alignment', factId: fact.id, qkind: 'recall',
    user: fillFrame(frame, fill(spec.subject, attrs), spec.fields.map(([k]) => k)),
    assistant: JSON.stringify(expected), expected,
  };
}

function extract(fact: Fact, template: string): Draft {
  const attrs = attributes(fact);
  const expected = jsonObject(attrs, EXTRACT_FIELDS);
  return {
    task: 'json_extract', kind: 'alignment', factId: fact.id, qkind: 'extract',
    user: fill(template, attrs), assistant: JSON.stringify(expected), expected,
  };
}

export const FLAGS = ['low', 'normal', 'high'] as const;
export type Flag = (typeof FLAGS)[number];

/** A value (already rounded to the lab's decimals) that is strictly below, inside or strictly above the range. */
function labValue(rng: Rng, lab: LabFact, flag: Flag): number {
  const width = lab.high - lab.low;
  for (;;) {
    let v: number;
    if (flag === 'low') v = lab.low - Math.min(width, lab.low) * (0.05 + 0.5 * rng.next());
    else if (flag === 'high') v = lab.high + width * (0.05 + 0.5 * rng.next());
    else v = lab.low + width * (0.05 + 0.9 * rng.next());
    v = Number(v.toFixed(lab.decimals));
    if (flag === 'low' && v < lab.low && v > 0) return v;
    if (flag === 'high' && v > lab.high) return v;
    if (flag === 'normal' && v >= lab.low && v <= lab.high) return v;
  }
}

function labFlag(rng: Rng, lab: LabFact, flag: Flag, template: string): Draft {
  const value = labValue(rng, lab, flag);
  const attrs = { ...attributes(lab), result: withUnit(formatNumber(value, lab.decimals), lab.unit) };
  const expected: Record<string, JsonValue> = { test: lab.test, value, unit: lab.unit, flag };
  return {
    task: 'json_lab_flag', kind: 'alignment', factId: lab.id, qkind: 'flag',
    user: fill(template, attrs), assistant: JSON.stringify(expected), expected,
  };
}

/** The fixed advice sentence for a drug's classic adverse effect (the rule: EMERGENCY_ADVERSE_EFFECTS). */
export function safetyAdvice(drug: DrugFact): string {
  return EMERGENCY_ADVERSE_EFFECTS.has(drug.adverseEffect) ? SAFETY_ADVICE.emergency : SAFETY_ADVICE.routine;
}

function safety(drug: DrugFact, template: string): Draft {
  const expected: Record<string, JsonValue> = { drug: drug.drug, adverse_effect: drug.adverseEffect, advice: safetyAdvice(drug) };
  return {
    task: 'json_safety', kind: 'alignment', factId: drug.id, qkind: 'safety',
    user: fill(template, attributes(drug)), assistant: JSON.stringify(expected), expected,
  };
}

function poisoning(tox: AntidoteFact, template: string): Draft {
  const expected: Record<string, JsonValue> = { poison: tox.poison, antidote: tox.antidote, urgency: POISONING_URGENCY };
  return {
    task: 'json_antidote_urgent', kind: 'alignment', factId: tox.id, qkind: 'poisoning',
    user: fill(template, attributes(tox)), assistant: JSON.stringify(expected), expected,
  };
}

// ---------------------------------------------------------------------------------------------------------
// Files.

const STAGE1_MCQ = 500;
const TRAIN_FLAGS = 60;
const EVAL_FLAGS = LABS.length;

function mcqSpecsOf(category: Category): readonly McqSpec[] {
  return MCQ_SPECS.filter((s) => s.category === category);
}

/** Every (fact, question kind) once with a random training phrasing, then extra ones with the other phrasing. */
function trainingMcqs(rng: Rng, count: number): Draft[] {
  const first: Draft[] = [];
  const second: [Fact, McqSpec, string][] = [];
  for (const spec of MCQ_SPECS) {
    for (const fact of factsOf(spec.category)) {
      const t = rng.int(2);
      first.push(mcq(rng, fact, spec, spec.train[t]!));
      second.push([fact, spec, spec.train[1 - t]!]);
    }
  }
  if (count < first.length) throw new Error(`stage 1 needs at least ${first.length} MCQs`);
  const extra = rng.shuffle(second).slice(0, count - first.length).map(([f, s, t]) => mcq(rng, f, s, t));
  return [...first, ...extra];
}

/** Every fact in every recall frame of the split, every drug note once, and `flags` lab results. */
function trainingAlignment(rng: Rng, split: 'stage1' | 'stage2', flags: number): Draft[] {
  const out: Draft[] = [];
  for (const spec of JSON_RECALL) {
    for (const fact of factsOf(spec.category)) {
      for (const frame of JSON_FRAMES[split]) out.push(recall(fact, spec, frame));
    }
  }
  for (const drug of DRUGS) out.push(extract(drug, rng.pick(EXTRACT_TEMPLATES[split])));
  out.push(...flagDrafts(rng, flags, FLAG_TEMPLATES[split]));
  return out;
}

/** `count` lab results: labs in table order; the flag rotates with the lab and again with each pass over the table. */
function flagDrafts(rng: Rng, count: number, templates: readonly string[]): Draft[] {
  const out: Draft[] = [];
  const seen = new Set<string>();
  for (let i = 0; out.length < count; i++) {
    const lab = LABS[i % LABS.length]!;
    const flag = FLAGS[(i + Math.floor(i / LABS.length)) % FLAGS.length]!;
    let draft = labFlag(rng, lab, flag, rng.pick(templates));
    while (seen.has(draft.user)) draft = labFlag(rng, lab, flag, rng.pick(templates));
    seen.add(draft.user);
    out.push(draft);
  }
  return out;
}

/** Stage 3: every drug in every safety phrasing and every poison in every poisoning phrasing. */
function stage3Drafts(): Draft[] {
  const out: Draft[] = [];
  for (const drug of DRUGS) for (const t of STAGE3_TEMPLATES.safety) out.push(safety(drug, t));
  for (const tox of ANTIDOTES) for (const t of STAGE3_TEMPLATES.poisoning) out.push(poisoning(tox, t));
  return out;
}

function evalKnowledge(rng: Rng): Draft[] {
  const out: Draft[] = [];
  for (const category of ['drug', 'condition', 'lab', 'vitamin', 'antidote'] as const) {
    const specs = mcqSpecsOf(category);
    factsOf(category).forEach((fact, i) => {
      // Spread each category's rows over its question kinds; drugs get a second, different kind.
      const kinds = category === 'drug' ? [i % specs.length, (i + 2) % specs.length] : [i % specs.length];
      for (const k of kinds) out.push(mcq(rng, fact, specs[k]!, specs[k]!.eval));
    });
  }
  return out;
}

function evalAlignment(rng: Rng): Draft[] {
  const out: Draft[] = [];
  for (const spec of JSON_RECALL) {
    for (const fact of factsOf(spec.category)) out.push(recall(fact, spec, rng.pick(JSON_FRAMES.eval)));
  }
  DRUGS.forEach((drug, i) => {
    if (i % 2 === 0) out.push(extract(drug, rng.pick(EXTRACT_TEMPLATES.eval)));
  });
  out.push(...flagDrafts(rng, EVAL_FLAGS, FLAG_TEMPLATES.eval));
  return out;
}

/** Gives each draft its id (`<file>-<task>-<fact id>-<question kind>-<nnnn>`) in file order. */
function finish(prefix: string, drafts: readonly Draft[]): Example[] {
  return drafts.map((d, i) => {
    const ex: Example = {
      id: `${prefix}-${d.task}-${d.factId}-${d.qkind}-${String(i + 1).padStart(4, '0')}`,
      task: d.task,
      kind: d.kind,
      messages: [{ role: 'user', content: d.user }, { role: 'assistant', content: d.assistant }],
    };
    if (d.answer !== undefined && prefix === 'ek') ex.answer = d.answer;
    if (d.expected !== undefined && prefix === 'ea') ex.expected = d.expected;
    return ex;
  });
}

function jsonl(examples: readonly Example[]): string {
  return examples.map((e) => JSON.stringify(e)).join('\n') + '\n';
}

function corpus(rng: Rng): string {
  const sentences: string[] = [];
  for (const fact of FACTS) {
    for (const t of CORPUS_TEMPLATES[fact.category]) sentences.push(fill(t, attributes(fact)));
  }
  return rng.shuffle(sentences).join('\n') + '\n';
}

/** The output files, in the order they are written. */
export const MEDCARE_FILES = [
  'corpus.txt', 'stage1.jsonl', 'stage2.jsonl', 'stage3.jsonl', 'eval_knowledge.jsonl', 'eval_alignment.jsonl',
  'README.md',
] as const;
export type MedcareFile = (typeof MEDCARE_FILES)[number];

/** Every output file's exact contents, keyed by file name (relative to the output folder). */
export function generateMedcareData(): Record<MedcareFile, string> {
  const rng1 = makeRng('medcare/stage1');
  const stage1 = finish('s1', rng1.shuffle([...trainingMcqs(rng1, STAGE1_MCQ), ...trainingAlignment(rng1, 'stage1', TRAIN_FLAGS)]));
  const rng2 = makeRng('medcare/stage2');
  const stage2 = finish('s2', rng2.shuffle(trainingAlignment(rng2, 'stage2', TRAIN_FLAGS)));
  const rng3 = makeRng('medcare/stage3');
  const stage3 = finish('s3', rng3.shuffle(stage3Drafts()));
  // Evaluation files are shuffled too, so that a probe reading only the first N lines still sees every category.
  const rngK = makeRng('medcare/eval_knowledge');
  const evalK = finish('ek', rngK.shuffle(evalKnowledge(rngK)));
  const rngA = makeRng('medcare/eval_alignment');
  const evalA = finish('ea', rngA.shuffle(evalAlignment(rngA)));
  const files = {
    'corpus.txt': corpus(makeRng('medcare/corpus')),
    'stage1.jsonl': jsonl(stage1),
    'stage2.jsonl': jsonl(stage2),
    'stage3.jsonl': jsonl(stage3),
    'eval_knowledge.jsonl': jsonl(evalK),
    'eval_alignment.jsonl': jsonl(evalA),
  };
  return { ...files, 'README.md': readme(files, { stage1, stage2, stage3, evalK, evalA }) };
}

// ---------------------------------------------------------------------------------------------------------
// README.

function bytes(text: string): number {
  return Buffer.byteLength(text, 'utf8');
}

function lengthStats(examples: readonly Example[]): string {
  const lens = examples.map((e) => bytes(e.messages[0].content) + bytes(e.messages[1].content)).sort((a, b) => a - b);
  const mean = Math.round(lens.reduce((a, b) => a + b, 0) / lens.length);
  const median = lens[Math.floor(lens.length / 2)]!;
  const over = lens.filter((l) => l > 300).length;
  return `mean ${mean}, median ${median}, max ${lens[lens.length - 1]}, over 300: ${over}`;
}

function countBy(examples: readonly Example[], key: (e: Example) => string): string {
  const counts = new Map<string, number>();
  for (const e of examples) counts.set(key(e), (counts.get(key(e)) ?? 0) + 1);
  return [...counts].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([k, n]) => `${k} ${n}`).join(', ');
}

function readme(
  files: Record<Exclude<MedcareFile, 'README.md'>, string>,
  sets: { stage1: Example[]; stage2: Example[]; stage3: Example[]; evalK: Example[]; evalA: Example[] },
): string {
  const lines = (t: string) => t.split('\n').length - 1;
  const row = (name: keyof typeof files, what: string) => `| \`${name}\` | ${lines(files[name])} | ${bytes(files[name])} | ${what} |`;
  const total = Object.values(files).reduce((a, t) => a + bytes(t), 0);
  const cat = (c: Category) => FACTS.filter((f) => f.category === c).length;
  return `# MedCare demo data

**Educational demo data, not medical advice.** Generated from a small hand-written table of textbook-level
facts (\`scripts/medcare/facts.ts\`: ${FACTS.length} rows: ${DRUGS.length} drugs, ${CONDITIONS.length} conditions,
${LABS.length} adult reference ranges, ${VITAMINS.length} nutrient deficiencies, ${ANTIDOTES.length} antidotes). Each
row is simplified to one class, one main indication, one classic adverse effect or one first-line treatment;
reference ranges differ between laboratories and the ones here are commonly taught values. Never use any of
this for clinical decisions.

It exists to train and evaluate the tiny byte-level (vocabulary of 256 bytes) Qwen2-architecture model of the
\`mcpc\` demo on the CPU with the two-stage MedCare method: stage 1 on mixed knowledge-intensive and
alignment-required tasks, stage 2 on alignment-required tasks only; an optional third, specialty (safety)
alignment stage (\`pipelines/medcare-3stage.mcp\`) trains on \`stage3.jsonl\`.

Do not edit these files by hand. Regenerate them with

    npx tsx scripts/make-medcare-data.ts            # writes data/medcare/ (option --out DIR)
    npx tsx scripts/make-medcare-data.ts --check    # exit 1 if a committed file differs from the generator

The generator is deterministic (seeded mulberry32 PRNG, one stream per file, no clock). This README is
generated too.

## Files

| file | lines | bytes | contents |
|------|------:|------:|----------|
${row('corpus.txt', 'plain declarative sentences stating every fact in several phrasings, one per line (base-model pretraining)')}
${row('stage1.jsonl', `stage 1 (mixed): ${countBy(sets.stage1, (e) => e.kind)}`)}
${row('stage2.jsonl', `stage 2 (alignment only): ${countBy(sets.stage2, (e) => e.kind)}`)}
${row('stage3.jsonl', `stage 3 (specialty/safety alignment): ${countBy(sets.stage3, (e) => e.kind)}`)}
${row('eval_knowledge.jsonl', 'held-out multiple-choice phrasings over the same facts (knowledge retention), with `answer`')}
${row('eval_alignment.jsonl', 'held-out structured-output requests, with `expected`')}

Total ${total} bytes (without this README).

Tasks per file:

- \`stage1.jsonl\`: ${countBy(sets.stage1, (e) => e.task)}
- \`stage2.jsonl\`: ${countBy(sets.stage2, (e) => e.task)}
- \`stage3.jsonl\`: ${countBy(sets.stage3, (e) => e.task)}
- \`eval_knowledge.jsonl\`: ${countBy(sets.evalK, (e) => e.task)}
- \`eval_alignment.jsonl\`: ${countBy(sets.evalA, (e) => e.task)}

Example length in bytes (user content + assistant content, without any chat template):

- \`stage1.jsonl\`: ${lengthStats(sets.stage1)}
- \`stage2.jsonl\`: ${lengthStats(sets.stage2)}
- \`stage3.jsonl\`: ${lengthStats(sets.stage3)}
- \`eval_knowledge.jsonl\`: ${lengthStats(sets.evalK)}
- \`eval_alignment.jsonl\`: ${lengthStats(sets.evalA)}

Everything is ASCII.

## Line format

One JSON object per line, keys in this order:

    {"id": "...", "task": "...", "kind": "knowledge"|"alignment", "messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}

\`eval_knowledge.jsonl\` lines add \`"answer"\` (the correct letter); \`eval_alignment.jsonl\` lines add
\`"expected"\` (the object the assistant should output). The id is
\`<file>-<task>-<fact id>-<question kind>-<nnnn>\` with file \`s1\`, \`s2\`, \`s3\`, \`ek\` or \`ea\`, a fact id from the
table and nnnn the line number; ids are unique across all files.

Tasks:

- \`mcq\` (knowledge): a question and four options \`A) ...\` to \`D) ...\` on separate lines; the answer is the
  letter and the option text, e.g. \`B) biguanide\`. Wrong options come from other rows of the same category and
  are never arguably right (each row's \`exclude\` list). Question kinds: drug class, indication, adverse effect
  (and the reverse questions: which drug has this class / adverse effect), first-line treatment (and reverse),
  adult range (and reverse; lab options with the same unit first), deficiency disease (and reverse), antidote
  (and reverse).
- \`json_drug\` {drug, class, indication}, \`json_condition\` {condition, first_line}, \`json_lab\`
  {test, low, high, unit}, \`json_vitamin\` {nutrient, deficiency}, \`json_antidote\` {poison, antidote}
  (alignment): the fact recalled in a strict JSON object.
- \`json_extract\` (alignment): a free-text drug note; the answer is {drug, class, indication, adverse_effect}
  taken from the note.
- \`json_lab_flag\` (alignment): one lab result; the answer is {test, value, unit, flag} with flag \`low\`,
  \`normal\` or \`high\` against the adult range.
- \`json_safety\` (alignment, stage 3 only): a safety request naming a drug; the answer is
  {drug, adverse_effect, advice} with the drug's classic adverse effect recalled from the table and advice one
  of two fixed sentences chosen by a rule (\`EMERGENCY_ADVERSE_EFFECTS\` in facts.ts):
  \`"${SAFETY_ADVICE.emergency}"\` for the acutely life-threatening effects
  (${[...EMERGENCY_ADVERSE_EFFECTS].join(', ')}),
  \`"${SAFETY_ADVICE.routine}"\` for every other one. Every drug in every stage-3 phrasing.
- \`json_antidote_urgent\` (alignment, stage 3 only): a poisoning scenario naming the poison; the answer is
  {poison, antidote, urgency} with the antidote recalled from the table and urgency always
  \`"${POISONING_URGENCY}"\`. Every poison in every stage-3 phrasing.

Assistant JSON is compact (\`JSON.stringify\`, no spaces), keys in the order listed. \`low\`, \`high\` and
\`value\` are JSON numbers, so a range written \`3.5-5.0\` in text has \`"high":5\` in JSON; arterial pH has
\`"unit":""\`. A probe should parse the output and compare field by field.

Phrasings: stage 1, stage 2, stage 3 and the evaluation files each use their own request phrasings; no
evaluation phrasing occurs in any training file, no prompt occurs in two files, and no long literal piece of a
stage-3 phrasing occurs in any other file (\`test/scripts\` checks all three).
`;
}
