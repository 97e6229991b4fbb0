/**
 * WGSL for register-tiled f32 GEMMs: C[M, N] = Σ_s scale_s · A_s[M, K_s] · B_s[K_s, N] (+ bias[N]), with
 * every operand read in place whatever its storage order (no transpose pass), several K segments summed in
 * one kernel (so [x | h]·[W ; B]ᵀ is one dispatch), operands stacked from several buffers, and hooks for
 * fused prologues and epilogues (the mixture-of-LoRA kernels in ./moe-lora-wgsl.ts use them).
 *
 * Shapes are compile-time constants: a training run has a handful of shapes and the compiler gets to
 * unroll and fold every index. Pipelines are cached by module text (./program.ts).
 *
 * The kernel. A workgroup of (BM/TM)·(BN/TN) threads computes a BM×BN tile of C; each thread a TM×TN
 * block held in registers as vec4s. Per BK step the workgroup stages A and B tiles in workgroup memory,
 * k-major (As[k][m], Bs[k][n]), loading global memory four consecutive elements at a time (one vec4 load
 * when the contiguous dimension, the row stride and the offset are multiples of 4, else four guarded
 * scalar loads); each thread then reads vec4s of As and Bs and does TM·TN/4 vec4 FMAs per k. A thread's
 * rows and columns are interleaved with its neighbours' (row group i of thread ty is ty + i·(BM/TM)/…), so
 * consecutive threads read consecutive vec4s of workgroup memory.
 *
 * Bindings: the spec's inputs in order (0 …), then its outputs (read_write), as ./program.ts runs them.
 */

/** The timing probes of the f32 and f16 GEMM generators (Tile.probe, gemm-f16.ts F16Tile.probe). */
export const GEMM_PROBES = ['cross', 'nostage', 'hoist'] as const;
export type GemmProbe = (typeof GEMM_PROBES)[number];

/** Why `probe` is not one of GEMM_PROBES (undefined when it is, or absent). */
export function probeProblem(probe: unknown): string | undefined {
  return probe === undefined || (GEMM_PROBES as readonly unknown[]).includes(probe) ? undefined : `probe must be ${GEMM_PROBES.join(', ')} (not ${String(probe)})`;
}

/** A tile configuration. BM, BN multiples of TM, TN; TM, TN multiples of 4; BK a multiple of 4. */
export interface Tile {
  bm: number;
  bn: number;
  bk: number;
  tm: number;
  tn: number;
  /**
   * Prefetch: the next BK-slice's global loads are issued into registers before this slice's FMAs, so their
   * latency hides behind arithmetic (needs each thread's share of a slice to be whole vec4s).
   */
  pf?: boolean;
  /**
   * Double buffering (with `pf`): two copies of the workgroup tiles, slice i in copy i mod 2, so one barrier
   * per slice instead of two.
   */
  db?: boolean;
  /**
   * Swizzled workgroup order: consecutive workgroups walk down groups of `sw` block rows before moving right,
   * so the workgroups in flight share slices of A and B in L2. Prologues must locate their block by m0/n0.
   */
  sw?: number;
  /**
   * The BK steps of a slice written out one after another (each with its k a constant) instead of a loop: every
   * workgroup-memory index folds to a constant offset, whatever the driver's compiler does with loops.
   */
  ur?: boolean;
  /**
   * A timing probe, never tuned or cached (bench/gpu.ts times the tuned tile with each): the kernel with one part
   * taken out, its product wrong by design, so that what that part costs shows as the difference. `cross`:
   * every value read from workgroup memory feeds one FMA (TM + TN/4 − 1 vec4 FMAs a k instead of TM·TN/4);
   * `nostage`: no global loads and no stores to workgroup memory (barriers and reads kept); `hoist`: each
   * thread's reads of workgroup memory happen once, before the K loop, and the loop only stages and multiplies.
   */
  probe?: GemmProbe;
}

/**
 * A tile as a cache key: every field, so two tiles that generate different WGSL never share a spec or a module
 * (spec caches keyed by the five sizes and pf/db alone once made the tuner's swizzled candidates time the
 * unswizzled kernel). test/runtime/webgpu/gemm.test.ts holds a tile with every field (Required<Tile>).
 */
