/**
 * WGSL of the mixture-of-LoRA linear (./moe-lora.ts has the op and the math). Notation: T tokens, din, dout,
 * RS shared rank (0: none), E routed experts of rank r (0: none), KT = top-k, s = scale,
 * R = RS + E·r + E (the columns of G below), H = RS + E·r.
 *
 * Forward, two dispatches:
 *   down   G[T, R] = x · [A_sh ; A_e ; W_r]ᵀ               one GEMM; the three weights are parts of one operand
 *   up     y = x·Wᵀ + b + s·G[:, :RS]·B_shᵀ + Σ_top-k g·s·G[:, e]·B_eᵀ
 *          one GEMM over two K segments (base and shared), whose prologue routes the tile's tokens
 *          (router bias, softmax or sigmoid, top-k, renormalisation) into workgroup memory and whose
 *          epilogue adds, per token, only its top-k experts' B side; column-tile 0 also writes p and gates.
 * Backward:
 *   back   per token: u = dy·[B_sh | B_e of its top-k] (only those), then dG[T, R] = [s·u_sh | s·g·u_e (0 off the
 *          top-k) | dz] with the routing backward (renormalisation, softmax/sigmoid, upstream dp and dgates)
 *          and Hs[T, H] = [s·h_sh | s·g·h_e]
 *   dx     dy·W + dG·[A_sh ; A_e ; W_r]      one GEMM, four K segments
 *   dA     dGᵀ·x → dA_sh, dA_e, dW_r          one GEMM, rows stored to three outputs
 *   dB     dyᵀ·Hs → dB_sh, dB_e ([E, dout, r]) one GEMM, columns stored to two outputs
 * (dW and db of the base, when asked, are a plain GEMM and a column sum; db_r is a column sum of dG.)
 */
import { f32lit, type GemmSpec, type Part, type Tile } from './gemm-wgsl.js';

export interface MoeShape {
  T: number;
  din: number;
  dout: number;
  /** Shared rank (0: no shared expert). */
  RS: number;
  /** Routed experts (0: plain LoRA). */
  E: number;
  r: number;
  topK: number;
  renormalize: boolean;
  activation: 'softmax' | 'sigmoid';
  scale: number;
  bias: boolean;
  routerBias: boolean;
  /**
   * false: the kernels leave out the base product x·Wᵀ (and dy·W in dx): the caller computes it apart, e.g.
   * on tensor cores (moeLoraLinear's `base: 'f16'`). Default true.
   */
  base?: boolean;
  /**
   * With base false: the caller's base product comes in as one more input, `add` [T, dout] in up ([T, din] in dx),
   * added in the GEMM's epilogue (the tensor-core path: one tfjs kernel, no separate add). Default false.
   */
  addend?: boolean;
  /** Where the caller's base product is computed (moe-lora.ts: the f16 GEMM on tensor cores, or the f32 one). */
  apart?: 'f16' | 'f32';
}

const u = (x: number): string => `${x >>> 0}u`;

export const cols = (s: MoeShape) => ({ R: s.RS + s.E * s.r + s.E, H: s.RS + s.E * s.r });

/** The routing function: fills rp (probabilities), ridx and rg (top-k experts and gates) for a row. */
function routeFn(s: MoeShape, gIn: string, brIn: string | undefined): string {
  const { R } = cols(s);
  const z0 = s.RS + s.E * s.r;
  const act =
    s.activation === 'softmax'
      ? `  var mx = rp[0];
  for (var e = 1u; e < ${u(s.E)}; e++) { mx = max(mx, rp[e]); }
  var den = 0.0;
  for (var e = 0u; e < ${u(s.E)}; e++) { rp[e] = exp(rp[e] - mx); den += rp[e]; }
  for (var e = 0u; e < ${u(s.E)}; e++) { rp[e] = rp[e] / den; }`
      : `  for (var e = 0u; e < ${u(s.E)}; e++) { rp[e] = 1.0 / (1.0 + exp(-rp[e])); }`;
  return `var<private> rp: array<f32, ${s.E}>;
var<private> ridx: array<u32, ${s.topK}>;
var<private> rg: array<f32, ${s.topK}>;
fn route(row: u32) {
  for (var e = 0u; e < ${u(s.E)}; e++) { rp[e] = ${gIn}[row * ${u(R)} + ${u(z0)} + e]${brIn ? ` + ${brIn}[e]` : ''}; }
${act}
  var taken: array<bool, ${s.E}>;
  var sum = 0.0;
  for (var q = 0u; q < ${u(s.topK)}; q++) {
    var best = 0u;
    var bv = 0.0;
    var found = false;
    for (var e = 0u; e < ${u(s.E)}; e++) {
      if (!taken[e] && (!found || rp[e] > bv)) { best = e; bv = rp[e]; found = true; }
    }
    taken[best] = true;
    ridx[q] = best;
    rg[q] = bv;
    sum += bv;
  }
${s.renormalize ? `  for (var q = 0u; q < ${u(s.topK)}; q++) { rg[q] = rg[q] / sum; }` : ''}
}`;
}

