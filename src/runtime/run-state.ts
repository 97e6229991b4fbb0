/**
 * The run folder's records, as `runPlan` (./run.ts) reads and checks them before it trusts them:
 *   - a checkpoint's `state.json` (RunState: stage, steps done, optimizer step, schedule position, data cursor,
 *     RNG, input hash), parsed with its shape and ranges checked (parseRunState);
 *   - its tensors: every parameter and moment the stage needs, of the plan's sizes (checkParams,
 *     checkMoments); a checkpoint that fails any check is a BadCheckpoint, skipped for an older one;
 *   - `stages/<stage>.json` (StageRecord: the stage's input hash, its stage-end checkpoint, probe results);
 *   - the stage input hashes (stageInputs: what a stage's weights depend on, part by part, so a refusal can
 *     say which input changed; explainChange), and the probes' own hashes (probeHash, evalsHash);
 *   - what a killed write leaves behind (cleanLeftovers).
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { isAbsolute, join, resolve } from 'node:path';
import { heldIn, isRoutedPart } from '../plan/pipeline.js';
import type { Plan, PlanStage } from '../plan/types.js';
import type { DataCursor } from './data/index.js';
import type { ProbeResult } from './eval/index.js';
import { removeStaleTempFiles } from './io/atomic.js';
import { CheckpointError, readCheckpointFile, removeLeftovers, verifyCheckpoint, type Checkpoint } from './io/checkpoint.js';
import { encodeSafetensors, SafetensorsError, SafetensorsReader } from './io/safetensors.js';
import type { RunOptions } from './run.js';

export interface RunState {
  format: 'mcpc-run-state';
  version: 1;
  stageIndex: number;
  stage: string;
  /** Optimizer steps taken in the stage (applied or skipped). */
  stepsDone: number;
  stageDone: boolean;
  t: number;
  scheduleStep: number;
  cursor: DataCursor;
  rng: { seed: number; epoch: number };
  stageHash: string;
  badSteps: number;
  /** What the hash covers, part by part (absent in checkpoints of older versions): says what changed. */
  inputs?: InputsRecord;
  /** Routed tokens counted per mixture site so far in the stage (absent: none, or an older version). */
  routerLoad?: { adapter: string; site: string; counts: number[] }[];
}

/** The inputs of a stage and of every stage before it, by part (hashes), as recorded with a checkpoint or record. */
export interface InputsRecord {
  /** Model, parameter and adapter sections, model files, --seed, --max-steps. */
  run: string;
  stages: { name: string; hash: string; settings: string; data: Record<string, string> }[];
}

/** A stage's input hash (see the top of the file), that of older versions, and its parts. */
interface StageInputs {
  hash: string;
  /** The hash as versions before checkpoint_every / eval were left out computed it: a folder they wrote still matches. */
  legacy: string;
  settings: string;
  data: Record<string, string>;
}

/** A checkpoint (or record) that cannot be used, and why, naming the file at fault. */
export class BadCheckpoint extends Error {}

const sha = (x: string | Uint8Array) => createHash('sha256').update(x).digest('hex');

/** Serialises tensors (exact f32) by name. */
export function packTensors(m: ReadonlyMap<string, Float32Array>, shapes?: ReadonlyMap<string, number[]>): Uint8Array {
  const t = new Map<string, { dtype: 'F32'; shape: number[]; data: Uint8Array }>();
  for (const id of [...m.keys()].sort()) {
    const a = m.get(id)!;
    t.set(id, { dtype: 'F32', shape: shapes?.get(id) ?? [a.length], data: new Uint8Array(a.buffer, a.byteOffset, a.byteLength) });
  }
  return encodeSafetensors(t);
}

function unpackTensors(bytes: Uint8Array, name: string): Map<string, Float32Array> {
  const r = SafetensorsReader.fromBytes(bytes, name);
  const out = new Map<string, Float32Array>();
  for (const key of r.names) out.set(key, Float32Array.from(r.readFloat32(key)));
  return out;
}

