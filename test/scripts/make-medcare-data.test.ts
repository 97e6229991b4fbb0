// The MedCare demo data set: deterministic, well-formed, true to the fact table, and with evaluation
// phrasings that never occur in training files. Nothing here writes to data/.

import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { MEDCARE_FILES, generateMedcareData, main } from '../../scripts/make-medcare-data.js';
import {
  ANTIDOTES, DRUGS, EMERGENCY_ADVERSE_EFFECTS, FACTS, NAME_ATTR, holds, type Category, type Fact, type LabFact,
} from '../../scripts/medcare/facts.js';
import {
  CORPUS_TEMPLATES, EXTRACT_TEMPLATES, FLAG_TEMPLATES, JSON_FRAMES, MCQ_SPECS, SAFETY_ADVICE, STAGE3_TEMPLATES,
} from '../../scripts/medcare/templates.js';

const ROOT = resolve(fileURLToPath(new URL('../..', import.meta.url)));
const DATA = join(ROOT, 'data', 'medcare');

const generated = generateMedcareData();
const JSONL = ['stage1.jsonl', 'stage2.jsonl', 'stage3.jsonl', 'eval_knowledge.jsonl', 'eval_alignment.jsonl'] as const;
type JsonlFile = (typeof JSONL)[number];
const PREFIX: Record<JsonlFile, string> = {
  'stage1.jsonl': 's1', 'stage2.jsonl': 's2', 'stage3.jsonl': 's3', 'eval_knowledge.jsonl': 'ek', 'eval_alignment.jsonl': 'ea',
};
const STAGE3_TASKS = ['json_safety', 'json_antidote_urgent'];

interface Line {
  id: string;
  task: string;
  kind: string;
  messages: { role: string; content: string }[];
  answer?: string;
  expected?: Record<string, string | number>;
}

function parse(file: JsonlFile): Line[] {
  return generated[file].trimEnd().split('\n').map((l) => JSON.parse(l) as Line);
}

const lines: Record<JsonlFile, Line[]> = {
  'stage1.jsonl': parse('stage1.jsonl'),
  'stage2.jsonl': parse('stage2.jsonl'),
  'stage3.jsonl': parse('stage3.jsonl'),
  'eval_knowledge.jsonl': parse('eval_knowledge.jsonl'),
  'eval_alignment.jsonl': parse('eval_alignment.jsonl'),
};
const all = JSONL.flatMap((f) => lines[f].map((l) => ({ file: f, line: l })));
const user = (l: Line) => l.messages[0]!.content;
const assistant = (l: Line) => l.messages[1]!.content;

const ID = /^(s1|s2|s3|ek|ea)-([a-z0-9_]+)-((?:drug|cond|lab|vit|min|tox)_[a-z0-9_]+)-([a-z_]+)-(\d{4})$/;
const byId = new Map(FACTS.map((f) => [f.id, f]));

function factOf(l: Line): Fact {
  const m = ID.exec(l.id);
  if (!m) throw new Error(`bad id ${l.id}`);
  const fact = byId.get(m[3]!);
  if (!fact) throw new Error(`${l.id}: no fact ${m[3]}`);
  return fact;
}
const qkindOf = (l: Line) => ID.exec(l.id)![4]!;

function range(f: LabFact): string {
  const r = `${f.low.toFixed(f.decimals)}-${f.high.toFixed(f.decimals)}`;
  return f.unit ? `${r} ${f.unit}` : r;
}

/** Written independently of the generator: what each question kind asks, straight from the table rows. */
function asked(f: Fact, qkind: string): { attr: string; value: string; name: string; reverse: boolean } {
  const reverse = qkind.endsWith('_rev');
  const base = reverse ? qkind.slice(0, -4) : qkind;
  switch (f.category) {
    case 'drug': {
      const attr = { class: 'drugClass', indication: 'indication', ae: 'adverseEffect' }[base]!;
      const value = { class: f.drugClass, indication: f.indication, ae: f.adverseEffect }[base]!;
      return { attr, value, name: f.drug, reverse };
    }
    case 'condition':
      expect(base).toBe('tx');
      return { attr: 'treatment', value: f.treatment, name: f.condition, reverse };
    case 'lab':
      expect(base).toBe('range');
      return { attr: 'range', value: range(f), name: f.test, reverse };
    case 'vitamin':
      expect(base).toBe('def');
      return { attr: 'deficiency', value: f.deficiency, name: f.nutrient, reverse };
    case 'antidote':
      expect(base).toBe('antidote');
      return { attr: 'antidote', value: f.antidote, name: f.poison, reverse };
  }
}

