/**
 * Matrix products in place on tfjs-backend-wasm's heap (concat_linear's forward, dX and dW, and ./gemm.ts
 * matmulInto's, the wasm BatchMatMul): ./gemm-ld.wat (gemm.wat's micro-kernel with row strides and an accumulate
 * flag) instantiated over that heap reads the tensors where they lie and writes each output where its tensor lies. ./gemm.ts's copying path packs both operands into the GEMM's own memory and
 * copies C out, which at the demo shape cost about as much as the arithmetic (a [2048, 64] x [64, 176] product
 * is ~1.2 ms of multiply-adds and ~1 ms of copies); here only the forward's weights are transposed, into heap
 * scratch (a few thousand floats).
 *
 * Each function returns false, having done nothing, where it does not apply (an array off the heap: the `cpu`
 * backend; a row count not a multiple of 4 or a width not a multiple of 8, which the micro-kernel would need
 * padded), and the caller takes the copying path.
 */
import type { MatmulShape } from './gemm.js';
import { heapFor } from './moe.js';
import { heapExports } from './wasm-extra.js';

interface GemmLd {
  gemm_ld(a: number, lda: number, b: number, ldb: number, c: number, ldc: number, M: number, N: number, K: number, acc: number): void;
  gemm_tn_ld(a: number, lda: number, b: number, ldb: number, c: number, ldc: number, M: number, N: number, K: number, acc: number): void;
  gemm_parts(a: number, lda: number, b: number, ldb: number, tab: number, M: number, N: number, K: number): void;
  scale(dst: number, src: number, n: number, s: number): void;
  add_scaled(y: number, w: number, n: number, s: number): void;
  softmax_grad(y: number, dy: number, dz: number, T: number, w: number): void;
  sigmoid_grad(y: number, dy: number, dz: number, n: number): void;
  col_sums(z: number, out: number, T: number, w: number): void;
}

const ldFor = heapExports<GemmLd>('gemm-ld.wasm');

/** Products run on the heap so far (how tests see that the in-place path ran). */
export const heapGemmCalls = { forward: 0, dx: 0, dw: 0, matmul: 0, scale: 0, addScaled: 0, activationGrad: 0, columnSums: 0 };

const ptr = (a: Float32Array) => a.byteOffset;

/**
 * Tokens per panel of a transposed-A product (dW = dYᵀ·x, K = tokens). In panels of 128, [2048, 176]ᵀ·[2048, 64]
 * runs at 48 GFLOP/s, the copying path (one pass, shuffled broadcasts) at 37 (`npx tsx bench/wasm-gemm.ts`,
 * BENCHMARKS.md); 128 was the best of 64-2048 in a sweep on the 2-core EPYC.
 */
const TN_PANEL = 128;

/** The GEMM over the heap every array lies in, else null. */
function gemmOn(arrays: Float32Array[]): GemmLd | null {
  const hp = heapFor(arrays);
  return hp ? ldFor(hp.memory) : null;
}

/**
 * C [M, N] = Aᵀ·B with A stored [K, M] (row stride lda), in panels of TN_PANEL rows of K summed into C: a panel's
 * rows of A and B stay in cache while every block of C is computed over them (over all of K at once, B was read
 * from memory again for every 4 rows of C).
 */
function tnInPanels(g: GemmLd, a: number, lda: number, b: number, ldb: number, c: number, ldc: number, M: number, N: number, K: number): void {
  for (let k0 = 0; k0 < K; k0 += TN_PANEL) g.gemm_tn_ld(a + 4 * k0 * lda, lda, b + 4 * k0 * ldb, ldb, c, ldc, M, N, Math.min(TN_PANEL, K - k0), k0 > 0 ? 1 : 0);
}

/**
 * outs[j] = x · [weights of part j]ᵀ (+ biases[j]): x [T, K]; the weights [n_i, K] in part order (Σ n_i over a
 * part = outWidths[j]). The weights, transposed side by side into one [K, N] block of heap scratch, are B; one
 * pass of gemm_parts writes each 8-column block straight into its part's output, its accumulators starting
 * from the part's bias (a table of (output address, row bytes, bias address) per block).
 */
