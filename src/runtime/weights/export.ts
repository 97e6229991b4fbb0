/**
 * The plan's exports, run after the last stage on the final parameters:
 *   - `export peft "dir"`: one folder per adapter, `dir/<adapter>/`, in PEFT's layout (peft.ts) for LoRAs and
 *     in mcpc's layout (adapter-file.ts) for mixtures that are not LoRAs; plus `dir/mcpc_export.json`, which
 *     says what each folder holds and how they rebuild the trained model from the model source (the adapters
 *     merged into the base during the pipeline are exported from their factors, kept after the merge);
 *   - `export safetensors "dir"`: one folder per adapter in mcpc's layout, `dir/<adapter>/`;
 *   - `export merged "dir"`: the base with every surviving LoRA merged in (W += s B A), as a Hugging Face
 *     checkpoint (hf.ts).
 *
 * The parameter map is taken as the trainer leaves it: base weights with every `merge X into base` of the
 * stage transitions already applied (in place), and folded adapters *not* folded in (folding makes a stage
 * copy). So `export merged` merges the adapters that are alive at the end (trainable, frozen or folded in the
 * last stage) and skips those whose state is `merged` (already in the base) or gone (dropped, absent).
 */
import { mkdirSync } from 'node:fs';
import { isAbsolute, join, resolve } from 'node:path';
import type { Plan } from '../../plan/types.js';
import { exportAdapterFile, type AdapterFileResult } from './adapter-file.js';
import { WeightsError } from './errors.js';
import { checkpointParameters, saveHfCheckpoint, type HfSaveOptions } from './hf.js';
import { writeJsonAtomic } from './json.js';
import { findAdapter, loraViews, mergeLora } from './merge.js';
import { adapterEndState, exportPeftAdapter, finalStage, peftExportable, type PeftExportOptions, type PeftExportResult } from './peft.js';

export const EXPORT_MANIFEST = 'mcpc_export.json';


/** Adapters already merged into the base weights by the end of the pipeline. */
export function mergedIntoBase(plan: Plan): string[] {
  return plan.adapters.filter((a) => adapterEndState(plan, a.name).lowRank === 'merged').map((a) => a.name);
}

/** Adapters alive at the end of the pipeline (some part trainable, frozen or folded in the last stage). */
export function liveAdapters(plan: Plan): string[] {
  const alive = (s?: string) => s === 'trainable' || s === 'frozen' || s === 'folded';
  return plan.adapters.filter((a) => {
    const st = adapterEndState(plan, a.name);
    return alive(st.lowRank) || alive(st.routed);
  }).map((a) => a.name);
}

export interface PeftFolderResult {
  adapter: string;
  dir: string;
  layout: 'peft' | 'mcpc';
  peft?: PeftExportResult;
  mcpc?: AdapterFileResult;
  /** Why a mixture got mcpc's layout. */
  reason?: string;
}

export interface PeftExportAllResult {
  dir: string;
  adapters: PeftFolderResult[];
  manifest: string;
  /** Adapters the trained model is made of that this export does not hold, and why. */
  notExported: { adapter: string; reason: string }[];
}

/** Stages that train base weights (full-parameter training): adapters exported after them apply to the trained base. */
export function baseTrainedIn(plan: Plan): string[] {
  return plan.stages.filter((s) => plan.parameters.some((p) => p.owner === 'base' && p.states[s.name] === 'trainable')).map((s) => s.name);
}

/** Why adapter `name`, part of the trained model, is not in an export that does not name it. */
function whyNotExported(plan: Plan, name: string): string {
  const can = peftExportable(plan, name);
  return can.ok ? 'not in this export\'s adapter list' : `${can.reason}; \`export safetensors ${name} "path"\` writes it in mcpc's layout, \`export merged\` cannot hold it either`;
}

/**
 * `export peft`: a folder per adapter under `dir`, then `dir/mcpc_export.json`, which says how the folders
 * rebuild the trained model: the model source plus every adapter in `apply_together` (LoRA updates add up,
 * so merging the folders one after another, in any order, gives the trained weights), the adapters merged
 * into the base during the pipeline among them.
 */
