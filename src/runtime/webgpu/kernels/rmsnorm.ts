/**
 * RMSNorm on WebGPU: y = x · r · w with r = rsqrt(mean(x²) + eps) per row (reference.ts `rmsnorm`).
 *
 * Forward: one workgroup per row; the sum of squares is reduced in shared memory; r is kept for backward.
 * Backward, with g = dy·w:  dx = r·g − x · r³ · mean(g·x)   (one workgroup per row, one reduction)
 *                           dw = Σ_t dy·x·r                  (workgroups over column blocks × row chunks;
 *                                                            chunk partials summed by one tfjs reduction)
 */
import { tf, type Tensor } from '../../tfjs/index.js';
import { customOp } from '../program.js';
import { dispatch, wgslReduceSum } from './run.js';

const WG = 128;
/** Rows per chunk of the dw column reduction. */
const CHUNK = 256;

const rowReduce = `
const WG = ${WG}u;
${wgslReduceSum(WG)}`;

const header = `@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let row = flat_wg(wid, nwg);
  if (row >= u.rows) { return; }
  let D = u.cols;
  let base = row * D;`;

function forward(x: Tensor, w: Tensor | undefined, eps: number): [Tensor, Tensor] {
  const [T, D] = x.shape as [number, number];
  const W = w ? 'w[c]' : '1.0';
  const [y, r] = dispatch({
    name: `rmsnorm_fwd${w ? '' : '_now'}`,
    inputs: w ? { x, w } : { x },
    outputs: { y: [T, D], rstd: [T] },
    uniforms: { rows: ['u32', T], cols: ['u32', D], eps: ['f32', eps] },
    workgroups: T,
    body: `${rowReduce}
${header}
  var s = 0.0;
  for (var c = lid; c < D; c = c + WG) { let v = x[base + c]; s = s + v * v; }
  let r = inverseSqrt(reduce_sum(lid, s) / f32(D) + u.eps);
  for (var c = lid; c < D; c = c + WG) { y[base + c] = x[base + c] * r * ${W}; }
  if (lid == 0u) { rstd[row] = r; }
}`,
  });
  return [y, r];
}

function backwardX(dy: Tensor, x: Tensor, w: Tensor | undefined, r: Tensor): Tensor {
  const [T, D] = x.shape as [number, number];
  const G = w ? 'dy[base + c] * w[c]' : 'dy[base + c]';
  return dispatch({
    name: `rmsnorm_bwd_x${w ? '' : '_now'}`,
    inputs: w ? { dy, x, w, rstd: r } : { dy, x, rstd: r },
    outputs: { dx: [T, D] },
    uniforms: { rows: ['u32', T], cols: ['u32', D] },
    workgroups: T,
    body: `${rowReduce}
${header}
  let r = rstd[row];
  var s = 0.0;
  for (var c = lid; c < D; c = c + WG) { s = s + ${G} * x[base + c]; }
  let k = reduce_sum(lid, s) / f32(D) * r * r * r;
  for (var c = lid; c < D; c = c + WG) { dx[base + c] = r * ${G} - x[base + c] * k; }
}`,
  })[0];
}

function backwardW(dy: Tensor, x: Tensor, r: Tensor): Tensor {
  const [T, D] = x.shape as [number, number];
  const chunks = Math.ceil(T / CHUNK);
  const colBlocks = Math.ceil(D / 64);
  const [part] = dispatch({
    name: 'rmsnorm_bwd_w',
    inputs: { dy, x, rstd: r },
    outputs: { part: [chunks, D] },
    uniforms: { rows: ['u32', T], cols: ['u32', D], colBlocks: ['u32', colBlocks], chunks: ['u32', chunks] },
    workgroups: colBlocks * chunks,
    body: `
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let g = flat_wg(wid, nwg);
  if (g >= u.colBlocks * u.chunks) { return; }
  let c = (g % u.colBlocks) * 64u + lid;
  let chunk = g / u.colBlocks;
  if (c >= u.cols) { return; }
  let t1 = min(u.rows, (chunk + 1u) * ${CHUNK}u);
  var s = 0.0;
  for (var t = chunk * ${CHUNK}u; t < t1; t = t + 1u) { s = s + dy[t * u.cols + c] * x[t * u.cols + c] * rstd[t]; }
  part[chunk * u.cols + c] = s;
}`,
  });
  if (chunks === 1) return tf.reshape(part, [D]);
  const dw = tf.sum(part, 0);
  part.dispose();
  return dw;
}

/** RMSNorm of x [T, D] with an optional weight w [D], differentiable (WGSL forward and backward). */
export function rmsnorm(x: Tensor, w: Tensor | undefined, eps: number): Tensor {
  if (w) {
    return customOp((xx: Tensor, ww: Tensor) => {
      const [y, r] = forward(xx, ww, eps);
      return { value: y, save: [xx, ww, r], gradFunc: (dy: Tensor, [sx, sw, sr]: Tensor[]) => [backwardX(dy, sx, sw, sr), backwardW(dy, sx, sr)] };
    })(x, w);
  }
  return customOp((xx: Tensor) => {
    const [y, r] = forward(xx, undefined, eps);
    return { value: y, save: [xx, r], gradFunc: (dy: Tensor, [sx, sr]: Tensor[]) => [backwardX(dy, sx, undefined, sr)] };
  })(x);
}