export function tileKey(t: Tile): string {
  return `${t.bm},${t.bn},${t.bk},${t.tm},${t.tn},${+!!t.pf},${+!!t.db},${t.sw ?? 0},${+!!t.ur},${t.probe ?? ''}`;
}

/** A part of an operand stored in one input binding. */
export interface Part {
  /** Index of the input binding. */
  input: number;
  /** Elements along the operand's M (for A) or N (for B) dimension that come from this part. */
  count: number;
  /** Row stride of the stored matrix. */
  ld: number;
  /** Element offset of the part's first element. */
  off: number;
}

/**
 * An operand as stored. For A (logical [M, K]) `kMajor: false` means element (m, k) is at off + m·ld + k
 * (row-major A, contiguous along k); `kMajor: true` means off + k·ld + m (A stored transposed). For B
 * (logical [K, N]) `kMajor: false` means (k, n) at off + n·ld + k (a PyTorch weight [N, K], so C = A·Wᵀ);
 * `kMajor: true` means off + k·ld + n. Several parts stack along M (N) and need `kMajor: false`.
 */
export interface Operand {
  kMajor: boolean;
  parts: Part[];
  /** Multiply every loaded element by this (A operands only). */
  scale?: number;
  /**
   * Instead of `parts`: a WGSL expression (f32) for the logical element at (i, k), i the index along M (for A)
   * or N (for B), k along K, both u32 and in range (the loader zero-fills outside). It may read any input as
   * `in<j>[…]` scalars (declare those inputs `type: 'f32'`, and give the operand `parts: []`) and call
   * functions from the spec's `decls`; `kMajor` then only says which way the tile is staged (false: rows i,
   * four consecutive k per load; true: rows k, four consecutive i), so pick the one the reads are contiguous along.
   */
  expr?: string;
}

export interface Segment {
  k: number;
  a: Operand;
  b: Operand;
}

export interface InputDecl {
  /** 'f32' scalar array, 'vec4' array<vec4<f32>>, 'u32' (index data), or decided by the operands that read it. */
  type?: 'f32' | 'vec4' | 'u32';
}

export interface GemmSpec {
  m: number;
  n: number;
  segments: Segment[];
  tile: Tile;
  inputs: InputDecl[];
  /** Output 0 is C unless `store` says otherwise; extra outputs are for hooks. Types: 'f32' or 'vec4'. */
  outputs: ('f32' | 'vec4' | 'u32')[];
  /** Input index of a bias [N] added to C. */
  bias?: number;
  /**
   * Scalar store of C(r, c) (body of `fn storeC(r: u32, c: u32, v: f32)`), replacing the plain row-major
   * store into output 0.
   */
  store?: string;
  /** Extra module-scope declarations (workgroup arrays, helper functions). */
  decls?: string;
  /** Code at the top of main (uniform control flow; may use workgroupBarrier). Sees tid, m0, n0, wid. */
  prologue?: string;
  /**
   * Code run per row of a thread's block after accumulation, before the store, when `row < M`: sees `row`,
   * `lr` (row − m0), and the row's accumulators `o0 … o{TN/4−1}` (vec4, mutable) for columns
   * `col(j) = n0 + 4u·(tx + j·NTX)`.
   */
  rowEpilogue?: string;
  /** WGSL `enable` directives. */
  enables?: string[];
}

/**
 * A memo of specs by a caller's key (the spec objects a module builds per shape class, so that the generated
 * WGSL and its pipeline are found again): `cached(key, make)` returns the spec made for `key`, making it once.
 * Cleared past 4,096 keys, which only a stream of distinct shapes reaches.
 */
export function specCache(): (key: string, make: () => GemmSpec) => GemmSpec {
  const specs = new Map<string, GemmSpec>();
  return (key, make) => {
    let sp = specs.get(key);
    if (!sp) {
      if (specs.size > 4096) specs.clear();
      specs.set(key, (sp = make()));
    }
    return sp;
  };
}

export function tileThreads(t: Tile): number {
  return (t.bm / t.tm) * (t.bn / t.tn);
}

export function checkTile(t: Tile): string | undefined {
  if (t.tm % 4 || t.tn % 4) return 'tm and tn must be multiples of 4';
  if (t.bm % t.tm || t.bn % t.tn) return 'bm, bn must be multiples of tm, tn';
  if (t.bk % 4) return 'bk must be a multiple of 4';
  const threads = tileThreads(t);
  if (threads > 256 || threads < 16) return `${threads} threads per workgroup (16 to 256)`;
  return probeProblem(t.probe);
}

