/**
 * The f16-input, f32-accumulate GEMM on tensor cores, through WGSL subgroup matrices
 * (`chromium-experimental-subgroup-matrix`; Dawn exposes it on NVIDIA with the toggles of ./device.ts).
 * Master weights stay f32: a cast pass writes each operand once as f16, in the layout the kernel wants and
 * zero-padded to whole tiles, so the matrix kernel has no bounds checks and no transposes:
 *
 *   cast     f32 operand (any storage order) → f16 [rows padded, K padded], k contiguous
 *   matmul   C[M, N] = A16 · B16ᵀ, f32 accumulators; a workgroup of 4 subgroups (2×2), each owning
 *            TM×TN result tiles of 16×16. Two kernels: `staged` copies BM×32 / BN×32 slices of A and B to
 *            workgroup memory (rows padded by 8 halves) and every subgroup loads its fragments there;
 *            `direct` loads fragments straight from storage (the H200 measurement of shared/gpu/README.md).
 *            Edge tiles go through workgroup memory and a guarded copy; full tiles are stored directly.
 *
 * Facts it relies on (shared/gpu/README.md): f16×f16→f32 configs at 16×16×16, subgroup size 32 on NVIDIA,
 * fragment offsets must be subgroup-uniform (derived from subgroup_id and workgroup_id only), and the
 * builtins' spelling changed (templated `row_major`/`col_major` replaces the bool argument): `probeF16`
 * compiles a small module in each spelling and keeps the one Dawn accepts.
 *
 * Nothing here can run on llvmpipe (no shader-f16, no subgroup matrices): `probeF16` says why, and
 * bench/gpu.ts checks the result against an f32 CPU product before timing it on a GPU.
 */
import type { TensorInfo } from '@tensorflow/tfjs-core';
import { tf, type Tensor } from '../tfjs/index.js';
import { runWgsl, disposeInfo, type WebGpuBackendLike } from './program.js';

/* eslint-disable @typescript-eslint/no-explicit-any -- WebGPU objects and tfjs kernel plumbing. */

export type MatrixSyntax = 'templated' | 'bool';

export interface F16Tile {
  variant: 'staged' | 'direct';
  /** 16×16 result tiles per subgroup along M and N. */
  tm: number;
  tn: number;
  /** Subgroups of the workgroup along M and N (default 2×2). */
  sg?: [number, number];
  /** staged only: the next K-slice's global loads are issued into registers before this slice's products. */
  pf?: boolean;
  /** staged only: K per staged slice (default 32; 64 halves the barriers). */
  bk?: number;
}

/** A short name for reports: `staged 4x4`, `staged 4x4 sg4x2 pf`. */
export function f16TileName(t: F16Tile): string {
  const sg = t.sg && (t.sg[0] !== 2 || t.sg[1] !== 2) ? ` sg${t.sg[0]}x${t.sg[1]}` : '';
  return `${t.variant} ${t.tm}x${t.tn}${sg}${t.pf ? ' pf' : ''}${t.bk && t.bk !== BK_DEFAULT ? ` bk${t.bk}` : ''}`;
}

export const F16_CANDIDATES: F16Tile[] = [
  { variant: 'staged', tm: 4, tn: 2 },
  { variant: 'staged', tm: 2, tn: 4 },
  { variant: 'staged', tm: 4, tn: 4 },
  { variant: 'staged', tm: 2, tn: 2 },
  { variant: 'direct', tm: 4, tn: 2 },
  { variant: 'direct', tm: 2, tn: 4 },
  // Prefetching and 8-subgroup workgroups (more reuse of each staged slice).
  { variant: 'staged', tm: 4, tn: 4, pf: true },
  { variant: 'staged', tm: 2, tn: 4, pf: true },
  { variant: 'staged', tm: 4, tn: 4, sg: [4, 2] },
  { variant: 'staged', tm: 4, tn: 4, sg: [2, 4] },
  { variant: 'staged', tm: 4, tn: 4, sg: [4, 2], pf: true },
  { variant: 'staged', tm: 2, tn: 4, sg: [4, 2], pf: true },
  { variant: 'staged', tm: 4, tn: 2, sg: [2, 4], pf: true },
  { variant: 'staged', tm: 4, tn: 4, pf: true, bk: 64 },
  { variant: 'staged', tm: 2, tn: 4, pf: true, bk: 64 },
];