export interface StageRecord {
  stage: string;
  hash: string;
  checkpoint: number;
  /** The stage-end probe results, and the hash of the probes' definitions and data they were measured with. */
  evals?: ProbeResult[];
  evalsHash?: string;
  /** The same per probe (newer records): a probe removed from the stage's `eval` leaves the others' results usable. */
  probeHashes?: Record<string, string>;
  inputs?: InputsRecord;
  /** Written from the stage-end checkpoint's state.json after the record was lost: no probe results. */
  rebuilt?: boolean;
}

/** Reads a stage record: `rec`, or `problem` when it exists but cannot be used (undefined both: no record). */
export function readStageRecord(file: string): { rec?: StageRecord; problem?: string } {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    return code === 'ENOENT' ? {} : { problem: `its record ${file} cannot be read (${(e as Error).message})` };
  }
  try {
    const r = JSON.parse(text) as StageRecord;
    if (r && typeof r === 'object' && typeof r.hash === 'string' && Number.isSafeInteger(r.checkpoint) && r.checkpoint >= 0) return { rec: r };
    return { problem: `its record ${file} is not a stage record (no hash and checkpoint number)` };
  } catch (e) {
    return { problem: `its record ${file} is unreadable: not JSON (${(e as Error).message})` };
  }
}

/** Removes what a killed run leaves in the run folder (see io/checkpoint.ts removeLeftovers), saying so. */
export function cleanLeftovers(runDir: string, ckptRoot: string, stagesDir: string, w: (text: string) => void): void {
  const { removed, inUse } = removeLeftovers(ckptRoot);
  const mb = (n: number) => `${(n / 1e6).toFixed(1)} MB`;
  for (const r of removed) {
    w(`removed ${join(ckptRoot, r.name)}: ${r.kind === 'staging' ? 'an unfinished checkpoint write' : 'a checkpoint deletion'} of a run that was killed (${mb(r.bytes)})\n`);
  }
  for (const u of inUse) {
    w(`warning: ${join(ckptRoot, u.name)} is a checkpoint being written by process ${u.pid}, which is running: is another mcpc run using ${runDir}? Left alone (remove it if no other run is)\n`);
  }
  for (const dir of [runDir, stagesDir]) for (const name of removeStaleTempFiles(dir)) w(`removed ${join(dir, name)}: an unfinished write of a run that was killed\n`);
}

/** The parts of a plan stage that decide its trained weights: all but checkpoint_every, its probes and the estimates. */
function trainingPart(stage: PlanStage): unknown {
  const s: Record<string, unknown> = { ...stage, settings: { ...stage.settings } };
  delete s.evals;
  delete s.estimates;
  delete (s.settings as Record<string, unknown>).checkpointEvery;
  return s;
}

/** Every stage's input hash (see the top of the file), computed before any stage runs. */
export function stageInputs(plan: Plan, root: string, opts: RunOptions): { run: string; stages: StageInputs[] } {
  const run = sha(JSON.stringify({ model: plan.model, parameters: plan.parameters, adapters: plan.adapters, seed: opts.seed ?? null, maxSteps: opts.maxSteps ?? null, modelFiles: modelFilesHash(plan, root) }));
  let prev = run;
  let prevLegacy = run;
  const stages = plan.stages.map((stage) => {
    const data: Record<string, string> = {};
    for (const name of stage.data) {
      const spec = plan.data.find((d) => d.name === name);
      let h = 'missing';
      if (spec) {
        try {
          h = sha(JSON.stringify(spec) + sha(readFileSync(isAbsolute(spec.path) ? spec.path : resolve(root, spec.path))));
        } catch {
          h = 'unreadable'; // loading the data says why
        }
      }
      data[name] = h;
    }
    const list = stage.data.map((n) => data[n]!);
    const part = trainingPart(stage);
    const hash = sha(JSON.stringify({ v: 2, prev, stage: part, data: list }));
    const legacy = sha(JSON.stringify({ prev: prevLegacy, stage, data: list }));
    prev = hash;
    prevLegacy = legacy;
    return { hash, legacy, settings: sha(JSON.stringify(part)), data };
  });
  return { run, stages };
}

