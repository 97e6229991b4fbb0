/**
 * The top-k mask of router probabilities p [T, E] on WebGPU (reference.ts `topkMask`): 1 where expert e is
 * among the token's k largest, ties to the lower index (tf.topk's order). One invocation per (token, expert)
 * counts the entries ranked above it. Replaces tf.topk, whose int32 transpose in tfjs-backend-webgpu 4.22
 * fails WGSL validation. The mask is a constant of autodiff (noGrad), as in the reference.
 */
import { tf, type Tensor } from '../../tfjs/index.js';
import { noGrad } from '../../kernels/autodiff.js';
import { dispatch } from './run.js';

const WG = 256;

export function topkMask(p: Tensor, k: number): Tensor {
  return noGrad(p, (q) => {
    const [T, E] = q.shape as [number, number];
    const kk = Math.max(0, Math.min(k, E));
    if (kk === 0) return tf.zerosLike(q);
    if (kk === E) return tf.onesLike(q);
    return dispatch({
      name: 'topk_mask',
      inputs: { p: q },
      outputs: { mask: [T, E] },
      uniforms: { n: ['u32', T * E], E: ['u32', E], k: ['u32', kk] },
      workgroups: Math.ceil((T * E) / WG),
      body: `@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let i = flat_wg(wid, nwg) * ${WG}u + lid;
  if (i >= u.n) { return; }
  let e = i % u.E;
  let base = i - e;
  let me = p[i];
  var above = 0u;
  for (var j = 0u; j < u.E; j = j + 1u) {
    let x = p[base + j];
    if (x > me || (x == me && j < e)) { above = above + 1u; }
  }
  mask[i] = select(0.0, 1.0, above < u.k);
}`,
    })[0]!;
  });
}
