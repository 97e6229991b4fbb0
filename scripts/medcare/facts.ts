/**
 * Hand-written table of textbook-level medical facts for the MedCare demo data set.
 *
 * EDUCATIONAL DEMO DATA, NOT MEDICAL ADVICE. These rows exist to give a tiny byte-level model something
 * real and checkable to learn; they are simplified to one line each (one class, one main indication, one
 * classic adverse effect, one first-line treatment) and must never be used to make clinical decisions.
 * Reference ranges differ between laboratories and guidelines change; the values below are the ones
 * commonly taught in medical textbooks.
 *
 * `exclude` lists values of the same field, taken from other rows, that are arguably ALSO true for this
 * row (a second indication, another known adverse effect, an accepted alternative). The generator never
 * offers them as wrong options in a multiple-choice question about this row, and never asks a reverse
 * question whose wrong options would include this row. They are not stated as facts anywhere.
 */

export type Category = 'drug' | 'condition' | 'lab' | 'vitamin' | 'antidote';

/** A drug: its class, one main indication and one classic adverse effect. */
export interface DrugFact {
  readonly id: string;
  readonly category: 'drug';
  readonly drug: string;
  readonly drugClass: string;
  readonly indication: string;
  readonly adverseEffect: string;
  readonly exclude?: {
    readonly drugClass?: readonly string[];
    readonly indication?: readonly string[];
    readonly adverseEffect?: readonly string[];
  };
}

/** A condition and its standard first-line treatment. */
export interface ConditionFact {
  readonly id: string;
  readonly category: 'condition';
  readonly condition: string;
  readonly treatment: string;
  readonly exclude?: { readonly treatment?: readonly string[] };
}

/** An adult reference range; `decimals` is how many decimals the values are written with. */
export interface LabFact {
  readonly id: string;
  readonly category: 'lab';
  readonly test: string;
  readonly low: number;
  readonly high: number;
  /** Empty for unitless quantities (pH). */
  readonly unit: string;
  readonly decimals: number;
}

/** A nutrient and the classic disease its deficiency causes. */
export interface VitaminFact {
  readonly id: string;
  readonly category: 'vitamin';
  readonly nutrient: string;
  readonly deficiency: string;
  readonly exclude?: { readonly deficiency?: readonly string[] };
}

/** A poison (or overdosed drug) and its specific antidote. */
export interface AntidoteFact {
  readonly id: string;
  readonly category: 'antidote';
  readonly poison: string;
  readonly antidote: string;
  readonly exclude?: { readonly antidote?: readonly string[] };
}

export type Fact = DrugFact | ConditionFact | LabFact | VitaminFact | AntidoteFact;