export interface F16Support {
  ok: boolean;
  /** Why not, when not. */
  why?: string;
  syntax?: MatrixSyntax;
  /** Whether `enable subgroups;` is written (builtins subgroup_id / subgroup_invocation_id need it on newer Tint). */
  enableSubgroups?: boolean;
  subgroupSize?: number;
}

const probed = new WeakMap<object, Promise<F16Support>>();
const known = new WeakMap<object, F16Support>();

const BK_DEFAULT = 32;
const PAD = 8;
const u = (x: number) => `${x >>> 0}u`;
const rng = (n: number) => Array.from({ length: n }, (_, i) => i);

function leftLoad(syntax: MatrixSyntax, ptr: string, off: string, stride: string): string {
  return syntax === 'templated'
    ? `subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(${ptr}, ${off}, ${stride})`
    : `subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>>(${ptr}, ${off}, false, ${stride})`;
}
function rightLoad(syntax: MatrixSyntax, ptr: string, off: string, stride: string): string {
  // B16 is [N, K] with k contiguous: as the K×N right matrix it is column-major.
  return syntax === 'templated'
    ? `subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(${ptr}, ${off}, ${stride})`
    : `subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>>(${ptr}, ${off}, true, ${stride})`;
}
function store(syntax: MatrixSyntax, ptr: string, off: string, value: string, stride: string): string {
  return syntax === 'templated' ? `subgroupMatrixStore<row_major>(${ptr}, ${off}, ${value}, ${stride})` : `subgroupMatrixStore(${ptr}, ${off}, ${value}, false, ${stride})`;
}

const header = (subgroups: boolean) => `enable f16;\n${subgroups ? 'enable subgroups;\n' : ''}enable chromium_experimental_subgroup_matrix;`;

/** Padded extents: rows of A to BM, rows of B to BN, K to 32. */
export function f16Dims(m: number, n: number, k: number, t: F16Tile): { mp: number; np: number; kp: number; bm: number; bn: number } {
  const [sgm, sgn] = t.sg ?? [2, 2];
  const bm = sgm * t.tm * 16;
  const bn = sgn * t.tn * 16;
  const up = (x: number, q: number) => Math.max(q, Math.ceil(x / q) * q);
  return { mp: up(m, bm), np: up(n, bn), kp: up(k, t.bk ?? BK_DEFAULT), bm, bn };
}

/**
 * cast: f32 src (logical [rows, cols] = [R, K]; `trans` means stored [K, R]) → f16 [Rp, Kp] row-major,
 * zero-padded, written two halves per invocation. Bindings: src; out (as vec2<f16>).
 */
export function castWgsl(R: number, K: number, Rp: number, Kp: number, trans: boolean): string {
  const ld = trans ? R : K;
  const at = (r: string, c: string) => (trans ? `${c} * ${u(ld)} + ${r}` : `${r} * ${u(ld)} + ${c}`);
  return `enable f16;
@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read_write> dst: array<vec2<f16>>;
fn load_src(r: u32, c: u32) -> f32 {
  if (r >= ${u(R)} || c >= ${u(K)}) { return 0.0; }
  return src[${at('r', 'c')}];
}
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * 256u;
  if (i >= ${u((Rp * Kp) / 2)}) { return; }
  let r = (2u * i) / ${u(Kp)};
  let c = (2u * i) % ${u(Kp)};
  dst[i] = vec2<f16>(f16(load_src(r, c)), f16(load_src(r, c + 1u)));
}
`;
}