/**
 * Row epilogue adding input `name` ([M, N] row-major; vec4 when N % 4 == 0) to the accumulators o0 … o{TN/4−1}.
 * `cols` declares c0 … (the columns of each accumulator) unless the caller's epilogue already did.
 */
function addendEpilogue(name: string, N: number, tile: Tile, declareCols: boolean): string {
  const TN4 = tile.tn / 4;
  const lines: string[] = [];
  for (let j = 0; j < TN4; j++) {
    if (declareCols) lines.push(`let c${j} = n0 + 4u * (tx + ${u(j)} * NTX);`);
    if (N % 4 === 0) lines.push(`o${j} += ${name}[(row * N + min(c${j}, N - 4u)) / 4u];`);
    else lines.push(`o${j} += vec4<f32>(${[0, 1, 2, 3].map((c) => `${name}[row * N + min(c${j} + ${u(c)}, N - 1u)]`).join(', ')});`);
  }
  return lines.join('\n');
}

/** Inputs of the forward kernels, in the op's order: x, W, b?, A_sh?, B_sh?, W_r?, b_r?, A_e?, B_e?. */
export function inputIndex(s: MoeShape) {
  let i = 0;
  const x = i++;
  const w = i++;
  const b = s.bias ? i++ : -1;
  const aSh = s.RS ? i++ : -1;
  const bSh = s.RS ? i++ : -1;
  const wr = s.E ? i++ : -1;
  const br = s.E && s.routerBias ? i++ : -1;
  const aE = s.E ? i++ : -1;
  const bE = s.E ? i++ : -1;
  return { x, w, b, aSh, bSh, wr, br, aE, bE, count: i };
}

/** down: G = x·[A_sh ; A_e ; W_r]ᵀ. Bindings: x, then the present weights in that order. */
export function downSpec(s: MoeShape, tile: Tile): GemmSpec {
  const { R } = cols(s);
  const parts: Part[] = [];
  let i = 1;
  if (s.RS) parts.push({ input: i++, count: s.RS, ld: s.din, off: 0 });
  if (s.E) {
    parts.push({ input: i++, count: s.E * s.r, ld: s.din, off: 0 });
    parts.push({ input: i++, count: s.E, ld: s.din, off: 0 });
  }
  return {
    m: s.T,
    n: R,
    tile,
    segments: [{ k: s.din, a: { kMajor: false, parts: [{ input: 0, count: s.T, ld: s.din, off: 0 }] }, b: { kMajor: false, parts } }],
    inputs: Array.from({ length: i }, () => ({})),
    outputs: [R % 4 === 0 ? 'vec4' : 'f32'],
  };
}

/**
 * up: y (and p, gates). Bindings: x, W, G? (GEMM operand, when RS > 0), G? (scalar, for routing and the
 * epilogue, when E > 0), then b?, B_sh?, b_r?, B_e?; outputs y, p?, gates?.
 */