export const DRUGS: readonly DrugFact[] = [
  { id: 'drug_metformin', category: 'drug', drug: 'metformin', drugClass: 'biguanide', indication: 'type 2 diabetes', adverseEffect: 'lactic acidosis' },
  { id: 'drug_glipizide', category: 'drug', drug: 'glipizide', drugClass: 'sulfonylurea', indication: 'type 2 diabetes', adverseEffect: 'hypoglycemia' },
  {
    id: 'drug_lisinopril', category: 'drug', drug: 'lisinopril', drugClass: 'ACE inhibitor', indication: 'hypertension', adverseEffect: 'dry cough',
    exclude: { indication: ['heart failure', 'prevention of MI and stroke'], adverseEffect: ['nephrotoxicity'] },
  },
  {
    id: 'drug_atorvastatin', category: 'drug', drug: 'atorvastatin', drugClass: 'statin', indication: 'high LDL cholesterol', adverseEffect: 'myopathy',
    exclude: { indication: ['prevention of MI and stroke'], adverseEffect: ['hepatotoxicity'] },
  },
  {
    id: 'drug_amlodipine', category: 'drug', drug: 'amlodipine', drugClass: 'calcium channel blocker', indication: 'hypertension', adverseEffect: 'peripheral edema',
    exclude: { indication: ['angina'], adverseEffect: ['headache', 'tachycardia', 'gingival hyperplasia'] },
  },
  {
    id: 'drug_metoprolol', category: 'drug', drug: 'metoprolol', drugClass: 'beta blocker', indication: 'hypertension', adverseEffect: 'bradycardia',
    exclude: {
      indication: ['angina', 'heart failure', 'atrial fibrillation rate control', 'ventricular arrhythmias', 'prevention of MI and stroke'],
      adverseEffect: ['sexual dysfunction'],
    },
  },
  {
    id: 'drug_furosemide', category: 'drug', drug: 'furosemide', drugClass: 'loop diuretic', indication: 'edema', adverseEffect: 'ototoxicity',
    exclude: { indication: ['heart failure', 'hypertension'], adverseEffect: ['hypomagnesemia', 'nephrotoxicity'] },
  },
  {
    id: 'drug_spironolactone', category: 'drug', drug: 'spironolactone', drugClass: 'potassium-sparing diuretic', indication: 'heart failure', adverseEffect: 'gynecomastia',
    exclude: { indication: ['hypertension', 'edema'], adverseEffect: ['sexual dysfunction'] },
  },
  {
    id: 'drug_warfarin', category: 'drug', drug: 'warfarin', drugClass: 'vitamin K antagonist', indication: 'venous thromboembolism', adverseEffect: 'bleeding',
    exclude: { indication: ['prevention of MI and stroke'] },
  },
  {
    id: 'drug_aspirin', category: 'drug', drug: 'aspirin', drugClass: 'antiplatelet agent', indication: 'prevention of MI and stroke', adverseEffect: 'Reye syndrome',
    exclude: {
      drugClass: ['NSAID', 'non-opioid analgesic'],
      indication: ['pain and inflammation', 'pain and fever', 'venous thromboembolism', 'autoimmune and inflammatory disease'],
      adverseEffect: ['bleeding', 'peptic ulcer', 'ototoxicity', 'nephrotoxicity', 'hepatotoxicity'],
    },
  },
  {
    id: 'drug_ibuprofen', category: 'drug', drug: 'ibuprofen', drugClass: 'NSAID', indication: 'pain and inflammation', adverseEffect: 'peptic ulcer',
    exclude: {
      drugClass: ['non-opioid analgesic'],
      indication: ['pain and fever', 'autoimmune and inflammatory disease'],
      adverseEffect: ['bleeding', 'nephrotoxicity', 'peripheral edema'],
    },
  },
  { id: 'drug_acetaminophen', category: 'drug', drug: 'acetaminophen', drugClass: 'non-opioid analgesic', indication: 'pain and fever', adverseEffect: 'hepatotoxicity' },
  { id: 'drug_morphine', category: 'drug', drug: 'morphine', drugClass: 'opioid agonist', indication: 'severe pain', adverseEffect: 'respiratory depression' },
  {
    id: 'drug_ciprofloxacin', category: 'drug', drug: 'ciprofloxacin', drugClass: 'fluoroquinolone', indication: 'urinary tract infection', adverseEffect: 'tendon rupture',
    exclude: { indication: ['serious gram-negative infections', 'tuberculosis'], adverseEffect: ['QT prolongation', 'photosensitivity', 'hypoglycemia'] },
  },
  { id: 'drug_doxycycline', category: 'drug', drug: 'doxycycline', drugClass: 'tetracycline', indication: 'Lyme disease', adverseEffect: 'photosensitivity' },
  {
    id: 'drug_amoxicillin', category: 'drug', drug: 'amoxicillin', drugClass: 'aminopenicillin', indication: 'acute otitis media', adverseEffect: 'rash with mononucleosis',
    exclude: { indication: ['Lyme disease', 'urinary tract infection'] },
  },
  {
    id: 'drug_gentamicin', category: 'drug', drug: 'gentamicin', drugClass: 'aminoglycoside', indication: 'serious gram-negative infections', adverseEffect: 'nephrotoxicity',
    exclude: { indication: ['urinary tract infection'], adverseEffect: ['ototoxicity'] },
  },
  {
    id: 'drug_rifampin', category: 'drug', drug: 'rifampin', drugClass: 'rifamycin', indication: 'tuberculosis', adverseEffect: 'orange body fluids',
    exclude: { adverseEffect: ['hepatotoxicity'] },
  },
  {
    id: 'drug_sertraline', category: 'drug', drug: 'sertraline', drugClass: 'SSRI', indication: 'major depression', adverseEffect: 'sexual dysfunction',
    exclude: { adverseEffect: ['bleeding', 'QT prolongation', 'tremor', 'headache'] },
  },
  {
    id: 'drug_lithium', category: 'drug', drug: 'lithium', drugClass: 'mood stabilizer', indication: 'bipolar disorder', adverseEffect: 'tremor',
    exclude: { adverseEffect: ['nephrotoxicity'] },
  },
  {
    id: 'drug_haloperidol', category: 'drug', drug: 'haloperidol', drugClass: 'typical antipsychotic', indication: 'schizophrenia', adverseEffect: 'extrapyramidal symptoms',
    exclude: {
      indication: ['bipolar disorder', 'nausea and vomiting'],
      adverseEffect: ['QT prolongation', 'sexual dysfunction', 'gynecomastia', 'dyskinesia'],
    },
  },
  {
    id: 'drug_clozapine', category: 'drug', drug: 'clozapine', drugClass: 'atypical antipsychotic', indication: 'treatment-resistant schizophrenia', adverseEffect: 'agranulocytosis',
    exclude: { indication: ['schizophrenia'], adverseEffect: ['tachycardia', 'QT prolongation'] },
  },
  {
    id: 'drug_omeprazole', category: 'drug', drug: 'omeprazole', drugClass: 'proton pump inhibitor', indication: 'gastroesophageal reflux disease', adverseEffect: 'hypomagnesemia',
    exclude: { adverseEffect: ['osteoporosis', 'headache'] },
  },
  {
    id: 'drug_albuterol', category: 'drug', drug: 'albuterol', drugClass: 'short-acting beta-2 agonist', indication: 'asthma', adverseEffect: 'tachycardia',
    exclude: { adverseEffect: ['tremor'] },
  },
  {
    id: 'drug_prednisone', category: 'drug', drug: 'prednisone', drugClass: 'corticosteroid', indication: 'autoimmune and inflammatory disease', adverseEffect: 'osteoporosis',
    exclude: { indication: ['asthma', 'pain and inflammation'], adverseEffect: ['peptic ulcer', 'myopathy', 'peripheral edema'] },
  },
  {
    id: 'drug_digoxin', category: 'drug', drug: 'digoxin', drugClass: 'cardiac glycoside', indication: 'atrial fibrillation rate control', adverseEffect: 'yellow-green vision',
    exclude: { indication: ['heart failure'], adverseEffect: ['bradycardia', 'gynecomastia'] },
  },
  {
    id: 'drug_amiodarone', category: 'drug', drug: 'amiodarone', drugClass: 'class III antiarrhythmic', indication: 'ventricular arrhythmias', adverseEffect: 'pulmonary fibrosis',
    exclude: {
      indication: ['atrial fibrillation rate control'],
      adverseEffect: ['bradycardia', 'QT prolongation', 'photosensitivity', 'hepatotoxicity', 'tremor'],
    },
  },
  {
    id: 'drug_nitroglycerin', category: 'drug', drug: 'nitroglycerin', drugClass: 'nitrate', indication: 'angina', adverseEffect: 'headache',
    exclude: { adverseEffect: ['tachycardia'] },
  },
  {
    id: 'drug_ondansetron', category: 'drug', drug: 'ondansetron', drugClass: '5-HT3 antagonist', indication: 'nausea and vomiting', adverseEffect: 'QT prolongation',
    exclude: { adverseEffect: ['headache'] },
  },
  {
    id: 'drug_phenytoin', category: 'drug', drug: 'phenytoin', drugClass: 'anticonvulsant', indication: 'seizures', adverseEffect: 'gingival hyperplasia',
    exclude: { adverseEffect: ['osteoporosis'] },
  },
  { id: 'drug_levodopa', category: 'drug', drug: 'levodopa', drugClass: 'dopamine precursor', indication: 'Parkinson disease', adverseEffect: 'dyskinesia' },
  { id: 'drug_tamoxifen', category: 'drug', drug: 'tamoxifen', drugClass: 'selective estrogen receptor modulator', indication: 'breast cancer', adverseEffect: 'endometrial cancer' },
];

