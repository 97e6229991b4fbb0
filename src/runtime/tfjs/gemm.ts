/**
 * The `wasm` backend's matrix product (tfjs kernel `BatchMatMul`), on our own WebAssembly SIMD GEMM
 * (./gemm.wat). tfjs-backend-wasm 4.22 runs a plain 2-D product through XNNPACK (8-15 GFLOP/s here) but
 * falls back to a scalar loop for a transposed operand or a batch (1-2 GFLOP/s), and training is made of
 * exactly those: every backward product has a transposed operand, and attention is batched. This kernel
 * packs both operands into row-major blocks (zero-padding on the way; a transposed B is transposed while
 * packed, a transposed A is copied as stored and read by the `gemm_tn` micro-kernel: dW = dYᵀ·x has
 * K = tokens, and transposing its [T, out] operand cost as much as the product), runs the SIMD micro-kernel
 * and copies C out. Products it does not cover (other dtypes, a
 * batch broadcast other than 1 against n) go to the package's kernel.
 *
 * `matmulInto` is the arithmetic alone, exported for tests and benchmarks.
 */
import { readFileSync } from 'node:fs';
import { tf } from './index.js';
import type { WasmBackendLike } from './wasm-extra.js';
import { threadedGemm, type GemmEngine } from './gemm-threads.js';
import { linearPartsOnHeap, matmulOnHeap, partsTimesOnHeap, sliceTnOnHeap } from './gemm-heap.js';

interface GemmExports {
  memory: WebAssembly.Memory;
  gemm(a: number, b: number, c: number, batch: number, M: number, N: number, K: number): void;
  /** The same with A stored transposed, [K, M]. */
  gemm_tn(a: number, b: number, c: number, batch: number, M: number, N: number, K: number): void;
}

let engine: GemmEngine | undefined;

/** The engine products run on: threads over a shared memory (./gemm-threads.ts) where they can, else one. */
function gemmModule(): GemmEngine {
  if (!engine) {
    engine = threadedGemm() ?? undefined;
    if (!engine) {
      const bytes = readFileSync(new URL('./gemm.wasm', import.meta.url));
      const g = new WebAssembly.Instance(new WebAssembly.Module(bytes), {}).exports as unknown as GemmExports;
      engine = { memory: g.memory, threads: 1, workerShares: 0, run: (tn, ...args) => (tn ? g.gemm_tn : g.gemm)(...args) };
    }
  }
  return engine;
}

/** How many threads the wasm GEMM runs on (1 where shared memory or worker threads are missing). */
export const wasmGemmThreads = (): number => gemmModule().threads;

/** A product's operands: `a` is [batchA, M, K] ([batchA, K, M] when transposeA), `b` [batchB, K, N] (or [batchB, N, K]). */
export interface MatmulShape {
  batchA: number;
  batchB: number;
  M: number;
  N: number;
  K: number;
  transposeA: boolean;
  transposeB: boolean;
}

const up = (n: number, m: number) => Math.ceil(n / m) * m;

/** The engine's memory grown to hold at least `floats` floats, as a fresh view (growing detaches the old one). */
function scratch(g: GemmEngine, floats: number): Float32Array {
  const have = g.memory.buffer.byteLength;
  if (4 * floats > have) g.memory.grow(Math.ceil((4 * floats - have) / 65536));
  return new Float32Array(g.memory.buffer);
}

/** `rows` rows of K floats from src[so..] become columns n0, n0 + 1, … of the row-major [K, Np] block at `at`. */
function transposeInto(src: Float32Array, so: number, rows: number, K: number, mem: Float32Array, at: number, Np: number, n0: number): void {
  for (let n = 0; n < rows; n++) for (let k = 0, i = so + n * K; k < K; k++) mem[at + k * Np + n0 + n] = src[i + k]!;
}

/**
 * Cache blocking for products whose B is large. The micro-kernel walks the rows of C four at a time and, for
 * each, every column tile over all of K: all of B is read again for every 4 rows, from memory once B outgrows
 * the caches (an LM head over a 32,000-token vocabulary: W is 32 MB; 6 GFLOP/s instead of ~40). Past
 * `blockFrom` bytes of B, a single product runs in blocks of B of at most `blockBytes` ([kb, nb]: N in column
 * blocks, K in slices whose partial products are added into C). The training step's products (B under
 * 1.5 MB at the demo shape) keep the one-pass path.
 */
const gemmBlocking = { blockFrom: 4 << 20, blockBytes: 256 << 10 };

/** For tests: the blocking thresholds (bytes of B), returning the previous ones. */
export function setGemmBlocking(next: { blockFrom: number; blockBytes: number }): { blockFrom: number; blockBytes: number } {
  const prev = { ...gemmBlocking };
  Object.assign(gemmBlocking, next);
  return prev;
}