export function linearPartsOnHeap(x: Float32Array, T: number, K: number, weights: Float32Array[], outs: Float32Array[], outWidths: number[], biases: (Float32Array | undefined)[] = []): boolean {
  const bs = biases.filter((b): b is Float32Array => !!b);
  if (T % 4 !== 0 || outWidths.some((w) => w % 8 !== 0)) return false;
  const hp = heapFor([x, ...weights, ...outs, ...bs]);
  if (!hp) return false;
  const N = outWidths.reduce((a, b) => a + b, 0);
  // Pointers before malloc (which may grow the heap and detach these views).
  const [X, Ws, Os, Bs] = [ptr(x), weights.map(ptr), outs.map(ptr), outWidths.map((_, j) => (biases[j] ? ptr(biases[j]!) : 0))];
  const rowsOf = weights.map((w) => w.length / K);
  const blocks = N / 8;
  const p = hp.malloc(4 * K * N + 12 * blocks + 32);
  if (!p) return false;
  const Bt = p + ((16 - (p % 16)) % 16);
  const tab = Bt + 4 * K * N;
  let col = 0;
  Ws.forEach((W, i) => {
    hp.moe.transpose(W, K, rowsOf[i]!, K, Bt + 4 * col, N);
    col += rowsOf[i]!;
  });
  const t32 = new Int32Array(hp.memory.buffer, tab, 3 * blocks);
  let jb = 0;
  outWidths.forEach((w, j) => {
    for (let c = 0; c < w; c += 8, jb++) {
      t32[3 * jb] = Os[j]! + 4 * c;
      t32[3 * jb + 1] = 4 * w;
      t32[3 * jb + 2] = Bs[j] ? Bs[j]! + 4 * c : 0;
    }
  });
  ldFor(hp.memory).gemm_parts(X, K, Bt, N, tab, T, N, K);
  hp.free(p);
  heapGemmCalls.forward++;
  return true;
}

/**
 * dx [T, K] = Σ_j dys[j] · [weights of part j] (dys[j] [T, widths[j]], the part's weights stacked by rows): one
 * product per weight, reading its columns of dys[j] and the weight where they lie, summed into dx.
 */
export function partsTimesOnHeap(dys: Float32Array[], widths: number[], T: number, weights: Float32Array[], K: number, out: Float32Array): boolean {
  if (T % 4 !== 0 || K % 8 !== 0) return false;
  const g = gemmOn([...dys, ...weights, out]);
  if (!g) return false;
  let w = 0;
  let first = true;
  dys.forEach((dy, j) => {
    for (let col = 0; col < widths[j]!; w++) {
      const n = weights[w]!.length / K;
      if (n === 0) continue;
      g.gemm_ld(ptr(dy) + 4 * col, widths[j]!, ptr(weights[w]!), K, ptr(out), K, T, K, n, first ? 0 : 1);
      first = false;
      col += n;
    }
  });
  if (first) out.fill(0);
  heapGemmCalls.dx++;
  return true;
}

/** out [width, K] = dy[:, col .. col + width)ᵀ · x (dy [T, ld], x [T, K], T >= 1: ./gemm.ts sliceTnInto): a weight's gradient, read in place. */
export function sliceTnOnHeap(dy: Float32Array, ld: number, col: number, width: number, x: Float32Array, T: number, K: number, out: Float32Array): boolean {
  if (width % 4 !== 0 || K % 8 !== 0) return false;
  const g = gemmOn([dy, x, out]);
  if (!g) return false;
  tnInPanels(g, ptr(dy) + 4 * col, ld, ptr(x), K, ptr(out), K, width, K, T);
  heapGemmCalls.dw++;
  return true;
}