export const CONDITIONS: readonly ConditionFact[] = [
  { id: 'cond_anaphylaxis', category: 'condition', condition: 'anaphylaxis', treatment: 'intramuscular epinephrine' },
  { id: 'cond_hypothyroidism', category: 'condition', condition: 'hypothyroidism', treatment: 'levothyroxine' },
  { id: 'cond_type2_diabetes', category: 'condition', condition: 'type 2 diabetes', treatment: 'metformin' },
  {
    id: 'cond_strep_pharyngitis', category: 'condition', condition: 'streptococcal pharyngitis', treatment: 'penicillin',
    exclude: { treatment: ['benzathine penicillin G'] },
  },
  {
    id: 'cond_syphilis', category: 'condition', condition: 'syphilis', treatment: 'benzathine penicillin G',
    exclude: { treatment: ['penicillin', 'doxycycline'] },
  },
  { id: 'cond_lyme', category: 'condition', condition: 'early Lyme disease', treatment: 'doxycycline' },
  { id: 'cond_absence_seizures', category: 'condition', condition: 'absence seizures', treatment: 'ethosuximide' },
  { id: 'cond_trigeminal_neuralgia', category: 'condition', condition: 'trigeminal neuralgia', treatment: 'carbamazepine' },
  { id: 'cond_status_epilepticus', category: 'condition', condition: 'status epilepticus', treatment: 'intravenous lorazepam' },
  {
    id: 'cond_hyperkalemia_ecg', category: 'condition', condition: 'hyperkalemia with ECG changes', treatment: 'intravenous calcium gluconate',
    exclude: { treatment: ['intravenous fluids and insulin'] },
  },
  { id: 'cond_malignant_hyperthermia', category: 'condition', condition: 'malignant hyperthermia', treatment: 'dantrolene' },
  { id: 'cond_dka', category: 'condition', condition: 'diabetic ketoacidosis', treatment: 'intravenous fluids and insulin' },
  { id: 'cond_pcp', category: 'condition', condition: 'Pneumocystis pneumonia', treatment: 'trimethoprim-sulfamethoxazole' },
  {
    id: 'cond_c_difficile', category: 'condition', condition: 'Clostridioides difficile infection', treatment: 'oral vancomycin or fidaxomicin',
    exclude: { treatment: ['metronidazole'] },
  },
  { id: 'cond_iron_deficiency_anemia', category: 'condition', condition: 'iron deficiency anemia', treatment: 'oral iron' },
  { id: 'cond_pernicious_anemia', category: 'condition', condition: 'pernicious anemia', treatment: 'vitamin B12 injections' },
  { id: 'cond_scabies', category: 'condition', condition: 'scabies', treatment: 'topical permethrin' },
  { id: 'cond_myasthenia_gravis', category: 'condition', condition: 'myasthenia gravis', treatment: 'pyridostigmine' },
  { id: 'cond_tuberculosis', category: 'condition', condition: 'active tuberculosis', treatment: 'four-drug RIPE therapy' },
  { id: 'cond_influenza', category: 'condition', condition: 'influenza', treatment: 'oseltamivir' },
  { id: 'cond_bacterial_vaginosis', category: 'condition', condition: 'bacterial vaginosis', treatment: 'metronidazole' },
  { id: 'cond_cluster_headache', category: 'condition', condition: 'acute cluster headache', treatment: 'high-flow oxygen' },
  { id: 'cond_glaucoma', category: 'condition', condition: 'open-angle glaucoma', treatment: 'prostaglandin analog eye drops' },
];

