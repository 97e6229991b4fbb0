/**
 * SwiGLU on WebGPU: y = silu(g) · u (reference.ts `swiglu`), one invocation per element.
 * Backward in one dispatch writing both gradients, with s = sigmoid(g):
 *   dg = dy · u · s · (1 + g · (1 − s)),   du = dy · g · s
 */
import type { Tensor } from '../../tfjs/index.js';
import { customOp } from '../program.js';
import { dispatch } from './run.js';

const WG = 256;
const head = `@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let i = flat_wg(wid, nwg) * ${WG}u + lid;
  if (i >= u.n) { return; }
  let x = g[i];
  let s = 1.0 / (1.0 + exp(-x));`;

/** silu(g)·u for g, u of the same shape, differentiable (WGSL forward and backward). */
export function swiglu(g: Tensor, u: Tensor): Tensor {
  return customOp((gg: Tensor, uu: Tensor) => {
    const n = gg.size;
    const [y] = dispatch({
      name: 'swiglu_fwd',
      inputs: { g: gg, up: uu },
      outputs: { y: gg.shape },
      uniforms: { n: ['u32', n] },
      workgroups: Math.ceil(n / WG),
      body: `${head}\n  y[i] = x * s * up[i];\n}`,
    });
    return {
      value: y!,
      save: [gg, uu],
      gradFunc: (dy: Tensor, [sg, su]: Tensor[]) =>
        dispatch({
          name: 'swiglu_bwd',
          inputs: { dy, g: sg!, up: su! },
          outputs: { dg: sg!.shape, du: sg!.shape },
          uniforms: { n: ['u32', n] },
          workgroups: Math.ceil(n / WG),
          body: `${head}
  let d = dy[i];
  dg[i] = d * up[i] * s * (1.0 + x * (1.0 - s));
  du[i] = d * x * s;
}`,
        }),
    };
  })(g, u);
}
