/** The starting parameters of a run, and adapter import in either layout (for `--init-from`). */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { Plan } from '../../plan/types.js';
import { ADAPTER_SIDECAR, importAdapterFile } from './adapter-file.js';
import { WeightsError } from './errors.js';
import { loadBaseParameters, type HfLoadOptions } from './hf.js';
import { initParameters } from './init.js';
import { PEFT_CONFIG_FILE, importPeftAdapter } from './peft.js';

export interface InitialParameters {
  /** Every plan parameter by id: `pretrained` ones from the checkpoint, the rest from initParameters(plan, seed). */
  params: Map<string, Float32Array>;
  /** Checkpoint files read, tensors ignored and warnings (see loadHfCheckpoint). */
  files: string[];
  ignored: string[];
  warnings: string[];
}

/**
 * Every parameter of the plan at the start of the run: the base from the model's checkpoint (hf models, paths
 * resolved against `root`), everything else initialised from `seed`. Throws WeightsError naming the file
 * and tensor when the checkpoint does not fit the plan.
 */
export function initialParameters(plan: Plan, seed: number, root = '.', options: HfLoadOptions = {}): InitialParameters {
  const loaded = loadBaseParameters(plan, root, options);
  const params = initParameters(plan, seed);
  for (const [id, v] of loaded.weights) params.set(id, v);
  const missing = plan.parameters.find((p) => !params.has(p.id));
  if (missing) throw new WeightsError('MISSING_PARAMETER', '(plan)', `parameter ${missing.id} is pretrained but the checkpoint does not provide it`);
  return { params, files: loaded.files, ignored: loaded.ignored, warnings: loaded.warnings };
}

/**
 * Reads an exported adapter folder (PEFT's layout, or mcpc's) into the parameters of plan adapter `name`.
 * Returns the values and the adapter's parameters the folder did not provide (left to initialisation).
 */
export function importAdapter(plan: Plan, name: string, dir: string): { params: Map<string, Float32Array>; missing: string[]; warnings: string[] } {
  if (existsSync(join(dir, PEFT_CONFIG_FILE))) {
    const r = importPeftAdapter(plan, name, dir);
    const missing = plan.parameters.filter((p) => p.owner === name && !r.params.has(p.id)).map((p) => p.id);
    return { params: r.params, missing, warnings: r.warnings };
  }
  if (existsSync(join(dir, ADAPTER_SIDECAR))) {
    const r = importAdapterFile(plan, name, dir);
    return { params: r.params, missing: r.missing, warnings: [] };
  }
  throw new WeightsError('BAD_ADAPTER', dir, `holds neither ${PEFT_CONFIG_FILE} (a PEFT adapter) nor ${ADAPTER_SIDECAR} (an mcpc adapter)`);
}
