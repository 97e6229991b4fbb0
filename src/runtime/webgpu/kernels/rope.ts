/**
 * Rotary embedding on WebGPU (reference.ts `rope`): rotate-half of each head of x [T, heads·d] at each
 * token's position within its own example. The cos/sin tables [T, d/2] are the reference's own (host-computed:
 * f32 inverse frequencies and angles, cos/sin in f64 then rounded), so the
 * kernel agrees with it for long sequences too (a GPU's f32 cos of a large angle does not).
 * One invocation per (token, head, i < d/2) pair:
 *   y1 = x1·cos − x2·sin,  y2 = x2·cos + x1·sin
 * Backward is the inverse rotation (sin negated), the same kernel.
 */
import type { Tensor } from '../../tfjs/index.js';
import { customOp } from '../program.js';
import { dispatch } from './run.js';

const WG = 256;

function rotate(x: Tensor, cos: Tensor, sin: Tensor, heads: number, headDim: number, sign: 1 | -1): Tensor {
  const T = x.shape[0] as number;
  const half = headDim / 2;
  const n = T * heads * half;
  return dispatch({
    name: `rope_${sign > 0 ? 'fwd' : 'bwd'}`,
    inputs: { x, cosT: cos, sinT: sin },
    outputs: { y: [T, heads * headDim] },
    uniforms: { n: ['u32', n], heads: ['u32', heads], half: ['u32', half] },
    workgroups: Math.ceil(n / WG),
    body: `@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let k = flat_wg(wid, nwg) * ${WG}u + lid;
  if (k >= u.n) { return; }
  let i = k % u.half;
  let th = k / u.half;                 // t·heads + h
  let t = th / u.heads;
  let base = th * 2u * u.half;
  let c = cosT[t * u.half + i];
  let s = ${sign > 0 ? '' : '-'}sinT[t * u.half + i];
  let x1 = x[base + i];
  let x2 = x[base + u.half + i];
  y[base + i] = x1 * c - x2 * s;
  y[base + u.half + i] = x2 * c + x1 * s;
}`,
  })[0]!;
}

/** Rotary embedding of x [T, heads·headDim] with the [T, d/2] tables of ropeTables (kernels/reference.ts, rank 2), differentiable. */
export function rope(x: Tensor, cos: Tensor, sin: Tensor, heads: number, headDim: number): Tensor {
  // The tables are saved: autodiff frees the forward pass's other tensors before backward.
  return customOp((xx: Tensor) => ({
    value: rotate(xx, cos, sin, heads, headDim, 1),
    save: [cos, sin],
    gradFunc: (dy: Tensor, [c, s]: Tensor[]) => rotate(dy, c!, s!, heads, headDim, -1),
  }))(x);
}