/** matmul: C[M, N] (f32, real extents) = A16[Mp, Kp] · B16[Np, Kp]ᵀ. Bindings: a16, b16, c. */
export function matmulWgsl(m: number, n: number, k: number, t: F16Tile, syntax: MatrixSyntax, sgSize: number, enableSubgroups = true): string {
  const { kp, bm, bn } = f16Dims(m, n, k, t);
  const [sgm, sgn] = t.sg ?? [2, 2];
  const WG = sgm * sgn * sgSize;
  const BK = t.bk ?? BK_DEFAULT;
  const acc = (i: number, j: number) => `acc_${i}_${j}`;
  const decl = rng(t.tm)
    .flatMap((i) => rng(t.tn).map((j) => `  var ${acc(i, j)}: subgroup_matrix_result<f32, 16, 16>;`))
    .join('\n');
  const step = (A: string, aOff: (i: number, kk: number) => string, aStride: string, B: string, bOff: (j: number, kk: number) => string, bStride: string, kk: number) => {
    const ls = rng(t.tm).map((i) => `    let l${i} = ${leftLoad(syntax, A, aOff(i, kk), aStride)};`);
    const rs = rng(t.tn).map((j) => `    let r${j} = ${rightLoad(syntax, B, bOff(j, kk), bStride)};`);
    const mm = rng(t.tm).flatMap((i) => rng(t.tn).map((j) => `    ${acc(i, j)} = subgroupMatrixMultiplyAccumulate(l${i}, r${j}, ${acc(i, j)});`));
    return `  {\n${[...ls, ...rs, ...mm].join('\n')}\n  }`;
  };
  let loop: string;
  let shared = '';
  if (t.variant === 'staged') {
    const LDA = BK + PAD;
    shared = `var<workgroup> As: array<f16, ${bm * LDA}>;
var<workgroup> Bs: array<f16, ${bn * LDA}>;`;
    const unitsA = (bm * BK) / 4;
    const unitsB = (bn * BK) / 4;
    const copy = (dst: string, src: string, units: number, row0: string) =>
      rng(Math.ceil(units / WG))
        .map(
          (i) => `    { let q = tid + ${u(i * WG)};${units % WG ? ` if (q < ${u(units)}) {` : ''}
      let row = q / ${u(BK / 4)}; let c4 = q % ${u(BK / 4)};
      let v = ${src}[((${row0} + row) * ${u(kp)} + k0) / 4u + c4];
      let d = row * ${u(LDA)} + 4u * c4;
      ${dst}[d] = v.x; ${dst}[d + 1u] = v.y; ${dst}[d + 2u] = v.z; ${dst}[d + 3u] = v.w;${units % WG ? ' }' : ''} }`,
        )
        .join('\n');
    // Prefetch (whole units per thread only): registers p<A|B><i> carry the next slice across the products.
    const pf = !!t.pf && unitsA % WG === 0 && unitsB % WG === 0;
    const pfLoad = (reg: string, src: string, units: number, row0: string, kBase: string) =>
      rng(units / WG)
        .map((i) => `      { let q = tid + ${u(i * WG)}; ${reg}${i} = ${src}[((${row0} + q / ${u(BK / 4)}) * ${u(kp)} + ${kBase}) / 4u + q % ${u(BK / 4)}]; }`)
        .join('\n');
    const pfStore = (reg: string, dst: string, units: number) =>
      rng(units / WG)
        .map(
          (i) => `    { let q = tid + ${u(i * WG)}; let v = ${reg}${i};
      let d = (q / ${u(BK / 4)}) * ${u(LDA)} + 4u * (q % ${u(BK / 4)});
      ${dst}[d] = v.x; ${dst}[d + 1u] = v.y; ${dst}[d + 2u] = v.z; ${dst}[d + 3u] = v.w; }`,
        )
        .join('\n');
    const fill = pf ? `${pfStore('pA', 'As', unitsA)}\n${pfStore('pB', 'Bs', unitsB)}` : `${copy('As', 'a4', unitsA, 'm0')}\n${copy('Bs', 'b4', unitsB, 'n0')}`;
    const pre = pf
      ? `${[...rng(unitsA / WG).map((i) => `  var pA${i}: vec4<f16>;`), ...rng(unitsB / WG).map((i) => `  var pB${i}: vec4<f16>;`)].join('\n')}
  {
${pfLoad('pA', 'a4', unitsA, 'm0', '0u')}
${pfLoad('pB', 'b4', unitsB, 'n0', '0u')}
  }
`
      : '';
    const next = pf
      ? `    if (k0 + ${u(BK)} < ${u(kp)}) {
${pfLoad('pA', 'a4', unitsA, 'm0', `k0 + ${u(BK)}`)}
${pfLoad('pB', 'b4', unitsB, 'n0', `k0 + ${u(BK)}`)}
    }
`
      : '';
    loop = `${pre}  for (var k0 = 0u; k0 < ${u(kp)}; k0 += ${u(BK)}) {
${fill}
    workgroupBarrier();
${next}${rng(BK / 16)
  .map((s) =>
    step(
      '&As',
      (i, kk) => `(sm * ${u(t.tm * 16)} + ${u(i * 16)}) * ${u(LDA)} + ${u(kk)}`,
      u(LDA),
      '&Bs',
      (j, kk) => `(sn * ${u(t.tn * 16)} + ${u(j * 16)}) * ${u(LDA)} + ${u(kk)}`,
      u(LDA),
      s * 16,
    ),
  )
  .join('\n')}
    workgroupBarrier();
  }`;
  } else {
    loop = `  for (var k0 = 0u; k0 < ${u(kp)}; k0 += 16u) {
${step(
  '&a',
  (i) => `(m0 + sm * ${u(t.tm * 16)} + ${u(i * 16)}) * ${u(kp)} + k0`,
  u(kp),
  '&b',
  (j) => `(n0 + sn * ${u(t.tn * 16)} + ${u(j * 16)}) * ${u(kp)} + k0`,
  u(kp),
  0,
)}
  }`;
  }
  const stores = rng(t.tm)
    .flatMap((i) =>
      rng(t.tn).map(
        (j) => `  {
    let tm0 = m0 + sm * ${u(t.tm * 16)} + ${u(i * 16)};
    let tn0 = n0 + sn * ${u(t.tn * 16)} + ${u(j * 16)};
    if (tm0 + 16u <= ${u(m)} && tn0 + 16u <= ${u(n)}) {
      ${store(syntax, '&c', `tm0 * ${u(n)} + tn0`, acc(i, j), u(n))};
    } else if (tm0 < ${u(m)} && tn0 < ${u(n)}) {
      ${store(syntax, '&Cs', `sg * 256u`, acc(i, j), '16u')};
      for (var e = lane; e < 256u; e += ${u(sgSize)}) {
        let rr = tm0 + e / 16u;
        let cc = tn0 + e % 16u;
        if (rr < ${u(m)} && cc < ${u(n)}) { c[rr * ${u(n)} + cc] = Cs[sg * 256u + e]; }
      }
    }
  }`,
      ),
    )
    .join('\n');
  return `${header(enableSubgroups)}
@group(0) @binding(0) var<storage, read> ${t.variant === 'staged' ? 'a4: array<vec4<f16>>' : 'a: array<f16>'};
@group(0) @binding(1) var<storage, read> ${t.variant === 'staged' ? 'b4: array<vec4<f16>>' : 'b: array<f16>'};
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
${shared}
var<workgroup> Cs: array<f32, ${sgm * sgn * 256}>;
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wid: vec3<u32>,
        @builtin(subgroup_id) sg: u32, @builtin(subgroup_invocation_id) lane: u32) {
  let m0 = wid.y * ${u(bm)};
  let n0 = wid.x * ${u(bn)};
  let sm = sg / ${u(sgn)};
  let sn = sg % ${u(sgn)};
${decl}
${loop}
${stores}
}
`;
}

/** Whether this device runs the f16 path, and in which spelling (compiled once per device). */
export function probeF16(device: any): Promise<F16Support> {
  let p = probed.get(device);
  if (!p) {
    p = probe(device).then((r) => {
      known.set(device, r);
      return r;
    });
    probed.set(device, p);
  }
  return p;
}

/** The probe's answer if it has run (synchronous kernels use this). */
export function f16SupportSync(device: any): F16Support | undefined {
  return known.get(device);
}

async function probe(device: any): Promise<F16Support> {
  const missing = ['shader-f16', 'subgroups', 'chromium-experimental-subgroup-matrix'].filter((f) => !device.features?.has?.(f));
  if (missing.length) return { ok: false, why: `the device lacks ${missing.join(', ')}` };
  const info = device.adapterInfo ?? {};
  const configs: any[] = [...(info.subgroupMatrixConfigs ?? [])];
  const has = configs.some((c) => c.M === 16 && c.N === 16 && c.K === 16 && /f16/.test(String(c.componentType)) && /f32/.test(String(c.resultComponentType)));
  if (configs.length && !has) return { ok: false, why: `no f16×f16→f32 16×16×16 subgroup matrix config (${JSON.stringify(configs)})` };
  const lo = Number(info.subgroupMinSize ?? 32);
  const hi = Number(info.subgroupMaxSize ?? 32);
  if (lo !== hi) return { ok: false, why: `subgroup size varies (${lo} to ${hi}); the kernel assumes a fixed one` };
  const errors: string[] = [];
  for (const syntax of ['templated', 'bool'] as MatrixSyntax[]) {
    for (const enableSubgroups of [true, false]) {
      const code = matmulWgsl(32, 32, 32, { variant: 'staged', tm: 1, tn: 1 }, syntax, lo, enableSubgroups);
      device.pushErrorScope('validation');
      const module = device.createShaderModule({ code });
      const ci = await module.getCompilationInfo();
      const errs = ci.messages.filter((m: any) => m.type === 'error').map((m: any) => `${m.lineNum}:${m.linePos} ${m.message}`);
      if (!errs.length) device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main' } });
      const err = await device.popErrorScope();
      if (!errs.length && !err) return { ok: true, syntax, enableSubgroups, subgroupSize: lo };
      errors.push(`${syntax}${enableSubgroups ? '+subgroups' : ''}: ${errs[0] ?? err?.message ?? 'pipeline error'}`);
    }
  }
  return { ok: false, why: `no subgroup-matrix spelling compiles (${errors.join('; ')})` };
}

export const GEMM_F16_KERNEL = 'McpcGemmF16';

interface F16Attrs {
  transA: boolean;
  transB: boolean;
  tile?: F16Tile;
}

let defaultTile: F16Tile = { variant: 'staged', tm: 4, tn: 2 };
/** Set the tile used when none is forced (bench/gpu.ts sets the fastest it measured). */
export function setF16Tile(t: F16Tile): void {
  defaultTile = t;
}

function castTo16(backend: WebGpuBackendLike, x: TensorInfo, R: number, K: number, Rp: number, Kp: number, trans: boolean): TensorInfo {
  const halves = Rp * Kp;
  const groups = Math.ceil(halves / 2 / 256);
  const gx = Math.min(groups, 65535);
  return runWgsl(backend, {
    code: castWgsl(R, K, Rp, Kp, trans),
    inputs: [x],
    // f16 data in a float32 tensor of half the element count: tfjs sees bytes, the kernel halves.
    outputs: [{ shape: [halves / 2], dtype: 'float32' }],
    dispatch: [gx, Math.ceil(groups / gx), 1],
    label: 'McpcCastF16',
  })[0];
}

// --- copies derived from frozen tensors ---------------------------------------------------------------------
//
// A frozen weight's f16 cast is the same on every call: it is made once per (source data, layout) and kept
// until the source is disposed (tfjs tensors are immutable: new values are a new dataId, as a variable's
// assign makes, so a different tensor misses the cache). Each lookup first releases the copies of sources
// disposed since (tensorMap no longer has them); `releaseCachedCopies` releases them all.

const derived = new WeakMap<object, Map<object, Map<string, TensorInfo>>>();

/**
 * The copy `make()` derives from `src` (a tensor whose data never changes while it lives, e.g. a frozen
 * weight), made once per `key` and released with `src`. Owned by this cache: callers must not dispose it.
 */
export function cachedCopy(backend: WebGpuBackendLike, src: TensorInfo, key: string, make: () => TensorInfo): TensorInfo {
  let bySrc = derived.get(backend);
  if (!bySrc) derived.set(backend, (bySrc = new Map()));
  for (const [id, copies] of bySrc) {
    if (backend.tensorMap.has(id)) continue;
    for (const t of copies.values()) disposeInfo(backend, t);
    bySrc.delete(id);
  }
  let copies = bySrc.get(src.dataId);
  if (!copies) bySrc.set(src.dataId, (copies = new Map()));
  let t = copies.get(key);
  if (!t) copies.set(key, (t = make()));
  return t;
}

/** How many copies the cache holds for `backend` (tests). */
export function cachedCopyCount(backend: WebGpuBackendLike): number {
  let n = 0;
  for (const copies of derived.get(backend)?.values() ?? []) n += copies.size;
  return n;
}

/** Release every cached copy on `backend`. */
export function releaseCachedCopies(backend: WebGpuBackendLike): void {
  const bySrc = derived.get(backend);
  if (!bySrc) return;
  for (const copies of bySrc.values()) for (const t of copies.values()) disposeInfo(backend, t);
  bySrc.clear();
}

/**
 * C = op(a)·op(b) on tensor cores inside a kernel function (outputs a TensorInfo the caller owns). `frozenB`:
 * b's f16 copy is cached (see cachedCopy) instead of cast on every call.
 */
export function gemmF16Info(backend: WebGpuBackendLike, a: TensorInfo, b: TensorInfo, transA: boolean, transB: boolean, opts: { tile?: F16Tile; frozenB?: boolean } = {}): TensorInfo {
  const sup = known.get(backend.device);
  if (!sup?.ok) throw new Error(`f16 subgroup-matrix GEMM unavailable: ${sup?.why ?? 'call probeF16(device) first'}`);
  const M = transA ? a.shape[1] : a.shape[0];
  const K = transA ? a.shape[0] : a.shape[1];
  const N = transB ? b.shape[0] : b.shape[1];
  const tile = opts.tile ?? defaultTile;
  const d = f16Dims(M, N, K, tile);
  const a16 = castTo16(backend, a, M, K, d.mp, d.kp, transA);
  // B as [N, K] with k contiguous: a stored [N, K] (transB) is already so; a stored [K, N] is read transposed.
  const castB = () => castTo16(backend, b, N, K, d.np, d.kp, !transB);
  const b16 = opts.frozenB ? cachedCopy(backend, b, `f16 ${N} ${K} ${d.np} ${d.kp} ${+!transB}`, castB) : castB();
  const out = runWgsl(backend, {
    code: matmulWgsl(M, N, K, tile, sup.syntax!, sup.subgroupSize!, sup.enableSubgroups),
    inputs: [a16, b16],
    outputs: [{ shape: [M, N], dtype: 'float32' }],
    dispatch: [d.np / d.bn, d.mp / d.bm, 1],
    label: 'McpcGemmF16',
  })[0];
  disposeInfo(backend, a16);
  if (!opts.frozenB) disposeInfo(backend, b16);
  return out;
}

export function gemmF16Kernel({ inputs, backend, attrs }: { inputs: any; backend: WebGpuBackendLike; attrs: any }): TensorInfo {
  const { transA, transB, tile } = attrs as F16Attrs;
  return gemmF16Info(backend, inputs[0] as TensorInfo, inputs[1] as TensorInfo, transA, transB, { tile });
}

let registered = false;
export function registerGemmF16(): void {
  if (registered) return;
  registered = true;
  tf.registerKernel({ kernelName: GEMM_F16_KERNEL, backendName: 'webgpu', kernelFunc: gemmF16Kernel as any });
  tf.registerGradient({
    kernelName: GEMM_F16_KERNEL,
    saveAllInputs: true,
    gradFunc: (dy: Tensor | Tensor[], saved: Tensor[], attrs: any) => {
      const dc = dy as Tensor;
      const [a, b] = saved;
      const { transA, transB } = attrs as F16Attrs;
      const mm = (x: Tensor, y: Tensor, tx: boolean, ty: boolean) => gemmF16(x, y, tx, ty);
      if (!transA && !transB) return { 0: () => mm(dc, b!, false, true), 1: () => mm(a!, dc, true, false) };
      if (!transA && transB) return { 0: () => mm(dc, b!, false, false), 1: () => mm(dc, a!, true, false) };
      if (transA && !transB) return { 0: () => mm(b!, dc, false, true), 1: () => mm(a!, dc, false, false) };
      return { 0: () => mm(b!, dc, true, true), 1: () => mm(dc, a!, true, true) };
    },
  } as any);
}

/** C = op(a)·op(b) with f16 inputs and f32 accumulation (after `await probeF16(device)` said ok). */
export function gemmF16(a: Tensor, b: Tensor, transA = false, transB = false, tile?: F16Tile): Tensor {
  registerGemmF16();
  return tf.engine().runKernel(GEMM_F16_KERNEL, [a, b] as any, { transA, transB, ...(tile ? { tile } : {}) } as any) as Tensor;
}
