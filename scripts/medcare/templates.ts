/**
 * Phrasings for the MedCare demo data. Training files and evaluation files use disjoint sets: every
 * `eval` phrasing below is one the model never sees in corpus.txt, stage1.jsonl or stage2.jsonl (a test
 * checks that no long literal piece of an eval phrasing occurs in a training file).
 *
 * Placeholders: `{attr}` is a fact attribute (see `attributes` in facts.ts), `{Attr}` the same with its
 * first letter upper-cased. JSON request frames also take `<subject>`, `<Subject>`, `<keys>` ("a, b, c")
 * and `<keysAnd>` ("a, b and c").
 */

import type { Category } from './facts.js';

/** One kind of multiple-choice question over one attribute of one category. */
export interface McqSpec {
  readonly category: Category;
  /** Short name used in example ids, e.g. "class" or "class_rev". */
  readonly qkind: string;
  /** The attribute the question is about. */
  readonly ask: string;
  /**
   * false: the question names the row and the options are values of `ask`;
   * true: the question states a value of `ask` and the options are row names.
   */
  readonly reverse: boolean;
  readonly train: readonly [string, string];
  readonly eval: string;
}

export const MCQ_SPECS: readonly McqSpec[] = [
  {
    category: 'drug', qkind: 'class', ask: 'drugClass', reverse: false,
    train: ['Which drug class does {drug} belong to?', '{Drug} is a member of which drug class?'],
    eval: 'To which group of medications is {drug} assigned?',
  },
  {
    category: 'drug', qkind: 'class_rev', ask: 'drugClass', reverse: true,
    train: ['Which of these drugs is classified as: {drugClass}?', 'Pick the drug in the class {drugClass}.'],
    eval: 'Name the medication below that falls under the heading {drugClass}.',
  },
  {
    category: 'drug', qkind: 'indication', ask: 'indication', reverse: false,
    train: ['What is a main indication for {drug}?', '{Drug} is mainly used to treat what?'],
    eval: 'For which condition is {drug} most often prescribed?',
  },
  {
    category: 'drug', qkind: 'ae', ask: 'adverseEffect', reverse: false,
    train: ['Which adverse effect is classically linked to {drug}?', 'A key adverse effect of {drug} is which of these?'],
    eval: 'Patients on {drug} should be monitored for which typical side effect?',
  },
  {
    category: 'drug', qkind: 'ae_rev', ask: 'adverseEffect', reverse: true,
    train: ['Which drug has {adverseEffect} as a classic adverse effect?', 'Which drug is known for causing {adverseEffect}?'],
    eval: 'Which of the following medicines characteristically produces {adverseEffect}?',
  },
  {
    category: 'condition', qkind: 'tx', ask: 'treatment', reverse: false,
    train: ['What is the first-line treatment for {condition}?', 'First-line therapy for {condition} is which of these?'],
    eval: 'Which option is the preferred initial management of {condition}?',
  },
  {
    category: 'condition', qkind: 'tx_rev', ask: 'treatment', reverse: true,
    train: ['Which condition has {treatment} as its first-line treatment?', 'Which condition is treated first-line with {treatment}?'],
    eval: 'For which of these disorders would {treatment} be the initial therapy of choice?',
  },
  {
    category: 'lab', qkind: 'range', ask: 'range', reverse: false,
    train: ['What is the normal adult range of {test}?', 'Adult reference range for {test}?'],
    eval: 'Which interval is the usual reference interval for {test} in a healthy adult?',
  },
  {
    category: 'lab', qkind: 'range_rev', ask: 'range', reverse: true,
    train: ['Which test has a normal adult range of {range}?', 'An adult reference range of {range} belongs to which test?'],
    eval: 'The values {range} are normal in healthy grown-ups for which measurement?',
  },
  {
    category: 'vitamin', qkind: 'def', ask: 'deficiency', reverse: false,
    train: ['Deficiency of {nutrient} causes which condition?', 'Which disorder results from {nutrient} deficiency?'],
    eval: 'Lack of {nutrient} in the diet leads to which disease?',
  },
  {
    category: 'vitamin', qkind: 'def_rev', ask: 'deficiency', reverse: true,
    train: ['{Deficiency} is caused by deficiency of which nutrient?', 'Which nutrient deficiency causes {deficiency}?'],
    eval: 'A shortage of which nutrient produces {deficiency}?',
  },
  {
    category: 'antidote', qkind: 'antidote', ask: 'antidote', reverse: false,
    train: ['What is the antidote for {poison} poisoning?', 'Which antidote treats {poison} toxicity?'],
    eval: 'In a patient with {poison} toxicity, which agent is the specific antidote?',
  },
  {
    category: 'antidote', qkind: 'antidote_rev', ask: 'antidote', reverse: true,
    train: ['{Antidote} is the antidote for which poisoning?', 'Which poisoning is reversed by {antidote}?'],
    eval: 'Which of these exposures is treated with {antidote} as its antidote?',
  },
];

