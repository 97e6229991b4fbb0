/**
 * Attention for training on WebGPU (reference.ts `attention`): softmax(q·kᵀ/√d + mask)·v per head, GQA (head
 * h reads kv head ⌊h / (H/KV)⌋), query i sees key j iff both are in the same example of the same row and,
 * when causal, j ≤ i. q [T, H·d], k and v [T, KV·d], T = rows·S, segments [T] from the batch.
 *
 * Forward: one workgroup per (row, query, head); keys in tiles of 64 (one per invocation), online softmax
 * (running max and sum, accumulators rescaled per tile), so the [S, S] scores never exist; writes o and the
 * log-sum-exp L per query for backward. The tile's max and sum are read serially from shared memory: a
 * tree reduction (barriers in a helper function) inside the tile loop gave wrong maxima on llvmpipe for
 * invocations past the first 8 (its SIMD width). Masked keys never enter the sum: exactly the reference's
 * exp(−1e9 − max) = 0.
 * Backward (recomputes the probabilities p = exp(s − L), nothing of size S² is stored), two dispatches:
 *   1. per (row, query, head):  Δ = Σ_c dO·O;  dq = scale · Σ_j p_j (dO·v_j − Δ) k_j            (writes Δ)
 *   2. per (row, key, kv head): over the heads of its group and the queries that see the key,
 *      dv = Σ_i p_ij dO_i;  dk = scale · Σ_i p_ij (dO_i·v_j − Δ_i) q_i                   (no atomics needed)
 */
import type { Tensor } from '../../tfjs/index.js';
import { customOp } from '../program.js';
import { dispatch, i32, lit, wgslReduceSum } from './run.js';

const WG = 64;

export interface AttentionShape {
  rows: number;
  seqLen: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  causal: boolean;
}

const reductions = `
${wgslReduceSum(WG)}`;

function consts(a: AttentionShape): string {
  const D = a.headDim;
  return `
const WG = ${WG}u;
const D = ${D}u;
const NC = ${Math.ceil(D / WG)}u;
const S = ${a.seqLen}u;
const H = ${a.heads}u;
const KV = ${a.kvHeads}u;
const GROUP = ${a.heads / a.kvHeads}u;
const SCALE = ${lit(1 / Math.sqrt(D))};
const CAUSAL = ${a.causal};
${reductions}`;
}

/** The per-query part shared by the forward and the dq kernels: which (row, query, head) and its key range. */
const queryHead = `
  let g = flat_wg(wid, nwg);
  if (g >= u.nq) { return; }
  let h = g % H;
  let tok = g / H;
  let r = tok / S;
  let i = tok % S;
  let kvh = h / GROUP;
  let si = seg[tok];
  var jEnd = S;
  if (CAUSAL) { jEnd = i + 1u; }`;

const main = `@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {`;

function forward(q: Tensor, k: Tensor, v: Tensor, seg: Tensor, a: AttentionShape): [Tensor, Tensor] {
  const T = a.rows * a.seqLen;
  const nq = T * a.heads;
  const [o, lse] = dispatch({
    name: 'attention_fwd',
    inputs: { q, k, v, seg },
    outputs: { o: [T, a.heads * a.headDim], lse: [nq] },
    uniforms: { nq: ['u32', nq] },
    workgroups: nq,
    body: `${consts(a)}
var<workgroup> qs: array<f32, D>;
var<workgroup> ps: array<f32, WG>;
${main}
${queryHead}
  for (var c = lid; c < D; c = c + WG) { qs[c] = q[g * D + c] * SCALE; }
  workgroupBarrier();
  var m = -3.0e38;
  var l = 0.0;
  var acc: array<f32, NC>;
  for (var j0 = 0u; j0 < jEnd; j0 = j0 + WG) {
    let j = j0 + lid;
    var s = -3.0e38;
    var ok = false;
    if (j < jEnd) {
      let kt = r * S + j;
      if (seg[kt] == si) {
        ok = true;
        let kb = (kt * KV + kvh) * D;
        var dot = 0.0;
        for (var c = 0u; c < D; c = c + 1u) { dot = dot + qs[c] * k[kb + c]; }
        s = dot;
      }
    }
    // Tile max and sum read serially from shared memory by every invocation (no tree reduction: 64 reads).
    ps[lid] = s;
    workgroupBarrier();
    let n = min(WG, jEnd - j0);
    var tm = m;
    for (var jj = 0u; jj < n; jj = jj + 1u) { tm = max(tm, ps[jj]); }
    let mNew = tm;
    workgroupBarrier();
    var p = 0.0;
    if (ok) { p = exp(s - mNew); }
    ps[lid] = p;
    workgroupBarrier();
    var ts = 0.0;
    for (var jj = 0u; jj < n; jj = jj + 1u) { ts = ts + ps[jj]; }
    let corr = exp(m - mNew);
    l = l * corr + ts;
    for (var nc = 0u; nc < NC; nc = nc + 1u) {
      let c = lid + nc * WG;
      if (c < D) {
        var a = acc[nc] * corr;
        for (var jj = 0u; jj < n; jj = jj + 1u) { a = a + ps[jj] * v[((r * S + j0 + jj) * KV + kvh) * D + c]; }
        acc[nc] = a;
      }
    }
    m = mNew;
    workgroupBarrier();
  }
  for (var nc = 0u; nc < NC; nc = nc + 1u) {
    let c = lid + nc * WG;
    if (c < D) { o[g * D + c] = acc[nc] / l; }
  }
  if (lid == 0u) { lse[g] = m + log(l); }
}`,
  });
  return [o!, lse!];
}