/** out = op(A) · op(B) (one product) in blocks of B (see gemmBlocking). */
function matmulBlocked(A: Float32Array, B: Float32Array, out: Float32Array, s: MatmulShape): void {
  const { M, N, K, transposeA, transposeB } = s;
  const Mp = up(M, 4);
  const floats = gemmBlocking.blockBytes / 4;
  const nb = Math.min(up(N, 8), Math.max(8, Math.floor(floats / Math.min(K, 256) / 8) * 8));
  const kb = Math.min(K, Math.max(1, Math.floor(floats / nb)));
  const g = gemmModule();
  const aAt = 0;
  const bAt = Mp * kb;
  const cAt = bAt + kb * nb;
  scratch(g, cAt + Mp * nb);
  for (let n0 = 0; n0 < N; n0 += nb) {
    const nw = Math.min(nb, N - n0);
    const np = up(nw, 8);
    for (let k0 = 0; k0 < K; k0 += kb) {
      const kw = Math.min(kb, K - k0);
      const mem = new Float32Array(g.memory.buffer);
      // A's slice: [Mp, kw] rows, or as stored transposed [kw, Mp] (gemm_tn); padding rows zero.
      if (!transposeA) {
        for (let i = 0; i < M; i++) mem.set(A.subarray(i * K + k0, i * K + k0 + kw), aAt + i * kw);
        if (Mp > M) mem.fill(0, aAt + M * kw, aAt + Mp * kw);
      } else
        for (let k = 0; k < kw; k++) {
          mem.set(A.subarray((k0 + k) * M, (k0 + k) * M + M), aAt + k * Mp);
          if (Mp > M) mem.fill(0, aAt + k * Mp + M, aAt + (k + 1) * Mp);
        }
      // B's block [kw, np]: rows of B, or B stored [N, K] transposed while packed; padding columns zero.
      if (!transposeB)
        for (let k = 0; k < kw; k++) {
          mem.set(B.subarray((k0 + k) * N + n0, (k0 + k) * N + n0 + nw), bAt + k * np);
          if (np > nw) mem.fill(0, bAt + k * np + nw, bAt + (k + 1) * np);
        }
      else {
        if (np > nw) mem.fill(0, bAt, bAt + kw * np);
        for (let n = 0; n < nw; n++) for (let k = 0, i = (n0 + n) * K + k0; k < kw; k++) mem[bAt + k * np + n] = B[i + k]!;
      }
      g.run(transposeA, aAt * 4, bAt * 4, cAt * 4, 1, Mp, np, kw);
      const C = new Float32Array(g.memory.buffer);
      if (k0 === 0) for (let i = 0; i < M; i++) out.set(C.subarray(cAt + i * np, cAt + i * np + nw), i * N + n0);
      else for (let i = 0; i < M; i++) for (let j = 0, o = i * N + n0, c = cAt + i * np; j < nw; j++) out[o + j]! += C[c + j]!;
    }
  }
}

/** out[t] = op(a[t]) · op(b[t]) for t < max(batchA, batchB) (a batch of 1 broadcasts). */
export function matmulInto(A: Float32Array, B: Float32Array, out: Float32Array, s: MatmulShape): void {
  const batch = Math.max(s.batchA, s.batchB);
  const { M, N, K } = s;
  if (M === 0 || N === 0) return;
  if (K === 0) {
    out.fill(0);
    return;
  }
  if (batch === 1 && 4 * K * up(N, 8) > gemmBlocking.blockFrom) return matmulBlocked(A, B, out, s);
  // In place on the wasm heap where the operands lie there and the shape needs no padding (./gemm-heap.ts); the
  // threaded engine works in its own shared memory, so it keeps the copying path.
  if (gemmModule().threads === 1 && matmulOnHeap(A, B, out, s)) return;
  const Mp = up(M, 4);
  const Np = up(N, 8);
  const g = gemmModule();
  const aBlock = Mp * K;
  const bBlock = K * Np;
  const cBlock = Mp * Np;
  const mem = scratch(g, batch * (aBlock + bBlock + cBlock));
  const aBase = 0;
  const bBase = batch * aBlock;
  const cBase = bBase + batch * bBlock;
  for (let t = 0; t < batch; t++) {
    const ao = (s.batchA === 1 ? 0 : t) * M * K;
    const da = aBase + t * aBlock;
    if (!s.transposeA) {
      mem.set(A.subarray(ao, ao + M * K), da);
      if (Mp > M) mem.fill(0, da + M * K, da + aBlock);
    } else if (Mp === M) mem.set(A.subarray(ao, ao + M * K), da);
    else
      // Kept as stored, [K, M], rows padded to Mp: gemm_tn reads it that way (no transpose here).
      for (let k = 0; k < K; k++) {
        mem.set(A.subarray(ao + k * M, ao + k * M + M), da + k * Mp);
        mem.fill(0, da + k * Mp + M, da + (k + 1) * Mp);
      }
    const bo = (s.batchB === 1 ? 0 : t) * K * N;
    const db = bBase + t * bBlock;
    if (!s.transposeB) {
      if (Np === N) mem.set(B.subarray(bo, bo + K * N), db);
      else
        for (let k = 0; k < K; k++) {
          mem.set(B.subarray(bo + k * N, bo + k * N + N), db + k * Np);
          mem.fill(0, db + k * Np + N, db + (k + 1) * Np);
        }
    } else {
      if (Np > N) mem.fill(0, db, db + bBlock);
      transposeInto(B, bo, N, K, mem, db, Np, 0);
    }
  }
  g.run(s.transposeA, aBase * 4, bBase * 4, cBase * 4, batch, Mp, Np, K);
  const C = new Float32Array(g.memory.buffer);
  for (let t = 0; t < batch; t++) {
    const co = cBase + t * cBlock;
    const oo = t * M * N;
    if (Np === N) out.set(C.subarray(co, co + M * N), oo);
    else for (let i = 0; i < M; i++) out.set(C.subarray(co + i * Np, co + i * Np + N), oo + i * N);
  }
}

