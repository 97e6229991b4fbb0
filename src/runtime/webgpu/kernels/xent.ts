/**
 * The LM head fused with softmax cross-entropy on WebGPU, in vocabulary chunks (reference.ts `lm_head_xent`
 * with x and W given):
 *   loss = Σ_t w_t · (LSE_t − logit_t[label_t]),  logit_t = x_t·Wᵀ,  w_t = mask_t / max(Σ mask, 1)
 * The [T, V] logits are never materialised: only one [T, C] chunk of them at a time (C = XENT_CHUNK
 * columns of the vocabulary, fewer when T is large), computed by a GEMM (tfjs MatMul on webgpu).
 *
 *   forward   per chunk: logits_c = x·W_cᵀ; one WGSL dispatch (a workgroup per token, shared-memory max
 *             and sum) folds the chunk into the running (max, sum of exp, label logit) per token: an online
 *             log-sum-exp across chunks. The loss is a [T]-sized tfjs reduction.
 *   backward  per chunk: logits_c again (recomputed, not stored); one WGSL dispatch writes
 *             g_c = c_t · (exp(logits_c − LSE_t) − onehot(label)) (c_t = w_t · dy); dx += g_c·W_c,
 *             dW_c = g_cᵀ·x (GEMMs).
 * Memory is O(T·C) instead of O(T·V); the price is one more logits GEMM per chunk in backward.
 */
import { tf, type Tensor } from '../../tfjs/index.js';
import { dispatch, wgslReduceSum } from './run.js';

const WG = 128;
/** Vocabulary columns per chunk (fewer when T·C would pass XENT_CHUNK_ELEMENTS). */
export const XENT_CHUNK = 8192;
const XENT_CHUNK_ELEMENTS = 1 << 23;
/** The chunked kernels take any model width (the GEMMs do the dot products). */
export const XENT_MAX_WIDTH = Number.POSITIVE_INFINITY;

const rowReduce = `
${wgslReduceSum(WG)}
var<workgroup> red_max: f32;
fn reduce_max(lid: u32, v: f32) -> f32 {
  red[lid] = v;
  workgroupBarrier();
  for (var k = ${WG / 2}u; k > 0u; k = k >> 1u) {
    if (lid < k) { red[lid] = max(red[lid], red[lid + k]); }
    workgroupBarrier();
  }
  // A slot of its own, as reduce_sum's (run.ts): reduce_sum's first write to red[0] may not clobber it.
  if (lid == 0u) { red_max = red[0]; }
  workgroupBarrier();
  return red_max;
}`;

/** Folds a logits chunk [T, C] (columns offset … offset+C−1) into the running (m, l, picked) per token. */
function foldChunk(logits: Tensor, m: Tensor, l: Tensor, picked: Tensor, labels: Tensor, offset: number): Tensor[] {
  const [T, C] = logits.shape as [number, number];
  return dispatch({
    name: 'xent_fold_chunk',
    inputs: { logits, m_in: m, l_in: l, p_in: picked, labels },
    outputs: { m_out: [T], l_out: [T], p_out: [T] },
    uniforms: { n: ['u32', T], C: ['u32', C], offset: ['u32', offset] },
    workgroups: T,
    body: `${rowReduce}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let t = flat_wg(wid, nwg);
  if (t >= u.n) { return; }
  let base = t * u.C;
  var mx = -3.0e38;
  for (var c = lid; c < u.C; c = c + ${WG}u) { mx = max(mx, logits[base + c]); }
  let cm = reduce_max(lid, mx);
  var s = 0.0;
  for (var c = lid; c < u.C; c = c + ${WG}u) { s = s + exp(logits[base + c] - cm); }
  let cs = reduce_sum(lid, s);
  if (lid == 0u) {
    let m0 = m_in[t];
    let m1 = max(m0, cm);
    m_out[t] = m1;
    l_out[t] = l_in[t] * exp(m0 - m1) + cs * exp(cm - m1);
    let lab = labels[t];
    var p = p_in[t];
    if (lab >= i32(u.offset) && lab < i32(u.offset + u.C)) { p = logits[base + u32(lab) - u.offset]; }
    p_out[t] = p;
  }
}`,
  });
}