function rowNamed(category: Category, name: string): Fact {
  const row = FACTS.find((f) => f.category === category && (f as unknown as Record<string, string>)[NAME_ATTR[category]] === name);
  if (!row) throw new Error(`no ${category} named ${name}`);
  return row;
}

/** The JSON object each recall / extraction task must produce for its row, from the table. */
function expectedJson(task: string, f: Fact): Record<string, string | number> {
  switch (task) {
    case 'json_drug':
      if (f.category !== 'drug') break;
      return { drug: f.drug, class: f.drugClass, indication: f.indication };
    case 'json_extract':
      if (f.category !== 'drug') break;
      return { drug: f.drug, class: f.drugClass, indication: f.indication, adverse_effect: f.adverseEffect };
    case 'json_condition':
      if (f.category !== 'condition') break;
      return { condition: f.condition, first_line: f.treatment };
    case 'json_lab':
      if (f.category !== 'lab') break;
      return { test: f.test, low: f.low, high: f.high, unit: f.unit };
    case 'json_vitamin':
      if (f.category !== 'vitamin') break;
      return { nutrient: f.nutrient, deficiency: f.deficiency };
    case 'json_antidote':
      if (f.category !== 'antidote') break;
      return { poison: f.poison, antidote: f.antidote };
    case 'json_safety':
      if (f.category !== 'drug') break;
      return {
        drug: f.drug,
        adverse_effect: f.adverseEffect,
        advice: EMERGENCY_ADVERSE_EFFECTS.has(f.adverseEffect) ? SAFETY_ADVICE.emergency : SAFETY_ADVICE.routine,
      };
    case 'json_antidote_urgent':
      if (f.category !== 'antidote') break;
      return { poison: f.poison, antidote: f.antidote, urgency: 'emergency' };
  }
  throw new Error(`task ${task} does not fit fact ${f.id}`);
}

describe('generator', () => {
  it('is deterministic and matches the committed files', () => {
    const again = generateMedcareData();
    expect(Object.keys(again)).toEqual([...MEDCARE_FILES]);
    for (const name of MEDCARE_FILES) {
      expect(again[name], name).toBe(generated[name]);
      expect(readFileSync(join(DATA, name), 'utf8'), `data/medcare/${name} is stale: run npx tsx scripts/make-medcare-data.ts`).toBe(generated[name]);
    }
  });

  it('keeps the data small and the sizes near the documented ones', () => {
    const total = MEDCARE_FILES.reduce((n, f) => n + Buffer.byteLength(generated[f]), 0);
    expect(total).toBeLessThan(1_500_000);
    expect(lines['stage1.jsonl'].length).toBe(800);
    expect(lines['stage2.jsonl'].length).toBe(300);
    expect(lines['stage3.jsonl'].length).toBeGreaterThanOrEqual(180);
    expect(lines['stage3.jsonl'].length).toBeLessThanOrEqual(220);
    for (const f of ['eval_knowledge.jsonl', 'eval_alignment.jsonl'] as const) {
      expect(lines[f].length).toBeGreaterThanOrEqual(100);
      expect(lines[f].length).toBeLessThanOrEqual(150);
    }
    const kinds = new Set(lines['stage1.jsonl'].map((l) => l.kind));
    expect(kinds).toEqual(new Set(['knowledge', 'alignment']));
    const readme = generated['README.md'];
    expect(readme).toContain('not medical advice');
    expect(readme).toContain('npx tsx scripts/make-medcare-data.ts');
  });

  it('writes only ASCII text, one line per record, with a final newline', () => {
    for (const name of MEDCARE_FILES) {
      const text = generated[name];
      expect(/^[\x20-\x7e\n]*$/.test(text), `${name} has non-ASCII or control characters`).toBe(true);
      expect(text.endsWith('\n')).toBe(true);
      expect(text.includes('\n\n') && name !== 'README.md').toBe(false);
    }
  });
});

