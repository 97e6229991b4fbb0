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
import { dirname, join } from 'node:path';
import type { TensorInfo } from '@tensorflow/tfjs-core';
import { registerFamilyGradient, tf, type Tensor } from '../tfjs/index.js';
import { runWgsl, disposeInfo, type WebGpuBackendLike } from './program.js';
import { cachePath, deviceKey, readTileCache, shapeClass, tuningEnabled, writeTileCache } from './gemm-tune.js';
import { probeProblem, type GemmProbe } from './gemm-wgsl.js';

/* eslint-disable @typescript-eslint/no-explicit-any -- WebGPU objects and tfjs kernel plumbing. */

/**
 * How subgroup-matrix builtins are spelled: `templated` (row_major/col_major template arguments, newer Tint),
 * `bool` (a col_major argument), or `emulated`: plain WGSL that computes each 16×16 fragment in every lane
 * (f32 in place of f16, subgroups derived from the invocation index), so the kernel's indexing (staging,
 * double buffering, swizzle, edge tiles) runs and is checked on any adapter, llvmpipe included. Slow; tests only.
 */
export type MatrixSyntax = 'templated' | 'bool' | 'emulated';

/**
 * How a GEMM asks for the emulated spelling: `true` keeps the operands' f32 values (the kernel's indexing checked
 * exactly against an f32 product); `'f16'` rounds them to f16 in the cast, as the tensor-core path stores them,
 * so the products see the f16 path's arithmetic (f16 inputs, exact products, f32 sums) on any adapter: how CI
 * checks the f16 path's training quality on llvmpipe.
 */
export type Emulation = boolean | 'f16';

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
  /**
   * staged with pf only: two copies of the staged slices, slice i in copy i mod 2, so one barrier per slice
   * instead of two (the next slice's stores cannot race the products still reading this one).
   */
  db?: boolean;
  /**
   * Workgroup order swizzled in groups of `sw` block rows (consecutive workgroups walk down a column of
   * `sw` blocks before moving right), so the workgroups in flight share A and B slices in L2.
   */
  sw?: number;
  /**
   * staged only: the slices are staged by whole 16×16 fragments (each subgroup loads fragments of A and B
   * from storage and stores them to workgroup memory with the subgroup-matrix builtins) instead of by vec4
   * loads and four 2-byte stores per thread.
   */
  fs?: boolean;
  /**
   * staged only: halves of padding after each staged row (default 8: rows 16-byte aligned and fragment
   * loads free of bank conflicts; 0 saves a fifth of the workgroup memory at the price of conflicts).
   */
  pad?: number;
  /**
   * One left fragment live at a time: each K-step loads the TN right fragments, then per row i its left
   * fragment and row i's products (TM + TN fragments live become 1 + TN: fewer registers, more occupancy).
   */
  il?: boolean;
  /**
   * staged, not fs: the slices are read from storage 16 bytes at a time (vec4<u32>, eight halves, split with
   * bitcast) instead of 8 (vec4<f16>): half the global load instructions, and each thread's eight stores to
   * workgroup memory contiguous and 16-byte aligned.
   */
  w16?: boolean;
  /**
   * staged only: load ahead: every fragment of a slice (all its K-steps) is loaded before the slice's first
   * product, so the loads of step s + 1 are in flight during step s's products (more fragment registers live:
   * (tm + tn) × BK/16 instead of tm + tn).
   */
  lp?: boolean;
  /**
   * A timing probe, never a candidate (bench/gpu.ts times the tuner's winner with each): the kernel with one part
   * taken out, its product wrong by design, so that what that part costs shows as the difference. `cross`: each
   * K-step multiplies every loaded fragment once (tm + tn - 1 products instead of tm·tn; every load kept);
   * `nostage` (staged only): no global loads and no stores to workgroup memory (barriers and fragment loads kept);
   * `hoist`: each subgroup's fragments are loaded once before the K loop (at k 0), the loop keeps the staging
   * and the products but loads no fragment. The tile cache neither stores nor reads a probe.
   */
  probe?: GemmProbe;
}

/** A short name for reports: `staged 4x4`, `staged 4x4 sg4x2 pf`. */
export function f16TileName(t: F16Tile): string {
  const sg = t.sg && (t.sg[0] !== 2 || t.sg[1] !== 2) ? ` sg${t.sg[0]}x${t.sg[1]}` : '';
  return `${t.variant} ${t.tm}x${t.tn}${sg}${t.pf ? ' pf' : ''}${t.bk && t.bk !== BK_DEFAULT ? ` bk${t.bk}` : ''}${t.db ? ' db' : ''}${t.sw ? ` sw${t.sw}` : ''}${t.fs ? ' fs' : ''}${t.pad !== undefined && t.pad !== PAD ? ` pad${t.pad}` : ''}${t.il ? ' il' : ''}${t.w16 ? ' w16' : ''}${t.lp ? ' lp' : ''}${t.probe ? ` probe:${t.probe}` : ''}`;
}