/** g = coef_t · (exp(logits − lse_t) − [label_t = offset + j]) for a logits chunk [T, C]. */
function chunkGrad(logits: Tensor, lse: Tensor, labels: Tensor, coef: Tensor, offset: number): Tensor {
  const [T, C] = logits.shape as [number, number];
  return dispatch({
    name: 'xent_chunk_grad',
    inputs: { logits, lse, labels, coef },
    outputs: { g: [T, C] },
    uniforms: { n: ['u32', T * C], C: ['u32', C], offset: ['u32', offset] },
    workgroups: Math.ceil((T * C) / 256),
    body: `@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let i = flat_wg(wid, nwg) * 256u + lid;
  if (i >= u.n) { return; }
  let t = i / u.C;
  let j = i % u.C;
  var p = exp(logits[i] - lse[t]);
  if (labels[t] == i32(u.offset + j)) { p = p - 1.0; }
  g[i] = coef[t] * p;
}`,
  })[0]!;
}

function chunks(T: number, V: number): [number, number][] {
  const C = Math.max(256, Math.min(XENT_CHUNK, Math.floor(XENT_CHUNK_ELEMENTS / Math.max(1, T))));
  const out: [number, number][] = [];
  for (let o = 0; o < V; o += C) out.push([o, Math.min(C, V - o)]);
  return out;
}

const logitsOf = (x: Tensor, w: Tensor, o: number, c: number, V: number): Tensor => {
  const wc = c === V ? w : tf.slice(w, [o, 0], [c, w.shape[1] as number]);
  return tf.matMul(x as tf.Tensor2D, wc as tf.Tensor2D, false, true);
};

/**
 * Mean cross-entropy of softmax(x·Wᵀ) at `labels` over the tokens of `mask` (x [T, Dm], W [V, Dm], labels
 * [T] int32 or float, mask [T] float), differentiable in x and W; logits exist one chunk at a time.
 */
export function lmHeadXent(x: Tensor, w: Tensor, labels: Tensor, mask: Tensor): Tensor {
  const lab = labels.dtype === 'int32' ? labels : tf.cast(labels, 'int32');
  const f = tf.customGrad(((xx: Tensor, ww: Tensor, save: tf.GradSaveFunc) => {
    const T = xx.shape[0] as number;
    const V = ww.shape[0] as number;
    let state = [tf.fill([T], -3e38), tf.zeros([T]), tf.zeros([T])];
    for (const [o, c] of chunks(T, V)) {
      const next = tf.tidy(() => foldChunk(logitsOf(xx, ww, o, c, V), state[0]!, state[1]!, state[2]!, lab, o));
      tf.dispose(state);
      state = next;
    }
    const [m, l, picked] = state as [Tensor, Tensor, Tensor];
    const lse = tf.add(m, tf.log(l));
    const count = tf.maximum(tf.sum(mask), 1);
    const loss = tf.div(tf.sum(tf.mul(tf.sub(lse, picked), mask)), count);
    // Everything backward reads is saved: autodiff frees the forward pass's other tensors before backward.
    save([xx, ww, lse, count, lab, mask]);
    return {
      value: loss,
      gradFunc: (dy: Tensor, [sx, sw, sl, sc, slab, smask]: Tensor[]) => {
        const coef = tf.mul(smask!, tf.div(dy, sc!));
        let dx: Tensor | undefined;
        const dws: Tensor[] = [];
        for (const [o, c] of chunks(T, V)) {
          const [dxc, dwc] = tf.tidy(() => {
            const g = chunkGrad(logitsOf(sx!, sw!, o, c, V), sl!, slab!, coef, o);
            const wc = c === V ? sw! : tf.slice(sw!, [o, 0], [c, sw!.shape[1] as number]);
            const d = tf.matMul(g as tf.Tensor2D, wc as tf.Tensor2D);
            return [dx ? tf.add(dx, d) : d, tf.matMul(g as tf.Tensor2D, sx! as tf.Tensor2D, true, false)];
          });
          dx?.dispose();
          dx = dxc;
          dws.push(dwc!);
        }
        const dw = dws.length === 1 ? dws[0]! : tf.concat(dws, 0);
        if (dws.length > 1) tf.dispose(dws);
        return [dx!, dw];
      },
    };
  }) as never) as (x: Tensor, w: Tensor) => Tensor;
  return f(x, w);
}