/** What differs between recorded inputs and the current ones, up to stage `index`, in words. */
export function explainChange(plan: Plan, old: InputsRecord | undefined, run: string, cur: readonly StageInputs[], index: number): string {
  const name = plan.stages[index]!.name;
  if (!old || !Array.isArray(old.stages)) return `the inputs of stage ${name} changed (its plan section, its data, an earlier stage's, the model, --seed or --max-steps)`;
  if (old.run !== run) return 'the model, its parameters or adapters, the model files, --seed or --max-steps changed';
  for (let j = 0; j <= index; j++) {
    const o = old.stages[j];
    const c = cur[j]!;
    const st = plan.stages[j]!;
    if (!o || o.name !== st.name) return `the pipeline's stages changed (stage ${j + 1} was ${o ? `'${o.name}'` : 'not there'}, now '${st.name}')`;
    if (o.hash === c.hash) continue;
    if (o.settings !== c.settings) return `the plan section of stage ${st.name} changed (settings, adapters, transitions or graph)`;
    for (const d of new Set([...Object.keys(o.data ?? {}), ...Object.keys(c.data)])) {
      if (o.data?.[d] === c.data[d]) continue;
      const spec = plan.data.find((x) => x.name === d);
      return `${spec ? `data ${d} (${spec.path})` : `data ${d}`} of stage ${st.name} changed`;
    }
  }
  return `the inputs of stage ${name} changed`;
}

const numel = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);

/**
 * The tensors a checkpoint of stage `index` must hold (`atEnd`: after its exit transitions): every parameter a
 * stage up to it held, less those an exit `drop` removed (a runner passes every tensor it is given on).
 */
function expectedTensors(plan: Plan, index: number, atEnd: boolean): Set<string> {
  const out = new Set<string>();
  for (let j = 0; j <= index; j++) {
    const st = plan.stages[j]!;
    for (const p of plan.parameters) if (heldIn(p, st.name)) out.add(p.id);
    if (j === index && !atEnd) break;
    for (const tr of st.exit) {
      if (tr.op !== 'drop' || tr.condition) continue;
      for (const p of plan.parameters) if (p.owner === tr.adapter && (tr.part !== 'experts' || isRoutedPart(p))) out.delete(p.id);
    }
  }
  return out;
}

const fewIds = (ids: readonly string[]) => `${ids.slice(0, 5).join(', ')}${ids.length > 5 ? ` and ${ids.length - 5} more` : ''}`;

/** A checkpoint's parameters against the plan: none missing, each of its shape's size. Throws BadCheckpoint. */
export function checkParams(plan: Plan, index: number, atEnd: boolean, params: ReadonlyMap<string, Float32Array>): void {
  const missing = [...expectedTensors(plan, index, atEnd)].filter((id) => !params.has(id));
  if (missing.length) throw new BadCheckpoint(`params.safetensors lacks ${missing.length} tensor${missing.length === 1 ? '' : 's'} that stage ${plan.stages[index]!.name} holds: ${fewIds(missing)}`);
  for (const p of plan.parameters) {
    const a = params.get(p.id);
    if (a && a.length !== numel(p.shape)) throw new BadCheckpoint(`params.safetensors: ${p.id} has ${a.length} values, its shape [${p.shape.join(', ')}] has ${numel(p.shape)}`);
  }
}

/** A mid-stage checkpoint's moments: `m.<id>` (and `v.<id>` for AdamW) of every trainable tensor, nothing else. */
export function checkMoments(plan: Plan, stage: PlanStage, moments: ReadonlyMap<string, Float32Array>): void {
  const sizes = new Map(plan.parameters.map((p) => [p.id, numel(p.shape)]));
  const want = new Map<string, number>();
  for (const id of stage.optimizer.params) {
    want.set(`m.${id}`, sizes.get(id) ?? -1);
    if (stage.settings.optimizer.kind === 'adamw') want.set(`v.${id}`, sizes.get(id) ?? -1);
  }
  const missing = [...want.keys()].filter((k) => !moments.has(k));
  if (missing.length) throw new BadCheckpoint(`optimizer.safetensors lacks ${missing.length} moment${missing.length === 1 ? '' : 's'} of stage ${stage.name}'s trainable tensors: ${fewIds(missing)}`);
  const extra = [...moments.keys()].filter((k) => !want.has(k));
  if (extra.length) throw new BadCheckpoint(`optimizer.safetensors holds moments that are none of stage ${stage.name}'s trainable tensors: ${fewIds(extra)}`);
  for (const [k, n] of want) if (moments.get(k)!.length !== n) throw new BadCheckpoint(`optimizer.safetensors: ${k} has ${moments.get(k)!.length} values, its tensor ${n}`);
}

