/**
 * Running a whole plan: every stage in order over its data, with metrics, checkpoints, resume, stage reuse
 * and the plan's exports. `mcpc run` (src/cli/commands/run.ts) is a thin shell over {@link runPlan}.
 *
 * The run folder (`runDir`):
 *     metrics.jsonl              one JSON line per optimizer step {stage, step, loss, constraint, lr, gradNorm, tokensPerSec, skipped},
 *                                and one per probe measurement {stage, step, probe, metric, value, examples}
 *     checkpoints/step-NNNNNN/   io/checkpoint.ts folders (COMPLETE manifest written last):
 *         params.safetensors     every tensor by plan parameter id (F32)
 *         optimizer.safetensors  AdamW / SGD moments (`m.<id>`, `v.<id>`)
 *         state.json             stage index and name, steps done in the stage, AdamW t, schedule position,
 *                                data cursor, RNG state, whether the stage is complete, the stage's input hash
 *     stages/<stage>.json        written when a stage completes: its input hash, its stage-end checkpoint and
 *                                its probe results (so a reused stage still reports them)
 *
 * Checkpoint numbers are a sequence over the run folder (not optimizer steps), so a stage-end checkpoint never
 * collides with a periodic one. Periodic checkpoints (`checkpoint_every`) beyond the newest two are pruned
 * (io/checkpoint.ts pruneCheckpoints: renamed to trash, then deleted); stage-end checkpoints are kept (stage reuse
 * reads them), and so is the furthest mid-stage checkpoint of a stage that a run without --resume starts over,
 * until the new run passes it. A run starts by removing what a killed one left (a checkpoint's staging folder,
 * trash, temp files; one writer per run folder, so those of processes that are gone), and says so.
 *
 * What is read back is checked before it is used, not only against its COMPLETE manifest: state.json's shape
 * and ranges (a stage of this plan, steps within it, a cursor on a step boundary of its data, the seed), every
 * tensor the stage holds in params.safetensors (and, mid-stage, every moment) at its shape's size. --resume
 * skips a checkpoint that fails, with a warning, for the next older one. A stage whose record is missing or
 * unusable takes the newest checkpoint whose state.json says it finished with its current inputs as its end
 * (the record is written again, said); with --resume, a stage before the checkpoint resumed from needs no end
 * at all (that checkpoint holds every tensor, and its hash chains the stage's).
 *
 * Determinism: the reference executor has no dropout or noise, and the data order is a pure function of
 * (seed, epoch) (data/shuffle.ts), so the RNG state is the seed and the cursor's epoch. Parameters and
 * moments are saved as exact f32, so on the CPU backend a resumed run ends with bit-identical weights.
 *
 * Stage reuse: a stage's input hash chains the previous stage's hash, the stage's plan section (less what cannot
 * change its weights: `checkpoint_every`, its `eval` probes, the estimates), the model, parameter and adapter
 * sections, the contents of its data files (and of the model folder for pretrained weights) and the step limit.
 * A stage whose hash matches its stages/<stage>.json record is not retrained: its stage-end checkpoint's
 * parameters are used. The hash older versions computed (the whole plan stage) is accepted as well. Records and
 * state.json carry the hash's parts, so a refused --resume says which input changed.
 *
 * Evaluation (`eval` in a stage; eval/probes.ts says what each probe measures): every `every N` optimizer
 * steps, and at the end of the stage, before its exit transitions: the model as the stage trained it (a
 * dropped adapter still counts; the next stage's probes see the transitions). `step` of a probe line is the
 * last optimizer step taken (0-based, like the loss lines).
 *
 * A checkpoint keeps the router load counted so far in the stage (state.json `routerLoad`), so the conditional
 * expert drops of a resumed stage count every step of it, as an uninterrupted run's do.
 */
import { appendFileSync, existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Plan, PlanStage } from '../plan/types.js';
import { DataLoader, concatDatasets, loadDataSource, type DataCursor, type Dataset } from './data/index.js';
import type { MicroBatch } from './data/batch.js';
import { createStageRunner, matmulPrecision, type OptimizerState, type StageRunner } from './executor.js';
import type { BackendName } from './tfjs/index.js';
import { CheckpointError, findLatestCheckpoint, listCheckpoints, pruneCheckpoints, readCheckpointFile, stepDirName, verifyCheckpoint, writeCheckpoint, type Checkpoint } from './io/checkpoint.js';
import { writeFileAtomicSync } from './io/atomic.js';
import { createTokenizer } from './tokenizer/index.js';
import { describeProbe, ProbeError, ProbeSuite, type ProbeResult } from './eval/index.js';
import { runExports, type ExportResult } from './weights/export.js';
import { BadCheckpoint, checkMoments, openCheckpoint, checkParams, cleanLeftovers, evalsHash, explainChange, type InputsRecord, packTensors, parseRunState, probeHash, readStageRecord, readTensors, type RunState, stageInputs, stageProbes, type StageRecord } from './run-state.js';
import { gpuFaultMark, gpuFaultSince, settleGpuFaults, takeGpuErrors, type GpuFault } from './webgpu/faults.js';


export interface RunOptions {
  /** Project root: data, model and export paths resolve against it. */
  root: string;
  /** The run folder. */
  runDir: string;
  backend?: BackendName;
  /** At most this many optimizer steps per stage (smoke runs). */
  maxSteps?: number;
  /** Continue from the newest complete checkpoint. */
  resume?: boolean;
  skipBadRecords?: boolean;
  /** Overrides every stage's seed (data order and initialisers). */
  seed?: number;
  allowOutsideRoot?: boolean;
  /** Whether the output is a terminal: progress is one `\r`-rewritten line. */
  tty?: boolean;
  /** Without a terminal: a progress line after the first step, every this many steps (default 10) and at least every 30 s. */
  progressEvery?: number;
  /** Where messages go (each call is complete text, newline included). */
  write: (text: string) => void;
  /** Testing: stop (as if killed) after this many optimizer steps of this invocation. */
  stopAfter?: number;
  /**
   * When aborted (the CLI: the first Ctrl-C or SIGTERM), the run stops after the step in flight: it writes a
   * checkpoint of that step (the same as a periodic one, so `--resume` ends where an uninterrupted run ends)
   * and returns code 130. Between stages it stops before the next one starts.
   */
  signal?: AbortSignal;
  /**
   * Called after each optimizer step (`step` 1-based within its stage), before the step is checked for GPU
   * faults and recorded: tests inject faults here.
   */
  afterStep?: (at: { stage: string; step: number }) => void | Promise<void>;
}

