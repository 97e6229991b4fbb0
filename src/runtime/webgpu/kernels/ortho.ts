/**
 * The orthogonality penalty of every site in one dispatch (reference.ts `ortho_penalty_batched`):
 *   Σ_τ w_τ · norm(X_t·X_oᵀ)    norm: l1 = Σ|·|, l2 and fro = Σ(·)²
 * with X the rows of the adapters' A matrices ([r, in] rows) or the columns of their B matrices.
 *
 * Every distinct parameter's rows are packed (reshape, transpose for B: tfjs ops, so autodiff takes the
 * gradient back through the packing) into one flat buffer X; a host-built table gives each row's offset,
 * each term's target and other row lists and each row's appearances. Then:
 *   forward   one workgroup per term: every (a, b) pair's dot product X_a·X_b, its norm term, a shared
 *             memory sum; writes w_τ · penalty_τ per term (the total is a tfjs sum over terms).
 *   backward  one workgroup per packed row ρ: for every term it appears in, with partners P (the other
 *             side of the term): dX_ρ = Σ_τ dy_τ w_τ Σ_{b∈P} n'(X_ρ·X_b) X_b, n' = sign (l1, 0 at 0) or 2·
 *             (one invocation per partner computes the dot product; the sum over partners is per column).
 */
import { tf, type Tensor } from '../../tfjs/index.js';
import { dispatch, f32, i32 } from './run.js';

const WG = 128;

export interface OrthoTermSpec {
  targetParams: string[];
  otherParams: string[];
  matrix: string;
  norm: string;
  weight: number;
}

interface Packed {
  /** Parameter ids in packing order, and how each is laid out as rows. */
  ids: string[];
  /** Per row: offset into X, and the row width. */
  rowOff: number[];
  width: number[];
  /** Per term: [targetStart, targetCount, otherStart, otherCount] into `rowList`, norm kind (0 l1, 1 sq). */
  termInfo: number[];
  rowList: number[];
  /** Per row: [start, count] into `apps`; apps entries [term, partnerStart, partnerCount]. */
  appIndex: number[];
  apps: number[];
  maxWidth: number;
}

/** Lays out the rows of every parameter the terms read; undefined when a term mixes widths or sides overlap. */
function pack(terms: readonly OrthoTermSpec[], shapes: Map<string, readonly number[]>): Packed | undefined {
  const ids: string[] = [];
  const firstRow = new Map<string, { first: number; count: number; width: number; matrix: string }>();
  const rowOff: number[] = [];
  const width: number[] = [];
  let off = 0;
  const rowsOf = (id: string, matrix: string): number[] | undefined => {
    let e = firstRow.get(id);
    if (!e) {
      const s = shapes.get(id);
      if (!s) return undefined;
      // A: [r, in] or [E, r, in] -> rows of `in`;  B: [out, r] or [E, out, r] -> rows of `out` (columns of B).
      const [count, w] = matrix === 'A' ? [s.length === 3 ? s[0]! * s[1]! : s[0]!, s[s.length - 1]!] : [s.length === 3 ? s[0]! * s[2]! : s[1]!, s[s.length - 2]!];
      e = { first: rowOff.length, count, width: w, matrix };
      for (let i = 0; i < count; i++) {
        rowOff.push(off);
        width.push(w);
        off += w;
      }
      ids.push(id);
      firstRow.set(id, e);
    }
    if (e.matrix !== matrix) return undefined;
    return Array.from({ length: e.count }, (_, i) => e!.first + i);
  };
  const termInfo: number[] = [];
  const rowList: number[] = [];
  const sides: { rows: number[]; start: number }[][] = [];
  for (const t of terms) {
    if (t.matrix !== 'A' && t.matrix !== 'B') return undefined;
    if (!['l1', 'l2', 'fro'].includes(t.norm)) return undefined;
    const tr = t.targetParams.flatMap((id) => rowsOf(id, t.matrix) ?? [-1]);
    const or = t.otherParams.flatMap((id) => rowsOf(id, t.matrix) ?? [-1]);
    if (tr.includes(-1) || or.includes(-1) || !tr.length || !or.length) return undefined;
    const w = width[tr[0]!]!;
    if ([...tr, ...or].some((r) => width[r] !== w)) return undefined;
    if (tr.some((r) => or.includes(r))) return undefined;
    const ts = rowList.length;
    rowList.push(...tr);
    const os = rowList.length;
    rowList.push(...or);
    termInfo.push(ts, tr.length, os, or.length, t.norm === 'l1' ? 0 : 1, w);
    sides.push([
      { rows: tr, start: ts },
      { rows: or, start: os },
    ]);
  }
  const perRow: number[][] = rowOff.map(() => []);
  sides.forEach(([tside, oside], term) => {
    for (const r of tside!.rows) perRow[r]!.push(term, oside!.start, oside!.rows.length);
    for (const r of oside!.rows) perRow[r]!.push(term, tside!.start, tside!.rows.length);
  });
  const appIndex: number[] = [];
  const apps: number[] = [];
  for (const a of perRow) {
    appIndex.push(apps.length / 3, a.length / 3);
    apps.push(...a);
  }
  return { ids, rowOff, width, termInfo, rowList, appIndex, apps, maxWidth: Math.max(...width) };
}

/** Packs the rows of a parameter for `matrix` (A: as is; B: transposed) as a flat vector. */
function flatRows(t: Tensor, matrix: string): Tensor {
  if (matrix === 'A') return tf.reshape(t, [-1]);
  return tf.reshape(t.rank === 3 ? tf.transpose(t, [0, 2, 1]) : tf.transpose(t), [-1]);
}

