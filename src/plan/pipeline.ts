/**
 * Working with a compiled pipeline through its plan: hyperparameter overrides that need no recompilation,
 * and the contract of a runner (what executes a plan). The module `mcpc compile --emit ts` writes imports
 * both from here; the runtime (and `mcpc run`) can use the same functions, so an override means the same
 * thing wherever it is given.
 *
 * Overridable are the settings that leave the compiled step graph, its shapes and its memory plan as they
 * are: the schedule of optimizer steps (`epochs`, `steps`, `lr`, `schedule`), regularisation (`weightDecay`,
 * `gradClip`), `seed`, `shuffle`, checkpointing and the bad-step limit, and `batch` (the number of
 * micro-batches accumulated per optimizer step; the per-step estimates are rescaled). Settings that change
 * shapes or memory (`microBatch`, `maxLen`, `precision`, `packing`, `loss`, `recompute`, `memory`) and the
 * optimizer kind need a recompilation.
 */
import type { Plan, PlanParam, PlanStage, PlanStageSettings } from './types.js';

/** Hyperparameters of one stage that a caller may override without recompiling. */
export interface StageOverrides {
  /** Passes over the stage data; an integer >= 1. */
  epochs?: PlanStageSettings['epochs'];
  /** Optimizer steps (overrides `epochs`); an integer >= 1. */
  steps?: NonNullable<PlanStageSettings['steps']>;
  /** Peak learning rate; > 0. */
  lr?: PlanStageSettings['lr'];
  /** Learning-rate schedule (replaces the whole schedule). */
  schedule?: PlanStageSettings['schedule'];
  /** Sequences per optimizer step; a multiple of the stage's micro-batch. */
  batch?: PlanStageSettings['batch'];
  /** Decoupled weight decay, 0 to 1. */
  weightDecay?: PlanStageSettings['weightDecay'];
  /** Global gradient-norm clip; 0 disables. */
  gradClip?: PlanStageSettings['gradClip'];
  /** Seed for initialisation, shuffling and dropout; an integer 0 to 2^31 - 1. */
  seed?: PlanStageSettings['seed'];
  /** Write a checkpoint every N steps (0: only at the stage end). */
  checkpointEvery?: PlanStageSettings['checkpointEvery'];
  /** Consecutive NaN/Inf steps that stop the run; an integer >= 1. */
  maxBadSteps?: PlanStageSettings['maxBadSteps'];
  /** Shuffle records each epoch. */
  shuffle?: PlanStageSettings['shuffle'];
}

/** Overrides by stage name. The module `--emit ts` writes narrows the keys to the pipeline's stage names. */
export type PlanOverrides = { readonly [stage: string]: StageOverrides | undefined };

/** Something that executes a plan (the runtime provides one); what it resolves to is up to the runner. */
export type PlanRunner<R = unknown> = (plan: Plan) => R | Promise<R>;

/** Every key of `StageOverrides`, checked for completeness by the type below. */
export const OVERRIDABLE_SETTINGS = ['epochs', 'steps', 'lr', 'schedule', 'batch', 'weightDecay', 'gradClip', 'seed', 'checkpointEvery', 'maxBadSteps', 'shuffle'] as const;
type MissingKeys = Exclude<keyof StageOverrides, (typeof OVERRIDABLE_SETTINGS)[number]>;
const _everyKeyListed: [MissingKeys] extends [never] ? true : MissingKeys = true;
void _everyKeyListed;

export class OverrideError extends Error {
  constructor(readonly problems: string[]) {
    super(`invalid overrides:\n${problems.map((p) => `  ${p}`).join('\n')}`);
    this.name = 'OverrideError';
  }
}

/**
 * A new plan with `overrides` applied (the input is not changed). Throws `OverrideError` listing every
 * problem: an unknown stage or setting, a value of the wrong type or out of range, a batch that is not a
 * multiple of the micro-batch.
 */
export function applyOverrides(plan: Plan, overrides: PlanOverrides): Plan {
  const problems: string[] = [];
  const byName = new Map(plan.stages.map((s) => [s.name, s]));
  for (const [stage, o] of Object.entries(overrides ?? {})) {
    const st = byName.get(stage);
    if (!st) problems.push(`unknown stage '${stage}' (the stages of ${plan.pipeline}: ${plan.stages.map((s) => s.name).join(', ')})`);
    else if (o !== undefined) problems.push(...checkStage(st, o).map((p) => `${stage}.${p}`));
  }
  if (problems.length) throw new OverrideError(problems);
  const copy = clone(plan);
  for (const st of copy.stages) {
    const o = overrides[st.name];
    if (o) overrideStage(st, o);
  }
  return copy;
}

/** Plans are JSON by design, so a JSON round trip is a deep copy (and needs no DOM or Node globals). */
function clone<T>(x: T): T {
  return JSON.parse(JSON.stringify(x)) as T;
}