export interface StageSummary {
  stage: string;
  reused: boolean;
  steps: number;
  finalLoss?: number;
  /** Loss and cross-entropy of the first and last applied steps run in this process (not of reused or resumed-over steps). */
  firstLoss?: number;
  firstCe?: number;
  finalCe?: number;
  /** Sum of |A_k A_o^T| (or |B_k^T B_o|) per constrained pair, measured on the stage's final parameters. */
  constraints: { target: string; other: string; matrix: 'A' | 'B'; value: number }[];
  /** Max |merged − unmerged| of the check after a merge, if one ran. */
  mergeCheck?: { value: string; maxAbsDiff: number; ok: boolean };
  /** The probes measured at the end of the stage (before its exit transitions); a reused stage's recorded ones. */
  evals?: ProbeResult[];
  secs: number;
  tokensPerSec?: number;
  stepsPerSec?: number;
}

export interface RunResult {
  /** 0 done, 1 stopped (bad steps, bad data, interrupted by stopAfter), 130 interrupted (`signal`). */
  code: number;
  stages: StageSummary[];
  exports: ExportResult[];
  message?: string;
}

/** A failure the user can fix (bad data, a resume that does not fit); the CLI prints its message, exit 1. */
export class RunError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RunError';
  }
}

/**
 * The GPU device reported a fault (out of memory, a validation or internal error, its loss: ./webgpu/faults.ts)
 * during the run: the run stopped there and saved nothing computed after it; the message says what the device
 * said, where, which checkpoint is the last good one and what to do.
 */
export class GpuFaultError extends RunError {
  constructor(
    readonly fault: GpuFault,
    readonly at: string,
    readonly lastCheckpoint: string | undefined,
  ) {
    super(describeGpuFault(fault, at, lastCheckpoint));
    this.name = 'GpuFaultError';
  }
}

/** The message of a GpuFaultError. */
export function describeGpuFault(f: GpuFault, at: string, lastCheckpoint: string | undefined): string {
  const what =
    f.kind === 'lost' ? `the GPU device was lost (${f.message})`
    : `the GPU reported ${f.kind === 'out-of-memory' ? 'running out of memory' : f.kind === 'validation' ? 'a validation error' : f.kind === 'internal' ? 'an internal error' : 'an error'}: ${f.message}`;
  const more = f.more ? ` (and ${f.more} more error${f.more === 1 ? '' : 's'} after it)` : '';
  const saved = `nothing computed after it was saved; ${lastCheckpoint ? `the last good checkpoint is ${lastCheckpoint}` : 'no checkpoint was written yet'}`;
  const rerun = lastCheckpoint ? 'rerun with --resume' : 'rerun';
  const hint =
    f.kind === 'out-of-memory' ? `Lower the stage's micro_batch (batch stays: more micro-batches a step) or max_len, or state the GPU's memory (\`memory 80GB\` in the stage, or \`memory:\` in mcpc.yaml: the compiler then picks the largest micro_batch that fits and recomputes activations if it must); then ${rerun}.`
    : f.kind === 'lost' ? `A driver reset, a kernel that ran too long or another process can take the device away: ${rerun} (a new process opens it again).`
    : `That is a bug in one of mcpc's kernels or in the driver: ${rerun}; to tell which, MCPC_DAWN_ROBUSTNESS=1 keeps Dawn's bounds checks and MCPC_GEMM_WGSL=0 / MCPC_FUSED_WGSL=0 run the products / fused groups as plain tfjs ops. Please report the message above.`;
  return `${what}${more}, during ${at}; ${saved}. ${hint}`;
}

/** The folder of the newest complete checkpoint under `ckptRoot` (sizes checked), or undefined: what a stopped run names. */
function lastCheckpoint(ckptRoot: string): string | undefined {
  return findLatestCheckpoint(ckptRoot, { verify: 'size' }).latest?.dir;
}

/** One turn of the event loop: a signal handler (the CLI's Ctrl-C) runs, which a chain of resolved promises does not allow. */
const turn = () => new Promise<void>((r) => setImmediate(r));

/**
 * Train every stage of `plan` (see the top of this file). A fault the GPU device reports stops the run with a
 * GpuFaultError: checked after every step, evaluation and checkpoint read, and on any exception (a read after
 * a device loss rejects with an empty message: the fault is what the user needs to see).
 */
export async function runPlan(plan: Plan, opts: RunOptions): Promise<RunResult> {
  const mark = gpuFaultMark();
  const where = { at: 'start-up' };
  const ckptRoot = join(resolve(opts.runDir), 'checkpoints');
  const stop = (f: GpuFault) => new GpuFaultError(f, where.at, lastCheckpoint(ckptRoot));
  const check = () => {
    const f = gpuFaultSince(mark);
    if (f) throw stop(f);
  };
  const release = takeGpuErrors();
  try {
    return await trainStages(plan, opts, where, check);
  } catch (e) {
    if (e instanceof GpuFaultError) throw e;
    const f = await settleGpuFaults(mark);
    if (f) throw stop(f);
    throw e;
  } finally {
    release();
  }
}