/** Bytes of workgroup memory a whole module declares (`var<workgroup> x: array<T, N>` and scalars of 4 bytes). */
export function workgroupBytes(code: string): number {
  let total = 0;
  for (const m of code.matchAll(/var<workgroup>\s+\w+\s*:\s*([^;]+);/g)) {
    const ty = m[1]!.trim();
    const arr = /^array<\s*(.+?)\s*,\s*(\d+)\s*>$/.exec(ty);
    const elem = arr ? arr[1]! : ty;
    const n = arr ? Number(arr[2]) : 1;
    const size = /^vec4<f32>|^vec4<u32>|^vec4<i32>/.test(elem) ? 16 : /^vec2<f32>/.test(elem) ? 8 : /f16/.test(elem) ? (elem.startsWith('vec4') ? 8 : elem.startsWith('vec2') ? 4 : 2) : 4;
    total += size * n;
  }
  return total;
}

/** Bytes of workgroup memory a tile needs. */
export function tileSharedBytes(t: Tile): number {
  return (t.bk * t.bm + t.bk * t.bn) * 4 * (t.pf && t.db ? 2 : 1);
}

const u = (x: number): string => `${x >>> 0}u`;
const rng = (n: number): number[] => Array.from({ length: n }, (_, i) => i);

/** Can this part be read a vec4 at a time along its contiguous dimension of length `contig`? */
function vec4able(p: Part, contig: number): boolean {
  return p.ld % 4 === 0 && p.off % 4 === 0 && contig % 4 === 0;
}

/** The binding types: an input read by any operand part that cannot take vec4 loads is scalar. */
export function bindingTypes(spec: GemmSpec): ('f32' | 'vec4' | 'u32')[] {
  const want: ('f32' | 'vec4' | 'u32' | undefined)[] = spec.inputs.map((d) => d.type);
  const vote = (i: number, v: boolean) => {
    if (spec.inputs[i].type) return;
    want[i] = want[i] === 'f32' ? 'f32' : v ? 'vec4' : 'f32';
  };
  for (const s of spec.segments) {
    for (const [op, ext] of [
      [s.a, spec.m],
      [s.b, spec.n],
    ] as const) {
      for (const p of op.parts) vote(p.input, vec4able(p, op.kMajor ? ext : s.k) && (!op.kMajor || op.parts.length === 1));
    }
  }
  if (spec.bias !== undefined && !spec.inputs[spec.bias].type) want[spec.bias] = spec.n % 4 === 0 ? (want[spec.bias] ?? 'vec4') : 'f32';
  return want.map((w) => w ?? 'f32');
}

/**
 * The loader of one operand of one segment: `fn <name>(r: u32, c: u32) -> vec4<f32>`, four consecutive
 * elements along the contiguous dimension (c, c+1, c+2, c+3) of stored row r, zeros out of range.
 */
function loader(name: string, op: Operand, ext: number, k: number, types: ('f32' | 'vec4' | 'u32')[]): string {
  let raw: string;
  if (op.expr !== undefined) {
    // Element by element: r, c are (i, k) for kMajor false, (k, i) for kMajor true; zero outside [ext, k].
    const [rows, cols, el] = op.kMajor ? [k, ext, (q: string) => `${name}el(${q}, r)`] : [ext, k, (q: string) => `${name}el(r, ${q})`];
    raw = `fn ${name}el(i: u32, k: u32) -> f32 { return ${op.expr}; }
fn ${name}raw(r: u32, c: u32) -> vec4<f32> {
  var v = vec4<f32>(0.0);
  if (r >= ${u(rows)}) { return v; }
${rng(4)
  .map((q) => `  if (c + ${u(q)} < ${u(cols)}) { v.${'xyzw'[q]} = ${el(`c + ${u(q)}`)}; }`)
  .join('\n')}
  return v;
}`;
  } else if (op.kMajor) {
    if (op.parts.length !== 1) throw new Error('a k-major operand has one part');
    // Stored rows are k (K of them), contiguous along m/n (ext).
    raw = `fn ${name}raw(r: u32, c: u32) -> vec4<f32> {
  if (r >= ${u(k)}) { return vec4<f32>(0.0); }
${partRead(op.parts[0], 'r', 'c', ext, types)}
}`;
  } else {
    // Stored rows are m/n (from the parts, stacked), contiguous along k.
    let body = '';
    let start = 0;
    for (const p of op.parts) {
      body += `  if (r < ${u(start + p.count)}) {
    let rr = r - ${u(start)};
${indent(partRead(p, 'rr', 'c', k, types), 2)}
  }
`;
      start += p.count;
    }
    raw = `fn ${name}raw(r: u32, c: u32) -> vec4<f32> {
${body}  return vec4<f32>(0.0);
}`;
  }
  const scale = op.scale !== undefined && op.scale !== 1 ? ` * ${f32lit(op.scale)}` : '';
  return `${raw}
fn ${name}(r: u32, c: u32) -> vec4<f32> { return ${name}raw(r, c)${scale}; }`;
}

