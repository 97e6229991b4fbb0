/**
 * mcpc's own adapter layout, for any adapter (plain LoRAs and mixtures alike): what `export safetensors` writes,
 * and what `export peft` writes for an adapter that is not a LoRA (a mixture with live routed experts).
 *
 * A folder per adapter:
 *   adapter.safetensors   every tensor of the adapter still alive at the end of the pipeline, keyed by plan
 *                         parameter id (`knowledge.layers[0].mlp.gate.A`, `noise.layers[0].mlp.up.expert_A`),
 *                         F32, row-major, metadata {"format": "pt", "mcpc_adapter": <name>};
 *   adapter.json          the sidecar, written last (format "mcpc-adapter", version 1): the adapter's
 *                         hyperparameters (type, r, alpha, scale, rslora, dropout, experts, top_k, shared, router,
 *                         renormalize, load_balance, router_noise), the parts present, the model it belongs to,
 *                         the forward formula, and per site: its path, Hugging Face module, in/out features and
 *                         the tensor of each role (A, B; shared_A, shared_B, router_W, router_b, expert_A,
 *                         expert_B).
 *
 * Shapes (r the rank, E the experts, S the shared experts):
 *   lora:      A [r·E, in], B [out, r·E]
 *   moe_lora:  shared_A [r·S, in], shared_B [out, r·S], router_W [E, in], router_b [E],
 *              expert_A [E, r, in], expert_B [E, out, r]
 */
