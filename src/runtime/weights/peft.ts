/**
 * PEFT (huggingface/peft) LoRA adapters: export of a plan adapter as an adapter folder that
 * `PeftModel.from_pretrained(base, folder)` loads, and import of such a folder back into plan parameters.
 *
 * Layout of one adapter folder:
 *   adapter_model.safetensors   `base_model.model.<module>.lora_A.weight` [r, in] and `.lora_B.weight` [out, r]
 *                               for each site, e.g. base_model.model.model.layers.0.mlp.gate_proj.lora_A.weight
 *                               (PEFT drops the adapter name from the keys of the default adapter), F32,
 *                               metadata {"format": "pt"};
 *   adapter_config.json         a LoraConfig as PEFT 0.18 writes it (every field, keys sorted, 2-space indent),
 *                               written last.
 *
 * What PEFT computes from the config must equal what the plan computes:
 *   - PEFT's scale is lora_alpha / r (lora_alpha / sqrt(r) with use_rslora), r being the rank of the tensors.
 *   - A plain `lora(r, alpha)` is written as is: r, lora_alpha = alpha, use_rslora = rslora.
 *   - `lora(r, alpha, experts: E)` (MedCare's shared experts) is one LoRA of rank r·E whose scale is the
 *     plan's s = alpha / r (not alpha / (r·E)). It is written with r = r·E, use_rslora = false and
 *     lora_alpha = s · r · E, so PEFT's lora_alpha / r_peft is s again: the Knowledge Aggregator of MedCare
 *     (r 16, alpha 32, experts 2; s = 2) becomes r = 32, lora_alpha = 64.
 *   - A mixture whose routed experts were dropped (`drop X.experts`) keeps only its shared experts, a LoRA of
 *     rank r·shared with scale s: written the same way. A mixture with live routed experts is no LoRA; it
 *     gets the mcpc layout of adapter-file.ts instead.
 *   - target_modules: the Hugging Face leaf names (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj,
 *     down_proj). When the sites are every layer times a set of modules, a list; when they are some layers
 *     times a set of modules, the list plus layers_to_transform and layers_pattern "layers"; any other set of
 *     sites (e.g. `except layers[0].attn.o`, or lm_head) a regular expression PEFT full-matches against module
 *     names, so PEFT wraps exactly the modules the plan adapted.
 *
 * Import reads the same layout (keys with or without the `.default` adapter name), checks every tensor's
 * name and shape against the plan, and, when the folder's scale differs from the plan's (a PEFT adapter
 * trained with other alpha), multiplies B by scale_peft / scale_plan so the imported adapter computes the
 * same function under the plan's scale.
 */