/**
 * Copy `rows` runs of `width` floats (strides in floats). Short runs by a loop: `subarray` + `set` allocates
 * a view per run, which costs more than copying 16 or 32 floats.
 */
function copyRuns(src: Float32Array, so: number, sStride: number, dst: Float32Array, d0: number, dStride: number, rows: number, width: number): void {
  if (sStride === width && dStride === width) dst.set(src.subarray(so, so + rows * width), d0);
  else if (width >= 64)
    for (let r = 0; r < rows; r++) dst.set(src.subarray(so + r * sStride, so + r * sStride + width), d0 + r * dStride);
  else
    for (let r = 0, s = so, d = d0; r < rows; r++, s += sStride, d += dStride) for (let j = 0; j < width; j++) dst[d + j] = src[s + j]!;
}

/** One product C [M, N] = A·B on the module's memory, operands packed by the callbacks (batch 1). */
function gemmWith(M: number, N: number, K: number, packA: (mem: Float32Array, at: number) => void, packB: (mem: Float32Array, at: number, Np: number) => void, readC: (C: Float32Array, at: number, Np: number) => void): void {
  const Mp = up(M, 4);
  const Np = up(N, 8);
  const g = gemmModule();
  const bBase = Mp * K;
  const cBase = bBase + K * Np;
  const mem = scratch(g, cBase + Mp * Np);
  if (Mp > M) mem.fill(0, 0, bBase);
  if (Np > N) mem.fill(0, bBase, cBase);
  packA(mem, 0);
  packB(mem, bBase, Np);
  g.run(false, 0, bBase * 4, cBase * 4, 1, Mp, Np, K);
  readC(mem, cBase, Np);
}

/**
 * concat_linear's forward: x [T, K] times the row stack of `weights` (each [n_i, K]) transposed, written as
 * column blocks to `outs` (out j is [T, outWidths[j]], the next Σ outWidths columns), plus biases[j] where
 * given: no stacked copy of the weights, no split of the product.
 */
export function linearPartsInto(x: Float32Array, T: number, K: number, weights: Float32Array[], outs: Float32Array[], outWidths: number[], biases: (Float32Array | undefined)[] = []): void {
  const N = outWidths.reduce((a, b) => a + b, 0);
  if (T === 0 || N === 0) return;
  const addBiases = () => outs.forEach((o, j) => biases[j] && addRowsInto(o, biases[j]!, T, outWidths[j]!));
  if (K === 0) {
    outs.forEach((o) => o.fill(0));
    return addBiases();
  }
  if (linearPartsOnHeap(x, T, K, weights, outs, outWidths, biases)) return;
  gemmWith(
    T,
    N,
    K,
    (mem, at) => mem.set(x.subarray(0, T * K), at),
    (mem, at, Np) => {
      // B = [W_1 ; …]ᵀ, [K, Np]: weight row n becomes column n.
      let n = 0;
      for (const w of weights) {
        transposeInto(w, 0, w.length / K, K, mem, at, Np, n);
        n += w.length / K;
      }
    },
    (C, at, Np) => {
      let c = 0;
      outs.forEach((o, j) => {
        copyRuns(C, at + c, Np, o, 0, outWidths[j]!, T, outWidths[j]!);
        c += outWidths[j]!;
      });
    },
  );
  addBiases();
}

/** y[t, :] += b over T rows of w. */
function addRowsInto(y: Float32Array, b: Float32Array, T: number, w: number): void {
  for (let t = 0, o = 0; t < T; t++, o += w) for (let j = 0; j < w; j++) y[o + j] = y[o + j]! + b[j]!;
}