function backwardQ(dO: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor, seg: Tensor, a: AttentionShape): [Tensor, Tensor] {
  const T = a.rows * a.seqLen;
  const nq = T * a.heads;
  const [dq, delta] = dispatch({
    name: 'attention_bwd_q',
    inputs: { dO, q, k, v, o, lse, seg },
    outputs: { dq: [T, a.heads * a.headDim], delta: [nq] },
    uniforms: { nq: ['u32', nq] },
    workgroups: nq,
    body: `${consts(a)}
var<workgroup> qs: array<f32, D>;
var<workgroup> ds: array<f32, D>;
var<workgroup> ps: array<f32, WG>;
${main}
${queryHead}
  var part = 0.0;
  for (var c = lid; c < D; c = c + WG) {
    qs[c] = q[g * D + c] * SCALE;
    ds[c] = dO[g * D + c];
    part = part + dO[g * D + c] * o[g * D + c];
  }
  let dl = reduce_sum(lid, part);
  let L = lse[g];
  var acc: array<f32, NC>;
  for (var j0 = 0u; j0 < jEnd; j0 = j0 + WG) {
    let j = j0 + lid;
    var dsj = 0.0;
    if (j < jEnd) {
      let kt = r * S + j;
      if (seg[kt] == si) {
        let kb = (kt * KV + kvh) * D;
        var s = 0.0;
        var dp = 0.0;
        for (var c = 0u; c < D; c = c + 1u) { s = s + qs[c] * k[kb + c]; dp = dp + ds[c] * v[kb + c]; }
        dsj = exp(s - L) * (dp - dl);
      }
    }
    ps[lid] = dsj;
    workgroupBarrier();
    let n = min(WG, jEnd - j0);
    for (var nc = 0u; nc < NC; nc = nc + 1u) {
      let c = lid + nc * WG;
      if (c < D) {
        var a = acc[nc];
        for (var jj = 0u; jj < n; jj = jj + 1u) { a = a + ps[jj] * k[((r * S + j0 + jj) * KV + kvh) * D + c]; }
        acc[nc] = a;
      }
    }
    workgroupBarrier();
  }
  for (var nc = 0u; nc < NC; nc = nc + 1u) {
    let c = lid + nc * WG;
    if (c < D) { dq[g * D + c] = acc[nc] * SCALE; }
  }
  if (lid == 0u) { delta[g] = dl; }
}`,
  });
  return [dq!, delta!];
}

