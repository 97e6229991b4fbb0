/**
 * The LM head fused with softmax cross-entropy on WebGPU (reference.ts `lm_head_xent` with x and W given):
 *   loss = Σ_t w_t · (LSE_t − logit_t[label_t]),  logit_t = x_t·Wᵀ,  w_t = mask_t / max(Σ mask, 1)
 * The [T, V] logits are never materialised: every kernel walks the vocabulary in tiles of one logit per
 * invocation, recomputing logits where it needs them (x [T, Dm], W [V, Dm]).
 *
 *   forward   one workgroup per token: online log-sum-exp over vocabulary tiles; the label's logit.
 *             Writes LSE_t and logit_t[label_t] ([T] each); the loss is a [T]-sized tfjs reduction.
 *   dx        one workgroup per token: g_v = c_t (softmax_v − [v = label]) per tile in shared memory, then
 *             dx_t = Σ_v g_v W_v per column (c_t = w_t · dy; tokens outside the mask are skipped)
 *   dW        one workgroup per vocabulary row: the same g over token tiles, dW_v = Σ_t g_t x_t
 * Backward costs two more passes over T·V·Dm (the price of not storing logits: O(T) memory instead of O(T·V)).
 */
import { tf, type Tensor } from '../../tfjs/index.js';
import { dispatch } from './run.js';

const WG = 128;
/** Largest model width the kernels take (x_t or W_v is staged in shared memory). */
export const XENT_MAX_WIDTH = 4096;

const common = (Dm: number) => `
const WG = ${WG}u;
const DM = ${Dm}u;
const NC = ${Math.ceil(Dm / WG)}u;
var<workgroup> row: array<f32, DM>;
var<workgroup> tile: array<f32, WG>;
fn dot_row(b: u32) -> f32 {
  var s = 0.0;
  for (var c = 0u; c < DM; c = c + 1u) { s = s + row[c] * other[b + c]; }
  return s;
}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let g = flat_wg(wid, nwg);
  if (g >= u.n) { return; }`;

function forward(x: Tensor, w: Tensor, labels: Tensor): [Tensor, Tensor] {
  const [T, Dm] = x.shape as [number, number];
  const V = w.shape[0] as number;
  const [lse, picked] = dispatch({
    name: 'xent_fwd',
    inputs: { x, other: w, labels },
    outputs: { lse: [T], picked: [T] },
    uniforms: { n: ['u32', T], V: ['u32', V] },
    workgroups: T,
    body: `${common(Dm)}
  for (var c = lid; c < DM; c = c + WG) { row[c] = x[g * DM + c]; }
  workgroupBarrier();
  var m = -3.0e38;
  var l = 0.0;
  for (var v0 = 0u; v0 < u.V; v0 = v0 + WG) {
    let v = v0 + lid;
    var s = -3.0e38;
    if (v < u.V) { s = dot_row(v * DM); }
    tile[lid] = s;
    workgroupBarrier();
    let n = min(WG, u.V - v0);
    var tm = m;
    for (var k = 0u; k < n; k = k + 1u) { tm = max(tm, tile[k]); }
    workgroupBarrier();
    var p = 0.0;
    if (v < u.V) { p = exp(s - tm); }
    tile[lid] = p;
    workgroupBarrier();
    var ts = 0.0;
    for (var k = 0u; k < n; k = k + 1u) { ts = ts + tile[k]; }
    l = l * exp(m - tm) + ts;
    m = tm;
    workgroupBarrier();
  }
  if (lid == 0u) {
    lse[g] = m + log(l);
    let lab = u32(labels[g]);
    var pk = 0.0;
    if (lab < u.V) { pk = dot_row(lab * DM); }
    picked[g] = pk;
  }
}`,
  });
  return [lse!, picked!];
}