import { existsSync, mkdirSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import type { Plan, PlanParam } from '../../plan/types.js';
import { writeFileAtomicSync } from '../io/atomic.js';
import { SafetensorsReader, layoutSafetensors, tensorFromFloat32, type TensorInput } from '../io/safetensors.js';
import { WeightsError } from './errors.js';
import { readJsonObject, writeJsonAtomic, type Plain } from './json.js';
import { baseWeightsBySite, findAdapter, moduleName } from './merge.js';
import { finalStage } from './peft.js';

export const ADAPTER_FORMAT = 'mcpc-adapter';
export const ADAPTER_FORMAT_VERSION = 1;
export const ADAPTER_SIDECAR = 'adapter.json';
export const ADAPTER_WEIGHTS = 'adapter.safetensors';

const GONE = new Set(['dropped', 'absent']);

/** The tensor name of a parameter inside its site: the id after `<adapter>.<site>.` (`A`, `expert_B`, ...). */
function tensorKey(p: PlanParam): string {
  const prefix = `${p.owner}.${p.site}.`;
  return p.site !== undefined && p.id.startsWith(prefix) ? p.id.slice(prefix.length) : p.role;
}

function forwardFormula(a: Plan['adapters'][number]): string {
  if (a.type === 'lora') return 'y = x W^T + scale * (x A^T) B^T';
  const gate = a.router === 'sigmoid' ? 'p = sigmoid(x router_W^T + router_b)' : 'p = softmax(x router_W^T + router_b)';
  return (
    `y = x W^T${a.shared > 0 ? ' + scale * (x shared_A^T) shared_B^T' : ''} + sum over e in topk(p, top_k) of g_e * scale * (x expert_A[e]^T) expert_B[e]^T; ` +
    `${gate}; g_e = ${a.renormalize ? 'p_e / (sum of p over the top_k)' : 'p_e'}`
  );
}

export interface AdapterFileResult {
  adapter: string;
  dir: string;
  files: string[];
  tensors: number;
  /** Parts left out because they are gone at the end of the pipeline (e.g. dropped routed experts). */
  omitted: string[];
}

/** Writes adapter `name` in mcpc's layout into folder `dir`. */
export function exportAdapterFile(plan: Plan, params: ReadonlyMap<string, Float32Array>, name: string, dir: string): AdapterFileResult {
  const a = findAdapter(plan, name);
  const last = finalStage(plan);
  const mine = plan.parameters.filter((p) => p.owner === name);
  const live = mine.filter((p) => !GONE.has(p.states[last] ?? 'absent'));
  if (!live.length) throw new WeightsError('NOT_EXPORTABLE', dir, `adapter ${name} is ${mine[0]?.states[last] ?? 'absent'} at the end of the pipeline: nothing to export`);
  const omitted = [...new Set(mine.filter((p) => !live.includes(p)).map((p) => `${tensorKey(p)} (${p.states[last]})`))];

  const tensors = new Map<string, TensorInput>();
  for (const p of live) {
    const v = params.get(p.id);
    const n = p.shape.reduce((x, y) => x * y, 1);
    if (!v) throw new WeightsError('MISSING_PARAMETER', '(parameters)', `parameter ${p.id} is not in the parameter map`);
    if (v.length !== n) throw new WeightsError('SHAPE_MISMATCH', '(parameters)', `parameter ${p.id} has ${v.length} elements, the plan says ${n}`);
    tensors.set(p.id, tensorFromFloat32(v, p.shape));
  }
  const bases = baseWeightsBySite(plan);
  const sites = a.sites.map((site) => {
    const w = bases.get(site);
    const ts = live.filter((p) => p.site === site);
    return {
      site,
      module: w ? moduleName(w) : null,
      in: w?.shape[1] ?? null,
      out: w?.shape[0] ?? null,
      tensors: Object.fromEntries(ts.map((p) => [tensorKey(p), p.id])),
    };
  });
  const roles = new Set(live.map((p) => p.role));
  const sidecar = {
    format: ADAPTER_FORMAT,
    version: ADAPTER_FORMAT_VERSION,
    name,
    type: a.type,
    r: a.r,
    alpha: a.alpha,
    scale: a.scale,
    rslora: a.rslora,
    dropout: a.dropout,
    experts: a.experts,
    top_k: a.topK,
    shared: a.shared,
    router: a.router,
    renormalize: a.renormalize,
    load_balance: a.loadBalance,
    router_noise: a.routerNoise,
    parts: {
      low_rank: roles.has('lora_A'),
      routed: roles.has('expert_A'),
    },
    omitted,
    forward: forwardFormula(a),
    model: { arch: plan.model.config.arch, hidden: plan.model.config.hidden, layers: plan.model.config.layers, source: plan.model.source },
    weights: ADAPTER_WEIGHTS,
    sites,
  };

  mkdirSync(dir, { recursive: true });
  const sidecarFile = join(dir, ADAPTER_SIDECAR);
  if (existsSync(sidecarFile)) unlinkSync(sidecarFile);
  const weightsFile = join(dir, ADAPTER_WEIGHTS);
  const { head, chunks } = layoutSafetensors(tensors, { format: 'pt', mcpc_adapter: name }, weightsFile);
  writeFileAtomicSync(weightsFile, [head, ...chunks]);
  writeJsonAtomic(sidecarFile, sidecar);
  return { adapter: name, dir, files: [weightsFile, sidecarFile], tensors: tensors.size, omitted };
}

export interface AdapterFileImport {
  params: Map<string, Float32Array>;
  /** Plan parameters of the adapter the folder does not hold (e.g. routed experts dropped before export). */
  missing: string[];
}

/** Reads an mcpc adapter folder into the parameters of plan adapter `name` (matched by site and tensor). */
export function importAdapterFile(plan: Plan, name: string, dir: string): AdapterFileImport {
  const a = findAdapter(plan, name);
  const sidecarFile = join(dir, ADAPTER_SIDECAR);
  const s = readJsonObject(sidecarFile, 'BAD_ADAPTER');
  const bad = (detail: string): never => {
    throw new WeightsError('BAD_ADAPTER', sidecarFile, detail);
  };
  if (s.format !== ADAPTER_FORMAT) bad(`format is ${JSON.stringify(s.format ?? null)}, expected "${ADAPTER_FORMAT}"`);
  if (s.version !== ADAPTER_FORMAT_VERSION) bad(`version ${JSON.stringify(s.version ?? null)} is not supported (this mcpc reads version ${ADAPTER_FORMAT_VERSION})`);
  const want: [string, Plain][] = [['type', a.type], ['r', a.r], ['experts', a.experts], ['shared', a.shared]];
  for (const [k, v] of want) if (s[k] !== v) bad(`${k} is ${JSON.stringify(s[k] ?? null)}, plan adapter ${name} has ${JSON.stringify(v)}`);
  if (!Array.isArray(s.sites)) bad('"sites" must be an array');
  const fileSites = new Map<string, { [k: string]: Plain }>();
  for (const e of s.sites as Plain[]) {
    if (e === null || typeof e !== 'object' || Array.isArray(e) || typeof e.site !== 'string' || e.tensors === null || typeof e.tensors !== 'object' || Array.isArray(e.tensors)) bad('every entry of "sites" needs a "site" string and a "tensors" object');
    const o = e as { [k: string]: Plain };
    fileSites.set(o.site as string, o.tensors as { [k: string]: Plain });
  }
  const weightsFile = join(dir, ADAPTER_WEIGHTS);
  const reader = SafetensorsReader.open(weightsFile);
  try {
    const params = new Map<string, Float32Array>();
    const missing: string[] = [];
    for (const p of plan.parameters) {
      if (p.owner !== name || p.site === undefined) continue;
      const t = fileSites.get(p.site)?.[tensorKey(p)];
      if (typeof t !== 'string') {
        missing.push(p.id);
        continue;
      }
      if (!reader.has(t)) throw new WeightsError('MISSING_TENSOR', weightsFile, `${ADAPTER_SIDECAR} lists it for ${p.site}, but the file does not hold it`, t);
      const info = reader.info(t);
      if (info.shape.length !== p.shape.length || info.shape.some((d, i) => d !== p.shape[i])) {
        throw new WeightsError('SHAPE_MISMATCH', weightsFile, `has shape [${info.shape.join(', ')}], plan parameter ${p.id} is [${p.shape.join(', ')}]`, t);
      }
      if (!['F32', 'F16', 'BF16', 'F64'].includes(info.dtype)) throw new WeightsError('BAD_DTYPE', weightsFile, `has dtype ${info.dtype}; adapter weights must be floating point`, t);
      params.set(p.id, reader.readFloat32(t));
    }
    return { params, missing };
  } finally {
    reader.close();
  }
}