export const LABS: readonly LabFact[] = [
  { id: 'lab_sodium', category: 'lab', test: 'serum sodium', low: 135, high: 145, unit: 'mmol/L', decimals: 0 },
  { id: 'lab_potassium', category: 'lab', test: 'serum potassium', low: 3.5, high: 5.0, unit: 'mmol/L', decimals: 1 },
  { id: 'lab_chloride', category: 'lab', test: 'serum chloride', low: 98, high: 106, unit: 'mmol/L', decimals: 0 },
  { id: 'lab_bicarbonate', category: 'lab', test: 'serum bicarbonate', low: 22, high: 28, unit: 'mmol/L', decimals: 0 },
  { id: 'lab_glucose_fasting', category: 'lab', test: 'fasting plasma glucose', low: 70, high: 99, unit: 'mg/dL', decimals: 0 },
  { id: 'lab_calcium', category: 'lab', test: 'total serum calcium', low: 8.5, high: 10.5, unit: 'mg/dL', decimals: 1 },
  { id: 'lab_magnesium', category: 'lab', test: 'serum magnesium', low: 1.7, high: 2.2, unit: 'mg/dL', decimals: 1 },
  { id: 'lab_phosphate', category: 'lab', test: 'serum phosphate', low: 2.5, high: 4.5, unit: 'mg/dL', decimals: 1 },
  { id: 'lab_bun', category: 'lab', test: 'blood urea nitrogen', low: 7, high: 20, unit: 'mg/dL', decimals: 0 },
  { id: 'lab_creatinine', category: 'lab', test: 'serum creatinine', low: 0.6, high: 1.2, unit: 'mg/dL', decimals: 1 },
  { id: 'lab_hemoglobin_men', category: 'lab', test: 'hemoglobin (men)', low: 13.5, high: 17.5, unit: 'g/dL', decimals: 1 },
  { id: 'lab_hemoglobin_women', category: 'lab', test: 'hemoglobin (women)', low: 12.0, high: 15.5, unit: 'g/dL', decimals: 1 },
  { id: 'lab_albumin', category: 'lab', test: 'serum albumin', low: 3.5, high: 5.0, unit: 'g/dL', decimals: 1 },
  { id: 'lab_platelets', category: 'lab', test: 'platelet count', low: 150, high: 450, unit: 'x10^9/L', decimals: 0 },
  { id: 'lab_wbc', category: 'lab', test: 'white blood cell count', low: 4.0, high: 11.0, unit: 'x10^9/L', decimals: 1 },
  { id: 'lab_tsh', category: 'lab', test: 'TSH', low: 0.4, high: 4.0, unit: 'mIU/L', decimals: 1 },
  { id: 'lab_arterial_ph', category: 'lab', test: 'arterial pH', low: 7.35, high: 7.45, unit: '', decimals: 2 },
  { id: 'lab_paco2', category: 'lab', test: 'arterial PaCO2', low: 35, high: 45, unit: 'mmHg', decimals: 0 },
  { id: 'lab_osmolality', category: 'lab', test: 'serum osmolality', low: 275, high: 295, unit: 'mOsm/kg', decimals: 0 },
  { id: 'lab_heart_rate', category: 'lab', test: 'resting heart rate', low: 60, high: 100, unit: 'beats/min', decimals: 0 },
  { id: 'lab_respiratory_rate', category: 'lab', test: 'respiratory rate', low: 12, high: 20, unit: 'breaths/min', decimals: 0 },
];

