/**
 * `mcpc run --save-init FILE`: the tensors a run starts from, written as safetensors by plan parameter id
 * before training: pretrained base weights from the model's checkpoint, every other parameter from its
 * initialiser (runtime/weights/init.ts, a pure function of the seed and the parameter id; the seed is
 * `--seed`, else the first stage's, as the executor uses). `python train.py --init-from FILE`, the program
 * `mcpc compile --target torch` writes, starts from the same tensors, so both engines can be compared
 * step by step.
 */
import { isAbsolute, resolve } from 'node:path';
import type { Plan } from '../plan/types.js';
import { tensorFromFloat32, writeSafetensorsFile, type TensorInput } from '../runtime/io/safetensors.js';
import { loadBaseParameters } from '../runtime/weights/hf.js';
import { initParameter } from '../runtime/weights/init.js';

/** Writes every parameter of the plan at its initial value; returns how many tensors were written. */
export function saveInitialWeights(plan: Plan, root: string, file: string, seed?: number): number {
  const s = seed ?? plan.stages[0]?.settings.seed ?? 0;
  const pretrained = plan.parameters.some((p) => p.init.kind === 'pretrained') ? loadBaseParameters(plan, root).weights : new Map<string, Float32Array>();
  const tensors = new Map<string, TensorInput>();
  for (const p of plan.parameters) {
    const v = p.init.kind === 'pretrained' ? pretrained.get(p.id) : initParameter(p, s);
    if (!v) throw new Error(`parameter ${p.id} is pretrained but the checkpoint of ${plan.model.name} does not provide it`);
    tensors.set(p.id, tensorFromFloat32(v, p.shape));
  }
  writeSafetensorsFile(isAbsolute(file) ? file : resolve(root, file), tensors, { format: 'pt', mcpc: 'initial weights' });
  return tensors.size;
}