function backwardKV(dO: Tensor, q: Tensor, k: Tensor, v: Tensor, lse: Tensor, delta: Tensor, seg: Tensor, a: AttentionShape): [Tensor, Tensor] {
  const T = a.rows * a.seqLen;
  const nk = T * a.kvHeads;
  const [dk, dv] = dispatch({
    name: 'attention_bwd_kv',
    inputs: { dO, q, k, v, lse, delta, seg },
    outputs: { dk: [T, a.kvHeads * a.headDim], dv: [T, a.kvHeads * a.headDim] },
    uniforms: { nk: ['u32', nk] },
    workgroups: nk,
    body: `${consts(a)}
var<workgroup> ks: array<f32, D>;
var<workgroup> vs: array<f32, D>;
var<workgroup> ps: array<f32, WG>;
var<workgroup> dss: array<f32, WG>;
${main}
  let g = flat_wg(wid, nwg);
  if (g >= u.nk) { return; }
  let kvh = g % KV;
  let tok = g / KV;
  let r = tok / S;
  let j = tok % S;
  let sj = seg[tok];
  var iStart = 0u;
  if (CAUSAL) { iStart = j; }
  for (var c = lid; c < D; c = c + WG) { ks[c] = k[g * D + c] * SCALE; vs[c] = v[g * D + c]; }
  workgroupBarrier();
  var accK: array<f32, NC>;
  var accV: array<f32, NC>;
  for (var hh = 0u; hh < GROUP; hh = hh + 1u) {
    let h = kvh * GROUP + hh;
    for (var i0 = iStart; i0 < S; i0 = i0 + WG) {
      let i = i0 + lid;
      var p = 0.0;
      var dsi = 0.0;
      if (i < S) {
        let qt = r * S + i;
        if (seg[qt] == sj) {
          let qi = qt * H + h;
          let qb = qi * D;
          var s = 0.0;
          var dp = 0.0;
          for (var c = 0u; c < D; c = c + 1u) { s = s + q[qb + c] * ks[c]; dp = dp + dO[qb + c] * vs[c]; }
          p = exp(s - lse[qi]);
          dsi = p * (dp - delta[qi]);
        }
      }
      ps[lid] = p;
      dss[lid] = dsi;
      workgroupBarrier();
      let n = min(WG, S - i0);
      for (var nc = 0u; nc < NC; nc = nc + 1u) {
        let c = lid + nc * WG;
        if (c < D) {
          var ak = accK[nc];
          var av = accV[nc];
          for (var ii = 0u; ii < n; ii = ii + 1u) {
            let qb = ((r * S + i0 + ii) * H + h) * D + c;
            ak = ak + dss[ii] * q[qb];
            av = av + ps[ii] * dO[qb];
          }
          accK[nc] = ak;
          accV[nc] = av;
        }
      }
      workgroupBarrier();
    }
  }
  for (var nc = 0u; nc < NC; nc = nc + 1u) {
    let c = lid + nc * WG;
    if (c < D) { dk[g * D + c] = accK[nc] * SCALE; dv[g * D + c] = accV[nc]; }
  }
}`,
  });
  return [dk!, dv!];
}

/** The batch's segments as an int32 tensor, cached in `cache` (a forward pass's KernelContext cache). */
export function segmentTensor(segments: Int32Array, cache?: Map<string, Tensor>): Tensor {
  const hit = cache?.get('wgsl:segments');
  if (hit && !hit.isDisposed) return hit;
  const t = i32(segments);
  cache?.set('wgsl:segments', t);
  return t;
}

/** Fused attention of q [T, H·d], k, v [T, KV·d] over the batch's segments [T] (int32), differentiable. */
export function attention(q: Tensor, k: Tensor, v: Tensor, segments: Tensor, a: AttentionShape): Tensor {
  if (a.heads % a.kvHeads !== 0) throw new Error(`attention: heads ${a.heads} is not a multiple of kvHeads ${a.kvHeads}`);
  return customOp((qq: Tensor, kk: Tensor, vv: Tensor) => {
    const [o, lse] = forward(qq, kk, vv, segments, a);
    // Everything backward reads is saved: autodiff frees the forward pass's other tensors before backward.
    return {
      value: o!,
      save: [qq, kk, vv, o!, lse!, segments],
      gradFunc: (dO: Tensor, [sq, sk, sv, so, sl, sseg]: Tensor[]) => {
        const [dq, delta] = backwardQ(dO, sq!, sk!, sv!, so!, sl!, sseg!, a);
        const [dk, dv] = backwardKV(dO, sq!, sk!, sv!, sl!, delta, sseg!, a);
        delta.dispose();
        return [dq, dk, dv];
      },
    };
  })(q, k, v);
}
