/**
 * LoRA merge math on plain row-major Float32Arrays, and the plan-level merges built on it.
 *
 * A LoRA at a linear site with weight W [out, in] is y = x W^T + s (x A^T) B^T with A [r, in] and B [out, r];
 * merging it gives W' = W + s B A. Each element of B A is summed over the rank in float64, in rank order, and
 * W + s (B A) is rounded to float32 once, so the result does not depend on the order sites are merged in and
 * differs from an exact merge by at most one float32 rounding.
 *
 * Plan-level helpers (`loraViews`, `mergeAdapter`, `foldAdapters`) find the A, B and base weight of each site
 * from the plan's parameter list (by owner, site and role), so they work for plain LoRAs (`A`, `B`) and for a
 * mixture's shared experts (`shared_A`, `shared_B`) alike.
 */
import type { Plan, PlanParam } from '../../plan/types.js';
import { WeightsError } from './errors.js';

function checkDims(W: Float32Array | undefined, A: Float32Array, B: Float32Array, out: number, inF: number): number {
  if (!Number.isSafeInteger(out) || !Number.isSafeInteger(inF) || out <= 0 || inF <= 0) throw new RangeError(`invalid weight shape [${out}, ${inF}]`);
  if (W && W.length !== out * inF) throw new RangeError(`W has ${W.length} elements, expected [${out}, ${inF}] = ${out * inF}`);
  if (A.length % inF !== 0) throw new RangeError(`A has ${A.length} elements, not a multiple of in = ${inF}`);
  const r = A.length / inF;
  if (B.length !== out * r) throw new RangeError(`B has ${B.length} elements, expected [${out}, ${r}] = ${out * r} (A is [${r}, ${inF}])`);
  return r;
}

/**
 * W += scale · B A, in place, on the row-major [out, in] weight W, with A [r, in] and B [out, r]; returns W.
 * r is A.length / in.
 */
export function mergeLora(W: Float32Array, A: Float32Array, B: Float32Array, scale: number, out: number, inFeatures: number): Float32Array {
  const r = checkDims(W, A, B, out, inFeatures);
  const row = new Float64Array(inFeatures);
  for (let o = 0; o < out; o++) {
    row.fill(0);
    for (let k = 0; k < r; k++) {
      const b = B[o * r + k]!;
      if (b === 0) continue;
      const aBase = k * inFeatures;
      for (let i = 0; i < inFeatures; i++) row[i]! += b * A[aBase + i]!;
    }
    const wBase = o * inFeatures;
    for (let i = 0; i < inFeatures; i++) W[wBase + i] = W[wBase + i]! + scale * row[i]!;
  }
  return W;
}

/** W + scale · B A as a new array; W is left untouched. */
export function foldedWeight(W: Float32Array, A: Float32Array, B: Float32Array, scale: number, out: number, inFeatures: number): Float32Array {
  return mergeLora(Float32Array.from(W), A, B, scale, out, inFeatures);
}

/** scale · B A as a new [out, in] array (float64 sums, rounded once). */
export function loraDelta(A: Float32Array, B: Float32Array, scale: number, out: number, inFeatures: number): Float32Array {
  return mergeLora(new Float32Array(out * inFeatures), A, B, scale, out, inFeatures);
}

/** W -= scale · B A, in place: the inverse of `mergeLora` up to float32 rounding (used to check merges). */
export function unmergeLora(W: Float32Array, A: Float32Array, B: Float32Array, scale: number, out: number, inFeatures: number): Float32Array {
  return mergeLora(W, A, B, -scale, out, inFeatures);
}

/** The largest |a_i - b_i| (Infinity when lengths differ, NaN-safe: a NaN anywhere gives NaN). */
export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) return Infinity;
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i]! - b[i]!);
    if (!(d <= m)) m = d;
  }
  return m;
}

// --- plan level -------------------------------------------------------------------------------------------------

/** One site of a low-rank adapter as plain tensors' ids: the base weight and the A, B it adds to it. */
export interface LoraView {
  adapter: string;
  site: string;
  /** Plan ids. */
  weight: string;
  A: string;
  B: string;
  out: number;
  in: number;
  /** The rank of A and B (for `lora(r, experts: E)`, r · E; for a mixture's shared experts, r · shared). */
  rank: number;
  scale: number;
  /** The base weight's Hugging Face module name, e.g. `model.layers.0.mlp.gate_proj` (from its hfName). */
  module: string;
}

export type PlanAdapter = Plan['adapters'][number];