/** A structured-output task that recalls one row of a category as a JSON object. */
export interface JsonRecallSpec {
  readonly category: Category;
  readonly task: string;
  /** What the request is about, a fact template. */
  readonly subject: string;
  /** Output keys, in order, and the fact attribute each one takes its value from. */
  readonly fields: readonly (readonly [key: string, attr: string])[];
}

export const JSON_RECALL: readonly JsonRecallSpec[] = [
  {
    category: 'drug', task: 'json_drug', subject: '{drug}',
    fields: [['drug', 'drug'], ['class', 'drugClass'], ['indication', 'indication']],
  },
  {
    category: 'condition', task: 'json_condition', subject: 'the first-line treatment of {condition}',
    fields: [['condition', 'condition'], ['first_line', 'treatment']],
  },
  {
    category: 'lab', task: 'json_lab', subject: 'the adult range of {test}',
    fields: [['test', 'test'], ['low', 'low'], ['high', 'high'], ['unit', 'unit']],
  },
  {
    category: 'vitamin', task: 'json_vitamin', subject: 'the disease caused by {nutrient} deficiency',
    fields: [['nutrient', 'nutrient'], ['deficiency', 'deficiency']],
  },
  {
    category: 'antidote', task: 'json_antidote', subject: 'the antidote to {poison} poisoning',
    fields: [['poison', 'poison'], ['antidote', 'antidote']],
  },
];

/** Keys whose JSON value is a number, not a string. */
export const NUMERIC_KEYS: ReadonlySet<string> = new Set(['low', 'high', 'value']);

/** Request frames for JSON_RECALL, per split. */
export const JSON_FRAMES = {
  stage1: ['Give JSON with keys <keys> for <subject>.', '<Subject>: reply as JSON {<keys>}.'],
  stage2: ['Describe <subject> as a JSON object with fields <keys>.', 'Fill in JSON (<keys>) for <subject>.'],
  eval: ['Return only a JSON record of <subject> with <keysAnd>.'],
} as const;

/** Free-text drug notes to turn into {drug, class, indication, adverse_effect}; the facts are in the prompt. */
export const EXTRACT_TEMPLATES = {
  stage1: [
    'JSON (drug, class, indication, adverse_effect) from: {Drug} ({drugClass}) treats {indication}; may cause {adverseEffect}.',
    'Note: {drug}, {drugClass}, for {indication}, risk {adverseEffect}. As JSON: drug, class, indication, adverse_effect.',
  ],
  stage2: [
    'Chart: {drug} [{drugClass}] for {indication}; monitor {adverseEffect}. Output JSON: drug, class, indication, adverse_effect.',
    "'{drug} | {drugClass} | {indication} | {adverseEffect}' to JSON (drug, class, indication, adverse_effect).",
  ],
  eval: [
    'Memo - {drug}; group {drugClass}; used in {indication}; may lead to {adverseEffect}. Give a JSON record keyed drug/class/indication/adverse_effect.',
  ],
} as const;

export const EXTRACT_FIELDS: readonly (readonly [key: string, attr: string])[] = [
  ['drug', 'drug'], ['class', 'drugClass'], ['indication', 'indication'], ['adverse_effect', 'adverseEffect'],
];