function backwardX(x: Tensor, w: Tensor, labels: Tensor, lse: Tensor, coef: Tensor): Tensor {
  const [T, Dm] = x.shape as [number, number];
  const V = w.shape[0] as number;
  return dispatch({
    name: 'xent_bwd_x',
    inputs: { x, other: w, labels, lse, coef },
    outputs: { dx: [T, Dm] },
    uniforms: { n: ['u32', T], V: ['u32', V] },
    workgroups: T,
    body: `${common(Dm)}
  let ct = coef[g];
  var acc: array<f32, NC>;
  if (ct != 0.0) {
    for (var c = lid; c < DM; c = c + WG) { row[c] = x[g * DM + c]; }
    workgroupBarrier();
    let L = lse[g];
    let lab = u32(labels[g]);
    for (var v0 = 0u; v0 < u.V; v0 = v0 + WG) {
      let v = v0 + lid;
      var gv = 0.0;
      if (v < u.V) {
        gv = exp(dot_row(v * DM) - L);
        if (v == lab) { gv = gv - 1.0; }
        gv = gv * ct;
      }
      tile[lid] = gv;
      workgroupBarrier();
      let n = min(WG, u.V - v0);
      for (var nc = 0u; nc < NC; nc = nc + 1u) {
        let c = lid + nc * WG;
        if (c < DM) {
          var a = acc[nc];
          for (var k = 0u; k < n; k = k + 1u) { a = a + tile[k] * other[(v0 + k) * DM + c]; }
          acc[nc] = a;
        }
      }
      workgroupBarrier();
    }
  }
  for (var nc = 0u; nc < NC; nc = nc + 1u) {
    let c = lid + nc * WG;
    if (c < DM) { dx[g * DM + c] = acc[nc]; }
  }
}`,
  })[0]!;
}

function backwardW(x: Tensor, w: Tensor, labels: Tensor, lse: Tensor, coef: Tensor): Tensor {
  const [T, Dm] = x.shape as [number, number];
  const V = w.shape[0] as number;
  return dispatch({
    name: 'xent_bwd_w',
    inputs: { other: x, w, labels, lse, coef },
    outputs: { dw: [V, Dm] },
    uniforms: { n: ['u32', V], T: ['u32', T] },
    workgroups: V,
    body: `${common(Dm)}
  for (var c = lid; c < DM; c = c + WG) { row[c] = w[g * DM + c]; }
  workgroupBarrier();
  var acc: array<f32, NC>;
  for (var t0 = 0u; t0 < u.T; t0 = t0 + WG) {
    let t = t0 + lid;
    var gt = 0.0;
    if (t < u.T) {
      let ct = coef[t];
      if (ct != 0.0) {
        gt = exp(dot_row(t * DM) - lse[t]);
        if (u32(labels[t]) == g) { gt = gt - 1.0; }
        gt = gt * ct;
      }
    }
    tile[lid] = gt;
    workgroupBarrier();
    let n = min(WG, u.T - t0);
    for (var nc = 0u; nc < NC; nc = nc + 1u) {
      let c = lid + nc * WG;
      if (c < DM) {
        var a = acc[nc];
        for (var k = 0u; k < n; k = k + 1u) { a = a + tile[k] * other[(t0 + k) * DM + c]; }
        acc[nc] = a;
      }
    }
    workgroupBarrier();
  }
  for (var nc = 0u; nc < NC; nc = nc + 1u) {
    let c = lid + nc * WG;
    if (c < DM) { dw[g * DM + c] = acc[nc]; }
  }
}`,
  })[0]!;
}

/**
 * Mean cross-entropy of softmax(x·Wᵀ) at `labels` over the tokens of `mask` (x [T, Dm], W [V, Dm], labels
 * [T] int32 or float, mask [T] float), differentiable in x and W; the logits are never materialised.
 */
export function lmHeadXent(x: Tensor, w: Tensor, labels: Tensor, mask: Tensor): Tensor {
  const lab = labels.dtype === 'int32' ? labels : tf.cast(labels, 'int32');
  const f = tf.customGrad(((xx: Tensor, ww: Tensor, save: tf.GradSaveFunc) => {
    const [lse, picked] = forward(xx, ww, lab);
    const count = tf.maximum(tf.sum(mask), 1);
    const loss = tf.div(tf.sum(tf.mul(tf.sub(lse, picked), mask)), count);
    // Everything backward reads is saved: autodiff frees the forward pass's other tensors before backward.
    save([xx, ww, lse, count, lab, mask]);
    return {
      value: loss,
      gradFunc: (dy: Tensor, [sx, sw, sl, sc, slab, smask]: Tensor[]) => {
        const coef = tf.mul(smask!, tf.div(dy, sc!));
        return [backwardX(sx!, sw!, slab!, sl!, coef), backwardW(sx!, sw!, slab!, sl!, coef)];
      },
    };
  }) as never) as (x: Tensor, w: Tensor) => Tensor;
  return f(x, w);
}