export function upSpec(s: MoeShape, tile: Tile): { spec: GemmSpec; inputs: string[] } {
  const { R } = cols(s);
  // Only bindings the module reads: a pipeline with layout 'auto' has no slot for an unused one.
  const withBase = s.base !== false;
  if (!withBase && !s.RS && !s.E) throw new Error('upSpec: without the base product there is nothing to compute');
  const names = withBase ? ['x', 'w'] : [];
  if (s.RS) names.push('G');
  if (s.E) names.push('Gs');
  const idx = (n: string) => names.indexOf(n);
  if (s.bias) names.push('b');
  if (s.RS) names.push('bSh');
  if (s.E && s.routerBias) names.push('br');
  if (s.E) names.push('bE');
  const addend = !withBase && !!s.addend;
  if (addend) names.push('add');
  const vecB = s.r % 4 === 0;
  const addType = s.dout % 4 === 0 ? ('vec4' as const) : ('f32' as const);
  const inputs: GemmSpec['inputs'] = names.map((n) =>
    n === 'Gs' || n === 'br' ? { type: 'f32' as const } : n === 'bE' ? { type: vecB ? ('vec4' as const) : ('f32' as const) } : n === 'add' ? { type: addType } : {},
  );
  const segments: GemmSpec['segments'] = withBase
    ? [{ k: s.din, a: { kMajor: false, parts: [{ input: idx('x'), count: s.T, ld: s.din, off: 0 }] }, b: { kMajor: false, parts: [{ input: idx('w'), count: s.dout, ld: s.din, off: 0 }] } }]
    : [];
  if (s.RS) {
    segments.push({
      k: s.RS,
      a: { kMajor: false, parts: [{ input: idx('G'), count: s.T, ld: R, off: 0 }], scale: s.scale },
      b: { kMajor: false, parts: [{ input: idx('bSh'), count: s.dout, ld: s.RS, off: 0 }] },
    });
  }
  const spec: GemmSpec = {
    m: s.T,
    n: s.dout,
    tile,
    segments,
    inputs,
    outputs: s.E ? [s.dout % 4 === 0 ? 'vec4' : 'f32', 'f32', 'f32'] : [s.dout % 4 === 0 ? 'vec4' : 'f32'],
    ...(s.bias ? { bias: idx('b') } : {}),
  };
  const addLines = addend ? addendEpilogue(`in${idx('add')}`, s.dout, tile, !s.E) : '';
  if (!s.E) {
    if (addend) spec.rowEpilogue = addLines;
    return { spec, inputs: names };
  }
  const KT = s.topK;
  const TN4 = tile.tn / 4;
  spec.decls = `${routeFn(s, `in${idx('Gs')}`, s.routerBias ? `in${idx('br')}` : undefined)}
var<workgroup> sIdx: array<u32, ${tile.bm * KT}>;
var<workgroup> sGate: array<f32, ${tile.bm * KT}>;`;
  spec.prologue = `  for (var lr = tid; lr < ${u(tile.bm)}; lr += ${u((tile.bm / tile.tm) * (tile.bn / tile.tn))}) {
    let row = m0 + lr;
    if (row < M) {
      route(row);
      for (var q = 0u; q < ${u(KT)}; q++) { sIdx[lr * ${u(KT)} + q] = ridx[q]; sGate[lr * ${u(KT)} + q] = rg[q]; }
      if (n0 == 0u) {
        for (var e = 0u; e < ${u(s.E)}; e++) { out1[row * ${u(s.E)} + e] = rp[e]; out2[row * ${u(s.E)} + e] = 0.0; }
        for (var q = 0u; q < ${u(KT)}; q++) { out2[row * ${u(s.E)} + ridx[q]] = rg[q]; }
      }
    }
  }
  workgroupBarrier();`;
  const Gs = `in${idx('Gs')}`;
  const bE = `in${idx('bE')}`;
  const colsOf = Array.from({ length: TN4 }, (_, j) => `    let c${j} = n0 + 4u * (tx + ${u(j)} * NTX);`).join('\n');
  const comps = 'xyzw';
  let inner: string;
  if (vecB) {
    const lines: string[] = [];
    for (let j = 0; j < TN4; j++) {
      for (let c = 0; c < 4; c++) lines.push(`      o${j}.${comps[c]} += dot(hv, ${bE}[(eb + min(c${j} + ${u(c)}, N - 1u) * ${u(s.r)}) / 4u + i4]);`);
    }
    inner = `    for (var i4 = 0u; i4 < ${u(s.r / 4)}; i4++) {
      let hb = hrow + 4u * i4;
      let hv = g * vec4<f32>(${Gs}[hb], ${Gs}[hb + 1u], ${Gs}[hb + 2u], ${Gs}[hb + 3u]);
${lines.join('\n')}
    }`;
  } else {
    const lines: string[] = [];
    for (let j = 0; j < TN4; j++) {
      for (let c = 0; c < 4; c++) lines.push(`      o${j}.${comps[c]} += hv * ${bE}[eb + min(c${j} + ${u(c)}, N - 1u) * ${u(s.r)} + i];`);
    }
    inner = `    for (var i = 0u; i < ${u(s.r)}; i++) {
      let hv = g * ${Gs}[hrow + i];
${lines.join('\n')}
    }`;
  }
  spec.rowEpilogue = `${colsOf}
for (var q = 0u; q < ${u(KT)}; q++) {
    let e = sIdx[lr * ${u(KT)} + q];
    let g = sGate[lr * ${u(KT)} + q] * ${f32lit(s.scale)};
    let hrow = row * ${u(R)} + ${u(s.RS)} + e * ${u(s.r)};
    let eb = e * ${u(s.dout * s.r)};
${inner}
}${addend ? `\n${addLines}` : ''}`;
  return { spec, inputs: names };
}