function partRead(p: Part, r: string, c: string, contig: number, types: ('f32' | 'vec4' | 'u32')[]): string {
  const b = `in${p.input}`;
  const base = `${u(p.off)} + ${r} * ${u(p.ld)} + ${c}`;
  if (types[p.input] === 'vec4' && vec4able(p, contig)) {
    return `  if (${c} >= ${u(contig)}) { return vec4<f32>(0.0); }
  return ${b}[(${base}) / 4u];`;
  }
  if (types[p.input] === 'vec4') throw new Error(`input ${p.input} is bound as vec4 but a part cannot be read so`);
  return `  var v = vec4<f32>(0.0);
  let i = ${base};
  if (${c} < ${u(contig)}) { v.x = ${b}[i]; }
  if (${c} + 1u < ${u(contig)}) { v.y = ${b}[i + 1u]; }
  if (${c} + 2u < ${u(contig)}) { v.z = ${b}[i + 2u]; }
  if (${c} + 3u < ${u(contig)}) { v.w = ${b}[i + 3u]; }
  return v;`;
}

function indent(s: string, n: number): string {
  const pad = ' '.repeat(n);
  return s
    .split('\n')
    .map((l) => (l ? pad + l : l))
    .join('\n');
}

export function f32lit(x: number): string {
  if (!Number.isFinite(x)) throw new Error(`not a finite f32: ${x}`);
  const s = String(Math.fround(x));
  return /[.eE]/.test(s) ? s : `${s}.0`;
}

/** Code that stages one operand's BK-slice into workgroup memory `dst` (k-major, `ext4` vec4s per k). */
function stage(dst: 'As' | 'Bs', fn: string, op: Operand, tileExt: number, bk: number, threads: number, origin: string, probe?: Tile['probe']): string {
  if (probe === 'nostage') return '';
  const units = stageUnits(op, tileExt, bk);
  if (units % threads === 0) {
    return rng(units / threads)
      .map((i) => `    { let q = tid + ${u(i * threads)};\n      let v = ${stageLoad(fn, op, tileExt, bk, origin, 'k0')};\n      ${stageStore(dst, op, tileExt, bk)} }`)
      .join('\n');
  }
  return `    for (var q = tid; q < ${u(units)}; q += ${u(threads)}) {\n      let v = ${stageLoad(fn, op, tileExt, bk, origin, 'k0')};\n      ${stageStore(dst, op, tileExt, bk)}\n    }`;
}

/** vec4 loads of one operand's BK-slice. */
function stageUnits(op: Operand, tileExt: number, bk: number): number {
  return op.kMajor ? bk * (tileExt / 4) : tileExt * (bk / 4);
}

/** The global load of unit `q` of a slice starting at `kBase`. */
function stageLoad(fn: string, op: Operand, tileExt: number, bk: number, origin: string, kBase: string): string {
  const ext4 = tileExt / 4;
  return op.kMajor ? `${fn}(${kBase} + q / ${u(ext4)}, ${origin} + 4u * (q % ${u(ext4)}))` : `${fn}(${origin} + q / ${u(bk / 4)}, ${kBase} + 4u * (q % ${u(bk / 4)}))`;
}