describe('CLI', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'medcare-'));
    vi.spyOn(process.stdout, 'write').mockImplementation(() => true);
    vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
  });
  afterEach(() => {
    vi.restoreAllMocks();
    rmSync(dir, { recursive: true, force: true });
  });

  it('writes to --out and --check accepts exactly what it wrote', () => {
    expect(main(['--out', dir])).toBe(0);
    for (const name of MEDCARE_FILES) expect(readFileSync(join(dir, name), 'utf8')).toBe(generated[name]);
    expect(main(['--check', `--out=${dir}`])).toBe(0);
    writeFileSync(join(dir, 'stage2.jsonl'), generated['stage2.jsonl'] + '{}\n');
    expect(main(['--check', '--out', dir])).toBe(1);
    rmSync(join(dir, 'stage2.jsonl'));
    expect(main(['--check', '--out', dir])).toBe(1);
  });

  it('rejects unknown arguments', () => {
    expect(main(['--bogus'])).toBe(2);
    expect(main(['--out'])).toBe(2);
  });

  it('--check passes on the committed data', () => {
    expect(main(['--check'])).toBe(0);
  });
});

describe('line shape', () => {
  it('every line has the documented keys in order', () => {
    for (const { file, line } of all) {
      const extra = file === 'eval_knowledge.jsonl' ? ['answer'] : file === 'eval_alignment.jsonl' ? ['expected'] : [];
      expect(Object.keys(line), line.id).toEqual(['id', 'task', 'kind', 'messages', ...extra]);
      expect(line.messages.map((m) => Object.keys(m)), line.id).toEqual([['role', 'content'], ['role', 'content']]);
      expect(line.messages.map((m) => m.role)).toEqual(['user', 'assistant']);
      for (const m of line.messages) expect(typeof m.content === 'string' && m.content.length > 0).toBe(true);
      expect(line.kind, line.id).toBe(line.task === 'mcq' ? 'knowledge' : 'alignment');
      expect([
        'mcq', 'json_drug', 'json_condition', 'json_lab', 'json_vitamin', 'json_antidote', 'json_extract', 'json_lab_flag',
        ...STAGE3_TASKS,
      ]).toContain(line.task);
      // The stage-3 tasks live in stage3.jsonl only, and stage3.jsonl holds nothing else.
      expect(STAGE3_TASKS.includes(line.task), line.id).toBe(file === 'stage3.jsonl');
    }
  });

  it('ids are well formed, name the file, task and a real fact, are numbered in order and never repeat', () => {
    const seen = new Set<string>();
    for (const file of JSONL) {
      lines[file].forEach((line, i) => {
        const m = ID.exec(line.id);
        expect(m, line.id).not.toBeNull();
        expect(m![1]).toBe(PREFIX[file]);
        expect(m![2]).toBe(line.task);
        expect(byId.has(m![3]!), line.id).toBe(true);
        expect(Number(m![5])).toBe(i + 1);
        expect(seen.has(line.id), `duplicate id ${line.id}`).toBe(false);
        seen.add(line.id);
      });
    }
  });

  it('stages 2 and 3 and the alignment eval hold alignment tasks only; the knowledge eval MCQs only', () => {
    expect(lines['stage2.jsonl'].every((l) => l.kind === 'alignment')).toBe(true);
    expect(lines['stage3.jsonl'].every((l) => l.kind === 'alignment')).toBe(true);
    expect(lines['eval_alignment.jsonl'].every((l) => l.kind === 'alignment')).toBe(true);
    expect(lines['eval_knowledge.jsonl'].every((l) => l.task === 'mcq')).toBe(true);
  });

  it('no prompt repeats within a file or occurs in two files', () => {
    for (const file of JSONL) {
      const prompts = lines[file].map(user);
      expect(new Set(prompts).size, file).toBe(prompts.length);
    }
    const fileOf = new Map<string, string>();
    for (const { file, line } of all) {
      const other = fileOf.get(user(line));
      expect(other === undefined || other === file, `${line.id}: prompt also in ${other}`).toBe(true);
      fileOf.set(user(line), file);
    }
  });

  it('every fact appears in stage 1 and in both evaluation files', () => {
    for (const file of ['stage1.jsonl', 'eval_knowledge.jsonl', 'eval_alignment.jsonl'] as const) {
      const covered = new Set(lines[file].map((l) => factOf(l).id));
      for (const f of FACTS) expect(covered.has(f.id), `${f.id} missing from ${file}`).toBe(true);
    }
  });
});