export function exportPeft(plan: Plan, params: ReadonlyMap<string, Float32Array>, dir: string, adapters: readonly string[], options: PeftExportOptions = {}): PeftExportAllResult {
  mkdirSync(dir, { recursive: true });
  const results: PeftFolderResult[] = [];
  for (const name of adapters) {
    const sub = join(dir, name);
    const can = peftExportable(plan, name);
    const a = findAdapter(plan, name);
    if (can.ok) results.push({ adapter: name, dir: sub, layout: 'peft', peft: exportPeftAdapter(plan, params, name, sub, options) });
    else if (a.type === 'moe_lora') results.push({ adapter: name, dir: sub, layout: 'mcpc', mcpc: exportAdapterFile(plan, params, name, sub), reason: can.reason });
    else throw new WeightsError('NOT_EXPORTABLE', sub, `cannot export adapter ${name}: ${can.reason}`);
  }
  const merged = mergedIntoBase(plan);
  const live = liveAdapters(plan);
  const parts = [...merged, ...live.filter((x) => !merged.includes(x))];
  const exported = new Set(results.map((r) => r.adapter));
  const notExported = parts.filter((x) => !exported.has(x)).map((x) => ({ adapter: x, reason: whyNotExported(plan, x) }));
  const trained = baseTrainedIn(plan);
  const manifest = {
    format: 'mcpc-export',
    version: 1,
    pipeline: plan.pipeline,
    base: plan.model.source,
    ...(trained.length ? { base_trained_in: trained } : {}),
    merged_into_base: merged,
    apply_together: parts.filter((x) => exported.has(x)),
    not_exported: notExported,
    note:
      (trained.length
        ? `The base weights were trained in stage ${trained.join(', ')}: these adapters apply to that trained base, which only \`export merged\` writes, not to the model source. `
        : `The trained model is the model source with every adapter in apply_together applied at once; LoRA updates add up, so merging the folders one after another (PEFT: PeftModel.from_pretrained(model, folder).merge_and_unload()) gives the same weights. `) +
      (merged.length ? `${merged.join(', ')} ${merged.length === 1 ? 'was' : 'were'} merged into the base during the pipeline; the adapters after ${merged.length === 1 ? 'it' : 'them'} were trained on top of ${merged.length === 1 ? 'it' : 'them'}. ` : '') +
      (notExported.length ? `Not in this export: ${notExported.map((n) => n.adapter).join(', ')} (see not_exported); without ${notExported.length === 1 ? 'it' : 'them'} the folders do not reproduce the trained model.` : ''),
    adapters: results.map((r) => ({
      name: r.adapter,
      folder: r.adapter,
      layout: r.layout,
      ...(r.peft ? { peft: { r: r.peft.r, lora_alpha: r.peft.loraAlpha, use_rslora: r.peft.useRslora }, plan: { r: r.peft.planR, alpha: r.peft.planAlpha, scale: r.peft.scale }, ...(r.peft.rankNote ? { rank_note: r.peft.rankNote } : {}) } : {}),
      ...(r.reason ? { reason: r.reason } : {}),
      ...(merged.includes(r.adapter) ? { merged_into_base: true } : {}),
      apply_with: parts.filter((x) => x !== r.adapter),
    })),
  };
  const file = join(dir, EXPORT_MANIFEST);
  writeJsonAtomic(file, { ...manifest, note: manifest.note.trim() });
  return { dir, adapters: results, manifest: file, notExported };
}

/** `export safetensors`: a folder per adapter under `dir`, in mcpc's layout. */
export function exportSafetensors(plan: Plan, params: ReadonlyMap<string, Float32Array>, dir: string, adapters: readonly string[]): AdapterFileResult[] {
  mkdirSync(dir, { recursive: true });
  return adapters.map((name) => exportAdapterFile(plan, params, name, join(dir, name)));
}

export interface MergedExportOptions extends HfSaveOptions {
  /** Adapters to merge (default, or when empty: every LoRA alive at the end of the pipeline). */
  adapters?: readonly string[];
}

export interface MergedExportResult {
  dir: string;
  files: string[];
  /** Adapters merged into the saved weights (besides those already merged by the pipeline). */
  merged: string[];
  /** Adapters not merged, and why. */
  skipped: MergeSkip[];
}

/**
 * An adapter `export merged` leaves out: already in the base (`merged`), gone by the end (`gone`), or part of
 * the trained model that no merge can hold (`kept`: a mixture with a live router): only those are a gap.
 */
export interface MergeSkip {
  adapter: string;
  reason: string;
  kind: 'merged' | 'gone' | 'kept';
}

/**
 * The base weights with the surviving LoRAs merged: a new map of the base parameters (`params` untouched).
 * Mixtures with live routed experts cannot be merged and are skipped (listed in `skipped`).
 */