export const F16_CANDIDATES: F16Tile[] = [
  // Measured on an H200 (BENCHMARKS.md, run 8): staged 4x4 fastest at 191 TFLOP/s, with pf and bk64 close;
  // 2x2, direct loads and the 256-row blocks well behind, so they are not swept any more.
  { variant: 'staged', tm: 4, tn: 2 },
  { variant: 'staged', tm: 4, tn: 4 },
  { variant: 'staged', tm: 4, tn: 4, pf: true },
  { variant: 'staged', tm: 4, tn: 4, pf: true, bk: 64 },
  { variant: 'staged', tm: 2, tn: 4, sg: [4, 2], pf: true },
  // Double-buffered slices (one barrier per slice), swizzled workgroup order, and 8-subgroup 128×128 blocks
  // (fewer accumulators per subgroup, twice the subgroups to hide latency).
  { variant: 'staged', tm: 4, tn: 4, pf: true, db: true },
  { variant: 'staged', tm: 4, tn: 4, pf: true, db: true, sw: 8 },
  { variant: 'staged', tm: 4, tn: 4, sw: 8 },
  { variant: 'staged', tm: 4, tn: 4, pf: true, sw: 8 },
  { variant: 'staged', tm: 4, tn: 4, pf: true, bk: 64, sw: 8 },
  { variant: 'staged', tm: 2, tn: 4, sg: [4, 2], pf: true, db: true },
  { variant: 'staged', tm: 2, tn: 4, sg: [4, 2], pf: true, db: true, sw: 8 },
  { variant: 'staged', tm: 4, tn: 2, sg: [2, 4], pf: true, db: true, sw: 8 },
  { variant: 'staged', tm: 4, tn: 4, sg: [4, 2], pf: true, sw: 8 },
  // K-slices of 16: a quarter of the workgroup memory of bk64 (more workgroups resident per SM).
  { variant: 'staged', tm: 4, tn: 4, bk: 16 },
  { variant: 'staged', tm: 4, tn: 4, pf: true, bk: 16 },
  // No row padding (a fifth less workgroup memory: on the H200 the tiles with more of it ran slower).
  { variant: 'staged', tm: 4, tn: 4, pad: 0 },
  { variant: 'staged', tm: 4, tn: 4, pf: true, pad: 0 },
  { variant: 'staged', tm: 4, tn: 4, pf: true, db: true, pad: 0 },
  { variant: 'staged', tm: 4, tn: 4, sg: [4, 2], pf: true, pad: 0 },
  // One left fragment live at a time (registers: the 4x4 tile holds 16 accumulators).
  { variant: 'staged', tm: 4, tn: 4, il: true },
  { variant: 'staged', tm: 4, tn: 4, pf: true, il: true },
  { variant: 'staged', tm: 4, tn: 4, il: true, pad: 0 },
  // Slices staged by whole fragments (subgroup-matrix load from storage, store to workgroup memory). On the
  // H200 (2026-11-28, run 3) the eight fs tiles ran 0.86-1.4 ms against 0.59 for staged 4x4 pf: the two
  // closest stay in the sweep for other devices.
  { variant: 'staged', tm: 4, tn: 4, pf: true, fs: true },
  { variant: 'staged', tm: 4, tn: 4, pf: true, fs: true, sw: 8 },
  // 16-byte global loads (half the load instructions of vec4<f16>; a thread's stores 16 contiguous bytes), on
  // the two best tiles of 2026-11-28 (staged 4x4 sw8, staged 4x4 pf) and their pf / sw8 neighbours.
  { variant: 'staged', tm: 4, tn: 4, w16: true },
  { variant: 'staged', tm: 4, tn: 4, pf: true, w16: true },
  { variant: 'staged', tm: 4, tn: 4, sw: 8, w16: true },
  { variant: 'staged', tm: 4, tn: 4, pf: true, sw: 8, w16: true },
  // Load ahead: a slice's fragments all loaded before its first product (the next step's loads in flight
  // during this step's products; more registers live).
  { variant: 'staged', tm: 4, tn: 4, lp: true },
  { variant: 'staged', tm: 4, tn: 4, pf: true, lp: true },
  { variant: 'staged', tm: 4, tn: 4, sw: 8, lp: true },
  { variant: 'staged', tm: 4, tn: 4, pf: true, sw: 8, w16: true, lp: true },
  // The layout of NVIDIA's own KHR cooperative-matrix sample (vk_cooperative_matrix_perf, shmem.comp): eight
  // subgroups, 2 high and 4 wide, each 4x2 fragments of a 128x128 block, 16-byte staging loads prefetched into
  // registers. (It stages through a uvec4 workgroup array, which WGSL's f16 matrix loads do not take.)
  { variant: 'staged', tm: 4, tn: 2, sg: [2, 4], pf: true, w16: true },
  { variant: 'staged', tm: 4, tn: 2, sg: [2, 4], pf: true, w16: true, sw: 8 },
];

/**
 * Emulation-sized tiles (f32 staging fits llvmpipe's 32 KiB of workgroup memory) with each feature the GPU
 * candidates use: tests and `bench/gpu.ts --emulate-f16` run these in the emulated spelling.
 */