/** The store of unit `q`'s vec4 `v` into workgroup memory. */
function stageStore(dst: 'As' | 'Bs', op: Operand, tileExt: number, bk: number, base = ''): string {
  const ext4 = tileExt / 4;
  if (op.kMajor) return `${dst}[${base}q] = v;`;
  return `let e = q / ${u(bk / 4)}; let d = ${base}(4u * (q % ${u(bk / 4)})) * ${u(ext4)} + e / 4u; let cc = e % 4u;
      ${dst}[d][cc] = v.x; ${dst}[d + ${u(ext4)}][cc] = v.y; ${dst}[d + ${u(2 * ext4)}][cc] = v.z; ${dst}[d + ${u(3 * ext4)}][cc] = v.w;`;
}

/** Can this tile prefetch every operand of the spec (each thread's share of a slice whole vec4s)? */
export function canPrefetch(segments: Segment[], t: Tile): boolean {
  const threads = tileThreads(t);
  return segments.every((s) => stageUnits(s.a, t.bm, t.bk) % threads === 0 && stageUnits(s.b, t.bn, t.bk) % threads === 0);
}

const generated = new Map<string, string>();
const bySpec = new WeakMap<GemmSpec, string>();

/**
 * The whole WGSL module of a GEMM spec, generated once per spec: kernels ask for it on every call, and
 * building the module text (and hashing a new string of tens of kilobytes in the pipeline cache) cost more
 * host time than recording the dispatch.
 */
export function gemmWgsl(spec: GemmSpec): string {
  const same = bySpec.get(spec);
  if (same !== undefined) return same;
  const key = JSON.stringify(spec);
  let code = generated.get(key);
  if (code === undefined) {
    code = generateGemm(spec);
    if (generated.size > 4096) generated.clear();
    generated.set(key, code);
  }
  bySpec.set(spec, code);
  return code;
}