export const VITAMINS: readonly VitaminFact[] = [
  { id: 'vit_c', category: 'vitamin', nutrient: 'vitamin C', deficiency: 'scurvy', exclude: { deficiency: ['bleeding disorder'] } },
  { id: 'vit_d', category: 'vitamin', nutrient: 'vitamin D', deficiency: 'rickets' },
  { id: 'vit_b1', category: 'vitamin', nutrient: 'thiamine (B1)', deficiency: 'beriberi', exclude: { deficiency: ['peripheral neuropathy'] } },
  { id: 'vit_b3', category: 'vitamin', nutrient: 'niacin (B3)', deficiency: 'pellagra' },
  { id: 'vit_b6', category: 'vitamin', nutrient: 'pyridoxine (B6)', deficiency: 'peripheral neuropathy' },
  {
    id: 'vit_b12', category: 'vitamin', nutrient: 'vitamin B12', deficiency: 'subacute combined degeneration',
    exclude: { deficiency: ['megaloblastic anemia', 'peripheral neuropathy'] },
  },
  { id: 'vit_folate', category: 'vitamin', nutrient: 'folate', deficiency: 'megaloblastic anemia' },
  { id: 'vit_a', category: 'vitamin', nutrient: 'vitamin A', deficiency: 'night blindness' },
  { id: 'vit_k', category: 'vitamin', nutrient: 'vitamin K', deficiency: 'bleeding disorder' },
  { id: 'min_iodine', category: 'vitamin', nutrient: 'iodine', deficiency: 'goiter' },
  { id: 'min_iron', category: 'vitamin', nutrient: 'iron', deficiency: 'microcytic anemia' },
];