/** The tensors of a checkpoint file; a damaged one throws BadCheckpoint. */
export function readTensors(ck: Checkpoint, name: string): Map<string, Float32Array> {
  try {
    return unpackTensors(readCheckpointFile(ck, name), name);
  } catch (e) {
    if (e instanceof CheckpointError) throw new BadCheckpoint(`${name}: ${e.detail}`);
    if (e instanceof SafetensorsError) throw new BadCheckpoint(`${name} is not valid safetensors: ${e.message}`);
    throw e;
  }
}

/** `dir` as a checkpoint whose files match its manifest (sha256); else a BadCheckpoint naming the file at fault. */
export function openCheckpoint(dir: string): Checkpoint {
  try {
    return verifyCheckpoint(dir);
  } catch (e) {
    if (e instanceof CheckpointError) throw new BadCheckpoint(e.code === 'NO_MARKER' && !existsSync(dir) ? 'the folder is missing' : `${e.fileName && e.code !== 'NO_MARKER' ? `${e.fileName}: ` : ''}${e.detail}`);
    throw e;
  }
}

/** Parses and checks a checkpoint's state.json (shape, ranges, a stage of this plan). Throws BadCheckpoint. */
export function parseRunState(text: string, plan: Plan): RunState {
  const bad = (what: string): never => {
    throw new BadCheckpoint(`state.json: ${what}`);
  };
  let o: Record<string, unknown>;
  try {
    o = JSON.parse(text) as Record<string, unknown>;
  } catch (e) {
    return bad(`not JSON (${(e as Error).message})`);
  }
  const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
  if (!isObj(o)) return bad('not a JSON object');
  if (o.format !== 'mcpc-run-state' || o.version !== 1) bad('not an mcpc run state (format mcpc-run-state, version 1)');
  const count = (v: unknown, what: string): number => (Number.isSafeInteger(v) && (v as number) >= 0 ? (v as number) : bad(`${what} is ${JSON.stringify(v) ?? 'missing'}, not a count`));
  const stageIndex = count(o.stageIndex, '"stageIndex"');
  const stage = plan.stages[stageIndex];
  if (typeof o.stage !== 'string') bad(`"stage" is ${JSON.stringify(o.stage) ?? 'missing'}, not a stage name`);
  if (!stage || stage.name !== o.stage) bad(`it is of stage '${o.stage as string}' (number ${stageIndex + 1}), which this pipeline does not have there (a different pipeline, or its stages changed)`);
  const stepsDone = count(o.stepsDone, '"stepsDone"');
  if (typeof o.stageDone !== 'boolean') bad(`"stageDone" is ${JSON.stringify(o.stageDone) ?? 'missing'}, not true or false`);
  const t = count(o.t, '"t"');
  const scheduleStep = count(o.scheduleStep, '"scheduleStep"');
  const badSteps = count(o.badSteps, '"badSteps"');
  if (!isObj(o.cursor)) return bad(`"cursor" is ${JSON.stringify(o.cursor) ?? 'missing'}, not {epoch, index}`);
  const cursor = { epoch: count(o.cursor.epoch, '"cursor.epoch"'), index: count(o.cursor.index, '"cursor.index"') };
  if (!isObj(o.rng) || typeof o.rng.seed !== 'number' || !Number.isFinite(o.rng.seed)) return bad(`"rng" is ${JSON.stringify(o.rng) ?? 'missing'}, not {seed, epoch}`);
  if (o.rng.epoch !== cursor.epoch) bad(`"rng.epoch" (${JSON.stringify(o.rng.epoch)}) is not the cursor's epoch ${cursor.epoch}`);
  if (typeof o.stageHash !== 'string' || !/^[0-9a-f]{64}$/.test(o.stageHash)) bad('"stageHash" is not a sha256');
  if (t > stepsDone) bad(`AdamW's step count "t" ${t} is over the ${stepsDone} steps done`);
  if (scheduleStep !== stepsDone) bad(`the schedule position ${scheduleStep} is not the ${stepsDone} steps done`);
  if (badSteps > stepsDone) bad(`${badSteps} non-finite steps in a row, over the ${stepsDone} steps done`);
  const inputs = isObj(o.inputs) && typeof o.inputs.run === 'string' && Array.isArray(o.inputs.stages) ? (o.inputs as unknown as InputsRecord) : undefined;
  let routerLoad: RunState['routerLoad'];
  if (o.routerLoad !== undefined) {
    if (!Array.isArray(o.routerLoad)) return bad('"routerLoad" is not a list');
    routerLoad = o.routerLoad.map((l, i) => {
      const site = plan.adapters.find((a) => isObj(l) && a.name === l.adapter)?.sites.includes(isObj(l) ? (l.site as string) : '');
      if (!isObj(l) || typeof l.adapter !== 'string' || typeof l.site !== 'string' || !site) return bad(`"routerLoad"[${i}] names no mixture site of this plan`);
      const experts = plan.adapters.find((a) => a.name === l.adapter)!.experts;
      if (!Array.isArray(l.counts) || l.counts.length !== experts) return bad(`"routerLoad"[${i}].counts is not ${experts} counts`);
      return { adapter: l.adapter, site: l.site, counts: l.counts.map((c, e) => count(c, `"routerLoad"[${i}].counts[${e}]`)) };
    });
  }
  return {
    format: 'mcpc-run-state',
    version: 1,
    stageIndex,
    stage: stage!.name,
    stepsDone,
    stageDone: o.stageDone as boolean,
    t,
    scheduleStep,
    cursor,
    rng: { seed: o.rng.seed, epoch: cursor.epoch },
    stageHash: o.stageHash as string,
    badSteps,
    ...(inputs ? { inputs } : {}),
    ...(routerLoad ? { routerLoad } : {}),
  };
}

