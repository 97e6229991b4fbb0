/**
 * AdamW for every trainable tensor of a stage in one dispatch (optimizer.ts `update`, same arithmetic in
 * the same order, so results agree with it to f32 rounding) over flat buffers of the parameters, gradients
 * and both moments, one invocation per element (the executor concatenates the parameters and splits the
 * result; gradients and moments are flat already). The global-norm clipping factor is folded into the kernel
 * (g · clip).
 *
 *   p ← p · (1 − lr·wd);  m ← β₁ m + (1 − β₁) g;  v ← β₂ v + (1 − β₂) g²
 *   p ← p − (m / (√v / √(1 − β₂ᵗ) + ε)) · (lr / (1 − β₁ᵗ))
 */
import type { Tensor } from '../../tfjs/index.js';
import { dispatch } from './run.js';
import { adamwScalars, type AdamWStep } from '../../optimizer.js';

const WG = 256;

/**
 * One AdamW step over flat vectors of the same length n (parameters, gradients, both moments): one dispatch,
 * new flat tensors for all three. The executor keeps a stage's moments flat between steps on webgpu (and its
 * gradients flat from the first micro-batch on), so only the parameters are concatenated and split per step.
 */
export function adamwFlat(p: Tensor, g: Tensor, m: Tensor, v: Tensor, s: AdamWStep): { p: Tensor; m: Tensor; v: Tensor } {
  const n = p.size;
  if (g.size !== n || m.size !== n || v.size !== n) throw new Error(`adamw_all: flat sizes differ (p ${n}, g ${g.size}, m ${m.size}, v ${v.size})`);
  const k = adamwScalars(s);
  // Step-dependent constants are uniforms (one pipeline for the whole run), rounded to f32 as tfjs
  // rounds the scalars of optimizer.ts; a factor of exactly 1 (no decay, no clipping) changes nothing.
  const [P, M, V] = dispatch({
    name: 'adamw_all',
    inputs: { p_in: p, g_in: g, m_in: m, v_in: v },
    outputs: { p_out: [n], m_out: [n], v_out: [n] },
    uniforms: {
      n: ['u32', n],
      decay: ['f32', k.decay],
      gscale: ['f32', k.gscale],
      b1: ['f32', k.b1],
      omb1: ['f32', k.omb1],
      b2: ['f32', k.b2],
      omb2: ['f32', k.omb2],
      sqrtbc2: ['f32', k.sqrtbc2],
      eps: ['f32', k.eps],
      stepsize: ['f32', k.stepsize],
    },
    workgroups: Math.ceil(n / WG),
    body: `@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let i = flat_wg(wid, nwg) * ${WG}u + lid;
  if (i >= u.n) { return; }
  let g = g_in[i] * u.gscale;
  let decayed = p_in[i] * u.decay;
  let m = m_in[i] * u.b1 + g * u.omb1;
  let v = v_in[i] * u.b2 + (g * g) * u.omb2;
  let denom = sqrt(v) / u.sqrtbc2 + u.eps;
  p_out[i] = decayed - (m / denom) * u.stepsize;
  m_out[i] = m;
  v_out[i] = v;
}`,
  });
  return { p: P!, m: M!, v: V! };
}