export function findAdapter(plan: Plan, name: string): PlanAdapter {
  const a = plan.adapters.find((x) => x.name === name);
  if (!a) throw new WeightsError('UNKNOWN_ADAPTER', '(plan)', `the plan has no adapter named ${JSON.stringify(name)} (adapters: ${plan.adapters.map((x) => x.name).join(', ') || 'none'})`);
  return a;
}

/** The base weight parameter of each linear site, by site path. */
export function baseWeightsBySite(plan: Plan): Map<string, PlanParam> {
  const m = new Map<string, PlanParam>();
  for (const p of plan.parameters) if (p.owner === 'base' && p.role === 'weight' && p.site) m.set(p.site, p);
  return m;
}

/** The Hugging Face module name of a base weight: its hfName without `.weight`. */
export function moduleName(weight: PlanParam): string {
  if (!weight.hfName) throw new WeightsError('PLAN', '(plan)', `base weight ${weight.id} has no hfName`);
  return weight.hfName.replace(/\.weight$/, '');
}

/**
 * The low-rank parts of adapter `name`, one view per site: a plain LoRA's A and B, or a mixture's shared
 * experts (an adapter with no low-rank part, e.g. a mixture without shared experts, has none).
 */
export function loraViews(plan: Plan, name: string): LoraView[] {
  const a = findAdapter(plan, name);
  const bases = baseWeightsBySite(plan);
  const bySite = new Map<string, { A?: PlanParam; B?: PlanParam }>();
  for (const p of plan.parameters) {
    if (p.owner !== name || !p.site || (p.role !== 'lora_A' && p.role !== 'lora_B')) continue;
    const e = bySite.get(p.site) ?? {};
    if (p.role === 'lora_A') e.A = p;
    else e.B = p;
    bySite.set(p.site, e);
  }
  const views: LoraView[] = [];
  for (const site of a.sites) {
    const e = bySite.get(site);
    if (!e) continue;
    const w = bases.get(site);
    if (!e.A || !e.B || !w) throw new WeightsError('PLAN', '(plan)', `adapter ${name} at ${site}: the plan lacks ${!w ? 'the base weight' : !e.A ? 'lora_A' : 'lora_B'}`);
    const [out, inF] = w.shape as [number, number];
    const rank = e.A.shape[0]!;
    if (e.A.shape[1] !== inF || e.B.shape[0] !== out || e.B.shape[1] !== rank) {
      throw new WeightsError('PLAN', '(plan)', `adapter ${name} at ${site}: A [${e.A.shape}] and B [${e.B.shape}] do not fit the weight [${w.shape}]`);
    }
    views.push({ adapter: name, site, weight: w.id, A: e.A.id, B: e.B.id, out, in: inF, rank, scale: a.scale, module: moduleName(w) });
  }
  return views;
}

function need(params: ReadonlyMap<string, Float32Array>, id: string, numel: number): Float32Array {
  const v = params.get(id);
  if (!v) throw new WeightsError('MISSING_PARAMETER', '(parameters)', `parameter ${id} is not in the parameter map`);
  if (v.length !== numel) throw new WeightsError('SHAPE_MISMATCH', '(parameters)', `parameter ${id} has ${v.length} elements, the plan says ${numel}`);
  return v;
}

/**
 * `merge X into base` (or `merge X.shared into base`): W += s B A at each site of the adapter (or at `sites`),
 * in place in `params`. Returns the ids of the base weights changed.
 */
export function mergeAdapter(plan: Plan, params: Map<string, Float32Array>, name: string, sites?: readonly string[]): string[] {
  const only = sites ? new Set(sites) : undefined;
  const changed: string[] = [];
  for (const v of loraViews(plan, name)) {
    if (only && !only.has(v.site)) continue;
    const W = need(params, v.weight, v.out * v.in);
    mergeLora(W, need(params, v.A, v.rank * v.in), need(params, v.B, v.out * v.rank), v.scale, v.out, v.in);
    changed.push(v.weight);
  }
  return changed;
}

/**
 * A folded stage copy of the base weights: for each site of the given adapters, W + Σ s B A as a new array
 * (`params` untouched). Adapters folded at the same site are summed in the order given.
 */
export function foldAdapters(plan: Plan, params: ReadonlyMap<string, Float32Array>, names: readonly string[]): Map<string, Float32Array> {
  const out = new Map<string, Float32Array>();
  for (const name of names) {
    for (const v of loraViews(plan, name)) {
      let W = out.get(v.weight);
      if (!W) {
        W = Float32Array.from(need(params, v.weight, v.out * v.in));
        out.set(v.weight, W);
      }
      mergeLora(W, need(params, v.A, v.rank * v.in), need(params, v.B, v.out * v.rank), v.scale, v.out, v.in);
    }
  }
  return out;
}