/** Threads of the per-token backward kernel. */
export const BACK_THREADS = 128;

/**
 * back: one workgroup per token. Bindings: dy, G, b_r?, B_sh?, B_e?, dp?, dgates?; outputs dG [T, R], Hs [T, H].
 * Dispatch: [min(T, 65535), ceil(T / 65535), 1].
 */
export function backWgsl(s: MoeShape, upstream: { dp: boolean; dgates: boolean }): { code: string; inputs: string[] } {
  const { R, H } = cols(s);
  const names = ['dy', 'G'];
  if (s.E && s.routerBias) names.push('br');
  if (s.RS) names.push('bSh');
  if (s.E) names.push('bE');
  if (s.E && upstream.dp) names.push('dp');
  if (s.E && upstream.dgates) names.push('dgates');
  const at = (n: string) => `in${names.indexOf(n)}`;
  const O = s.RS + (s.E ? s.topK * s.r : 0);
  const NTH = BACK_THREADS;
  const OPG = Math.max(1, Math.min(O, NTH));
  const P = Math.max(1, Math.floor(NTH / OPG));
  const decl = names.map((n, i) => `@group(0) @binding(${i}) var<storage, read> in${i}: array<f32>;`).join('\n');
  const outs = `@group(0) @binding(${names.length}) var<storage, read_write> dG: array<f32>;
@group(0) @binding(${names.length + 1}) var<storage, read_write> Hs: array<f32>;`;
  const bval = `fn bval(o: u32, n: u32) -> f32 {
${s.RS ? `  if (o < ${u(s.RS)}) { return ${at('bSh')}[n * ${u(s.RS)} + o]; }` : ''}
${s.E ? `  let q = (o - ${u(s.RS)}) / ${u(s.r)};
  let i = (o - ${u(s.RS)}) % ${u(s.r)};
  return ${at('bE')}[(ridx[q] * ${u(s.dout)} + n) * ${u(s.r)} + i];` : '  return 0.0;'}
}`;
  const slot = `fn slot(e: u32) -> u32 {
  for (var q = 0u; q < ${u(s.topK)}; q++) { if (ridx[q] == e) { return q; } }
  return ${u(s.topK)};
}`;
  const routing = s.E
    ? `${routeFn(s, at('G'), s.routerBias ? at('br') : undefined)}
var<private> dz: array<f32, ${s.E}>;
${slot}
fn routeBack(row: u32) {
  var dg: array<f32, ${s.topK}>;
  for (var q = 0u; q < ${u(s.topK)}; q++) {
    let hb = row * ${u(R)} + ${u(s.RS)} + ridx[q] * ${u(s.r)};
    var acc = 0.0;
    for (var i = 0u; i < ${u(s.r)}; i++) { acc += in1[hb + i] * uu[${u(s.RS)} + q * ${u(s.r)} + i]; }
    dg[q] = ${f32lit(s.scale)} * acc${upstream.dgates ? ` + ${at('dgates')}[row * ${u(s.E)} + ridx[q]]` : ''};
  }
  var dpk: array<f32, ${s.topK}>;
${
  s.renormalize
    ? `  var S = 0.0;
  for (var q = 0u; q < ${u(s.topK)}; q++) { S += rp[ridx[q]]; }
  var d = 0.0;
  for (var q = 0u; q < ${u(s.topK)}; q++) { d += dg[q] * rg[q]; }
  for (var q = 0u; q < ${u(s.topK)}; q++) { dpk[q] = (dg[q] - d) / S; }`
    : `  for (var q = 0u; q < ${u(s.topK)}; q++) { dpk[q] = dg[q]; }`
}
  var dp: array<f32, ${s.E}>;
  for (var e = 0u; e < ${u(s.E)}; e++) { dp[e] = ${upstream.dp ? `${at('dp')}[row * ${u(s.E)} + e]` : '0.0'}; }
  for (var q = 0u; q < ${u(s.topK)}; q++) { dp[ridx[q]] += dpk[q]; }
${
  s.activation === 'softmax'
    ? `  var pd = 0.0;
  for (var e = 0u; e < ${u(s.E)}; e++) { pd += rp[e] * dp[e]; }
  for (var e = 0u; e < ${u(s.E)}; e++) { dz[e] = rp[e] * (dp[e] - pd); }`
    : `  for (var e = 0u; e < ${u(s.E)}; e++) { dz[e] = dp[e] * rp[e] * (1.0 - rp[e]); }`
}
}`
    : '';
  const sc = f32lit(s.scale);
  const code = `${decl}
${outs}
var<workgroup> part: array<f32, ${NTH}>;
var<workgroup> uu: array<f32, ${Math.max(O, 1)}>;
${routing}
${bval}
@compute @workgroup_size(${NTH})
fn main(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let row = wid.x + wid.y * nwg.x;
  if (row >= ${u(s.T)}) { return; }
${s.E ? '  route(row);' : ''}
  for (var o0 = 0u; o0 < ${u(O)}; o0 += ${u(OPG)}) {
    let o = o0 + tid % ${u(OPG)};
    let p = tid / ${u(OPG)};
    var acc = 0.0;
    if (o < ${u(O)} && p < ${u(P)}) {
      for (var n = p; n < ${u(s.dout)}; n += ${u(P)}) { acc += in0[row * ${u(s.dout)} + n] * bval(o, n); }
    }
    part[tid] = acc;
    workgroupBarrier();
    if (tid < ${u(OPG)} && o0 + tid < ${u(O)}) {
      var t = 0.0;
      for (var pp = 0u; pp < ${u(P)}; pp++) { t += part[pp * ${u(OPG)} + tid]; }
      uu[o0 + tid] = t;
    }
    workgroupBarrier();
  }
${s.E ? '  routeBack(row);' : ''}
  for (var j = tid; j < ${u(R)}; j += ${u(NTH)}) {
    var v = 0.0;
    var h = 0.0;
    let gv = in1[row * ${u(R)} + min(j, ${u(Math.max(R - 1, 0))})];
    if (j < ${u(s.RS)}) {
      v = ${sc} * uu[j];
      h = ${sc} * gv;
    }${
      s.E
        ? ` else if (j < ${u(H)}) {
      let e = (j - ${u(s.RS)}) / ${u(s.r)};
      let i = (j - ${u(s.RS)}) % ${u(s.r)};
      let q = slot(e);
      if (q < ${u(s.topK)}) {
        v = ${sc} * rg[q] * uu[${u(s.RS)} + q * ${u(s.r)} + i];
        h = ${sc} * rg[q] * gv;
      }
    } else {
      v = dz[j - ${u(H)}];
    }`
        : ''
    }
    dG[row * ${u(R)} + j] = v;
    if (j < ${u(H)}) { Hs[row * ${u(H)} + j] = h; }
  }
}
`;
  return { code, inputs: names };
}