describe('multiple-choice questions', () => {
  const mcqs = all.filter(({ line }) => line.task === 'mcq');

  it('exist in stage 1 and the knowledge eval only', () => {
    expect(new Set(mcqs.map((m) => m.file))).toEqual(new Set(['stage1.jsonl', 'eval_knowledge.jsonl']));
    expect(mcqs.length).toBe(500 + lines['eval_knowledge.jsonl'].length);
  });

  it('have four distinct options A-D and an answer that is one of them and true to the fact table', () => {
    for (const { file, line } of mcqs) {
      const [question, ...optionLines] = user(line).split('\n');
      expect(optionLines.length, line.id).toBe(4);
      const options = optionLines.map((o, i) => {
        expect(o.startsWith(`${'ABCD'[i]}) `), line.id).toBe(true);
        return o.slice(3);
      });
      expect(new Set(options).size, line.id).toBe(4);

      const m = /^([ABCD])\) (.+)$/.exec(assistant(line));
      expect(m, line.id).not.toBeNull();
      const letter = m![1]!;
      expect(options['ABCD'.indexOf(letter)], line.id).toBe(m![2]);
      if (file === 'eval_knowledge.jsonl') expect(line.answer, line.id).toBe(letter);

      const fact = factOf(line);
      const q = asked(fact, qkindOf(line));
      expect(m![2], line.id).toBe(q.reverse ? q.name : q.value);
      // The question names the row (or states the value, for reverse questions).
      expect(question!.toLowerCase(), line.id).toContain((q.reverse ? q.value : q.name).toLowerCase());
      // Every other option is wrong according to the table, exclusions included.
      for (const wrong of options.filter((o) => o !== m![2])) {
        if (q.reverse) expect(holds(rowNamed(fact.category, wrong), q.attr, q.value), `${line.id}: ${wrong}`).toBe(false);
        else expect(holds(fact, q.attr, wrong), `${line.id}: ${wrong}`).toBe(false);
      }
    }
  });

  it('put the correct answer in every position', () => {
    const counts = new Map<string, number>();
    for (const { line } of mcqs) counts.set(assistant(line)[0]!, (counts.get(assistant(line)[0]!) ?? 0) + 1);
    for (const l of 'ABCD') expect(counts.get(l) ?? 0).toBeGreaterThan(mcqs.length / 8);
  });
});

describe('structured (JSON) answers', () => {
  const jsonLines = all.filter(({ line }) => line.task !== 'mcq');

  it('parse as compact JSON objects that match the fact table', () => {
    for (const { file, line } of jsonLines) {
      const parsed = JSON.parse(assistant(line)) as Record<string, string | number>;
      expect(JSON.stringify(parsed), line.id).toBe(assistant(line));
      const fact = factOf(line);
      if (line.task === 'json_lab_flag') {
        if (fact.category !== 'lab') throw new Error(`${line.id}: not a lab`);
        expect(Object.keys(parsed)).toEqual(['test', 'value', 'unit', 'flag']);
        expect(parsed.test).toBe(fact.test);
        expect(parsed.unit).toBe(fact.unit);
        const value = parsed.value as number;
        expect(typeof value).toBe('number');
        const written = value.toFixed(fact.decimals) + (fact.unit ? ` ${fact.unit}` : '');
        expect(user(line), line.id).toContain(written);
        const flag = value < fact.low ? 'low' : value > fact.high ? 'high' : 'normal';
        expect(parsed.flag, line.id).toBe(flag);
      } else {
        expect(parsed, line.id).toStrictEqual(expectedJson(line.task, fact));
      }
      if (line.task === 'json_extract') {
        for (const v of Object.values(parsed)) expect(user(line).toLowerCase(), line.id).toContain(String(v).toLowerCase());
      }
      if (file === 'eval_alignment.jsonl') expect(line.expected, line.id).toStrictEqual(parsed);
    }
  });

  it('lab flags cover low, normal and high in training and evaluation', () => {
    for (const file of ['stage1.jsonl', 'stage2.jsonl', 'eval_alignment.jsonl'] as const) {
      const flags = new Set(lines[file].filter((l) => l.task === 'json_lab_flag').map((l) => (JSON.parse(assistant(l)) as { flag: string }).flag));
      expect(flags, file).toEqual(new Set(['low', 'normal', 'high']));
    }
  });
});