/**
 * out[t] = op(A[t]) · op(B[t]) (./gemm.ts matmulInto's product, a batch of 1 broadcasting) in place: A as stored
 * (a transposed A read by the transposed-A kernel, in panels of tokens), B as stored unless transposed (then
 * transposed into heap scratch), each C written where out lies. Needs M a multiple of 4 and N of 8.
 */
export function matmulOnHeap(A: Float32Array, B: Float32Array, out: Float32Array, s: MatmulShape): boolean {
  const { M, N, K, transposeA, transposeB } = s;
  if (M % 4 !== 0 || N % 8 !== 0) return false;
  const hp = heapFor([A, B, out]);
  if (!hp) return false;
  const batch = Math.max(s.batchA, s.batchB);
  const [pa, pb, pc] = [ptr(A), ptr(B), ptr(out)];
  let bt = 0;
  if (transposeB) {
    const p = hp.malloc(4 * s.batchB * K * N + 16);
    if (!p) return false;
    bt = p;
    for (let t = 0; t < s.batchB; t++) hp.moe.transpose(pb + 4 * t * N * K, K, N, K, p + 4 * t * K * N, N);
  }
  const g = ldFor(hp.memory);
  for (let t = 0; t < batch; t++) {
    const a = pa + 4 * (s.batchA === 1 ? 0 : t) * M * K;
    const b = (transposeB ? bt : pb) + 4 * (s.batchB === 1 ? 0 : t) * K * N;
    const c = pc + 4 * t * M * N;
    if (!transposeA) g.gemm_ld(a, K, b, N, c, N, M, N, K, 0);
    else tnInPanels(g, a, M, b, N, c, N, M, N, K);
  }
  if (bt) hp.free(bt);
  heapGemmCalls.matmul++;
  return true;
}

/** gemm-ld.wat's f(out, in, n, s) over two heap arrays of one length; false where either is off the heap. */
function pairOnHeap(f: 'scale' | 'add_scaled', counter: 'scale' | 'addScaled', out: Float32Array, inp: Float32Array, s: number): boolean {
  const g = gemmOn([out, inp]);
  if (!g || out.length !== inp.length) return false;
  g[f](ptr(out), ptr(inp), out.length, s);
  heapGemmCalls[counter]++;
  return true;
}

/** dst = src·s elementwise (f32), in place on the heap; false where an array is off it. */
export const scaleOnHeap = (dst: Float32Array, src: Float32Array, s: number): boolean => pairOnHeap('scale', 'scale', dst, src, s);

/** y = w + y·s elementwise (each operation rounded to f32), in place on the heap; false where an array is off it. */
export const addScaledOnHeap = (y: Float32Array, w: Float32Array, s: number): boolean => pairOnHeap('add_scaled', 'addScaled', y, w, s);

/**
 * The gradient at a router part's product, dz from its output y and dy [T, w]: softmax rows (w a multiple of 4),
 * y ⊙ (dy − rowsum(dy ⊙ y)) in f32, or sigmoid, dy ⊙ y ⊙ (1 − y); in place on the heap, false where not applicable.
 */
export function activationGradOnHeap(y: Float32Array, dy: Float32Array, dz: Float32Array, T: number, w: number, act: 'softmax' | 'sigmoid'): boolean {
  const g = gemmOn([y, dy, dz]);
  if (!g || (act === 'softmax' && w % 4 !== 0)) return false;
  if (act === 'softmax') g.softmax_grad(ptr(y), ptr(dy), ptr(dz), T, w);
  else g.sigmoid_grad(ptr(y), ptr(dy), ptr(dz), T * w);
  heapGemmCalls.activationGrad++;
  return true;
}

/** out[j] = Σ_t z[t, j] summed in f64 (w even), in place on the heap; false where not applicable. */
export function columnSumsOnHeap(z: Float32Array, out: Float32Array, T: number, w: number): boolean {
  const g = gemmOn([z, out]);
  if (!g || w % 2 !== 0) return false;
  g.col_sums(ptr(z), ptr(out), T, w);
  heapGemmCalls.columnSums++;
  return true;
}