/**
 * concat_linear's gradient of x: dX [T, K] = [dY_1 | … | dY_n] · [W_1 ; …] (dY_j [T, widths[j]], the weights
 * stacked by rows, Σ rows = Σ widths), the parts' gradients packed where they are. (Its dW_i = dY_iᵀ·x are
 * plain transposed-A products: matmulInto's gemm_tn.)
 */
export function partsTimesInto(dys: Float32Array[], widths: number[], T: number, weights: Float32Array[], K: number, out: Float32Array): void {
  const N = widths.reduce((a, b) => a + b, 0);
  if (T === 0 || K === 0) return;
  if (N === 0) return void out.fill(0);
  if (partsTimesOnHeap(dys, widths, T, weights, K, out)) return;
  gemmWith(
    T,
    K,
    N,
    (mem, at) => {
      let c = 0;
      dys.forEach((d, j) => {
        copyRuns(d, 0, widths[j]!, mem, at + c, N, T, widths[j]!);
        c += widths[j]!;
      });
    },
    (mem, at, Np) => {
      // B = [W_1 ; …], [N, Np]: the weights' rows one after the other.
      let n = 0;
      for (const w of weights) {
        copyRuns(w, 0, K, mem, at + n * Np, Np, w.length / K, K);
        n += w.length / K;
      }
    },
    (C, at, Np) => copyRuns(C, at, Np, out, 0, K, T, K),
  );
}

/**
 * A weight's gradient in concat_linear: out [width, K] = dy[:, col .. col + width)ᵀ · x, dy [T, ld] (the
 * weight's part), x [T, K]. In place on the wasm heap where it can (./gemm-heap.ts), else the columns copied out
 * and one transposed-A product.
 */
export function sliceTnInto(dy: Float32Array, ld: number, col: number, width: number, x: Float32Array, T: number, K: number, out: Float32Array): void {
  if (width === 0 || K === 0) return;
  if (T === 0) return void out.fill(0);
  if (sliceTnOnHeap(dy, ld, col, width, x, T, K, out)) return;
  let a = dy;
  if (ld !== width) {
    a = new Float32Array(T * width);
    copyRuns(dy, col, ld, a, 0, width, T, width);
  }
  matmulInto(a, x, out, { batchA: 1, batchB: 1, M: width, N: K, K: T, transposeA: true, transposeB: false });
}

const prod = (xs: number[]) => xs.reduce((p, x) => p * x, 1);

/** Replace the wasm backend's BatchMatMul (keeping the package's kernel for what ours does not cover). */
export function registerWasmGemm(): void {
  const orig = tf.getKernel('BatchMatMul', 'wasm');
  if (!orig || (orig as { mcpc?: boolean }).mcpc) return;
  tf.unregisterKernel('BatchMatMul', 'wasm');
  const config: tf.KernelConfig & { mcpc: boolean } = {
    kernelName: 'BatchMatMul',
    backendName: 'wasm',
    mcpc: true,
    ...(orig.setupFunc ? { setupFunc: orig.setupFunc } : {}),
    kernelFunc: (args) => {
      const { a, b } = args.inputs as { a: tf.TensorInfo; b: tf.TensorInfo };
      const { transposeA, transposeB } = args.attrs as unknown as { transposeA: boolean; transposeB: boolean };
      const ra = a.shape.length;
      const rb = b.shape.length;
      const batchShapeA = a.shape.slice(0, -2);
      const batchShapeB = b.shape.slice(0, -2);
      const batchA = prod(batchShapeA);
      const batchB = prod(batchShapeB);
      const ok = a.dtype === 'float32' && b.dtype === 'float32' && ra >= 2 && rb >= 2 && (batchA === batchB || batchA === 1 || batchB === 1);
      if (!ok) return orig.kernelFunc(args);
      const M = transposeA ? a.shape[ra - 1]! : a.shape[ra - 2]!;
      const K = transposeA ? a.shape[ra - 2]! : a.shape[ra - 1]!;
      const N = transposeB ? b.shape[rb - 2]! : b.shape[rb - 1]!;
      const batchShape = batchA >= batchB ? batchShapeA : batchShapeB;
      const backend = args.backend as unknown as WasmBackendLike;
      const out = backend.makeOutput([...batchShape, M, N], 'float32');
      // Views after makeOutput: allocating may grow (and so move) the backend's heap.
      // float32 operands (checked above): the views are Float32Arrays.
      const view = (t: tf.TensorInfo) => backend.typedArrayFromHeap(t) as Float32Array;
      matmulInto(view(a), view(b), view(out), { batchA, batchB, M, N, K, transposeA, transposeB });
      return out;
    },
  };
  tf.registerKernel(config);
}