describe('held-out evaluation phrasings', () => {
  const trainingPrompts = [...lines['stage1.jsonl'], ...lines['stage2.jsonl'], ...lines['stage3.jsonl']].map(user);
  const trainingText = [...trainingPrompts, generated['corpus.txt']].join('\n');

  it('no evaluation prompt or question line occurs in a training file', () => {
    for (const file of ['eval_knowledge.jsonl', 'eval_alignment.jsonl'] as const) {
      for (const l of lines[file]) {
        const question = user(l).split('\n')[0]!;
        expect(trainingText.includes(question), `${l.id}: "${question}" occurs in training data`).toBe(false);
      }
    }
  });

  it('no long literal piece of an evaluation template occurs in a training file', () => {
    const evalTemplates = [
      ...MCQ_SPECS.map((s) => s.eval), ...JSON_FRAMES.eval, ...EXTRACT_TEMPLATES.eval, ...FLAG_TEMPLATES.eval,
    ];
    for (const t of evalTemplates) {
      const pieces = t.split(/\{[A-Za-z]\w*\}|<\w+>/).filter((p) => p.trim().length >= 12);
      expect(pieces.length, t).toBeGreaterThan(0);
      for (const p of pieces) expect(trainingText.includes(p), `"${p}" of "${t}" occurs in training data`).toBe(false);
    }
    // And the training phrasings are not reused as evaluation phrasings.
    const train = new Set<string>([
      ...MCQ_SPECS.flatMap((s) => s.train), ...JSON_FRAMES.stage1, ...JSON_FRAMES.stage2,
      ...EXTRACT_TEMPLATES.stage1, ...EXTRACT_TEMPLATES.stage2, ...FLAG_TEMPLATES.stage1, ...FLAG_TEMPLATES.stage2,
      ...STAGE3_TEMPLATES.safety, ...STAGE3_TEMPLATES.poisoning,
    ]);
    for (const t of evalTemplates) expect(train.has(t), t).toBe(false);
  });

  it('stage 1 and stage 2 use different request phrasings', () => {
    const s1 = [...JSON_FRAMES.stage1, ...EXTRACT_TEMPLATES.stage1, ...FLAG_TEMPLATES.stage1];
    const s2 = [...JSON_FRAMES.stage2, ...EXTRACT_TEMPLATES.stage2, ...FLAG_TEMPLATES.stage2];
    for (const t of s1) expect(s2).not.toContain(t);
  });
});

describe('stage 3 (specialty/safety alignment)', () => {
  const s3 = lines['stage3.jsonl'];
  const s3Templates = [...STAGE3_TEMPLATES.safety, ...STAGE3_TEMPLATES.poisoning];
  const pieces = (t: string) => t.split(/\{[A-Za-z]\w*\}|<\w+>/).filter((p) => p.trim().length >= 12);
  const otherText = [
    ...JSONL.filter((f) => f !== 'stage3.jsonl').map((f) => generated[f]),
    generated['corpus.txt'],
  ].join('\n');

  it('asks about every drug and every poison once in each stage-3 phrasing, and nothing else', () => {
    expect(s3.length).toBe(DRUGS.length * STAGE3_TEMPLATES.safety.length + ANTIDOTES.length * STAGE3_TEMPLATES.poisoning.length);
    const seen = new Map<string, number>();
    for (const l of s3) {
      const f = factOf(l);
      expect(f.category, l.id).toBe(l.task === 'json_safety' ? 'drug' : 'antidote');
      expect(qkindOf(l), l.id).toBe(l.task === 'json_safety' ? 'safety' : 'poisoning');
      seen.set(f.id, (seen.get(f.id) ?? 0) + 1);
    }
    for (const d of DRUGS) expect(seen.get(d.id), d.id).toBe(STAGE3_TEMPLATES.safety.length);
    for (const t of ANTIDOTES) expect(seen.get(t.id), t.id).toBe(STAGE3_TEMPLATES.poisoning.length);
  });

  it('answers in the strict key order with facts from the table, never given away by the prompt', () => {
    for (const l of s3) {
      const f = factOf(l);
      const parsed = JSON.parse(assistant(l)) as Record<string, string>;
      expect(Object.keys(parsed), l.id).toEqual(
        l.task === 'json_safety' ? ['drug', 'adverse_effect', 'advice'] : ['poison', 'antidote', 'urgency'],
      );
      const name = l.task === 'json_safety' ? parsed.drug! : parsed.poison!;
      const recalled = l.task === 'json_safety' ? parsed.adverse_effect! : parsed.antidote!;
      expect(user(l), l.id).toContain(name);
      expect(user(l).toLowerCase(), l.id).not.toContain(recalled.toLowerCase());
      if (f.category === 'drug') expect(parsed.adverse_effect).toBe(f.adverseEffect);
      if (f.category === 'antidote') expect(parsed.antidote).toBe(f.antidote);
      // Exactly one stage-3 phrasing produced this prompt.
      const matching = s3Templates.filter((t) => pieces(t).every((p) => user(l).includes(p)));
      expect(matching.length, l.id).toBe(1);
      const bytes = Buffer.byteLength(user(l)) + Buffer.byteLength(assistant(l));
      expect(bytes, l.id).toBeLessThan(256);
    }
  });

  it('uses both advice sentences, by the documented rule over real adverse effects', () => {
    const drugEffects = new Set(DRUGS.map((d) => d.adverseEffect));
    for (const e of EMERGENCY_ADVERSE_EFFECTS) expect(drugEffects.has(e), `EMERGENCY_ADVERSE_EFFECTS: "${e}"`).toBe(true);
    const advice = new Set(s3.filter((l) => l.task === 'json_safety').map((l) => (JSON.parse(assistant(l)) as { advice: string }).advice));
    expect(advice).toEqual(new Set([SAFETY_ADVICE.emergency, SAFETY_ADVICE.routine]));
    expect(SAFETY_ADVICE.emergency).not.toBe(SAFETY_ADVICE.routine);
    const urgency = new Set(s3.filter((l) => l.task === 'json_antidote_urgent').map((l) => (JSON.parse(assistant(l)) as { urgency: string }).urgency));
    expect(urgency).toEqual(new Set(['emergency']));
  });

  it('has its own phrasings: no long literal piece of a stage-3 phrasing (or answer sentence) occurs in any other file', () => {
    for (const t of s3Templates) {
      expect(pieces(t).length, t).toBeGreaterThan(0);
      for (const p of pieces(t)) expect(otherText.includes(p), `"${p}" of "${t}" occurs in another file`).toBe(false);
    }
    for (const a of Object.values(SAFETY_ADVICE)) expect(otherText.includes(a), a).toBe(false);
    for (const l of s3) expect(otherText.includes(user(l)), l.id).toBe(false);
  });

  it('reuses no phrasing of the other files', () => {
    const s3Text = s3.map(user).join('\n');
    const others = [
      ...MCQ_SPECS.flatMap((s) => [...s.train, s.eval]),
      ...Object.values(JSON_FRAMES).flat(), ...Object.values(EXTRACT_TEMPLATES).flat(), ...Object.values(FLAG_TEMPLATES).flat(),
      ...Object.values(CORPUS_TEMPLATES).flat(),
    ];
    for (const t of others) {
      for (const p of pieces(t)) expect(s3Text.includes(p), `"${p}" of "${t}" occurs in stage3.jsonl`).toBe(false);
    }
  });
});