/**
 * dx = dy·W + dG[:, :RS]·A_sh + dG[:, RS:H]·A_e + dG[:, H:]·W_r. Bindings: dy, W, dG, A_sh?, A_e?, W_r?.
 */
export function dxSpec(s: MoeShape, tile: Tile, accumulate = false): { spec: GemmSpec; inputs: string[] } {
  const { R, H } = cols(s);
  const withBase = s.base !== false;
  const names = withBase ? ['dy', 'w', 'dG'] : ['dG'];
  if (s.RS) names.push('aSh');
  if (s.E) names.push('aE', 'wr');
  const at = (n: string) => names.indexOf(n);
  const seg = (k: number, off: number, b: string) => ({
    k,
    a: { kMajor: false, parts: [{ input: at('dG'), count: s.T, ld: R, off }] },
    b: { kMajor: true, parts: [{ input: at(b), count: s.din, ld: s.din, off: 0 }] },
  });
  const segments: GemmSpec['segments'] = withBase
    ? [{ k: s.dout, a: { kMajor: false, parts: [{ input: at('dy'), count: s.T, ld: s.dout, off: 0 }] }, b: { kMajor: true, parts: [{ input: at('w'), count: s.din, ld: s.din, off: 0 }] } }]
    : [];
  if (s.RS) segments.push(seg(s.RS, 0, 'aSh'));
  if (s.E) segments.push(seg(s.E * s.r, s.RS, 'aE'), seg(s.E, H, 'wr'));
  const addend = !withBase && !!s.addend;
  if (addend) names.push('add');
  // accumulate: one more [T, din] input added (another site's dx of the same x: no tfjs Add kernel).
  if (accumulate) names.push('acc');
  const spec: GemmSpec = {
    m: s.T,
    n: s.din,
    tile,
    segments,
    inputs: names.map((n) => (n === 'add' || n === 'acc' ? { type: s.din % 4 === 0 ? ('vec4' as const) : ('f32' as const) } : {})),
    outputs: [s.din % 4 === 0 ? 'vec4' : 'f32'],
  };
  const epi: string[] = [];
  if (addend) epi.push(addendEpilogue(`in${at('add')}`, s.din, tile, true));
  if (accumulate) epi.push(addendEpilogue(`in${at('acc')}`, s.din, tile, !addend));
  if (epi.length) spec.rowEpilogue = epi.join('\n');
  return { spec, inputs: names };
}