export const F16_EMULATION_TILES: F16Tile[] = [
  { variant: 'staged', tm: 1, tn: 1 },
  { variant: 'staged', tm: 1, tn: 1, pf: true },
  { variant: 'staged', tm: 1, tn: 1, pf: true, db: true },
  { variant: 'staged', tm: 1, tn: 1, pf: true, db: true, sw: 2 },
  { variant: 'staged', tm: 2, tn: 1, pf: true, bk: 64, sw: 3 },
  { variant: 'staged', tm: 1, tn: 1, sg: [4, 2], pf: true, sw: 2 },
  { variant: 'staged', tm: 2, tn: 2, sw: 8 },
  { variant: 'direct', tm: 1, tn: 2 },
  { variant: 'staged', tm: 1, tn: 1, fs: true },
  { variant: 'staged', tm: 1, tn: 1, pf: true, db: true, fs: true, sw: 2 },
  { variant: 'staged', tm: 1, tn: 2, sg: [4, 2], pf: true, fs: true },
  { variant: 'staged', tm: 2, tn: 1, fs: true, bk: 64, sw: 3 },
  { variant: 'staged', tm: 1, tn: 1, pf: true, db: true, pad: 0 },
  { variant: 'staged', tm: 2, tn: 2, pad: 16 },
  { variant: 'staged', tm: 2, tn: 2, pf: true, il: true },
  // 16-byte units: prefetched and double-buffered; and staged directly with a partial last pass (B: 64 units, 128 threads).
  { variant: 'staged', tm: 1, tn: 1, pf: true, db: true, w16: true },
  { variant: 'staged', tm: 2, tn: 1, bk: 16, sw: 3, w16: true },
  // Load ahead over four K-steps, and over two with 16-byte units, prefetch and double buffering.
  { variant: 'staged', tm: 1, tn: 2, bk: 64, lp: true },
  { variant: 'staged', tm: 1, tn: 1, pf: true, db: true, w16: true, lp: true },
  // Eight subgroups two high and four wide (256 threads) with prefetched 16-byte units: the sample-shaped candidates.
  { variant: 'staged', tm: 1, tn: 1, sg: [2, 4], pf: true, w16: true },
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
/** Lanes per subgroup the emulated spelling assumes (any value works: each lane computes whole fragments). */
export const EMULATED_SUBGROUP = 32;
const u = (x: number) => `${x >>> 0}u`;
const rng = (n: number) => Array.from({ length: n }, (_, i) => i);
/** `&As` → `As`: the emulated spelling calls one helper per array. */
const bare = (ptr: string) => ptr.replace(/^&/, '');

function leftLoad(syntax: MatrixSyntax, ptr: string, off: string, stride: string): string {
  if (syntax === 'emulated') return `vec2<u32>(${off}, ${stride})`;
  return syntax === 'templated'
    ? `subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>, row_major>(${ptr}, ${off}, ${stride})`
    : `subgroupMatrixLoad<subgroup_matrix_left<f16, 16, 16>>(${ptr}, ${off}, false, ${stride})`;
}
function rightLoad(syntax: MatrixSyntax, ptr: string, off: string, stride: string): string {
  // B16 is [N, K] with k contiguous: as the K×N right matrix it is column-major.
  if (syntax === 'emulated') return `vec2<u32>(${off}, ${stride})`;
  return syntax === 'templated'
    ? `subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>, col_major>(${ptr}, ${off}, ${stride})`
    : `subgroupMatrixLoad<subgroup_matrix_right<f16, 16, 16>>(${ptr}, ${off}, true, ${stride})`;
}
function store(syntax: MatrixSyntax, ptr: string, off: string, value: string, stride: string): string {
  if (syntax === 'emulated') return `emuStore_${bare(ptr)}(${off}, ${value}, ${stride})`;
  return syntax === 'templated' ? `subgroupMatrixStore<row_major>(${ptr}, ${off}, ${value}, ${stride})` : `subgroupMatrixStore(${ptr}, ${off}, ${value}, false, ${stride})`;
}
function mma(syntax: MatrixSyntax, l: string, r: string, acc: string, A: string, B: string): string {
  return syntax === 'emulated' ? `emuMma_${bare(A)}(${l}, ${r}, ${acc})` : `subgroupMatrixMultiplyAccumulate(${l}, ${r}, ${acc})`;
}

const header = (subgroups: boolean) => `enable f16;\n${subgroups ? 'enable subgroups;\n' : ''}enable chromium_experimental_subgroup_matrix;`;

/** Accumulator elements per lane in the emulated spelling. */
const EMU_PER_LANE = 256 / EMULATED_SUBGROUP;

/**
 * The emulated builtins. A left or right "fragment" is its (offset, stride) in the array it was loaded from
 * (the kernel multiplies what it loaded before any barrier, so reading at the multiply is reading at the
 * load); a result fragment is spread over the lanes as on hardware: lane l holds elements e = l + 32·i
 * (row e / 16, column e % 16). A store writes each lane's own elements, so lanes that read back what a store
 * wrote (the edge path reads e ≡ lane) read their own.
 */
function emulation(A: string, B: string, stores: string[], copies: [string, string][] = []): string {
  const R = `array<f32, ${EMU_PER_LANE}>`;
  return [
    // A fragment staged to workgroup memory (fs): each lane copies its elements from the fragment's source.
    ...copies.map(([src, dst]) => `fn emuCopy_${src}_${dst}(f: vec2<u32>, off: u32, stride: u32) {
  for (var i = 0u; i < ${u(EMU_PER_LANE)} * emu_one; i++) {
    let e = emu_lane + i * ${u(EMULATED_SUBGROUP)};
    ${dst}[off + (e / 16u) * stride + e % 16u] = ${src}[f.x + (e / 16u) * f.y + e % 16u];
  }
}`),
    'var<private> emu_lane: u32;',
    // 1 at run time (the dispatch's z), unknown when the shader compiles: the helpers' loops stay loops. With
    // constant trip counts llvmpipe unrolled every inlined fragment product (8 x 16 multiply-adds a call) and
    // took minutes to compile one kernel on a cold shader cache (a 2x2 tile's test timed out).
    'var<private> emu_one: u32;',
    // left: element (row, k) at off + row·stride + k; right (column-major): element (k, col) at off + col·stride + k.
    `fn emuMma_${A}(l: vec2<u32>, r: vec2<u32>, c: ${R}) -> ${R} {
  var o = c;
  for (var i = 0u; i < ${u(EMU_PER_LANE)} * emu_one; i++) {
    let e = emu_lane + i * ${u(EMULATED_SUBGROUP)};
    var s = o[i];
    for (var k = 0u; k < 16u * emu_one; k++) { s += f32(${A}[l.x + (e / 16u) * l.y + k]) * f32(${B}[r.x + (e % 16u) * r.y + k]); }
    o[i] = s;
  }
  return o;
}`,
    ...stores.map((c) => `fn emuStore_${c}(off: u32, v: ${R}, stride: u32) {
  for (var i = 0u; i < ${u(EMU_PER_LANE)} * emu_one; i++) {
    let e = emu_lane + i * ${u(EMULATED_SUBGROUP)};
    ${c}[off + (e / 16u) * stride + e % 16u] = v[i];
  }
}`),
  ].join('\n');
}

/** Padded extents: rows of A to BM, rows of B to BN, K to 32. */
export function f16Dims(m: number, n: number, k: number, t: F16Tile): { mp: number; np: number; kp: number; bm: number; bn: number } {
  const [sgm, sgn] = t.sg ?? [2, 2];
  const bm = sgm * t.tm * 16;
  const bn = sgn * t.tn * 16;
  const up = (x: number, q: number) => Math.max(q, Math.ceil(x / q) * q);
  return { mp: up(m, bm), np: up(n, bn), kp: up(k, t.bk ?? BK_DEFAULT), bm, bn };
}

/**
 * Workgroup memory the matmul kernel declares, for elements of `elemBytes` (2 on a GPU, 4 emulated); `edges`:
 * whether the product has partial 16×16 tiles (M or N not a multiple of 16), which go through a staging array.
 */
export function f16SharedBytes(t: F16Tile, elemBytes = 2, edges = true): number {
  const [sgm, sgn] = t.sg ?? [2, 2];
  const { bm, bn } = f16Dims(1, 1, 1, t);
  const staged = t.variant === 'staged' ? (bm + bn) * ((t.bk ?? BK_DEFAULT) + (t.pad ?? PAD)) * elemBytes * (t.db && t.pf ? 2 : 1) : 0;
  return staged + (edges ? sgm * sgn * 256 * 4 : 0);
}

/** Why a tile cannot be generated (undefined when it can). */
export function f16TileProblem(t: F16Tile): string | undefined {
  if (t.db && !(t.pf && t.variant === 'staged')) return 'db needs a staged tile with pf';
  if (t.sw !== undefined && !(Number.isInteger(t.sw) && t.sw >= 1)) return 'sw must be a whole number of block rows';
  const bk = t.bk ?? BK_DEFAULT;
  if (bk % 16 || bk < 16) return 'bk must be a multiple of 16';
  if (t.pad !== undefined && !(t.pad >= 0 && t.pad % 8 === 0)) return 'pad must be a multiple of 8 halves (rows 16-byte aligned)';
  const probe = probeProblem(t.probe);
  if (probe) return probe;
  if (t.probe === 'nostage' && t.variant !== 'staged') return 'probe nostage needs a staged tile';
  if (t.w16 && (t.variant !== 'staged' || t.fs)) return 'w16 needs a staged tile without fs';
  if (t.lp && (t.variant !== 'staged' || t.il)) return 'lp needs a staged tile without il';
  if (t.fs) {
    if (t.variant !== 'staged') return 'fs needs a staged tile';
    const [sgm, sgn] = t.sg ?? [2, 2];
    const { bm, bn } = f16Dims(1, 1, 1, t);
    const per = (rows: number) => ((rows / 16) * (bk / 16)) % (sgm * sgn);
    if (per(bm) || per(bn)) return `fs needs the fragments of each slice (${(bm / 16) * (bk / 16)} of A, ${(bn / 16) * (bk / 16)} of B) a whole number per subgroup (${sgm * sgn} subgroups)`;
  }
  return undefined;
}

/**
 * cast: f32 src (logical [rows, cols] = [R, K]; `trans` means stored [K, R]) → f16 [Rp, Kp] row-major,
 * zero-padded, written two halves per invocation. Bindings: src; out (as vec2<f16>; vec2<f32> emulated).
 * `round` (emulated only): each value rounded to f16 and back (pack2x16float, core WGSL: no shader-f16 needed;
 * round to nearest even on llvmpipe; past f16's range WGSL leaves the result indeterminate, as an f16 cast is).
 */
export function castWgsl(R: number, K: number, Rp: number, Kp: number, trans: boolean, emulated = false, round = false): string {
  const H = emulated ? 'f32' : 'f16';
  const pair = `load_src(r, c), load_src(r, c + 1u)`;
  const value = emulated && round ? `unpack2x16float(pack2x16float(vec2<f32>(${pair})))` : `vec2<${H}>(${H}(load_src(r, c)), ${H}(load_src(r, c + 1u)))`;
  const ld = trans ? R : K;
  const at = (r: string, c: string) => (trans ? `${c} * ${u(ld)} + ${r}` : `${r} * ${u(ld)} + ${c}`);
  return `${emulated ? '' : 'enable f16;\n'}@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read_write> dst: array<vec2<${H}>>;
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
  dst[i] = ${value};
}
`;
}

/** matmul: C[M, N] (f32, real extents) = A16[Mp, Kp] · B16[Np, Kp]ᵀ. Bindings: a16, b16, c. */
export function matmulWgsl(m: number, n: number, k: number, t: F16Tile, syntax: MatrixSyntax, sgSize: number, enableSubgroups = true): string {
  const problem = f16TileProblem(t);
  if (problem) throw new Error(`f16 tile ${f16TileName(t)}: ${problem}`);
  const emu = syntax === 'emulated';
  if (emu) sgSize = EMULATED_SUBGROUP;
  const H = emu ? 'f32' : 'f16';
  const { mp, np, kp, bm, bn } = f16Dims(m, n, k, t);
  const [sgm, sgn] = t.sg ?? [2, 2];
  const WG = sgm * sgn * sgSize;
  const BK = t.bk ?? BK_DEFAULT;
  const acc = (i: number, j: number) => `acc_${i}_${j}`;
  // Partial 16×16 result tiles exist only when M or N is not a multiple of 16: otherwise no staging array.
  const edges = m % 16 !== 0 || n % 16 !== 0;
  const decl = rng(t.tm)
    .flatMap((i) => rng(t.tn).map((j) => `  var ${acc(i, j)}: ${emu ? `array<f32, ${EMU_PER_LANE}>` : 'subgroup_matrix_result<f32, 16, 16>'};`))
    .join('\n');
  // One K-step's fragments: the arrays they are loaded from, the offset of left fragment i / right fragment j, strides.
  interface KStep {
    A: string;
    aOff: (i: number) => string;
    aStride: string;
    B: string;
    bOff: (j: number) => string;
    bStride: string;
  }
  // The fragment loads of a K-step, named l<tag><i> / r<tag><j> (`hoist`: emitted once before the loop instead).
  const loads = (f: KStep, tag = '') => ({
    ls: rng(t.tm).map((i) => `    let l${tag}${i} = ${leftLoad(syntax, f.A, f.aOff(i), f.aStride)};`),
    rs: rng(t.tn).map((j) => `    let r${tag}${j} = ${rightLoad(syntax, f.B, f.bOff(j), f.bStride)};`),
  });
  // Row i's products of a K-step, on the fragments named with `tag`.
  const products = (i: number, f: KStep, tag = '') =>
    rng(t.tn)
      .filter((j) => t.probe !== 'cross' || i === 0 || j === 0)
      .map((j) => `    ${acc(i, j)} = ${mma(syntax, `l${tag}${i}`, `r${tag}${j}`, acc(i, j), f.A, f.B)};`);
  const step = (f: KStep) => {
    const { ls, rs } = loads(f);
    const row = (i: number) => products(i, f);
    if (t.probe === 'hoist') return `  {\n${rng(t.tm).flatMap(row).join('\n')}\n  }`;
    if (t.il) return `  {\n${[...rs, ...rng(t.tm).flatMap((i) => [ls[i]!, ...row(i)])].join('\n')}\n  }`;
    return `  {\n${[...ls, ...rs, ...rng(t.tm).flatMap(row)].join('\n')}\n  }`;
  };
  const hoisted = (f: KStep) => {
    if (t.probe !== 'hoist') return '';
    const { ls, rs } = loads(f);
    return `${[...ls, ...rs].map((x) => x.slice(2)).join('\n')}\n`;
  };
  let loop: string;
  let shared = '';
  if (t.variant === 'staged') {
    const LDA = BK + (t.pad ?? PAD);
    // Double buffering keeps both copies in one array; `ao`/`bo` (from the slice index: subgroup-uniform) pick one.
    const dbl = !!(t.db && t.pf);
    const copies = dbl ? 2 : 1;
    shared = `var<workgroup> As: array<${H}, ${copies * bm * LDA}>;
var<workgroup> Bs: array<${H}, ${copies * bn * LDA}>;`;
    // Staged units: E consecutive halves of a row (E = 4: one vec4<H> load; w16: E = 8, one vec4<u32> load on a
    // GPU, two vec4<f32> emulated, through the helpers ld8_<a|b> / st8_<As|Bs>).
    const E = t.w16 ? 8 : 4;
    const unitsA = (bm * BK) / E;
    const unitsB = (bn * BK) / E;
    const [srcA, srcB] = t.w16 && !emu ? ['a8', 'b8'] : ['a4', 'b4'];
    const get = (src: string, idx: string) => (t.w16 ? `ld8_${src[0]}(${idx})` : `${src}[${idx}]`);
    const put = (dst: string, base: string) =>
      t.w16 ? `st8_${dst}(${base}d, v);` : `${dst}[${base}d] = v.x; ${dst}[${base}d + 1u] = v.y; ${dst}[${base}d + 2u] = v.z; ${dst}[${base}d + 3u] = v.w;`;
    const unit = t.w16 ? 'U8' : `vec4<${H}>`;
    const copy = (dst: string, src: string, units: number, row0: string) =>
      rng(Math.ceil(units / WG))
        .map(
          (i) => `    { let q = tid + ${u(i * WG)};${units % WG ? ` if (q < ${u(units)}) {` : ''}
      let row = q / ${u(BK / E)}; let c4 = q % ${u(BK / E)};
      let v = ${get(src, `((${row0} + row) * ${u(kp)} + k0) / ${u(E)} + c4`)};
      let d = row * ${u(LDA)} + ${u(E)} * c4;
      ${put(dst, '')}${units % WG ? ' }' : ''} }`,
        )
        .join('\n');
    // Prefetch (whole units per thread only): registers p<A|B><i> carry the next slice across the products.
    const pf = !!t.pf && unitsA % WG === 0 && unitsB % WG === 0;
    if (dbl && !pf && !t.fs) throw new Error(`f16 tile ${f16TileName(t)}: db needs whole prefetch units per thread (${unitsA}, ${unitsB} units, ${WG} threads)`);
    const pfLoad = (reg: string, src: string, units: number, row0: string, kBase: string) =>
      rng(units / WG)
        .map((i) => `      { let q = tid + ${u(i * WG)}; ${reg}${i} = ${get(src, `((${row0} + q / ${u(BK / E)}) * ${u(kp)} + ${kBase}) / ${u(E)} + q % ${u(BK / E)}`)}; }`)
        .join('\n');
    const pfStore = (reg: string, dst: string, units: number, base: string) =>
      rng(units / WG)
        .map(
          (i) => `    { let q = tid + ${u(i * WG)}; let v = ${reg}${i};
      let d = (q / ${u(BK / E)}) * ${u(LDA)} + ${u(E)} * (q % ${u(BK / E)});
      ${put(dst, base)} }`,
        )
        .join('\n');
    let fill = pf
      ? `${pfStore('pA', 'As', unitsA, dbl ? 'ao + ' : '')}\n${pfStore('pB', 'Bs', unitsB, dbl ? 'bo + ' : '')}`
      : `${copy('As', srcA, unitsA, 'm0')}\n${copy('Bs', srcB, unitsB, 'n0')}`;
    let pre = pf
      ? `${[...rng(unitsA / WG).map((i) => `  var pA${i}: ${unit};`), ...rng(unitsB / WG).map((i) => `  var pB${i}: ${unit};`)].join('\n')}
  {
${pfLoad('pA', srcA, unitsA, 'm0', '0u')}
${pfLoad('pB', srcB, unitsB, 'n0', '0u')}
  }
`
      : '';
    let next = pf
      ? `    if (k0 + ${u(BK)} < ${u(kp)}) {
${pfLoad('pA', srcA, unitsA, 'm0', `k0 + ${u(BK)}`)}
${pfLoad('pB', srcB, unitsB, 'n0', `k0 + ${u(BK)}`)}
    }
`
      : '';
    if (t.w16) {
      // Eight halves a unit: on a GPU one 16-byte load, split into four pairs; emulated, two vec4<f32> loads.
      const halves = (v: string) => (emu ? rng(8).map((e) => `${v}[${e >> 2}].${'xyzw'[e & 3]}`) : rng(8).map((e) => `h${e >> 1}.${'xy'[e & 1]}`));
      const st = (dst: string) => `fn st8_${dst}(d: u32, v: U8) {
${emu ? '' : `  ${rng(4).map((j) => `let h${j} = bitcast<vec2<f16>>(v.${'xyzw'[j]});`).join(' ')}\n`}  ${halves('v').map((x, e) => `${dst}[d${e ? ` + ${u(e)}` : ''}] = ${x};`).join(' ')}
}`;
      const ld = (src: 'a' | 'b') => (emu ? `fn ld8_${src}(o: u32) -> U8 { return U8(${src}4[2u * o], ${src}4[2u * o + 1u]); }` : `fn ld8_${src}(o: u32) -> U8 { return ${src}8[o]; }`);
      shared += `\nalias U8 = ${emu ? 'array<vec4<f32>, 2>' : 'vec4<u32>'};\n${ld('a')}\n${ld('b')}\n${st('As')}\n${st('Bs')}`;
    }
    if (t.fs) {
      // Fragment f of a slice: block row f / KB, K-fragment f % KB; subgroup sg stages f = sg, sg + S, ...
      // (subgroup-uniform offsets). A and B alike: rows of 16 with k contiguous, copied row-major.
      const KB = BK / 16;
      const S = sgm * sgn;
      const FA = (bm / 16) * KB;
      const FB = (bn / 16) * KB;
      const fragT = emu ? 'vec2<u32>' : 'subgroup_matrix_left<f16, 16, 16>';
      const load = (src: string, row0: string, kBase: string, f: string) =>
        leftLoad(syntax, `&${src}`, `(${row0} + (${f} / ${u(KB)}) * 16u) * ${u(kp)} + ${kBase} + (${f} % ${u(KB)}) * 16u`, u(kp));
      const put16 = (src: string, dst: string, base: string, f: string, v: string) => {
        const off = `${base}(${f} / ${u(KB)}) * ${u(16 * LDA)} + (${f} % ${u(KB)}) * 16u`;
        return emu ? `emuCopy_${src}_${dst}(${v}, ${off}, ${u(LDA)})` : store(syntax, `&${dst}`, off, v, u(LDA));
      };
      const frags = (n: number) => rng(n / S).map((i) => `(sg + ${u(i * S)})`);
      const ab = [
        { src: 'a', dst: 'As', reg: 'fA', row0: 'm0', n: FA, base: dbl ? 'ao + ' : '' },
        { src: 'b', dst: 'Bs', reg: 'fB', row0: 'n0', n: FB, base: dbl ? 'bo + ' : '' },
      ];
      if (t.pf) {
        pre = `${ab.flatMap((o) => frags(o.n).map((_, i) => `  var ${o.reg}${i}: ${fragT};`)).join('\n')}
${ab.flatMap((o) => frags(o.n).map((f, i) => `  ${o.reg}${i} = ${load(o.src, o.row0, '0u', f)};`)).join('\n')}
`;
        fill = ab.flatMap((o) => frags(o.n).map((f, i) => `    ${put16(o.src, o.dst, o.base, f, `${o.reg}${i}`)};`)).join('\n');
        next = `    if (k0 + ${u(BK)} < ${u(kp)}) {
${ab.flatMap((o) => frags(o.n).map((f, i) => `      ${o.reg}${i} = ${load(o.src, o.row0, `k0 + ${u(BK)}`, f)};`)).join('\n')}
    }
`;
      } else {
        pre = '';
        next = '';
        fill = ab.flatMap((o) => frags(o.n).map((f) => `    { let v = ${load(o.src, o.row0, 'k0', f)}; ${put16(o.src, o.dst, o.base, f, 'v')}; }`)).join('\n');
      }
    }
    const par = dbl ? `    let ao = ((k0 / ${u(BK)}) & 1u) * ${u(bm * LDA)};\n    let bo = ((k0 / ${u(BK)}) & 1u) * ${u(bn * LDA)};\n` : '';
    // Fragment offsets in the staged slices (`hoist` loads before the loop, from the first copy).
    const at = (copy: string, s: number): KStep => ({
      A: '&As',
      aOff: (i) => `${copy && 'ao + '}(sm * ${u(t.tm * 16)} + ${u(i * 16)}) * ${u(LDA)} + ${u(s * 16)}`,
      aStride: u(LDA),
      B: '&Bs',
      bOff: (j) => `${copy && 'bo + '}(sn * ${u(t.tn * 16)} + ${u(j * 16)}) * ${u(LDA)} + ${u(s * 16)}`,
      bStride: u(LDA),
    });
    // nostage: the operands stay bound (a phony read keeps them in the pipeline's layout).
    if (t.probe === 'nostage') [pre, fill, next] = [t.fs ? '  _ = a[0];\n  _ = b[0];\n' : `  _ = ${srcA}[0];\n  _ = ${srcB}[0];\n`, '', ''];
    // lp: the slice's loads (fragments of step s named l<s>_<i>, r<s>_<j>), then its products step by step.
    const lp = t.lp && t.probe !== 'hoist';
    const slice = lp
      ? `  {\n${rng(BK / 16)
          .flatMap((s) => {
            const { ls, rs } = loads(at(dbl ? 'ao' : '', s), `${s}_`);
            return [...ls, ...rs];
          })
          .join('\n')}\n${rng(BK / 16)
          .flatMap((s) => rng(t.tm).flatMap((i) => products(i, at(dbl ? 'ao' : '', s), `${s}_`)))
          .join('\n')}\n  }`
      : rng(BK / 16)
          .map((s) => step(at(dbl ? 'ao' : '', s)))
          .join('\n');
    loop = `${hoisted(at('', 0))}${pre}  for (var k0 = 0u; k0 < ${u(kp)}; k0 += ${u(BK)}) {
${par}${fill}
    workgroupBarrier();
${next}${slice}
${dbl ? '' : '    workgroupBarrier();\n'}  }`;
  } else {
    const at = (k: string): KStep => ({
      A: '&a',
      aOff: (i) => `(m0 + sm * ${u(t.tm * 16)} + ${u(i * 16)}) * ${u(kp)} + ${k}`,
      aStride: u(kp),
      B: '&b',
      bOff: (j) => `(n0 + sn * ${u(t.tn * 16)} + ${u(j * 16)}) * ${u(kp)} + ${k}`,
      bStride: u(kp),
    });
    loop = `${hoisted(at('0u'))}  for (var k0 = 0u; k0 < ${u(kp)}; k0 += 16u) {
${step(at('k0'))}
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
    }${edges ? ` else if (tm0 < ${u(m)} && tn0 < ${u(n)}) {
      ${store(syntax, '&Cs', `sg * 256u`, acc(i, j), '16u')};
      for (var e = lane; e < 256u; e += ${u(sgSize)}) {
        let rr = tm0 + e / 16u;
        let cc = tn0 + e % 16u;
        if (rr < ${u(m)} && cc < ${u(n)}) { c[rr * ${u(n)} + cc] = Cs[sg * 256u + e]; }
      }
    }` : ''}
  }`,
      ),
    )
    .join('\n');
  // Block coordinates: row-major over the dispatch grid, or swizzled in groups of `sw` block rows. Both come
  // from workgroup_id only, so the fragment offsets stay subgroup-uniform.
  const nx = np / bn;
  const ny = mp / bm;
  const blocks = t.sw
    ? `  let pid = wid.y * ${u(nx)} + wid.x;
  let first = (pid / ${u(t.sw * nx)}) * ${u(t.sw)};
  let rows = min(${u(ny)} - first, ${u(t.sw)});
  let m0 = (first + (pid % ${u(t.sw * nx)}) % rows) * ${u(bm)};
  let n0 = ((pid % ${u(t.sw * nx)}) / rows) * ${u(bn)};`
    : `  let m0 = wid.y * ${u(bm)};
  let n0 = wid.x * ${u(bn)};`;
  const ids = emu
    ? `  let sg = tid / ${u(sgSize)};\n  let lane = tid % ${u(sgSize)};\n  emu_lane = lane;\n  emu_one = nwg.z;`
    : '';
  const builtins = emu ? `, @builtin(num_workgroups) nwg: vec3<u32>` : `,\n        @builtin(subgroup_id) sg: u32, @builtin(subgroup_invocation_id) lane: u32`;
  const [aName, bName] = t.variant === 'staged' ? ['As', 'Bs'] : ['a', 'b'];
  // Storage read as vec4s by the staged copy; as scalars by fragment loads (direct, fs).
  const vec4s = t.variant === 'staged' && !t.fs;
  const wide = vec4s && t.w16 && !emu;
  return `${emu ? '' : header(enableSubgroups)}
@group(0) @binding(0) var<storage, read> ${wide ? 'a8: array<vec4<u32>>' : vec4s ? `a4: array<vec4<${H}>>` : `a: array<${H}>`};
@group(0) @binding(1) var<storage, read> ${wide ? 'b8: array<vec4<u32>>' : vec4s ? `b4: array<vec4<${H}>>` : `b: array<${H}>`};
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
${shared}
${edges ? `var<workgroup> Cs: array<f32, ${sgm * sgn * 256}>;` : ''}
${emu ? emulation(aName, bName, edges ? ['c', 'Cs'] : ['c'], t.fs ? [['a', 'As'], ['b', 'Bs']] : []) : ''}
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wid: vec3<u32>${builtins}) {
${blocks}
${ids}
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
  /** The emulated spelling (tests on adapters without subgroup matrices; 'f16': operands rounded to f16). */
  emulate?: Emulation;
}

// --- which tile: forced, tuned and cached per device and shape class, or the default --------------------------
//
// bench/gpu.ts sweeps the candidates on a GPU and records the fastest in the cache beside the f32 GEMM's
// (`$XDG_CACHE_HOME/mcpc/gemm-f16-tiles.json`, keyed like it by adapter and shape class; MCPC_GEMM_TUNE=0 reads
// and writes nothing); a product with no cached tile for its class takes the default (the H200's fastest).

const DEFAULT_TILE: F16Tile = { variant: 'staged', tm: 4, tn: 4 };
let chosen: F16Tile | undefined;
/** Force the tile of every f16 GEMM that names none (undefined: back to the cache and the default). */
export function setF16Tile(t: F16Tile | undefined): void {
  chosen = t;
}

export function f16CachePath(): string {
  return join(dirname(cachePath()), 'gemm-f16-tiles.json');
}

let f16Cache: Record<string, F16Tile> | undefined;

/** A cached entry as a tile, or undefined when it is not one this generator can make. */
function asF16Tile(v: unknown): F16Tile | undefined {
  if (!v || typeof v !== 'object') return undefined;
  const o = v as Record<string, unknown>;
  const whole = (x: unknown, lo: number) => typeof x === 'number' && Number.isInteger(x) && x >= lo;
  if ((o.variant !== 'staged' && o.variant !== 'direct') || !whole(o.tm, 1) || !whole(o.tn, 1)) return undefined;
  const t: F16Tile = { variant: o.variant, tm: o.tm as number, tn: o.tn as number };
  if (Array.isArray(o.sg) && o.sg.length === 2 && whole(o.sg[0], 1) && whole(o.sg[1], 1)) t.sg = [o.sg[0], o.sg[1]];
  if (o.pf === true) t.pf = true;
  if (whole(o.bk, 16)) t.bk = o.bk as number;
  if (o.db === true) t.db = true;
  if (whole(o.sw, 1)) t.sw = o.sw as number;
  if (o.fs === true) t.fs = true;
  if (whole(o.pad, 0)) t.pad = o.pad as number;
  if (o.il === true) t.il = true;
  if (o.w16 === true) t.w16 = true;
  if (o.lp === true) t.lp = true;
  return f16TileProblem(t) ? undefined : t;
}

function loadF16Cache(): Record<string, F16Tile> {
  return (f16Cache ??= readTileCache(f16CachePath(), asF16Tile));
}

/** The tile an f16 GEMM of this shape takes on `device`: forced, else cached for its class, else the default. */
export function f16TileFor(device: any, m: number, n: number, k: number): F16Tile {
  if (chosen) return chosen;
  const hit = loadF16Cache()[`${deviceKey(device)}#${shapeClass(m, n, k)}`];
  const limit = Number(device?.limits?.maxComputeWorkgroupStorageSize ?? 16384);
  return hit && f16SharedBytes(hit, 2, m % 16 !== 0 || n % 16 !== 0) <= limit ? hit : DEFAULT_TILE;
}

/** Record `t` as the tile for this shape class on `device` (bench/gpu.ts, after a sweep); the cache file's path, or undefined when not written. */
export function rememberF16Tile(device: any, m: number, n: number, k: number, t: F16Tile): string | undefined {
  if (t.probe) throw new Error(`f16 tile ${f16TileName(t)}: a timing probe is not a tuning result`);
  if (!tuningEnabled()) return undefined;
  const cache = loadF16Cache();
  cache[`${deviceKey(device)}#${shapeClass(m, n, k)}`] = t;
  return writeTileCache(f16CachePath(), cache) ? f16CachePath() : undefined;
}

/** Forget the in-memory cache (tests). */
export function resetF16Tiles(): void {
  f16Cache = undefined;
}

function castTo16(backend: WebGpuBackendLike, x: TensorInfo, R: number, K: number, Rp: number, Kp: number, trans: boolean, emulated = false, round = false): TensorInfo {
  const halves = Rp * Kp;
  const groups = Math.ceil(halves / 2 / 256);
  const gx = Math.min(groups, 65535);
  return runWgsl(backend, {
    code: castWgsl(R, K, Rp, Kp, trans, emulated, round),
    inputs: [x],
    // f16 data in a float32 tensor of half the element count: tfjs sees bytes, the kernel halves.
    outputs: [{ shape: [emulated ? halves : halves / 2], dtype: 'float32' }],
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
export function gemmF16Info(
  backend: WebGpuBackendLike,
  a: TensorInfo,
  b: TensorInfo,
  transA: boolean,
  transB: boolean,
  opts: { tile?: F16Tile; frozenB?: boolean; emulate?: Emulation } = {},
): TensorInfo {
  const sup = support(backend, opts.emulate);
  const round = rounds(opts.emulate);
  const M = transA ? a.shape[1] : a.shape[0];
  const K = transA ? a.shape[0] : a.shape[1];
  const N = transB ? b.shape[0] : b.shape[1];
  const tile = opts.tile ?? f16TileFor(backend.device, M, N, K);
  const d = f16Dims(M, N, K, tile);
  const emu = sup.syntax === 'emulated';
  const a16 = castTo16(backend, a, M, K, d.mp, d.kp, transA, emu, round);
  // B as [N, K] with k contiguous: a stored [N, K] (transB) is already so; a stored [K, N] is read transposed.
  const castB = () => castTo16(backend, b, N, K, d.np, d.kp, !transB, emu, round);
  const b16 = opts.frozenB ? cachedCopy(backend, b, `f16 ${N} ${K} ${d.np} ${d.kp} ${+!transB} ${+emu} ${+round}`, castB) : castB();
  const out = matmulPacked(backend, sup, a16, b16, M, N, K, tile);
  disposeInfo(backend, a16);
  if (!opts.frozenB) disposeInfo(backend, b16);
  return out;
}

let emulateAll: Emulation = false;
/**
 * Every f16 GEMM in the emulated spelling (tests: the callers of the f16 path, e.g. the MoE-LoRA tensor-core
 * base, run their plumbing on llvmpipe; 'f16': with the operands rounded to f16). Off by default; never on a GPU run.
 */
export function emulateF16(on: Emulation): void {
  emulateAll = on;
}

/** Whether an emulated GEMM rounds its operands to f16 (asked for by the call or by emulateF16). */
const rounds = (emulate?: Emulation): boolean => emulate === 'f16' || (!emulate && emulateAll === 'f16');

/** The spelling to use: the device's (after probeF16), or the emulated one where asked for. */
function support(backend: WebGpuBackendLike, emulate?: Emulation): F16Support {
  if (emulate || emulateAll) return { ok: true, syntax: 'emulated', enableSubgroups: false, subgroupSize: EMULATED_SUBGROUP };
  const sup = known.get(backend.device);
  if (!sup?.ok) throw new Error(`f16 subgroup-matrix GEMM unavailable: ${sup?.why ?? 'call probeF16(device) first'}`);
  return sup;
}

function matmulPacked(backend: WebGpuBackendLike, sup: F16Support, a16: TensorInfo, b16: TensorInfo, M: number, N: number, K: number, tile: F16Tile): TensorInfo {
  const d = f16Dims(M, N, K, tile);
  return runWgsl(backend, {
    code: matmulWgsl(M, N, K, tile, sup.syntax!, sup.subgroupSize!, sup.enableSubgroups),
    inputs: [a16, b16],
    outputs: [{ shape: [M, N], dtype: 'float32' }],
    dispatch: [d.np / d.bn, d.mp / d.bm, 1],
    label: 'McpcGemmF16',
  })[0];
}

/**
 * The two halves of gemmF16 apart, for timing the matrix kernel on inputs that are already f16 (the
 * "f16-input" GEMM): `castF16` writes op(x) as the kernel's padded f16 operand (`role` a: the M×K left
 * operand; b: the N×K right one, k contiguous), `gemmF16Packed` multiplies two such operands.
 */
export function castF16(x: Tensor, role: 'a' | 'b', m: number, n: number, k: number, trans: boolean, tileArg?: F16Tile, emulate: Emulation = false): Tensor {
  const backend = tf.backend() as unknown as WebGpuBackendLike;
  const tile = tileArg ?? f16TileFor(backend.device, m, n, k);
  const d = f16Dims(m, n, k, tile);
  const [R, Rp] = role === 'a' ? [m, d.mp] : [n, d.np];
  const info = castTo16(backend, x as unknown as TensorInfo, R, k, Rp, d.kp, trans, !!emulate, emulate === 'f16');
  return tf.engine().makeTensorFromTensorInfo(info) as Tensor;
}

export function gemmF16Packed(a16: Tensor, b16: Tensor, m: number, n: number, k: number, tileArg?: F16Tile, emulate: Emulation = false): Tensor {
  const backend = tf.backend() as unknown as WebGpuBackendLike;
  const tile = tileArg ?? f16TileFor(backend.device, m, n, k);
  const info = matmulPacked(backend, support(backend, emulate), a16 as unknown as TensorInfo, b16 as unknown as TensorInfo, m, n, k, tile);
  return tf.engine().makeTensorFromTensorInfo(info) as Tensor;
}

export function gemmF16Kernel({ inputs, backend, attrs }: { inputs: any; backend: WebGpuBackendLike; attrs: any }): TensorInfo {
  const { transA, transB, tile, emulate } = attrs as F16Attrs;
  return gemmF16Info(backend, inputs[0] as TensorInfo, inputs[1] as TensorInfo, transA, transB, { tile, emulate });
}

let registered = false;
export function registerGemmF16(): void {
  if (registered) return;
  registered = true;
  tf.registerKernel({ kernelName: GEMM_F16_KERNEL, backendName: 'webgpu', kernelFunc: gemmF16Kernel as any });
  registerFamilyGradient('webgpu', {
    kernelName: GEMM_F16_KERNEL,
    saveAllInputs: true,
    gradFunc: (dy: Tensor | Tensor[], saved: Tensor[], attrs: any) => {
      const dc = dy as Tensor;
      const [a, b] = saved;
      // The backward's products use the forward's tile (when one was forced) and spelling.
      const { transA, transB, tile, emulate } = attrs as F16Attrs;
      const mm = (x: Tensor, y: Tensor, tx: boolean, ty: boolean) => gemmF16(x, y, tx, ty, tile, emulate);
      if (!transA && !transB) return { 0: () => mm(dc, b!, false, true), 1: () => mm(a!, dc, true, false) };
      if (!transA && transB) return { 0: () => mm(dc, b!, false, false), 1: () => mm(dc, a!, true, false) };
      if (transA && !transB) return { 0: () => mm(b!, dc, false, true), 1: () => mm(a!, dc, false, false) };
      return { 0: () => mm(b!, dc, true, true), 1: () => mm(dc, a!, true, true) };
    },
  } as any);
}

/**
 * C = op(a)·op(b) with f16 inputs and f32 accumulation (after `await probeF16(device)` said ok); `emulate`
 * runs the same kernel in the emulated spelling (any adapter: tests; see Emulation).
 */
export function gemmF16(a: Tensor, b: Tensor, transA = false, transB = false, tile?: F16Tile, emulate: Emulation = false): Tensor {
  registerGemmF16();
  return tf.engine().runKernel(GEMM_F16_KERNEL, [a, b] as any, { transA, transB, ...(tile ? { tile } : {}), ...(emulate ? { emulate } : {}) } as any) as Tensor;
}