describe('fact table', () => {
  it('has unique, well-formed ids and about 60-110 rows', () => {
    expect(new Set(FACTS.map((f) => f.id)).size).toBe(FACTS.length);
    for (const f of FACTS) expect(f.id).toMatch(/^(drug|cond|lab|vit|min|tox)_[a-z0-9_]+$/);
    expect(FACTS.length).toBeGreaterThanOrEqual(60);
    expect(FACTS.length).toBeLessThanOrEqual(110);
  });

  it('has unique row names per category and sane lab ranges', () => {
    for (const category of ['drug', 'condition', 'lab', 'vitamin', 'antidote'] as const) {
      const names = FACTS.filter((f) => f.category === category).map((f) => (f as unknown as Record<string, string>)[NAME_ATTR[category]]);
      expect(new Set(names).size, category).toBe(names.length);
    }
    for (const f of FACTS) {
      if (f.category !== 'lab') continue;
      expect(f.low, f.id).toBeLessThan(f.high);
      expect(Number(f.low.toFixed(f.decimals)), f.id).toBe(f.low);
      expect(Number(f.high.toFixed(f.decimals)), f.id).toBe(f.high);
    }
  });

  it('lists in `exclude` only values that other rows of the category really have (no typos)', () => {
    for (const f of FACTS) {
      if (!('exclude' in f) || !f.exclude) continue;
      for (const [attr, values] of Object.entries(f.exclude as Record<string, readonly string[]>)) {
        const others = FACTS.filter((o) => o.category === f.category && o.id !== f.id).map((o) => (o as unknown as Record<string, string>)[attr]);
        for (const v of values) {
          expect(others, `${f.id}.exclude.${attr}: "${v}"`).toContain(v);
          expect((f as unknown as Record<string, string>)[attr], f.id).not.toBe(v);
        }
      }
    }
  });

  it('mentions every fact in the pretraining corpus', () => {
    const corpus = generated['corpus.txt'];
    for (const f of FACTS) {
      const name = (f as unknown as Record<string, string>)[NAME_ATTR[f.category]]!;
      expect(corpus.toLowerCase(), f.id).toContain(name.toLowerCase());
    }
  });
});