function generateGemm(spec: GemmSpec): string {
  const t = spec.tile;
  const bad = checkTile(t);
  if (bad) throw new Error(`GEMM tile ${JSON.stringify(t)}: ${bad}`);
  const NT = tileThreads(t);
  const NTX = t.bn / t.tn;
  const NTY = t.bm / t.tm;
  const TM4 = t.tm / 4;
  const TN4 = t.tn / 4;
  const types = bindingTypes(spec);
  const wgsl = (ty: string) => (ty === 'vec4' ? 'vec4<f32>' : ty);
  const lines: string[] = [];
  for (const e of spec.enables ?? []) lines.push(`enable ${e};`);
  spec.inputs.forEach((_, i) => lines.push(`@group(0) @binding(${i}) var<storage, read> in${i}: array<${wgsl(types[i])}>;`));
  spec.outputs.forEach((ty, j) => lines.push(`@group(0) @binding(${spec.inputs.length + j}) var<storage, read_write> out${j}: array<${wgsl(ty)}>;`));
  lines.push(`const M = ${u(spec.m)};`, `const N = ${u(spec.n)};`, `const NTX = ${u(NTX)};`, `const NTY = ${u(NTY)};`);
  const copies = t.pf && t.db ? 2 : 1;
  lines.push(`var<workgroup> As: array<vec4<f32>, ${(copies * t.bk * t.bm) / 4}>;`, `var<workgroup> Bs: array<vec4<f32>, ${(copies * t.bk * t.bn) / 4}>;`);
  spec.segments.forEach((s, i) => {
    lines.push(loader(`loadA${i}`, s.a, spec.m, s.k, types));
    lines.push(loader(`loadB${i}`, s.b, spec.n, s.k, types));
  });
  if (spec.store) lines.push(`fn storeC(r: u32, c: u32, v: f32) {\n${spec.store}\n}`);
  if (spec.decls) lines.push(spec.decls);

  const main: string[] = [];
  main.push(`@compute @workgroup_size(${NT})
fn main(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let tx = tid % NTX;
  let ty = tid / NTX;
${blockOrigin(spec, t)}
${rng(TM4 * 4 * TN4)
  .map((i) => `  var acc${i} = vec4<f32>(0.0);`)
  .join('\n')}`);
  if (spec.prologue) main.push(spec.prologue);
  // nostage: the inputs stay bound (phony reads keep them in the pipeline's layout).
  if (t.probe === 'nostage') main.push(spec.inputs.map((_, i) => `  _ = in${i}[0];`).join('\n'));
  spec.segments.forEach((s, si) => {
    if (s.k === 0) return;
    // hoist: each segment in a block of its own (its hoisted reads are function-scope names).
    const block = (code: string) => (t.probe === 'hoist' ? `  {\n${code}\n  }` : code);
    const fma: string[] = [];
    const dbl = !!(t.pf && t.db && canPrefetch([s], t));
    const reads = (k: string, copy: boolean) => [
      ...rng(TM4).map((i) => `      let a${i} = As[${copy ? 'ao + ' : ''}${k} * ${u(t.bm / 4)} + ty + ${u(i * NTY)}];`),
      ...rng(TN4).map((j) => `      let b${j} = Bs[${copy ? 'bo + ' : ''}${k} * ${u(t.bn / 4)} + tx + ${u(j * NTX)}];`),
    ];
    // The slice's BK steps: a loop over k, or (ur) written out with k a constant in each.
    const innerOf = (lines: string[]) =>
      t.ur ? rng(t.bk).map((k) => `    {\n      let k = ${u(k)};\n${lines.join('\n')}\n    }`).join('\n') : `    for (var k = 0u; k < ${u(t.bk)}; k++) {\n${lines.join('\n')}\n    }`;
    // hoist: the first k's reads once, before the K loop (from the first copy).
    const hoisted = t.probe === 'hoist' ? `${reads('0u', false).map((l) => l.slice(4)).join('\n')}\n` : '';
    if (t.probe !== 'hoist') fma.push(reads('k', dbl).join('\n'));
    for (let i = 0; i < TM4; i++) {
      for (let c = 0; c < 4; c++) {
        for (let j = 0; j < TN4; j++) {
          const acc = (i * 4 + c) * TN4 + j;
          if (t.probe === 'cross' && j !== 0 && (i !== 0 || c !== 0)) continue;
          fma.push(`      acc${acc} = fma(vec4<f32>(a${i}.${'xyzw'[c]}), b${j}, acc${acc});`);
        }
      }
    }
    const inner = innerOf(fma);
    if (t.pf && canPrefetch([s], t)) {
      // Registers pa*/pb* hold the next slice: loaded before this slice's FMAs, stored after the barrier.
      const ua = stageUnits(s.a, t.bm, t.bk) / NT;
      const ub = stageUnits(s.b, t.bn, t.bk) / NT;
      // (nostage: neither.)
      const staged = t.probe !== 'nostage';
      const loads = (kBase: string) =>
        staged
          ? [
              ...rng(ua).map((i) => `      { let q = tid + ${u(i * NT)}; pa${si}_${i} = ${stageLoad(`loadA${si}`, s.a, t.bm, t.bk, 'm0', kBase)}; }`),
              ...rng(ub).map((i) => `      { let q = tid + ${u(i * NT)}; pb${si}_${i} = ${stageLoad(`loadB${si}`, s.b, t.bn, t.bk, 'n0', kBase)}; }`),
            ].join('\n')
          : '';
      const stores = staged
        ? [
            ...rng(ua).map((i) => `    { let q = tid + ${u(i * NT)}; let v = pa${si}_${i};\n      ${stageStore('As', s.a, t.bm, t.bk, dbl ? 'ao + ' : '')} }`),
            ...rng(ub).map((i) => `    { let q = tid + ${u(i * NT)}; let v = pb${si}_${i};\n      ${stageStore('Bs', s.b, t.bn, t.bk, dbl ? 'bo + ' : '')} }`),
          ].join('\n')
        : '';
      // Double buffered: slice i lives in copy i mod 2; the barrier after the stores also orders this slice's
      // writes after every thread's reads of the other copy two slices ago, so one barrier per slice suffices
      // (and one after the loop, before anything else touches the tiles).
      main.push(block(`${hoisted}${[...rng(ua).map((i) => `  var pa${si}_${i}: vec4<f32>;`), ...rng(ub).map((i) => `  var pb${si}_${i}: vec4<f32>;`)].join('\n')}
  {
${loads('0u')}
  }
  for (var k0 = 0u; k0 < ${u(s.k)}; k0 += ${u(t.bk)}) {
${dbl ? `    let par = (k0 / ${u(t.bk)}) & 1u;\n    let ao = par * ${u((t.bk * t.bm) / 4)};\n    let bo = par * ${u((t.bk * t.bn) / 4)};\n` : ''}${stores}
    workgroupBarrier();
    if (k0 + ${u(t.bk)} < ${u(s.k)}) {
${loads(`k0 + ${u(t.bk)}`)}
    }
${inner}
${dbl ? '' : '    workgroupBarrier();\n'}  }${dbl ? '\n  workgroupBarrier();' : ''}`));
      return;
    }
    main.push(block(`${hoisted}  for (var k0 = 0u; k0 < ${u(s.k)}; k0 += ${u(t.bk)}) {
${stage('As', `loadA${si}`, s.a, t.bm, t.bk, NT, 'm0', t.probe)}
${stage('Bs', `loadB${si}`, s.b, t.bn, t.bk, NT, 'n0', t.probe)}
    workgroupBarrier();
${inner}
    workgroupBarrier();
  }`));
  });
  // Epilogue: per row of the thread's block.
  const outVec4 = !spec.store && spec.outputs[0] === 'vec4';
  if (!spec.store && outVec4 && spec.n % 4 !== 0) throw new Error('vec4 output needs N % 4 == 0');
  const biasVec4 = spec.bias !== undefined && types[spec.bias] === 'vec4';
  for (let i = 0; i < TM4; i++) {
    for (let c = 0; c < 4; c++) {
      const rowExpr = `m0 + 4u * (ty + ${u(i * NTY)}) + ${u(c)}`;
      const body: string[] = [];
      body.push(rng(TN4).map((j) => `    var o${j} = acc${(i * 4 + c) * TN4 + j};`).join('\n'));
      if (spec.rowEpilogue) body.push(`    let lr = row - m0;\n${indent(spec.rowEpilogue, 4)}`);
      for (let j = 0; j < TN4; j++) {
        const col = `n0 + 4u * (tx + ${u(j * NTX)})`;
        let bias = '';
        if (spec.bias !== undefined) {
          bias = biasVec4
            ? ` + in${spec.bias}[col / 4u]`
            : ` + vec4<f32>(in${spec.bias}[min(col, N - 1u)], in${spec.bias}[min(col + 1u, N - 1u)], in${spec.bias}[min(col + 2u, N - 1u)], in${spec.bias}[min(col + 3u, N - 1u)])`;
        }
        if (spec.store) {
          body.push(`    { let col = ${col}; let v = o${j}${bias};
      for (var cc = 0u; cc < 4u; cc++) { if (col + cc < N) { storeC(row, col + cc, v[cc]); } } }`);
        } else if (outVec4) {
          body.push(`    { let col = ${col}; if (col < N) { out0[(row * N + col) / 4u] = o${j}${bias}; } }`);
        } else {
          body.push(`    { let col = ${col}; let v = o${j}${bias};
      for (var cc = 0u; cc < 4u; cc++) { if (col + cc < N) { out0[row * N + col + cc] = v[cc]; } } }`);
        }
      }
      main.push(`  {
    let row = ${rowExpr};
    if (row < M) {
${body.join('\n')}
    }
  }`);
    }
  }
  main.push('}');
  return `${lines.join('\n')}\n${main.join('\n')}\n`;
}

/** Workgroups to dispatch for a spec. */
/** `m0`/`n0` of this workgroup's block: row-major over the dispatch grid, or swizzled (Tile.sw). */
function blockOrigin(spec: Pick<GemmSpec, 'm' | 'n'>, t: Tile): string {
  if (!t.sw) return `  let n0 = wid.x * ${u(t.bn)};\n  let m0 = wid.y * ${u(t.bm)};`;
  const [nx, ny] = gemmDispatch({ ...spec, tile: t });
  const w = t.sw * nx;
  return `  let pid = wid.y * ${u(nx)} + wid.x;
  let first = (pid / ${u(w)}) * ${u(t.sw)};
  let rows = min(${u(ny)} - first, ${u(t.sw)});
  let m0 = (first + (pid % ${u(w)}) % rows) * ${u(t.bm)};
  let n0 = ((pid % ${u(w)}) / rows) * ${u(t.bn)};`;
}

export function gemmDispatch(spec: Pick<GemmSpec, 'm' | 'n' | 'tile'>): [number, number, number] {
  return [Math.ceil(spec.n / spec.tile.bn), Math.ceil(spec.m / spec.tile.bm), 1];
}