async function trainStages(plan: Plan, opts: RunOptions, where: { at: string }, gpuCheck: () => void): Promise<RunResult> {
  const w = opts.write;
  const root = resolve(opts.root);
  const runDir = resolve(opts.runDir);
  const ckptRoot = join(runDir, 'checkpoints');
  const stagesDir = join(runDir, 'stages');
  mkdirSync(ckptRoot, { recursive: true });
  mkdirSync(stagesDir, { recursive: true });
  const metricsFile = join(runDir, 'metrics.jsonl');
  cleanLeftovers(runDir, ckptRoot, stagesDir, w);
  const tokenizer = createTokenizer(plan.model.tokenizer, root);
  const probes = new ProbeSuite(plan, { root, tokenizer, skipBadRecords: opts.skipBadRecords ?? false, allowOutsideRoot: opts.allowOutsideRoot ?? false });

  let seq = Math.max(0, ...listCheckpoints(ckptRoot).map((c) => c.step));
  const summaries: StageSummary[] = [];
  let params: Map<string, Float32Array> | undefined;
  const { run: runHash, stages: inputs } = stageInputs(plan, root, opts);
  const inputsUpTo = (index: number): InputsRecord => ({ run: runHash, stages: inputs.slice(0, index + 1).map((x, i) => ({ name: plan.stages[i]!.name, hash: x.hash, settings: x.settings, data: x.data })) });
  const sameInputs = (index: number, h: string) => h === inputs[index]!.hash || h === inputs[index]!.legacy;
  let stepsThisRun = 0;
  const recordFile = (stage: PlanStage) => join(stagesDir, `${stage.name}.json`);
  // Stage-end checkpoints are never pruned: those of this run and those its records name for the current inputs
  // (a later stage's, reused when the run gets there).
  const stageEnds = new Set<number>();
  for (const stage of plan.stages) {
    const r = readStageRecord(recordFile(stage));
    if (r.rec && sameInputs(stage.index, r.rec.hash)) stageEnds.add(r.rec.checkpoint);
  }
  // Metrics lines kept from earlier runs: those of reused stages and of the resumed part of a stage.
  const keptMetrics: string[] = [];
  const oldMetrics = existsSync(metricsFile) ? readFileSync(metricsFile, 'utf8').split('\n').filter(Boolean) : [];
  const oldLines = (stage: string) => oldMetrics.flatMap((l) => {
    try {
      const o = JSON.parse(l) as { stage: string; step: number; loss?: number };
      return o.stage === stage ? [{ line: l, o }] : [];
    } catch {
      return [];
    }
  });
  const oldFor = (stage: string, below: number) => oldLines(stage).filter((x) => x.o.step < below).map((x) => x.line);
  let metricsOpen = false;
  const openMetrics = () => {
    if (metricsOpen) return;
    // A rewrite (the lines kept from earlier runs), so atomic: a kill here leaves the old file or the new one.
    writeFileAtomicSync(metricsFile, keptMetrics.map((l) => l + '\n').join(''));
    metricsOpen = true;
  };
  const metric = (line: object) => {
    openMetrics();
    appendFileSync(metricsFile, JSON.stringify(line) + '\n');
  };
  /** Measures probes on the runner's model: metrics lines, one message line each. */
  const evaluate = async (runner: StageRunner, names: readonly string[], step: number, newline: boolean): Promise<ProbeResult[]> => {
    let results: ProbeResult[];
    const at = where.at;
    where.at = `stage ${runner.stage.name}, evaluation after step ${step + 1}`;
    try {
      results = await probes.run(runner, names, runner.stage.settings.microBatch);
      gpuCheck();
      where.at = at;
    } catch (e) {
      if (e instanceof ProbeError) throw new RunError(`stage ${runner.stage.name}: ${e.message}`);
      throw e;
    }
    results.forEach((r, i) => {
      metric({ stage: runner.stage.name, step, probe: r.probe, metric: r.metric, value: r.value, examples: r.examples });
      w(`${newline && i === 0 ? '\n' : ''}stage ${runner.stage.name} eval after step ${step + 1}: ${describeProbe(r)}\n`);
    });
    return results;
  };

  // A stage's data, loader and step count: loaded once (the resume checks below may need them before the stage runs).
  interface Prepared { data: Dataset[]; loader?: DataLoader; total?: number; epochs?: number; seed: number }
  const prepared = new Map<number, Prepared>();
  const loadData = async (stage: PlanStage): Promise<Prepared> => {
    let p = prepared.get(stage.index);
    if (!p) {
      p = { data: await loadStageData(plan, stage, root, tokenizer, opts), seed: opts.seed ?? stage.settings.seed };
      prepared.set(stage.index, p);
    }
    return p;
  };
  const prepare = async (stage: PlanStage): Promise<Required<Prepared>> => {
    const p = await loadData(stage);
    if (!p.loader) {
      const s = stage.settings;
      const examples = concatDatasets(p.data);
      p.loader = new DataLoader(examples, {
        microBatch: s.microBatch,
        accumulation: Math.max(1, Math.round(s.batch / s.microBatch)),
        maxLen: s.maxLen,
        layout: s.packing ? 'pack' : 'pad-longest',
        seed: p.seed,
        shuffle: s.shuffle,
        padId: tokenizer.pad,
      });
      p.epochs = s.steps !== undefined ? Infinity : s.epochs;
      let total = s.steps ?? p.loader.totalSteps(s.epochs);
      if (opts.maxSteps !== undefined) total = Math.min(total, opts.maxSteps);
      if (total < 1) throw new RunError(`stage ${stage.name}: no optimizer step fits the data (${examples.length} examples, batch ${s.batch})`);
      p.total = total;
    }
    return p as Required<Prepared>;
  };

  /** A checkpoint's state.json, checked (shape, ranges, the stage's plan); throws BadCheckpoint. */
  const stateOf = (ck: Checkpoint): RunState => {
    let text: string;
    try {
      text = readCheckpointFile(ck, 'state.json').toString('utf8');
    } catch (e) {
      if (e instanceof CheckpointError) throw new BadCheckpoint(`state.json: ${e.detail}`);
      throw e;
    }
    return parseRunState(text, plan);
  };
  /** The checks of a state that need the stage's data: steps within the stage, the data cursor, the seed. */
  const checkAgainstStage = async (st: RunState): Promise<void> => {
    const stage = plan.stages[st.stageIndex]!;
    const p = await prepare(stage);
    const bad = (what: string): never => {
      throw new BadCheckpoint(`state.json: ${what}`);
    };
    if (st.stageDone ? st.stepsDone < 1 || st.stepsDone > p.total : st.stepsDone >= p.total) bad(`${st.stepsDone} steps done${st.stageDone ? ' at the stage end' : ' mid-stage'}, but stage ${stage.name} has ${p.total}`);
    if (st.rng.seed !== p.seed) bad(`seed ${st.rng.seed}, but stage ${stage.name} runs with seed ${p.seed}`);
    if (st.stageDone) return;
    if (st.badSteps >= stage.settings.maxBadSteps) bad(`${st.badSteps} non-finite steps in a row, at or over the stage's max_bad_steps ${stage.settings.maxBadSteps}`);
    let first: IteratorResult<unknown>;
    try {
      const it = p.loader.steps(st.cursor, p.epochs);
      first = it.next();
      it.return(undefined);
    } catch (e) {
      if (e instanceof RangeError) bad(e.message);
      throw e;
    }
    if (first!.done) bad(`the data cursor {epoch: ${st.cursor.epoch}, index: ${st.cursor.index}} is past the end of the stage's data`);
  };
  const describeChange = (old: InputsRecord | undefined, index: number) => explainChange(plan, old, runHash, inputs, index);
  /** The mid-stage checkpoint of `stage` with its current inputs that got furthest (size-checked), if any. */
  const furthestMidStage = async (stage: PlanStage): Promise<{ ckpt: Checkpoint; stepsDone: number } | undefined> => {
    let best: { ckpt: Checkpoint; stepsDone: number } | undefined;
    for (const c of listCheckpoints(ckptRoot)) {
      if (!c.hasMarker) continue;
      try {
        const ck = verifyCheckpoint(c.dir, { verify: 'size' });
        const st = stateOf(ck);
        if (st.stageDone || st.stageIndex !== stage.index || !sameInputs(stage.index, st.stageHash) || (best && best.stepsDone >= st.stepsDone)) continue;
        await checkAgainstStage(st);
        best = { ckpt: ck, stepsDone: st.stepsDone };
      } catch (e) {
        if (!(e instanceof BadCheckpoint || e instanceof CheckpointError)) throw e;
      }
    }
    return best;
  };
  /** The tensors of a checkpoint (a stage end: `atEnd`), checked against the plan; throws BadCheckpoint. */
  const paramsOf = (ck: Checkpoint, st: RunState, atEnd: boolean) => {
    const p = readTensors(ck, 'params.safetensors');
    checkParams(plan, st.stageIndex, atEnd, p);
    return p;
  };

  /**
   * A stage's end to reuse: the checkpoint its record names when the record's inputs are the current ones, else
   * (the record missing, unreadable, of other inputs, or its checkpoint damaged) the newest checkpoint whose
   * state.json says the stage finished with the current inputs, whose record is then written (said). `problem`:
   * why the record did not serve (undefined: no record).
   */
  const findStageEnd = async (stage: PlanStage, known?: { ckpt: Checkpoint; state: RunState; params: Map<string, Float32Array> }): Promise<{ end?: { ckpt: Checkpoint; state: RunState; params: Map<string, Float32Array>; rec?: StageRecord }; problem?: string }> => {
    const file = recordFile(stage);
    const r = readStageRecord(file);
    let problem = r.problem;
    const tried = new Set<number>();
    const usable = (st: RunState) => st.stageDone && st.stepsDone >= 1 && st.stageIndex === stage.index && sameInputs(stage.index, st.stageHash);
    if (r.rec) {
      const rec = r.rec;
      if (!sameInputs(stage.index, rec.hash)) problem = `its inputs changed since it ran: ${describeChange(rec.inputs, stage.index)}`;
      else if (known && known.ckpt.step === rec.checkpoint) return { end: { ...known, rec } };
      else {
        tried.add(rec.checkpoint);
        const dir = join(ckptRoot, stepDirName(rec.checkpoint));
        try {
          const ck = openCheckpoint(dir);
          const st = stateOf(ck);
          if (!usable(st)) throw new BadCheckpoint(`state.json is not stage ${stage.name}'s end with its current inputs`);
          await checkAgainstStage(st);
          return { end: { ckpt: ck, state: st, params: paramsOf(ck, st, true), rec } };
        } catch (e) {
          if (!(e instanceof BadCheckpoint)) throw e;
          problem = `its stage-end checkpoint ${dir} (named by ${file}) cannot be used: ${e.message}`;
        }
      }
    }
    // No usable record: a stage-end checkpoint of the current inputs stands for it.
    let found: { ckpt: Checkpoint; state: RunState; params: Map<string, Float32Array> } | undefined = known;
    for (const c of found ? [] : listCheckpoints(ckptRoot)) {
      if (tried.has(c.step) || !c.hasMarker) continue;
      try {
        const st = stateOf(verifyCheckpoint(c.dir, { verify: 'size' }));
        if (!usable(st)) continue;
        await checkAgainstStage(st);
        const ck = verifyCheckpoint(c.dir);
        found = { ckpt: ck, state: st, params: paramsOf(ck, st, true) };
        break;
      } catch (e) {
        if (!(e instanceof BadCheckpoint || e instanceof CheckpointError)) throw e;
      }
    }
    if (!found) return problem ? { problem } : {};
    writeRecord(stage, found.ckpt.step, undefined, { rebuilt: true } as StageRecord);
    w(`stage ${stage.name}: ${problem ?? `no record ${file}`}; ${found.ckpt.dir} is its stage end (its state.json says the stage finished, with its current inputs): wrote ${file}\n`);
    return { end: found };
  };
  const writeRecord = (stage: PlanStage, checkpoint: number, evals?: ProbeResult[], keep?: StageRecord) => {
    const rec: StageRecord = {
      stage: stage.name,
      hash: inputs[stage.index]!.hash,
      checkpoint,
      ...(evals ? { evals, evalsHash: evalsHash(plan, stage, root), probeHashes: Object.fromEntries(stageProbes(stage).map((n) => [n, probeHash(plan, stage, n, root)])) } : {}),
      ...(keep && !evals ? { ...(keep.evals ? { evals: keep.evals } : {}), ...(keep.evalsHash ? { evalsHash: keep.evalsHash } : {}), ...(keep.probeHashes ? { probeHashes: keep.probeHashes } : {}) } : {}),
      inputs: inputsUpTo(stage.index),
      ...(keep?.rebuilt && !evals ? { rebuilt: true } : {}),
    };
    writeFileAtomicSync(recordFile(stage), JSON.stringify(rec, null, 1) + '\n');
  };
  /** Takes a finished stage's end as this run's: parameters, summary (with its recorded probe results), metrics lines. */
  const reuse = (stage: PlanStage, end: { ckpt: Checkpoint; state: RunState; params: Map<string, Float32Array>; rec?: StageRecord }) => {
    w(`stage ${stage.name} unchanged, reusing ${end.ckpt.dir}\n`);
    params = end.params;
    stageEnds.add(end.ckpt.step);
    keptMetrics.push(...oldFor(stage.name, Infinity));
    const rec = end.rec;
    // A record from before checkpoint_every and eval were left out of the hash: rewritten with today's.
    if (rec && rec.hash !== inputs[stage.index]!.hash) writeRecord(stage, rec.checkpoint, undefined, rec);
    const wanted = stageProbes(stage);
    let evals: ProbeResult[] | undefined;
    if (rec?.evals && rec.probeHashes) evals = rec.evals.filter((x) => wanted.includes(x.probe) && rec.probeHashes![x.probe] === probeHash(plan, stage, x.probe, root));
    else if (rec?.evals && rec.evalsHash === evalsHash(plan, stage, root)) evals = rec.evals;
    const missing = wanted.filter((n) => !evals?.some((x) => x.probe === n));
    if (missing.length) w(`stage ${stage.name}: no probe results recorded for ${missing.join(', ')} as the stage now defines ${missing.length === 1 ? 'it' : 'them'} (${!rec || rec.rebuilt ? 'its record was rebuilt from its checkpoint' : 'added or changed since the stage ran'}); remove ${recordFile(stage)} and ${end.ckpt.dir} to retrain and measure it\n`);
    summaries.push({ stage: stage.name, reused: true, steps: end.state.stepsDone, constraints: constraintSums(stage, plan, params), ...(evals?.length ? { evals } : {}), secs: 0 });
  };

  // --resume: the newest usable checkpoint decides where we are. One that is damaged (files, state.json, tensors)
  // is skipped, with a warning, for the next older one; one whose stage's inputs changed is refused.
  let resumeFrom: { ckpt: Checkpoint; state: RunState; params: Map<string, Float32Array>; opt?: OptimizerState } | undefined;
  if (opts.resume) {
    for (const c of listCheckpoints(ckptRoot)) {
      try {
        const ck = openCheckpoint(c.dir);
        const st = stateOf(ck);
        const stage = plan.stages[st.stageIndex]!;
        if (!sameInputs(st.stageIndex, st.stageHash)) {
          throw new RunError(`cannot resume from ${ck.dir}: ${describeChange(st.inputs, st.stageIndex)} since it was written; run without --resume to train again (stages whose inputs did not change are reused)`);
        }
        await checkAgainstStage(st);
        const p = paramsOf(ck, st, st.stageDone);
        let opt: OptimizerState | undefined;
        if (!st.stageDone) {
          const o = readTensors(ck, 'optimizer.safetensors');
          checkMoments(plan, stage, o);
          const slots = new Map<string, { m: Float32Array; v?: Float32Array }>();
          for (const [k, v] of o) {
            const [which, ...rest] = k.split('.');
            const id = rest.join('.');
            const slot = slots.get(id) ?? { m: new Float32Array(0) };
            if (which === 'm') slot.m = v;
            else slot.v = v;
            slots.set(id, slot);
          }
          opt = { t: st.t, scheduleStep: st.scheduleStep, slots };
        }
        resumeFrom = { ckpt: ck, state: st, params: p, ...(opt ? { opt } : {}) };
        break;
      } catch (e) {
        if (!(e instanceof BadCheckpoint)) throw e;
        w(`warning: skipping checkpoint ${c.dir}: ${e.message}\n`);
      }
    }
    if (!resumeFrom) w(`no usable checkpoint in ${ckptRoot}: starting from the beginning\n`);
  }

  /** The result of an interrupt that came before a stage's first step (`when`: 'before', 'at the start of'). */
  const interruptedBefore = (when: string, stage: string): RunResult => {
    const last = lastCheckpoint(ckptRoot);
    return { code: 130, stages: summaries, exports: [], message: `interrupted ${when} stage ${stage}${last ? `: the last checkpoint is ${last}` : ''}; the same command with --resume continues` };
  };

  for (const stage of plan.stages) {
    if (opts.signal) await turn();
    if (opts.signal?.aborted) return interruptedBefore('before', stage.name);
    const t0 = performance.now();
    const hash = inputs[stage.index]!.hash;
    const resumeAt = resumeFrom?.state.stageIndex ?? -1;
    await loadData(stage);

    if (resumeFrom && stage.index < resumeAt) {
      // Before the checkpoint resumed from, whose hash chains this stage's: its inputs are unchanged, and that
      // checkpoint holds every tensor. Its end is reused when it can be; when not, the stage needs no training.
      const found = await findStageEnd(stage);
      prepared.delete(stage.index);
      if (found.end) {
        reuse(stage, found.end);
        continue;
      }
      const from = resumeFrom;
      w(`stage ${stage.name}: ${found.problem ?? `no record ${recordFile(stage)} and no stage-end checkpoint`}; not needed to resume: ${from.ckpt.dir} (stage ${from.state.stage}) holds every tensor, and this stage's inputs are unchanged (a run without --resume trains it again)\n`);
      keptMetrics.push(...oldFor(stage.name, Infinity));
      const steps = Math.max(0, ...oldLines(stage.name).filter((x) => x.o.loss !== undefined).map((x) => x.o.step + 1));
      summaries.push({ stage: stage.name, reused: true, steps, constraints: [], secs: 0 });
      continue;
    }
    if (resumeFrom && stage.index === resumeAt && resumeFrom.state.stageDone) {
      // The checkpoint resumed from is this stage's end (its record is written if missing).
      const found = await findStageEnd(stage, resumeFrom);
      resumeFrom = undefined;
      prepared.delete(stage.index);
      if (found.end) {
        reuse(stage, found.end);
        continue;
      }
    }
    const resumeHere = resumeFrom && stage.index === resumeAt ? resumeFrom : undefined;
    resumeFrom = undefined;
    if (!resumeHere) {
      // Reuse: a completed stage with the same inputs.
      const found = await findStageEnd(stage);
      if (found.end) {
        prepared.delete(stage.index);
        reuse(stage, found.end);
        continue;
      }
      if (found.problem) w(`stage ${stage.name}: ${found.problem}; training it again\n`);
    }

    const { loader, total, epochs, seed } = await prepare(stage);
    const examples = loader.examples;
    const s = stage.settings;

    // Where this stage starts: a mid-stage checkpoint of it (resume), else its first step.
    let cursor: DataCursor = { epoch: 0, index: 0 };
    let stepsDone = 0;
    let badSteps = 0;
    let opt: OptimizerState | undefined;
    /** A mid-stage checkpoint of an earlier run over the same inputs that this run started over: kept until passed. */
    let earlier: { step: number; stepsDone: number } | undefined;
    if (resumeHere) {
      const st = resumeHere.state;
      params = resumeHere.params;
      opt = resumeHere.opt;
      cursor = st.cursor;
      stepsDone = st.stepsDone;
      badSteps = st.badSteps;
      keptMetrics.push(...oldFor(stage.name, stepsDone));
      w(`stage ${stage.name}: resuming at step ${stepsDone}/${total} from ${resumeHere.ckpt.dir}\n`);
    } else {
      const e = await furthestMidStage(stage);
      if (e) {
        earlier = { step: e.ckpt.step, stepsDone: e.stepsDone };
        const newest = listCheckpoints(ckptRoot)[0]?.step === e.ckpt.step;
        w(`stage ${stage.name}: ${e.ckpt.dir} holds step ${e.stepsDone}/${total} of this stage from an earlier run${newest ? ', and --resume would continue from it' : ''}; without --resume the stage starts over (that checkpoint is kept until this run passes step ${e.stepsDone})\n`);
      }
    }
    prepared.delete(stage.index);

    w(`stage ${stage.name}: ${total} step${total === 1 ? '' : 's'}, ${examples.length} examples, batch ${s.batch} (micro ${s.microBatch}), max_len ${s.maxLen}${s.packing ? ', packed' : ''}\n`);
    where.at = `stage ${stage.name}, its start (weights to the device)`;
    const runner = await createStageRunner(plan, stage.name, { root, totalSteps: total, ...(opts.seed !== undefined ? { seed: opts.seed } : {}), ...(params ? { parameters: params } : {}), ...(opts.backend ? { backend: opts.backend } : {}) });
    if (s.precision !== 'f32') {
      w(
        matmulPrecision() === 'f16'
          ? `stage ${stage.name}: precision ${s.precision}: linear products in f16 on tensor cores (f32 accumulation and master weights)\n`
          : `stage ${stage.name}: precision ${s.precision} computed in f32 (the f16 path needs a WebGPU adapter with f16 subgroup matrices)\n`,
      );
    }
    try {
      if (opt) runner.loadOptimizerState(opt);
      // The routed tokens counted before the checkpoint: a `drop X.experts where load ...` counts the whole stage.
      if (resumeHere?.state.routerLoad) runner.loadRouterLoad(resumeHere.state.routerLoad);
      // Uploading the weights is where a device too small runs out of memory: said as such, not as step 1's.
      gpuCheck();
      if (opts.signal?.aborted) return interruptedBefore('at the start of', stage.name);
      const every = s.checkpointEvery;
      const save = (stageDone: boolean, p: Map<string, Float32Array>, o: OptimizerState, c: DataCursor): Checkpoint => {
        // Nothing read back from a faulted device becomes a checkpoint.
        gpuCheck();
        seq += 1;
        const load = runner.routerLoad().map(({ adapter, site, counts }) => ({ adapter, site, counts }));
        const state: RunState = { format: 'mcpc-run-state', version: 1, stageIndex: stage.index, stage: stage.name, stepsDone, stageDone, t: o.t, scheduleStep: o.scheduleStep, cursor: c, rng: { seed, epoch: c.epoch }, stageHash: hash, badSteps, inputs: inputsUpTo(stage.index), ...(load.length ? { routerLoad: load } : {}) };
        const mo = new Map<string, Float32Array>();
        for (const [id, sl] of o.slots) {
          mo.set(`m.${id}`, sl.m);
          if (sl.v) mo.set(`v.${id}`, sl.v);
        }
        const shapes = new Map(plan.parameters.map((q) => [q.id, q.shape]));
        const ck = writeCheckpoint(ckptRoot, seq, { 'params.safetensors': packTensors(p, shapes), 'optimizer.safetensors': packTensors(mo), 'state.json': JSON.stringify(state, null, 1) + '\n' });
        if (stageDone) stageEnds.add(ck.step);
        if (earlier && (stageDone || stepsDone >= earlier.stepsDone)) earlier = undefined;
        // The newest two periodic checkpoints stay, and every stage end; older ones go (renamed to trash first).
        pruneCheckpoints(ckptRoot, 2, ck.step, { pinned: earlier ? [...stageEnds, earlier.step] : stageEnds });
        return ck;
      };

      let lastLoss: number | undefined;
      let firstLoss: { loss: number; ce: number } | undefined;
      let lastCe: number | undefined;
      let sample: MicroBatch | undefined;
      let tokens = 0;
      const tStart = performance.now();
      const stepsAtStart = stepsDone;
      let lastLine = performance.now();
      let evalSecs = 0;
      openMetrics();
      for (const ts of loader.steps(cursor, epochs)) {
        if (stepsDone >= total) break;
        const t1 = performance.now();
        where.at = `stage ${stage.name}, step ${stepsDone + 1}`;
        const r = await runner.step(ts.microBatches);
        const secs = (performance.now() - t1) / 1000;
        await opts.afterStep?.({ stage: stage.name, step: stepsDone + 1 });
        // A step that ran on a faulted device is neither recorded nor saved.
        gpuCheck();
        const stepTokens = ts.microBatches.reduce((a, mb) => a + mb.rows * mb.seqLen, 0);
        tokens += stepTokens;
        stepsDone += 1;
        stepsThisRun += 1;
        cursor = ts.next;
        sample = ts.microBatches[0];
        const tps = stepTokens / Math.max(secs, 1e-9);
        metric({ stage: stage.name, step: stepsDone - 1, loss: r.loss, constraint: r.constraint, lr: r.lr, gradNorm: r.gradNorm, tokensPerSec: Math.round(tps), skipped: !r.applied });
        if (r.applied) {
          firstLoss ??= { loss: r.loss, ce: r.ce };
          lastCe = r.ce;
          lastLoss = r.loss;
          badSteps = 0;
        } else {
          badSteps += 1;
          w(`${opts.tty ? '\n' : ''}warning: stage ${stage.name} step ${stepsDone}: skipped (${r.skipped ?? 'non-finite loss or gradient'}); ${badSteps} in a row\n`);
          if (badSteps >= s.maxBadSteps) {
            const latest = lastCheckpoint(ckptRoot);
            return {
              code: 1,
              stages: summaries,
              exports: [],
              message: `stopped: ${badSteps} consecutive NaN/Inf steps in stage ${stage.name} (max_bad_steps ${s.maxBadSteps}); ${latest ? `the last good checkpoint is ${latest}; lower the learning rate or check the data, then rerun with --resume` : 'no checkpoint was written yet'}`,
            };
          }
        }
        // Progress.
        const elapsed = (performance.now() - tStart) / 1000;
        const rate = (stepsDone - stepsAtStart) / Math.max(elapsed, 1e-9);
        const eta = (total - stepsDone) / Math.max(rate, 1e-9);
        const parts = r.constraint > 0 ? ` (ce ${r.ce.toFixed(4)} + constraint ${r.constraint.toFixed(4)})` : '';
        const line = `${stage.name} ${stepsDone}/${total} loss ${r.loss.toFixed(4)}${parts} ${Math.round(tokens / Math.max(elapsed, 1e-9))} tok/s ETA ${fmtSecs(eta)}`;
        if (opts.tty) w(`\r${progressBar(stepsDone, total)} ${line}\x1b[K${stepsDone === total ? '\n' : ''}`);
        else if (stepsDone % (opts.progressEvery ?? 10) === 0 || stepsDone === total || stepsDone === stepsAtStart + 1 || performance.now() - lastLine > 30_000) {
          w(`${line}\n`);
          lastLine = performance.now();
        }

        const due = stage.evals.filter((e) => e.every !== undefined && stepsDone % e.every === 0).flatMap((e) => e.probes);
        if (due.length && stepsDone < total) {
          const te = performance.now();
          await evaluate(runner, [...new Set(due)], stepsDone - 1, opts.tty === true);
          evalSecs += (performance.now() - te) / 1000;
        }
        // A step on the CPU backends resolves without a turn of the event loop: one here lets the CLI's Ctrl-C
        // handler run between steps, not only at the next file or timer.
        if (opts.signal) await turn();
        const interrupted = opts.signal?.aborted === true && stepsDone < total;
        let ck: Checkpoint | undefined;
        if (((every > 0 && stepsDone % every === 0) || interrupted) && stepsDone < total && badSteps === 0) {
          where.at = `stage ${stage.name}, the checkpoint after step ${stepsDone}`;
          ck = save(false, await runner.parameters(), await runner.optimizerState(), cursor);
        }
        if (interrupted) {
          const kept = ck ? `checkpoint ${ck.dir} written` : `no checkpoint of it (${badSteps} non-finite step${badSteps === 1 ? '' : 's'} in a row); the last good one is ${lastCheckpoint(ckptRoot) ?? 'none'}`;
          return { code: 130, stages: summaries, exports: [], message: `interrupted in stage ${stage.name} after step ${stepsDone}/${total}: ${kept}; the same command with --resume continues` };
        }
        if (opts.stopAfter !== undefined && stepsThisRun >= opts.stopAfter && stepsDone < total) {
          return { code: 1, stages: summaries, exports: [], message: `stopped after ${stepsThisRun} steps (stopAfter)` };
        }
      }
      const trainSecs = (performance.now() - tStart) / 1000 - evalSecs;
      where.at = `stage ${stage.name}, its end (probes, exit transitions, merge check)`;
      // The stage's probes, on the model as trained (before the exit transitions).
      const evals = stageProbes(stage).length ? await evaluate(runner, stageProbes(stage), stepsDone - 1, false) : undefined;
      const secs = (performance.now() - t0) / 1000;
      const before = await runner.parameters();
      const constraints = constraintSums(stage, plan, before);
      // Exit transitions, then the merge check.
      let mergeCheck: StageSummary['mergeCheck'];
      const merges = stage.exit.filter((x) => x.op === 'merge');
      let reference: { value: string; out: Float32Array } | undefined;
      const probeId = stage.values.some((v) => v.id === 'x.final') ? 'x.final' : undefined;
      if (merges.length && sample && probeId) reference = { value: probeId, out: (await runner.forward(sample, [probeId])).get(probeId)! };
      const report = await runner.applyExit();
      params = await runner.parameters();
      if (reference && sample) mergeCheck = await checkMerge(plan, stage, before, params, merges, sample, reference, root, opts.seed, total, opts.backend);
      const ex: string[] = [];
      for (const m of report.merged) ex.push(`merged ${m.adapter}${m.part ? `.${m.part}` : ''} (${m.sites.length} sites)`);
      if (report.dropped.length) ex.push(`dropped ${report.dropped.length} tensors`);
      for (const d of report.droppedExperts) {
        if (d.experts.length) ex.push(`dropped experts ${d.experts.join(',')} of ${d.adapter} at ${d.site}`);
        if (d.kept) w(`warning: stage ${stage.name}: the drop condition of ${d.adapter} matched ${d.kept.length + d.experts.length} of the live experts at ${d.site}; kept ${d.kept.length === 1 ? 'expert' : 'experts'} ${d.kept.join(',')}, the most loaded (loads ${d.load.map((l) => `${(100 * l).toFixed(1)}%`).join(', ')}), so that top_k experts remain to route to\n`);
      }
      if (report.frozen.length) ex.push(`froze ${report.frozen.join(', ')}`);
      if (ex.length) w(`stage ${stage.name} exit: ${ex.join('; ')}\n`);
      if (merges.length && !mergeCheck) w(`stage ${stage.name}: merge check skipped (${!sample ? 'no step ran' : !probeId ? 'the stage has no x.final value' : 'mixture merges are not checked yet'})\n`);
      if (mergeCheck) {
        w(`stage ${stage.name} merge check: max |merged - unmerged| of ${mergeCheck.value} = ${mergeCheck.maxAbsDiff.toExponential(2)} ${mergeCheck.ok ? 'ok' : 'FAILED'}\n`);
        if (!mergeCheck.ok) throw new RunError(`stage ${stage.name}: the merged model's outputs differ from the unmerged model's by ${mergeCheck.maxAbsDiff} (tolerance 1e-4)`);
      }
      const ck = save(true, params, await runner.optimizerState(), cursor);
      writeRecord(stage, ck.step, evals);
      const ran = stepsDone - stepsAtStart;
      const summary: StageSummary = {
        stage: stage.name,
        reused: false,
        steps: stepsDone,
        ...(lastLoss !== undefined ? { finalLoss: lastLoss } : {}),
        ...(firstLoss !== undefined && lastCe !== undefined ? { firstLoss: firstLoss.loss, firstCe: firstLoss.ce, finalCe: lastCe } : {}),
        constraints,
        ...(mergeCheck ? { mergeCheck } : {}),
        ...(evals ? { evals } : {}),
        secs,
        ...(ran > 0 ? { tokensPerSec: tokens / trainSecs, stepsPerSec: ran / trainSecs } : {}),
      };
      summaries.push(summary);
      keptMetrics.length = 0;
      const fall = firstLoss !== undefined && lastLoss !== undefined ? `, loss ${firstLoss.loss.toFixed(4)} -> ${lastLoss.toFixed(4)}${Math.abs(lastLoss - (lastCe ?? lastLoss)) > 1e-9 ? ` (cross-entropy ${firstLoss.ce.toFixed(4)} -> ${lastCe!.toFixed(4)})` : ''}` : lastLoss !== undefined ? `, final loss ${lastLoss.toFixed(4)}` : '';
      w(`stage ${stage.name} done: ${stepsDone} step${stepsDone === 1 ? '' : 's'}${fall}${summary.stepsPerSec ? `, ${summary.stepsPerSec.toFixed(2)} steps/s, ${Math.round(summary.tokensPerSec!)} tok/s` : ''}, checkpoint ${ck.dir}\n`);
      for (const c of constraints) w(`  orthogonality ${c.target} vs ${c.other} (${c.matrix}): ${constraintValue(c)}\n`);
    } finally {
      runner.dispose();
    }
  }

  where.at = 'the exports';
  gpuCheck();
  const exports = runExports(plan, params!, root);
  for (const e of exports) {
    w(`exported ${e.format} -> ${e.path}${exportedWhat(e)}\n`);
    for (const n of exportGaps(e)) w(`warning: export ${e.format} ${e.path}: ${n.adapter} is not in it: ${n.reason}\n`);
  }
  return { code: 0, stages: summaries, exports };
}