type Check = (v: unknown) => string | undefined;
const integer = (min: number, max = Number.MAX_SAFE_INTEGER): Check => (v) => (typeof v === 'number' && Number.isInteger(v) && v >= min && v <= max ? undefined : `must be an integer from ${min}${max === Number.MAX_SAFE_INTEGER ? ' up' : ` to ${max}`}`);
const number = (min: number, max = Infinity, exclusiveMin = false): Check => (v) =>
  typeof v === 'number' && Number.isFinite(v) && (exclusiveMin ? v > min : v >= min) && v <= max ? undefined : `must be a number ${exclusiveMin ? '>' : '>='} ${min}${max === Infinity ? '' : ` and <= ${max}`}`;
const boolean: Check = (v) => (typeof v === 'boolean' ? undefined : 'must be true or false');
const schedule: Check = (v) => {
  const s = v as PlanStageSettings['schedule'] | undefined;
  if (!s || typeof s !== 'object' || !['constant', 'linear', 'cosine'].includes(s.kind)) return "must be { kind: 'constant' | 'linear' | 'cosine', warmup, minLr }";
  if (Object.keys(s).some((k) => !['kind', 'warmup', 'minLr'].includes(k))) return 'has keys other than kind, warmup and minLr';
  const w = s.warmup as Record<string, unknown> | undefined;
  const okWarmup = w && typeof w === 'object' && Object.keys(w).length === 1 && (('percent' in w && !number(0, 100)(w.percent)) || ('steps' in w && !integer(0)(w.steps)));
  if (!okWarmup) return 'warmup must be { percent: 0..100 } or { steps: integer >= 0 }';
  return number(0)(s.minLr) ? 'minLr must be a number >= 0' : undefined;
};

const checks: Record<keyof StageOverrides, Check> = {
  epochs: integer(1, 100000),
  steps: integer(1),
  lr: number(0, Infinity, true),
  schedule,
  batch: integer(1),
  weightDecay: number(0, 1),
  gradClip: number(0),
  seed: integer(0, 2 ** 31 - 1),
  checkpointEvery: integer(0),
  maxBadSteps: integer(1),
  shuffle: boolean,
};

function checkStage(st: PlanStage, o: StageOverrides): string[] {
  if (o === null || typeof o !== 'object') return [`must be an object of settings`];
  const problems: string[] = [];
  for (const [key, value] of Object.entries(o)) {
    if (value === undefined) continue;
    const check = checks[key as keyof StageOverrides] as Check | undefined;
    if (!check) {
      problems.push(`${key}: not a setting that can be overridden without recompiling (these can: ${OVERRIDABLE_SETTINGS.join(', ')})`);
      continue;
    }
    const bad = check(value);
    if (bad) problems.push(`${key}: ${bad}, not ${JSON.stringify(value)}`);
    else if (key === 'batch' && (value as number) % st.settings.microBatch !== 0) problems.push(`batch: ${String(value)} is not a multiple of the micro-batch (${st.settings.microBatch}); recompile to change micro_batch`);
  }
  return problems;
}

function overrideStage(st: PlanStage, o: StageOverrides): void {
  const settings = st.settings as unknown as Record<string, unknown>;
  for (const key of OVERRIDABLE_SETTINGS) {
    const value = o[key];
    if (value !== undefined) settings[key] = clone(value);
  }
  if (o.batch !== undefined) rescaleEstimates(st);
}

/**
 * After a batch change: the micro-batches per step follow the new batch, and every per-step estimate
 * (FLOPs, bytes, dispatches) scales with them; dispatches keep the optimizer's launches once per step.
 */
function rescaleEstimates(st: PlanStage): void {
  const e = st.estimates as unknown as Record<string, number>;
  const before = st.estimates.microBatchesPerStep;
  const after = Math.max(1, Math.round(st.settings.batch / st.memory.microBatch));
  if (after === before) return;
  for (const key of Object.keys(e)) {
    if (!key.endsWith('PerStep') || key === 'microBatchesPerStep') continue;
    const fixed = key === 'dispatchesPerStep' ? st.optimizer.dispatches : 0;
    e[key] = ((e[key]! - fixed) / before) * after + fixed;
  }
  e.microBatchesPerStep = after;
}

/** The states in which a runner holds a parameter's tensor in a stage (merged, dropped and absent ones it does not). */
export const HELD_STATES: ReadonlySet<string> = new Set(['trainable', 'frozen', 'folded']);

/** Whether a runner holds parameter `p` in stage `stage`. */
export const heldIn = (p: PlanParam, stage: string): boolean => HELD_STATES.has(p.states[stage] ?? 'absent');

/** A mixture's routed experts and router: what `drop X.experts` removes (the shared experts stay). */
export const isRoutedPart = (p: PlanParam): boolean => p.role === 'expert_A' || p.role === 'expert_B' || p.role === 'router_W' || p.role === 'router_b';