/** A lab result to classify against the adult range: {test}, {result} ("128 mmol/L"). */
export const FLAG_TEMPLATES = {
  stage1: [
    'Lab result: {test} {result}. Give JSON with keys test, value, unit, flag (low, normal or high).',
    '{Test} = {result}. Reply as JSON (test, value, unit, flag) where flag is low, normal or high.',
  ],
  stage2: [
    'Classify this adult lab value as JSON (test, value, unit, flag: low|normal|high): {test} {result}.',
    "Report line '{test}: {result}'. Fill in JSON fields test, value, unit, flag (low/normal/high).",
  ],
  eval: [
    'Return only a JSON record with test, value, unit and flag (low, normal or high) for the adult result {test} {result}.',
  ],
} as const;

/**
 * Stage 3 (safety alignment) requests; used in stage3.jsonl only, and no long literal piece of them occurs
 * in any other file (a test checks). The answer is recalled from the table, never stated in the prompt.
 */
export const STAGE3_TEMPLATES = {
  /** About a drug ({drug}); the answer is {drug, adverse_effect, advice}. */
  safety: [
    'Safety card for {drug}: strict JSON with drug, adverse_effect, advice.',
    'I was prescribed {drug}. What should I watch out for? Answer in JSON: drug, adverse_effect, advice.',
    'Medication safety check on {drug}. Output JSON keys drug, adverse_effect, advice.',
    'Warning label as JSON (drug, adverse_effect, advice) for someone starting {drug}.',
  ],
  /** A poisoning scenario ({poison}); the answer is {poison, antidote, urgency}. */
  poisoning: [
    'Suspected {poison} poisoning in the emergency department. JSON fields: poison, antidote, urgency.',
    'Triage note: signs of {poison} toxicity. Give strict JSON with poison, antidote, urgency.',
    'Toxicology alert ({poison}). Return JSON keys poison, antidote, urgency.',
    'Paramedics bring in a patient after {poison} exposure. Reply as JSON: poison, antidote, urgency.',
  ],
} as const;

/** The fixed `advice` sentences of json_safety; EMERGENCY_ADVERSE_EFFECTS (facts.ts) picks which. */
export const SAFETY_ADVICE = {
  emergency: 'get emergency care at once if this occurs',
  routine: 'seek medical advice if this occurs',
} as const;

/** The fixed `urgency` of json_antidote_urgent: every poisoning is an emergency. */
export const POISONING_URGENCY = 'emergency';

/** Declarative sentences for corpus.txt, per category. */
export const CORPUS_TEMPLATES: Readonly<Record<Category, readonly string[]>> = {
  drug: [
    '{Drug} belongs to the drug class {drugClass}.',
    'The drug class of {drug} is {drugClass}.',
    '{Drug} is used to treat {indication}.',
    'A main indication for {drug} is {indication}.',
    'A classic adverse effect of {drug} is {adverseEffect}.',
    '{Drug} is known to cause {adverseEffect}.',
    '{Drug} ({drugClass}) is used for {indication} and can cause {adverseEffect}.',
    'Drug: {drug}. Class: {drugClass}. Indication: {indication}. Adverse effect: {adverseEffect}.',
  ],
  condition: [
    'The first-line treatment for {condition} is {treatment}.',
    '{Condition} is treated first-line with {treatment}.',
    'The first-line therapy of {condition} is {treatment}.',
    'For {condition}, first-line therapy is {treatment}.',
    'Condition: {condition}. First-line treatment: {treatment}.',
  ],
  lab: [
    'The normal adult range of {test} is {range}.',
    'In adults, {test} is normally {range}.',
    '{Test}: normal adult range {range}.',
    'In adults, {test} below {lowUnit} is low and above {highUnit} is high.',
    'Test: {test}. Adult range: {range}.',
  ],
  vitamin: [
    'Deficiency of {nutrient} causes {deficiency}.',
    '{Deficiency} is caused by {nutrient} deficiency.',
    'Too little {nutrient} results in {deficiency}.',
    '{Nutrient} deficiency results in {deficiency}.',
    'Nutrient: {nutrient}. Deficiency disease: {deficiency}.',
  ],
  antidote: [
    'The antidote for {poison} poisoning is {antidote}.',
    '{Antidote} is the antidote for {poison} poisoning.',
    '{Poison} toxicity is treated with {antidote}.',
    '{Antidote} reverses {poison} poisoning.',
    'Poison: {poison}. Antidote: {antidote}.',
  ],
};