/**
 * The weighted sum of the terms' penalties; `get` returns a parameter's tensor by id. Returns undefined when
 * the terms cannot be batched into one kernel (mixed widths in a term, a row on both sides of a term):
 * the caller falls back to the reference.
 */
export function orthoPenaltyBatched(terms: readonly OrthoTermSpec[], get: (id: string) => Tensor, weighted: boolean): Tensor | undefined {
  const shapes = new Map<string, readonly number[]>();
  for (const t of terms) for (const id of [...t.targetParams, ...t.otherParams]) shapes.set(id, get(id).shape);
  const p = pack(terms, shapes);
  if (!p) return undefined;
  const matrixOf = new Map(terms.flatMap((t) => [...t.targetParams, ...t.otherParams].map((id) => [id, t.matrix] as const)));
  const X = tf.concat(p.ids.map((id) => flatRows(get(id), matrixOf.get(id)!)));
  const weights = f32(terms.map((t) => (weighted ? t.weight : 1)));
  const termInfo = i32(p.termInfo);
  const rowInfo = i32(p.rowOff.flatMap((o, r) => [o, p.width[r]!]));
  const rowList = i32(p.rowList);
  const nT = terms.length;
  const nR = p.rowOff.length;
  const NC = Math.ceil(p.maxWidth / WG);
  const f = tf.customGrad(((x: Tensor, save: tf.GradSaveFunc) => {
    // The tables are saved too: autodiff frees the forward pass's other tensors before backward.
    save([x, termInfo, rowInfo, rowList, weights]);
    const [vals] = dispatch({
      name: 'ortho_fwd',
      inputs: { X: x, termInfo, rowInfo, rowList, weights },
      outputs: { vals: [nT] },
      uniforms: { n: ['u32', nT] },
      workgroups: nT,
      body: `
var<workgroup> red: array<f32, ${WG}>;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let g = flat_wg(wid, nwg);
  if (g >= u.n) { return; }
  let ts = u32(termInfo[g * 6u]);
  let tc = u32(termInfo[g * 6u + 1u]);
  let os = u32(termInfo[g * 6u + 2u]);
  let oc = u32(termInfo[g * 6u + 3u]);
  let l1 = termInfo[g * 6u + 4u] == 0;
  let w = u32(termInfo[g * 6u + 5u]);
  var acc = 0.0;
  for (var k = lid; k < tc * oc; k = k + ${WG}u) {
    let a = u32(rowInfo[u32(rowList[ts + k / oc]) * 2u]);
    let b = u32(rowInfo[u32(rowList[os + k % oc]) * 2u]);
    var d = 0.0;
    for (var c = 0u; c < w; c = c + 1u) { d = d + X[a + c] * X[b + c]; }
    if (l1) { acc = acc + abs(d); } else { acc = acc + d * d; }
  }
  red[lid] = acc;
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s = s >> 1u) {
    if (lid < s) { red[lid] = red[lid] + red[lid + s]; }
    workgroupBarrier();
  }
  if (lid == 0u) { vals[g] = red[0] * weights[g]; }
}`,
    });
    return {
      value: vals!,
      gradFunc: (dy: Tensor, [sx, sTerm, sRow, sList, sW]: Tensor[]) =>
        dispatch({
          name: 'ortho_bwd',
          inputs: { X: sx!, dy, termInfo: sTerm!, rowInfo: sRow!, rowList: sList!, weights: sW!, appIndex: i32(p.appIndex), apps: i32(p.apps.length ? p.apps : [0]) },
          outputs: { dX: [sx!.size] },
          uniforms: { n: ['u32', nR] },
          workgroups: nR,
          body: `
const NC = ${NC}u;
var<workgroup> coef: array<f32, ${WG}>;
var<workgroup> offs: array<u32, ${WG}>;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let g = flat_wg(wid, nwg);
  if (g >= u.n) { return; }
  let me = u32(rowInfo[g * 2u]);
  let myw = u32(rowInfo[g * 2u + 1u]);
  let first = u32(appIndex[g * 2u]);
  let count = u32(appIndex[g * 2u + 1u]);
  var acc: array<f32, NC>;
  for (var e = 0u; e < count; e = e + 1u) {
    let term = u32(apps[(first + e) * 3u]);
    let ps = u32(apps[(first + e) * 3u + 1u]);
    let pc = u32(apps[(first + e) * 3u + 2u]);
    let l1 = termInfo[term * 6u + 4u] == 0;
    let scale = dy[term] * weights[term];
    for (var b0 = 0u; b0 < pc; b0 = b0 + ${WG}u) {
      let b = b0 + lid;
      var cf = 0.0;
      var ob = 0u;
      if (b < pc) {
        ob = u32(rowInfo[u32(rowList[ps + b]) * 2u]);
        var d = 0.0;
        for (var c = 0u; c < myw; c = c + 1u) { d = d + X[me + c] * X[ob + c]; }
        if (l1) { cf = sign(d); } else { cf = 2.0 * d; }
        cf = cf * scale;
      }
      coef[lid] = cf;
      offs[lid] = ob;
      workgroupBarrier();
      let n = min(${WG}u, pc - b0);
      for (var nc = 0u; nc < NC; nc = nc + 1u) {
        let c = lid + nc * ${WG}u;
        if (c < myw) {
          var a = acc[nc];
          for (var k = 0u; k < n; k = k + 1u) { a = a + coef[k] * X[offs[k] + c]; }
          acc[nc] = a;
        }
      }
      workgroupBarrier();
    }
  }
  for (var nc = 0u; nc < NC; nc = nc + 1u) {
    let c = lid + nc * ${WG}u;
    if (c < myw) { dX[me + c] = acc[nc]; }
  }
}`,
        })[0]!,
    };
  }) as never) as (x: Tensor) => Tensor;
  return tf.sum(f(X));
}