import { existsSync, mkdirSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import type { Plan } from '../../plan/types.js';
import { SafetensorsReader, layoutSafetensors, tensorFromFloat32, type TensorInput } from '../io/safetensors.js';
import { writeFileAtomicSync } from '../io/atomic.js';
import { WeightsError } from './errors.js';
import { readJsonObject, writeJsonAtomic, type Plain } from './json.js';
import { findAdapter, loraViews, type LoraView, type PlanAdapter } from './merge.js';

export const PEFT_CONFIG_FILE = 'adapter_config.json';
export const PEFT_WEIGHTS_FILE = 'adapter_model.safetensors';
/** The PEFT release whose adapter_config.json layout is reproduced. */
export const PEFT_FORMAT_VERSION = '0.18.0';

/** The final stage's name: exports happen after it. */
export function finalStage(plan: Plan): string {
  const s = plan.stages[plan.stages.length - 1];
  if (!s) throw new WeightsError('PLAN', '(plan)', 'the plan has no stages');
  return s.name;
}

/** The state at the end of the pipeline of each part of an adapter: its low-rank part and its routed experts. */
export function adapterEndState(plan: Plan, name: string): { lowRank?: string; routed?: string } {
  const last = finalStage(plan);
  const out: { lowRank?: string; routed?: string } = {};
  for (const p of plan.parameters) {
    if (p.owner !== name) continue;
    const st = p.states[last];
    if (p.role === 'lora_A' || p.role === 'lora_B') out.lowRank ??= st;
    else out.routed ??= st;
  }
  // The last stage's own then-block runs after it trains: its transitions are the true end state.
  const stage = plan.stages.find((s) => s.name === last);
  for (const t of stage?.exit ?? []) {
    if (t.adapter !== name) continue;
    if (t.op === 'merge') {
      if (out.lowRank !== undefined) out.lowRank = 'merged';
    } else if (t.op === 'drop' && !t.condition) {
      if (t.part !== 'experts' && out.lowRank !== undefined) out.lowRank = 'dropped';
      if (out.routed !== undefined) out.routed = 'dropped';
    } else if (t.op === 'freeze') {
      if (out.lowRank === 'trainable') out.lowRank = 'frozen';
      if (out.routed === 'trainable') out.routed = 'frozen';
    }
  }
  return out;
}

const GONE = new Set(['dropped', 'absent', undefined]);

/**
 * Whether adapter `name` can be written as a PEFT LoRA: a plain `lora`, or a mixture whose routed experts are
 * gone at the end of the pipeline and that has shared experts. Returns the reason when it cannot.
 */
export function peftExportable(plan: Plan, name: string): { ok: true } | { ok: false; reason: string } {
  const a = findAdapter(plan, name);
  const st = adapterEndState(plan, name);
  if (GONE.has(st.lowRank)) {
    if (a.type === 'moe_lora' && a.shared === 0) return { ok: false, reason: `${name} is a mixture of routed experts (no shared experts): it is not a LoRA` };
    return { ok: false, reason: `${name} is ${st.lowRank ?? 'absent'} at the end of the pipeline` };
  }
  if (a.type === 'moe_lora' && !GONE.has(st.routed)) return { ok: false, reason: `${name} has live routed experts and a router: it is not a LoRA` };
  return { ok: true };
}

/** PEFT's scaling for a config: lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora. */
export function peftScale(loraAlpha: number, r: number, useRslora: boolean): number {
  return useRslora ? loraAlpha / Math.sqrt(r) : loraAlpha / r;
}

/** r, lora_alpha and use_rslora that make PEFT reproduce the plan's scale for tensors of rank `rank`. */
export function peftRankAlpha(a: PlanAdapter, rank: number): { r: number; lora_alpha: number; use_rslora: boolean } {
  if (rank === a.r && Math.abs(peftScale(a.alpha, rank, a.rslora) - a.scale) <= 1e-12 * Math.abs(a.scale)) {
    return { r: rank, lora_alpha: a.alpha, use_rslora: a.rslora };
  }
  return { r: rank, lora_alpha: a.scale * rank, use_rslora: false };
}

const LAYER_MODULE_RE = /^model\.layers\.(\d+)\.(.+)$/;

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/**
 * target_modules (and layers_to_transform, layers_pattern) selecting exactly `modules` (full module names such
 * as `model.layers.3.mlp.up_proj`) in a model of `layers` layers.
 */
export function peftTargets(modules: readonly string[], layers: number): { target_modules: string[] | string; layers_to_transform: number[] | null; layers_pattern: string | null } {
  const layerSet = new Set<number>();
  const leafSet = new Set<string>();
  let allInLayers = true;
  for (const m of modules) {
    const x = LAYER_MODULE_RE.exec(m);
    if (!x) {
      allInLayers = false;
      break;
    }
    layerSet.add(Number(x[1]));
    leafSet.add(x[2]!);
  }
  const set = new Set(modules);
  const leaves = [...leafSet];
  // A leaf like `mlp.gate_proj` is matched by PEFT through its last component; it must be unambiguous.
  const shortLeaves = leaves.map((l) => l.split('.').pop()!);
  const rectangular =
    allInLayers &&
    new Set(shortLeaves).size === leaves.length &&
    set.size === layerSet.size * leafSet.size &&
    [...layerSet].every((l) => leaves.every((leaf) => set.has(`model.layers.${l}.${leaf}`)));
  if (rectangular) {
    const order = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'];
    const sorted = [...shortLeaves].sort((x, y) => (order.indexOf(x) + 1 || 99) - (order.indexOf(y) + 1 || 99) || (x < y ? -1 : x > y ? 1 : 0));
    const ls = [...layerSet].sort((x, y) => x - y);
    const all = ls.length === layers && ls.every((l, i) => l === i);
    return { target_modules: sorted, layers_to_transform: all ? null : ls, layers_pattern: all ? null : 'layers' };
  }
  return { target_modules: [...set].sort().map(escapeRe).join('|'), layers_to_transform: null, layers_pattern: null };
}

/** The PEFT tensor name of a LoRA matrix at a module: `base_model.model.<module>.lora_A.weight`. */
export function peftTensorName(module: string, which: 'A' | 'B'): string {
  return `base_model.model.${module}.lora_${which}.weight`;
}

export interface PeftExportOptions {
  /** `base_model_name_or_path` (default: the plan's model source: its hf path, or null for a built-in model). */
  baseModelNameOrPath?: string | null;
}

/** adapter_config.json for adapter `name`, as PEFT 0.18 writes it. */
export function peftConfig(plan: Plan, name: string, views: readonly LoraView[], options: PeftExportOptions = {}): Record<string, unknown> {
  const a = findAdapter(plan, name);
  const rank = views[0]?.rank ?? a.r;
  const { r, lora_alpha, use_rslora } = peftRankAlpha(a, rank);
  const targets = peftTargets(views.map((v) => v.module), plan.model.config.layers);
  const initA = plan.parameters.find((p) => p.owner === name && p.role === 'lora_A')?.init.kind;
  const src = plan.model.source;
  const base = options.baseModelNameOrPath !== undefined ? options.baseModelNameOrPath : src.kind === 'hf' ? src.path : null;
  const cfg: Record<string, unknown> = {
    alora_invocation_tokens: null,
    alpha_pattern: {},
    arrow_config: null,
    auto_mapping: null,
    base_model_name_or_path: base,
    bias: 'none',
    corda_config: null,
    ensure_weight_tying: false,
    eva_config: null,
    exclude_modules: null,
    fan_in_fan_out: false,
    inference_mode: true,
    init_lora_weights: initA === 'normal' ? 'gaussian' : true,
    layer_replication: null,
    layers_pattern: targets.layers_pattern,
    layers_to_transform: targets.layers_to_transform,
    loftq_config: {},
    lora_alpha,
    lora_bias: false,
    lora_dropout: a.dropout,
    megatron_config: null,
    megatron_core: 'megatron.core',
    modules_to_save: null,
    peft_type: 'LORA',
    peft_version: PEFT_FORMAT_VERSION,
    qalora_group_size: 16,
    r,
    rank_pattern: {},
    revision: null,
    target_modules: targets.target_modules,
    target_parameters: null,
    task_type: 'CAUSAL_LM',
    trainable_token_indices: null,
    use_dora: false,
    use_qalora: false,
    use_rslora,
  };
  return Object.fromEntries(Object.keys(cfg).sort().map((k) => [k, cfg[k]]));
}

function need(params: ReadonlyMap<string, Float32Array>, id: string, numel: number): Float32Array {
  const v = params.get(id);
  if (!v) throw new WeightsError('MISSING_PARAMETER', '(parameters)', `parameter ${id} is not in the parameter map`);
  if (v.length !== numel) throw new WeightsError('SHAPE_MISMATCH', '(parameters)', `parameter ${id} has ${v.length} elements, the plan says ${numel}`);
  return v;
}

export interface PeftExportResult {
  adapter: string;
  dir: string;
  files: string[];
  /** What PEFT sees, and the plan's own numbers. */
  r: number;
  loraAlpha: number;
  useRslora: boolean;
  planR: number;
  planAlpha: number;
  scale: number;
  /** The adapter's tensor rank differs from its declared r (experts or shared experts): see the file comment. */
  rankNote?: string;
}

/** Writes adapter `name` as a PEFT LoRA folder `dir`. Throws NOT_EXPORTABLE for what is not a LoRA. */
export function exportPeftAdapter(plan: Plan, params: ReadonlyMap<string, Float32Array>, name: string, dir: string, options: PeftExportOptions = {}): PeftExportResult {
  const can = peftExportable(plan, name);
  if (!can.ok) throw new WeightsError('NOT_EXPORTABLE', dir, `cannot export as a PEFT LoRA: ${can.reason}`);
  const a = findAdapter(plan, name);
  const views = loraViews(plan, name);
  if (!views.length) throw new WeightsError('NOT_EXPORTABLE', dir, `adapter ${name} has no LoRA sites`);
  const ranks = new Set(views.map((v) => v.rank));
  if (ranks.size !== 1) throw new WeightsError('NOT_EXPORTABLE', dir, `adapter ${name} has sites of different ranks (${[...ranks].join(', ')})`);

  mkdirSync(dir, { recursive: true });
  const cfgFile = join(dir, PEFT_CONFIG_FILE);
  const tensors = new Map<string, TensorInput>();
  for (const v of views) {
    tensors.set(peftTensorName(v.module, 'A'), tensorFromFloat32(need(params, v.A, v.rank * v.in), [v.rank, v.in]));
    tensors.set(peftTensorName(v.module, 'B'), tensorFromFloat32(need(params, v.B, v.out * v.rank), [v.out, v.rank]));
  }
  const config = peftConfig(plan, name, views, options);
  // The config is the folder's completion marker: remove an old one before writing the weights.
  if (existsSync(cfgFile)) unlinkSync(cfgFile);
  const weightsFile = join(dir, PEFT_WEIGHTS_FILE);
  const { head, chunks } = layoutSafetensors(tensors, { format: 'pt' }, weightsFile);
  writeFileAtomicSync(weightsFile, [head, ...chunks]);
  writeJsonAtomic(cfgFile, config);
  const rank = views[0]!.rank;
  const ra = peftRankAlpha(a, rank);
  return {
    adapter: name,
    dir,
    files: [weightsFile, cfgFile],
    r: ra.r,
    loraAlpha: ra.lora_alpha,
    useRslora: ra.use_rslora,
    planR: a.r,
    planAlpha: a.alpha,
    scale: a.scale,
    ...(rank !== a.r
      ? { rankNote: `${name}: ${rank / a.r} experts of rank ${a.r} are one LoRA of rank ${rank}; PEFT's scale lora_alpha / r = ${ra.lora_alpha} / ${rank} = ${a.scale} equals the plan's` }
      : {}),
  };
}

// --- import -------------------------------------------------------------------------------------------------------

export interface PeftImportResult {
  /** Plan parameter id -> values, for the A and B of every site of the adapter. */
  params: Map<string, Float32Array>;
  /** scale_peft / scale_plan when the folder's scale differed (B was multiplied by it), else undefined. */
  rescaled?: number;
  warnings: string[];
}

const num = (v: Plain | undefined): number | undefined => (typeof v === 'number' ? v : undefined);

/**
 * Reads the PEFT LoRA folder `dir` into the parameters of plan adapter `name`. Every LoRA tensor of the folder
 * must belong to a site of the adapter and every site must be there, with the plan's shapes.
 */
export function importPeftAdapter(plan: Plan, name: string, dir: string): PeftImportResult {
  const a = findAdapter(plan, name);
  const cfgFile = join(dir, PEFT_CONFIG_FILE);
  const weightsFile = join(dir, PEFT_WEIGHTS_FILE);
  const cfg = readJsonObject(cfgFile, 'BAD_ADAPTER');
  const bad = (detail: string): never => {
    throw new WeightsError('BAD_ADAPTER', cfgFile, detail);
  };
  if (cfg.peft_type !== 'LORA') bad(`peft_type is ${JSON.stringify(cfg.peft_type ?? null)}; only LoRA adapters ("LORA") can be imported`);
  if (cfg.use_dora === true) bad('use_dora is true: DoRA adapters are not plain LoRAs and cannot be imported');
  if (cfg.fan_in_fan_out === true) bad('fan_in_fan_out is true: only [out, in] linear weights (Qwen2, Llama) are supported');
  for (const k of ['rank_pattern', 'alpha_pattern'] as const) {
    const v = cfg[k];
    if (v !== undefined && v !== null && (typeof v !== 'object' || Object.keys(v).length)) bad(`${k} is set: adapters with per-module ranks or alphas are not supported`);
  }
  if (cfg.lora_bias === true) bad('lora_bias is true: LoRA B biases are not supported');
  const r = num(cfg.r);
  const alpha = num(cfg.lora_alpha);
  if (r === undefined || !Number.isInteger(r) || r < 1) bad(`r must be a positive integer, found ${JSON.stringify(cfg.r ?? null)}`);
  if (alpha === undefined || !Number.isFinite(alpha)) bad(`lora_alpha must be a number, found ${JSON.stringify(cfg.lora_alpha ?? null)}`);
  const views = loraViews(plan, name);
  if (!views.length) throw new WeightsError('NOT_EXPORTABLE', dir, `plan adapter ${name} has no LoRA part to import into`);
  const rank = views[0]!.rank;
  if (r !== rank) bad(`r is ${r}, but plan adapter ${name} has rank ${rank}${rank !== a.r ? ` (r ${a.r} x ${rank / a.r} experts)` : ''}`);

  const reader = SafetensorsReader.open(weightsFile);
  try {
    const byName = new Map<string, { view: LoraView; which: 'A' | 'B' }>();
    for (const v of views) {
      for (const which of ['A', 'B'] as const) {
        byName.set(peftTensorName(v.module, which), { view: v, which });
        byName.set(`base_model.model.${v.module}.lora_${which}.default.weight`, { view: v, which });
      }
    }
    const found = new Map<string, string>(); // `${site}/${which}` -> tensor name
    for (const n of reader.names) {
      const hit = byName.get(n);
      if (!hit) {
        const isLora = /\.lora_[AB](\.[^.]+)?\.weight$/.test(n);
        throw new WeightsError('UNEXPECTED_TENSOR', weightsFile, isLora ? `plan adapter ${name} has no LoRA at this module (its sites: ${views.map((v) => v.module).slice(0, 4).join(', ')}${views.length > 4 ? ', ...' : ''})` : 'not a LoRA A or B matrix (DoRA magnitudes, embeddings and modules_to_save are not supported)', n);
      }
      const key = `${hit.view.site}/${hit.which}`;
      if (found.has(key)) throw new WeightsError('BAD_ADAPTER', weightsFile, `holds both ${found.get(key)} and ${n}`, n);
      found.set(key, n);
    }
    const params = new Map<string, Float32Array>();
    const sPeft = peftScale(alpha!, r!, cfg.use_rslora === true);
    const factor = sPeft / a.scale;
    const rescale = Math.abs(factor - 1) > 1e-9;
    for (const v of views) {
      for (const which of ['A', 'B'] as const) {
        const n = found.get(`${v.site}/${which}`);
        if (!n) throw new WeightsError('MISSING_TENSOR', weightsFile, `the adapter has no such tensor, which plan adapter ${name} needs at ${v.site}`, peftTensorName(v.module, which));
        const info = reader.info(n);
        const want = which === 'A' ? [v.rank, v.in] : [v.out, v.rank];
        if (info.shape.length !== 2 || info.shape[0] !== want[0] || info.shape[1] !== want[1]) {
          throw new WeightsError('SHAPE_MISMATCH', weightsFile, `has shape [${info.shape.join(', ')}], plan adapter ${name} expects [${want.join(', ')}] at ${v.site}`, n);
        }
        if (!['F32', 'F16', 'BF16', 'F64'].includes(info.dtype)) throw new WeightsError('BAD_DTYPE', weightsFile, `has dtype ${info.dtype}; LoRA weights must be floating point`, n);
        const values = reader.readFloat32(n);
        if (which === 'B' && rescale) for (let i = 0; i < values.length; i++) values[i] = values[i]! * factor;
        params.set(which === 'A' ? v.A : v.B, values);
      }
    }
    const warnings: string[] = [];
    if (rescale) warnings.push(`${cfgFile}: PEFT scale ${sPeft} (lora_alpha ${alpha}, r ${r}${cfg.use_rslora === true ? ', rsLoRA' : ''}) differs from plan adapter ${name}'s ${a.scale}: B was multiplied by ${factor} so the adapter computes the same function`);
    const drop = num(cfg.lora_dropout);
    if (drop !== undefined && drop !== a.dropout) warnings.push(`${cfgFile}: lora_dropout ${drop} differs from the plan's ${a.dropout} (the plan's is used)`);
    return { params, ...(rescale ? { rescaled: factor } : {}), warnings };
  } finally {
    reader.close();
  }
}