export function mergedBaseParameters(plan: Plan, params: ReadonlyMap<string, Float32Array>, adapters?: readonly string[]): { weights: Map<string, Float32Array>; merged: string[]; skipped: MergeSkip[] } {
  const weights = new Map<string, Float32Array>();
  for (const p of checkpointParameters(plan)) {
    const v = params.get(p.id);
    if (!v) throw new WeightsError('MISSING_PARAMETER', '(parameters)', `base parameter ${p.id} is not in the parameter map`);
    weights.set(p.id, v);
  }
  const copied = new Set<string>();
  const merged: string[] = [];
  const skipped: MergeSkip[] = [];
  const explicit = adapters !== undefined && adapters.length > 0;
  const names = explicit ? [...adapters] : plan.adapters.map((a) => a.name);
  const live = new Set(liveAdapters(plan));
  for (const name of names) {
    const st = adapterEndState(plan, name);
    if (st.lowRank === 'merged') {
      skipped.push({ adapter: name, reason: 'already merged into the base by the pipeline', kind: 'merged' });
      continue;
    }
    if (!live.has(name)) {
      if (explicit) throw new WeightsError('NOT_EXPORTABLE', '(plan)', `cannot merge adapter ${name} into the base: it is ${st.lowRank ?? st.routed ?? 'absent'} at the end of the pipeline`);
      skipped.push({ adapter: name, reason: `${st.lowRank ?? st.routed ?? 'absent'} at the end of the pipeline`, kind: 'gone' });
      continue;
    }
    const can = peftExportable(plan, name);
    if (!can.ok) {
      if (explicit) throw new WeightsError('NOT_EXPORTABLE', '(plan)', `cannot merge adapter ${name} into the base: ${can.reason}`);
      skipped.push({ adapter: name, reason: can.reason, kind: 'kept' });
      continue;
    }
    for (const v of loraViews(plan, name)) {
      let W = weights.get(v.weight)!;
      if (!copied.has(v.weight)) {
        W = Float32Array.from(W);
        weights.set(v.weight, W);
        copied.add(v.weight);
      }
      const A = params.get(v.A);
      const B = params.get(v.B);
      if (!A || !B) throw new WeightsError('MISSING_PARAMETER', '(parameters)', `parameter ${!A ? v.A : v.B} is not in the parameter map`);
      mergeLora(W, A, B, v.scale, v.out, v.in);
    }
    merged.push(name);
  }
  return { weights, merged, skipped };
}

/** `export merged`: the merged model as a Hugging Face checkpoint in `dir`. */
export function exportMerged(plan: Plan, params: ReadonlyMap<string, Float32Array>, dir: string, options: MergedExportOptions = {}): MergedExportResult {
  const { weights, merged, skipped } = mergedBaseParameters(plan, params, options.adapters);
  const { files } = saveHfCheckpoint(plan, weights, dir, options);
  return { dir, files, merged, skipped };
}

export interface RunExportsOptions extends PeftExportOptions {
  /** Dtype of merged checkpoints (default F32). */
  dtype?: HfSaveOptions['dtype'];
  maxShardBytes?: number;
}

export type ExportResult =
  | { format: 'peft'; path: string; result: PeftExportAllResult }
  | { format: 'safetensors'; path: string; result: AdapterFileResult[] }
  | { format: 'merged'; path: string; result: MergedExportResult };

/** Runs every export of the plan, paths resolved against `root` (the project root). */
export function runExports(plan: Plan, params: ReadonlyMap<string, Float32Array>, root = '.', options: RunExportsOptions = {}): ExportResult[] {
  finalStage(plan);
  const out: ExportResult[] = [];
  for (const e of plan.exports) {
    const path = isAbsolute(e.path) ? e.path : resolve(root, e.path);
    switch (e.format) {
      case 'peft':
        out.push({ format: 'peft', path, result: exportPeft(plan, params, path, e.adapters, options) });
        break;
      case 'safetensors':
        out.push({ format: 'safetensors', path, result: exportSafetensors(plan, params, path, e.adapters) });
        break;
      case 'merged':
        out.push({
          format: 'merged',
          path,
          result: exportMerged(plan, params, path, { adapters: e.adapters, root, ...(options.dtype ? { dtype: options.dtype } : {}), ...(options.maxShardBytes ? { maxShardBytes: options.maxShardBytes } : {}) }),
        });
        break;
    }
  }
  return out;
}