/** What an export holds, as printed after its path: ` (attn, knowledge, align)`; empty for merged. */
export function exportedWhat(e: ExportResult): string {
  if (e.format === 'peft') return ` (${e.result.adapters.map((a) => a.adapter).join(', ')})`;
  if (e.format === 'safetensors') return ` (${e.result.map((a) => a.adapter).join(', ')})`;
  return e.result.merged.length ? ` (merged in: ${e.result.merged.join(', ')})` : '';
}

/** Adapters of the trained model an export leaves out (a merged export: those it cannot merge), with why. */
export function exportGaps(e: ExportResult): { adapter: string; reason: string }[] {
  if (e.format === 'peft') return e.result.notExported;
  if (e.format === 'merged') return e.result.skipped.filter((s) => s.kind === 'kept');
  return [];
}

/** A measured constraint as printed: `sum |A_t A_o^T| = 1.541e+2` (or `|B_t^T B_o|`). */
export function constraintValue(c: StageSummary['constraints'][number]): string {
  return `sum |${c.matrix === 'A' ? `A_${c.target} A_${c.other}^T` : `B_${c.target}^T B_${c.other}`}| = ${c.value.toExponential(3)}`;
}

/** A 20-cell bar for the terminal progress line: `[#######.............]`. */
export function progressBar(done: number, total: number, width = 20): string {
  const filled = total > 0 ? Math.min(width, Math.round((done / total) * width)) : width;
  return `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}]`;
}

