/**
 * LoRA dropout (PEFT semantics): during a training step the adapter branch reads dropout(x), the base path
 * x. Inverted dropout: each element is zeroed with probability p and the kept ones are scaled by 1/(1−p);
 * evaluation (`forward`, `evalLoss`, probes, the merge check) applies none.
 *
 * The mask is a pure function of (stage seed, stage name, optimizer step, micro-batch index, adapter, site,
 * element index): the uniforms of weights/init.ts (Philox4x32-10 keyed by the seed, counter = element block
 * and the first 8 bytes of SHA-256 of the stream id below). No state is carried, so a resumed run draws the
 * same masks as an uninterrupted one, and the key names the adapter and site rather than a plan node, so
 * -O0 and -O1 plans of the same pipeline (whose node ids differ) drop the same elements. Every A projection
 * of one adapter at one site (a mixture's shared and routed experts) reads the same dropped input.
 *
 * Router noise (`moe_lora(router_noise: σ)`): during a training step the router's logits get ε ~ N(0, σ²)
 * added before its softmax/sigmoid. ε is keyed like the dropout mask, (stage seed, stage, step, micro-batch,
 * adapter, site, element), under its own stream tag (`router_noise/...`, so it never reuses a mask's
 * uniforms), and drawn by Box-Muller on consecutive pairs of uniforms as weights/init.ts's `normal` does:
 * rho = sqrt(−2 ln u_even), ε_even = σ·rho·cos(2π u_odd), ε_odd = σ·rho·sin(2π u_odd) (float64, rounded once).
 */
import { uniforms } from './weights/init.js';

export interface DropoutDraw {
  /** The stage's `seed`. */
  seed: number;
  stage: string;
  /** Schedule position of the optimizer step (0-based). */
  step: number;
  /** Index of the micro-batch within the step. */
  microBatch: number;
}

/** The stream id of one mask (exposed for tests). */
export function dropoutStreamId(d: DropoutDraw, adapter: string, site: string): string {
  return `lora_dropout/${d.stage}/${d.step}/${d.microBatch}/${adapter}@${site}`;
}

/** The n multipliers of the mask: 0 with probability p, else 1/(1−p) (in f32). */
export function dropoutMask(d: DropoutDraw, adapter: string, site: string, n: number, p: number): Float32Array {
  if (!(p >= 0 && p < 1)) throw new RangeError(`dropout must be in [0, 1), got ${p}`);
  const out = new Float32Array(n);
  if (p === 0) return out.fill(1);
  const keep = Math.fround(1 / (1 - p));
  const u = uniforms(d.seed, dropoutStreamId(d, adapter, site), n);
  for (let i = 0; i < n; i++) out[i] = u[i]! < p ? 0 : keep;
  return out;
}

/** The stream id of one router's noise (exposed for tests). */
export function routerNoiseStreamId(d: DropoutDraw, adapter: string, site: string): string {
  return `router_noise/${d.stage}/${d.step}/${d.microBatch}/${adapter}@${site}`;
}

/** The n values of a router's logit noise, N(0, std²) (in f32; all 0 when std is 0). */
export function routerNoise(d: DropoutDraw, adapter: string, site: string, n: number, std: number): Float32Array {
  if (!(std >= 0 && Number.isFinite(std))) throw new RangeError(`router noise must be a finite std >= 0, got ${std}`);
  const out = new Float32Array(n);
  if (std === 0) return out;
  const u = uniforms(d.seed, routerNoiseStreamId(d, adapter, site), n + (n % 2));
  for (let i = 0; i < n; i += 2) {
    const rho = Math.sqrt(-2 * Math.log(u[i]!));
    const theta = 2 * Math.PI * u[i + 1]!;
    out[i] = std * rho * Math.cos(theta);
    if (i + 1 < n) out[i + 1] = std * rho * Math.sin(theta);
  }
  return out;
}
