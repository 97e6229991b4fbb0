/**
 * Before a stage runs on WebGPU: every tensor of the stage must fit one storage binding of the device
 * (`maxStorageBufferBindingSize`, and `maxBufferSize`): tfjs-backend-webgpu keeps each tensor in one buffer
 * and every kernel binds it whole. A bigger one fails validation at its first use (./faults.ts would then
 * stop the run, naming no tensor); checked here, the run is refused before any weight is uploaded, with
 * the tensors that do not fit and what shrinks them.
 *
 * Checked: the parameters the stage holds, the plan's values with T = micro_batch · max_len (the most a
 * micro-batch holds) and, for AdamW, the flat optimizer buffers (./kernels/adamw.ts: every trainable tensor
 * in one vector). Not checked: kernel temporaries, which the fused kernels keep small (the loss forms its
 * logits in chunks, attention its scores per tile) but a fallback to the reference ops may not (a loss that
 * forms [T, vocab] logits); one of those past the limit still stops the run, as a GPU fault (./faults.ts).
 */
import { heldIn } from '../../plan/pipeline.js';
import type { Plan } from '../../plan/types.js';
import { fmtBytes } from '../../plan/units.js';

export interface DeviceLimits {
  maxStorageBufferBindingSize?: number;
  maxBufferSize?: number;
}

export interface Oversized {
  id: string;
  shape: number[];
  bytes: number;
  what: 'parameter' | 'activation' | 'optimizer';
}

const cap = (s: string) => s.charAt(0).toUpperCase() + s.slice(1);

/** The most bytes one tensor may take on a device with `limits` (Infinity when it says nothing). */
export function bindingLimit(limits: DeviceLimits): number {
  return Math.min(limits.maxStorageBufferBindingSize ?? Infinity, limits.maxBufferSize ?? Infinity);
}

const numel = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);

/** The tensors of `stageName` that exceed the device's binding limit, largest first. */
export function oversizedTensors(plan: Plan, stageName: string, limits: DeviceLimits): Oversized[] {
  const limit = bindingLimit(limits);
  const stage = plan.stages.find((s) => s.name === stageName);
  if (!stage || !Number.isFinite(limit)) return [];
  const T = stage.settings.microBatch * stage.settings.maxLen;
  const out: Oversized[] = [];
  const add = (id: string, shape: number[], what: Oversized['what']) => {
    const bytes = numel(shape) * 4; // f32 and i32 alike
    if (bytes > limit) out.push({ id, shape, bytes, what });
  };
  for (const p of plan.parameters) if (heldIn(p, stage.name)) add(p.id, p.shape, 'parameter');
  // Parameters are values of kind 'param' too: counted above.
  for (const v of stage.values) if (v.kind !== 'param') add(v.id, v.shape.map((d) => (d === 'T' ? T : d)), 'activation');
  if (stage.settings.optimizer.kind === 'adamw') {
    const shapes = new Map(plan.parameters.map((p) => [p.id, p.shape]));
    const flat = stage.optimizer.params.reduce((a, id) => a + numel(shapes.get(id) ?? []), 0);
    add('optimizer (flat parameters, gradients and moments of every trainable tensor)', [flat], 'optimizer');
  }
  return out.sort((a, b) => b.bytes - a.bytes);
}

/** Why `stageName` cannot run on this device, or undefined when every tensor fits. */
export function limitsProblem(plan: Plan, stageName: string, limits: DeviceLimits): string | undefined {
  const over = oversizedTensors(plan, stageName, limits);
  if (!over.length) return undefined;
  const { microBatch, maxLen } = plan.stages.find((s) => s.name === stageName)!.settings;
  const shown = over.slice(0, 5).map((o) => `${o.id} [${o.shape.join(', ')}] ${fmtBytes(o.bytes)} (${o.what})`);
  const more = over.length > shown.length ? `; and ${over.length - shown.length} more` : '';
  const hints: string[] = [];
  if (over.some((o) => o.what === 'activation')) hints.push(`activations shrink with micro_batch (${microBatch}) and max_len (${maxLen}): T = ${microBatch * maxLen} tokens a micro-batch`);
  if (over.some((o) => o.what !== 'activation')) hints.push('a parameter or the optimizer state that size needs a device with a larger limit, `--backend tensorflow` or `mcpc compile --target torch`');
  return (
    `stage ${stageName} cannot run on this WebGPU device: ${over.length} tensor${over.length === 1 ? '' : 's'} exceed${over.length === 1 ? 's' : ''} the largest buffer one kernel can bind ` +
    `(${fmtBytes(bindingLimit(limits))}: maxStorageBufferBindingSize ${limits.maxStorageBufferBindingSize ?? '-'}, maxBufferSize ${limits.maxBufferSize ?? '-'}): ${shown.join('; ')}${more}. ${cap(hints.join('; '))}.`
  );
}