function fmtSecs(s: number): string {
  if (!Number.isFinite(s)) return '?';
  if (s < 60) return `${Math.round(s)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(Math.round(s % 60)).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.round((s % 3600) / 60)).padStart(2, '0')}m`;
}

async function loadStageData(plan: Plan, stage: PlanStage, root: string, tokenizer: ReturnType<typeof createTokenizer>, opts: RunOptions): Promise<Dataset[]> {
  const out: Dataset[] = [];
  for (const name of stage.data) {
    const spec = plan.data.find((d) => d.name === name);
    if (!spec) throw new RunError(`stage ${stage.name}: no data entry '${name}' in the plan`);
    const set = await loadDataSource(spec, { root, tokenizer, maxLen: stage.settings.maxLen, lossOn: stage.settings.loss, skipBadRecords: opts.skipBadRecords ?? false, allowOutsideRoot: opts.allowOutsideRoot ?? false });
    if (set.skipped) opts.write(`${spec.path}: skipped ${set.skipped} bad record${set.skipped === 1 ? '' : 's'} (--skip-bad-records); first: ${set.warnings[0]?.message ?? ''}\n`);
    if (set.noLoss) opts.write(`warning: ${spec.path}: ${set.noLoss} of ${set.examples.length} examples keep no token in the loss at max_len ${stage.settings.maxLen} (what is left of them is prompt): they train nothing; a larger max_len keeps them\n`);
    out.push(set);
  }
  return out;
}