/** Threads of the router-bias column sum. */
const SUM_THREADS = 256;

/**
 * db_r = Σ_t dG[t, H + e], one workgroup per expert. Bindings: dG; output db_r [E]. Dispatch [E, 1, 1].
 */
export function routerBiasSumWgsl(s: MoeShape): string {
  const { R, H } = cols(s);
  return `@group(0) @binding(0) var<storage, read> dG: array<f32>;
@group(0) @binding(1) var<storage, read_write> db: array<f32>;
var<workgroup> part: array<f32, ${SUM_THREADS}>;
@compute @workgroup_size(${SUM_THREADS})
fn main(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let e = wid.x;
  var acc = 0.0;
  for (var t = tid; t < ${u(s.T)}; t += ${u(SUM_THREADS)}) { acc += dG[t * ${u(R)} + ${u(H)} + e]; }
  part[tid] = acc;
  workgroupBarrier();
  for (var h = ${u(SUM_THREADS / 2)}; h > 0u; h = h / 2u) {
    if (tid < h) { part[tid] += part[tid + h]; }
    workgroupBarrier();
  }
  if (tid == 0u) { db[e] = part[0]; }
}
`;
}

/** dA: dGᵀ·x [R, din] stored as dA_sh [RS, din], dA_e [E·r, din], dW_r [E, din]. Bindings: dG, x. */
export function dASpec(s: MoeShape, tile: Tile): GemmSpec {
  const { R, H } = cols(s);
  const outs: ('f32' | 'vec4')[] = [];
  const store: string[] = [];
  let o = 0;
  if (s.RS) store.push(`if (r < ${u(s.RS)}) { out${o++}[r * ${u(s.din)} + c] = v; return; }`);
  if (s.E) {
    store.push(`if (r < ${u(H)}) { out${o++}[(r - ${u(s.RS)}) * ${u(s.din)} + c] = v; return; }`);
    store.push(`out${o++}[(r - ${u(H)}) * ${u(s.din)} + c] = v;`);
  }
  for (let i = 0; i < o; i++) outs.push('f32');
  return {
    m: R,
    n: s.din,
    tile,
    segments: [{ k: s.T, a: { kMajor: true, parts: [{ input: 0, count: R, ld: R, off: 0 }] }, b: { kMajor: true, parts: [{ input: 1, count: s.din, ld: s.din, off: 0 }] } }],
    inputs: [{}, {}],
    outputs: outs,
    store: store.join('\n'),
  };
}

/** dB: dyᵀ·Hs [dout, H] stored as dB_sh [dout, RS] and dB_e [E, dout, r]. Bindings: dy, Hs. */
export function dBSpec(s: MoeShape, tile: Tile): GemmSpec {
  const { H } = cols(s);
  const outs: ('f32' | 'vec4')[] = [];
  const store: string[] = [];
  let o = 0;
  if (s.RS) store.push(`if (c < ${u(s.RS)}) { out${o++}[r * ${u(s.RS)} + c] = v; return; }`);
  if (s.E) store.push(`let e = (c - ${u(s.RS)}) / ${u(s.r)}; let i = (c - ${u(s.RS)}) % ${u(s.r)};
out${o++}[(e * ${u(s.dout)} + r) * ${u(s.r)} + i] = v;`);
  for (let i = 0; i < o; i++) outs.push('f32');
  return {
    m: s.dout,
    n: H,
    tile,
    segments: [{ k: s.T, a: { kMajor: true, parts: [{ input: 0, count: s.dout, ld: s.dout, off: 0 }] }, b: { kMajor: true, parts: [{ input: 1, count: H, ld: H, off: 0 }] } }],
    inputs: [{}, {}],
    outputs: outs,
    store: store.join('\n'),
  };
}