/** The probes a stage measures at its end: every probe of its `eval` lines, once each. */
export function stageProbes(stage: PlanStage): string[] {
  return [...new Set(stage.evals.flatMap((e) => e.probes))];
}

/** A probe's definition, its data entry and the sha256 of that file's content ('' when unreadable: the probe reports it). */
function probeInputs(plan: Plan, name: string, root: string): { spec: unknown; data: unknown; content: string } {
  const spec = plan.probes.find((p) => p.name === name);
  const data = plan.data.find((d) => d.name === spec?.data);
  let content = '';
  try {
    if (data) content = sha(readFileSync(isAbsolute(data.path) ? data.path : resolve(root, data.path)));
  } catch {
    /* unreadable: the probe itself reports it */
  }
  return { spec, data, content };
}

/** Hash of what one probe's results depend on besides the weights: its definition, data file, max_len, tokenizer. */
export function probeHash(plan: Plan, stage: PlanStage, name: string, root: string): string {
  return sha(JSON.stringify({ ...probeInputs(plan, name, root), maxLen: stage.settings.maxLen, tokenizer: plan.model.tokenizer }));
}

/** Hash of what a stage's probe results depend on besides its weights, as records before per-probe hashes kept it. */
export function evalsHash(plan: Plan, stage: PlanStage, root: string): string {
  const parts = stageProbes(stage).map((name) => probeInputs(plan, name, root));
  return sha(JSON.stringify({ parts, maxLen: stage.settings.maxLen, tokenizer: plan.model.tokenizer }));
}

/** Content hash of the model folder when the plan loads pretrained weights (else ''). */
function modelFilesHash(plan: Plan, root: string): string {
  if (!plan.parameters.some((p) => p.init.kind === 'pretrained')) return '';
  const src = plan.model.source;
  if (src.kind !== 'hf') return '';
  const dir = isAbsolute(src.path) ? src.path : resolve(root, src.path);
  if (!existsSync(dir)) return '';
  const h = createHash('sha256');
  const files = statSync(dir).isDirectory() ? readdirSync(dir).sort().map((f) => join(dir, f)) : [dir];
  for (const f of files) {
    if (!statSync(f).isFile()) continue;
    h.update(f).update(readFileSync(f));
  }
  return h.digest('hex');
}