/** Sum of |A_t A_o^T| (or |B_t^T B_o|) over the constraint's sites, from parameter values. */
function constraintSums(stage: PlanStage, plan: Plan, params: ReadonlyMap<string, Float32Array>): StageSummary['constraints'] {
  const out: StageSummary['constraints'] = [];
  const shape = new Map(plan.parameters.map((p) => [p.id, p.shape]));
  /**
   * The vectors an orthogonality term multiplies, as the ortho_penalty kernel stacks them: the rows of A
   * ([r, in], shared experts [S·r, in], routed experts [E, r, in]) or the columns of B ([out, r], ...),
   * of every part of the adapter at the site that the stage still holds.
   */
  const vectors = (adapter: string, site: string, m: 'A' | 'B'): Float32Array[] => {
    const vs: Float32Array[] = [];
    for (const t of [m, `shared_${m}`, `expert_${m}`]) {
      const id = `${adapter}.${site}.${t}`;
      const x = params.get(id);
      const sh = shape.get(id);
      if (!x || !sh || sh.length < 2) continue;
      const [rows, cols] = [sh[sh.length - 2]!, sh[sh.length - 1]!];
      const blocks = x.length / (rows * cols);
      for (let b = 0; b < blocks; b++) {
        const o = b * rows * cols;
        if (m === 'A') for (let i = 0; i < rows; i++) vs.push(x.subarray(o + i * cols, o + (i + 1) * cols));
        else for (let j = 0; j < cols; j++) vs.push(Float32Array.from({ length: rows }, (_, i) => x[o + i * cols + j]!));
      }
    }
    return vs;
  };
  for (const c of stage.constraints) {
    for (const other of c.others) {
      let sum = 0;
      let found = false;
      for (const site of c.sites) {
        const xs = vectors(c.target, site, c.matrix);
        const ys = vectors(other, site, c.matrix);
        if (!xs.length || !ys.length) continue;
        found = true;
        for (const u of xs)
          for (const v of ys) {
            let d = 0;
            for (let k = 0; k < u.length; k++) d += u[k]! * v[k]!;
            sum += Math.abs(d);
          }
      }
      if (found) out.push({ target: c.target, other, matrix: c.matrix, value: sum });
    }
  }
  return out;
}