export const ANTIDOTES: readonly AntidoteFact[] = [
  { id: 'tox_acetaminophen', category: 'antidote', poison: 'acetaminophen', antidote: 'N-acetylcysteine' },
  { id: 'tox_opioid', category: 'antidote', poison: 'opioid', antidote: 'naloxone' },
  { id: 'tox_benzodiazepine', category: 'antidote', poison: 'benzodiazepine', antidote: 'flumazenil' },
  { id: 'tox_warfarin', category: 'antidote', poison: 'warfarin', antidote: 'vitamin K' },
  { id: 'tox_heparin', category: 'antidote', poison: 'heparin', antidote: 'protamine sulfate' },
  { id: 'tox_organophosphate', category: 'antidote', poison: 'organophosphate', antidote: 'atropine' },
  { id: 'tox_methanol', category: 'antidote', poison: 'methanol', antidote: 'fomepizole', exclude: { antidote: ['sodium bicarbonate'] } },
  {
    id: 'tox_ethylene_glycol', category: 'antidote', poison: 'ethylene glycol', antidote: 'fomepizole',
    exclude: { antidote: ['pyridoxine', 'sodium bicarbonate'] },
  },
  { id: 'tox_cyanide', category: 'antidote', poison: 'cyanide', antidote: 'hydroxocobalamin', exclude: { antidote: ['100% oxygen'] } },
  { id: 'tox_digoxin', category: 'antidote', poison: 'digoxin', antidote: 'digoxin immune Fab', exclude: { antidote: ['atropine'] } },
  { id: 'tox_iron', category: 'antidote', poison: 'iron', antidote: 'deferoxamine' },
  { id: 'tox_carbon_monoxide', category: 'antidote', poison: 'carbon monoxide', antidote: '100% oxygen' },
  { id: 'tox_beta_blocker', category: 'antidote', poison: 'beta blocker', antidote: 'glucagon', exclude: { antidote: ['atropine', 'sodium bicarbonate'] } },
  { id: 'tox_tca', category: 'antidote', poison: 'tricyclic antidepressant', antidote: 'sodium bicarbonate' },
  { id: 'tox_anticholinergic', category: 'antidote', poison: 'anticholinergic', antidote: 'physostigmine' },
  { id: 'tox_isoniazid', category: 'antidote', poison: 'isoniazid', antidote: 'pyridoxine' },
  { id: 'tox_dabigatran', category: 'antidote', poison: 'dabigatran', antidote: 'idarucizumab' },
];

/**
 * Stage 3 (safety alignment) rule: adverse effects from the drug table that call for emergency care when
 * they occur (acutely life-threatening); every other adverse effect gets the routine advice. A demo rule for
 * choosing one of two fixed sentences, not clinical guidance.
 */
export const EMERGENCY_ADVERSE_EFFECTS: ReadonlySet<string> = new Set([
  'lactic acidosis', 'hypoglycemia', 'respiratory depression', 'agranulocytosis', 'bleeding', 'Reye syndrome',
]);

/** Every row, in table order (drugs, conditions, labs, vitamins, antidotes). */
export const FACTS: readonly Fact[] = [...DRUGS, ...CONDITIONS, ...LABS, ...VITAMINS, ...ANTIDOTES];

/** A value as written in text: fixed decimals, so 5.0 stays "5.0". */
export function formatNumber(value: number, decimals: number): string {
  return value.toFixed(decimals);
}

/** "128 mmol/L"; unitless quantities (pH) get no trailing unit. */
export function withUnit(text: string, unit: string): string {
  return unit ? `${text} ${unit}` : text;
}

/** "135-145 mmol/L". */
export function formatRange(lab: LabFact): string {
  return withUnit(`${formatNumber(lab.low, lab.decimals)}-${formatNumber(lab.high, lab.decimals)}`, lab.unit);
}

/**
 * The fact's attributes as strings, under the names the templates use. The first attribute listed in
 * NAME_ATTR is the row's name (what reverse questions ask for).
 */
export function attributes(fact: Fact): Record<string, string> {
  switch (fact.category) {
    case 'drug':
      return { drug: fact.drug, drugClass: fact.drugClass, indication: fact.indication, adverseEffect: fact.adverseEffect };
    case 'condition':
      return { condition: fact.condition, treatment: fact.treatment };
    case 'lab':
      return {
        test: fact.test,
        range: formatRange(fact),
        low: formatNumber(fact.low, fact.decimals),
        high: formatNumber(fact.high, fact.decimals),
        unit: fact.unit,
        lowUnit: withUnit(formatNumber(fact.low, fact.decimals), fact.unit),
        highUnit: withUnit(formatNumber(fact.high, fact.decimals), fact.unit),
      };
    case 'vitamin':
      return { nutrient: fact.nutrient, deficiency: fact.deficiency };
    case 'antidote':
      return { poison: fact.poison, antidote: fact.antidote };
  }
}

/** The attribute that names a row of each category. */
export const NAME_ATTR: Readonly<Record<Category, string>> = {
  drug: 'drug',
  condition: 'condition',
  lab: 'test',
  vitamin: 'nutrient',
  antidote: 'poison',
};

/** Whether `value` is this row's `attr` or listed in its `exclude` (arguably also true). */
export function holds(fact: Fact, attr: string, value: string): boolean {
  if (attributes(fact)[attr] === value) return true;
  const exclude = 'exclude' in fact ? (fact.exclude as Record<string, readonly string[] | undefined> | undefined) : undefined;
  return exclude?.[attr]?.includes(value) ?? false;
}