/**
 * After a merge: the stage's graph over the merged base weights, with the merged adapters' B set to 0 at the
 * merged sites (every other tensor as before the exit), must compute what the unmerged model computed.
 */
async function checkMerge(
  plan: Plan,
  stage: PlanStage,
  before: Map<string, Float32Array>,
  after: Map<string, Float32Array>,
  merges: PlanStage['exit'],
  sample: MicroBatch,
  ref: { value: string; out: Float32Array },
  root: string,
  seed: number | undefined,
  total: number,
  backend: BackendName | undefined,
): Promise<StageSummary['mergeCheck']> {
  const p = new Map(before);
  for (const m of merges) {
    if (m.op !== 'merge' || m.part) return undefined;
    for (const site of m.sites) {
      const wId = `base.${site}.weight`;
      const bId = `${m.adapter}.${site}.B`;
      const wv = after.get(wId);
      const bv = p.get(bId);
      if (!wv || !bv) return undefined;
      p.set(wId, wv);
      p.set(bId, new Float32Array(bv.length));
    }
  }
  const r: StageRunner = await createStageRunner(plan, stage.name, { root, parameters: p, totalSteps: total, ...(seed !== undefined ? { seed } : {}), ...(backend ? { backend } : {}) });
  try {
    const out = (await r.forward(sample, [ref.value])).get(ref.value)!;
    let d = 0;
    let scale = 1e-12;
    for (let i = 0; i < out.length; i++) {
      d = Math.max(d, Math.abs(out[i] - ref.out[i]));
      scale = Math.max(scale, Math.abs(ref.out[i]));
    }
    return { value: ref.value, maxAbsDiff: d, ok: d <= 1e-4 * Math.max(1, scale) };
  } finally {
    r.dispose();
  }
}
