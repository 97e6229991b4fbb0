/**
 * `lm_head_xent` for the CPU kernel table: the LM head and the softmax cross-entropy in one tfjs kernel
 * (McpcLmHeadXent), over chunks of rows so the [T, V] logits are never materialised whole: per chunk one
 * GEMM x·Wᵀ into a scratch block, then per row the logsumexp and the picked logit. The forward saves each
 * row's logsumexp; the gradient (McpcLmHeadXentDx, McpcLmHeadXentDw, each only when autodiff asks) recomputes
 * a chunk's logits and forms dlogits = g·mask_t/count·(softmax − onehot) in place, then dx = dlogits·W, and
 * dW += dlogitsᵀ·x (gemm_tn). The reference's semantics exactly: loss = −Σ_t mask_t·log softmax(x_t·Wᵀ)[label_t]
 * / max(Σ mask, 1); a label outside [0, V) picks nothing (its row adds 0 and has no gradient, as the
 * reference's all-zero one-hot row gives). The rows' exponentials run in WebAssembly SIMD (../tfjs/xent.wat:
 * each row's max and Σ exp(z − max), and w·exp(z − L) in place) where V is a multiple of 4, on logits the GEMM
 * writes straight into that module's memory; otherwise (and with MCPC_XENT_WASM=0) per row in JavaScript in
 * f64. The logsumexp m + log s and the loss sum are f64 either way; everything stored is f32.
 */
import { readFileSync } from 'node:fs';
import { matmulInto } from '../tfjs/gemm.js';
import { tf, type Tensor } from '../tfjs/index.js';
import { wasmSimdSupported } from '../tfjs/wasm-emit.js';
import { registerCpuKernel } from './cpu-ops.js';
import { scratchArray } from '../tfjs/wasm-extra.js';
import { KeptForGradient } from '../tfjs/share.js';

/* eslint-disable @typescript-eslint/no-explicit-any -- tfjs kernel plumbing. */

/** Rows per chunk: the chunk's logits stay under 2^20 floats (4 MiB). */
const chunkRows = (V: number) => Math.max(1, Math.floor((1 << 20) / Math.max(1, V)));

/**
 * A kernel call's logits block (JavaScript rows), gathered rows (lossRows: their indices, x, labels, mask, lse)
 * and compact dx in arrays reused from call to call (scratchArray): a fresh Float32Array of a few hundred KB a
 * call is a zeroed allocation of new pages, and garbage after (~1 ms of a training step's loss in a CPU profile
 * at 8x256).
 */
const block = (n: number) => scratchArray('xent-z', Float32Array, n);
const keptF32 = (k: 'x' | 'dx' | 'mask' | 'lse', n: number) => scratchArray(`xent-${k}`, Float32Array, n);

interface XentExports {
  memory: WebAssembly.Memory;
  lse(z: number, rows: number, V: number, st: number): void;
  dlogits(z: number, rows: number, V: number, L: number, w: number): void;
}
let xentMod: XentExports | undefined;

/** A chunk's blocks in the row kernels' memory (views, and their byte offsets). */
interface WasmBlocks {
  m: XentExports;
  z: Float32Array;
  zAt: number;
  st: Float32Array;
  stAt: number;
  L: Float32Array;
  LAt: number;
  w: Float32Array;
  wAt: number;
}

/**
 * The WebAssembly row kernels and views of a chunk's blocks in their memory: z [R·V (+4 of slack: the
 * two-vector step reads one vector past a row of V mod 8 = 4)], st [2R], L [R], w [R]; null where the
 * path does not apply (V not a multiple of 4, no SIMD, MCPC_XENT_WASM=0).
 */
function wasmBlocks(R: number, V: number): WasmBlocks | null {
  if (V % 4 !== 0 || process.env.MCPC_XENT_WASM === '0' || !wasmSimdSupported()) return null;
  xentMod ??= new WebAssembly.Instance(new WebAssembly.Module(readFileSync(new URL('../tfjs/xent.wasm', import.meta.url))), {}).exports as unknown as XentExports;
  const m = xentMod;
  const up4 = (n: number) => Math.ceil(n / 4) * 4;
  const zAt = 0;
  const stAt = zAt + up4(R * V + 4);
  const LAt = stAt + up4(2 * R);
  const wAt = LAt + up4(R);
  const floats = wAt + up4(R);
  const have = m.memory.buffer.byteLength;
  if (4 * floats > have) m.memory.grow(Math.ceil((4 * floats - have) / 65536));
  const f = new Float32Array(m.memory.buffer);
  return { m, z: f.subarray(zAt, zAt + R * V), zAt: 4 * zAt, st: f.subarray(stAt, stAt + 2 * R), stAt: 4 * stAt, L: f.subarray(LAt, LAt + R), LAt: 4 * LAt, w: f.subarray(wAt, wAt + R), wAt: 4 * wAt };
}

/**
 * Each row of y [T, w] replaced by its softmax with the row kernels of ../tfjs/xent.wat: per row m = max and
 * s = Σ exp(z − m) (lse), then exp(z − L) with L = m + log s (dlogits with weight 1), in that module's memory
 * (y copied in and back). False, having done nothing, where they do not apply (w not a multiple of 4, no SIMD,
 * MCPC_XENT_WASM=0): the caller then takes its own loop. concat_linear's router parts use it
 * (./cpu-ops.ts): Math.exp per element cost ~0.35 ms a site at 2048 x 8, this ~0.1.
 */
export function softmaxRowsWasm(y: Float32Array, T: number, w: number): boolean {
  const wb = T > 0 ? wasmBlocks(T, w) : null;
  if (!wb) return false;
  wb.z.set(y);
  wb.m.lse(wb.zAt, T, w, wb.stAt);
  for (let t = 0; t < T; t++) {
    wb.L[t] = wb.st[2 * t]! + Math.log(wb.st[2 * t + 1]!);
    wb.w[t] = 1;
  }
  wb.m.dlogits(wb.zAt, T, w, wb.LAt, wb.wAt);
  y.set(wb.z);
  return true;
}

/** The logits of rows [r0, r1) into `z` ([r1 − r0, V]). */
function logits(x: Float32Array, W: HeadWeight, r0: number, r1: number, d: number, V: number, z: Float32Array): void {
  if (W.t) matmulInto(x.subarray(r0 * d, r1 * d), W.t, z, { batchA: 1, batchB: 1, M: r1 - r0, N: V, K: d, transposeA: false, transposeB: false });
  else matmulInto(x.subarray(r0 * d, r1 * d), W.w, z, { batchA: 1, batchB: 1, M: r1 - r0, N: V, K: d, transposeA: false, transposeB: true });
}

/**
 * The head weight W [V, d] for `logits`, with Wᵀ [d, V] made once where the rows take several chunks: the
 * GEMM transposes a transposed operand element by element on every call (d·V per chunk: at V = 32000 that
 * cost more than the product), and copies a plain one row by row.
 */
interface HeadWeight {
  w: Float32Array;
  t?: Float32Array;
}
function headWeight(W: Float32Array, T: number, R: number, d: number, V: number): HeadWeight {
  if (T <= R) return { w: W };
  const t = new Float32Array(d * V);
  for (let v = 0; v < V; v++) for (let k = 0, i = v * d; k < d; k++) t[k * V + v] = W[i + k]!;
  return { w: W, t };
}

const maskCount = (mask: Float32Array | Int32Array) => {
  let c = 0;
  for (let t = 0; t < mask.length; t++) c += mask[t]!;
  return Math.max(c, 1);
};

/** dlogits of rows [r0, r1) in place over their logits `z`: coef·mask_t·(softmax − onehot), 0 for an invalid label. */
function dlogits(z: Float32Array, r0: number, r1: number, V: number, labels: Int32Array | Float32Array, mask: Float32Array | Int32Array, lse: Float32Array, coef: number, wb: WasmBlocks | null): void {
  if (wb) {
    // z is wb.z: w·exp(z − L) per row in WebAssembly (w = 0 zeroes a row), then − w at the label.
    for (let t = r0; t < r1; t++) {
      const label = labels[t]!;
      wb.w[t - r0] = label >= 0 && label < V ? coef * mask[t]! : 0;
      wb.L[t - r0] = lse[t]!;
    }
    wb.m.dlogits(wb.zAt, r1 - r0, V, wb.LAt, wb.wAt);
    for (let t = r0; t < r1; t++) {
      const w = wb.w[t - r0]!;
      if (w !== 0) z[(t - r0) * V + labels[t]!] -= w;
    }
    return;
  }
  for (let t = r0; t < r1; t++) {
    const o = (t - r0) * V;
    const label = labels[t]!;
    const w = coef * mask[t]!;
    if (w === 0 || !(label >= 0 && label < V)) {
      z.fill(0, o, o + V);
      continue;
    }
    const L = lse[t]!;
    for (let v = 0; v < V; v++) z[o + v] = w * Math.exp(z[o + v]! - L);
    z[o + label] = z[o + label]! - w;
  }
}

/**
 * The logits of x·Wᵀ chunk by chunk (x [T, d], W [V, d]): `body(z, r0, r1, wb)` for
 * rows [r0, r1), z holding their logits (in the WebAssembly row kernels' memory where they apply, `wb`).
 */
function eachChunk(x: Float32Array, W: Float32Array, T: number, d: number, V: number, body: (z: Float32Array, r0: number, r1: number, wb: WasmBlocks | null) => void): void {
  const R = Math.min(T, chunkRows(V));
  const wb = wasmBlocks(R, V);
  const z = wb ? wb.z : block(R * V);
  const hw = headWeight(W, T, R, d, V);
  for (let r0 = 0; r0 < T; r0 += R) {
    const r1 = Math.min(T, r0 + R);
    logits(x, hw, r0, r1, d, V, z);
    body(z, r0, r1, wb);
  }
}

/** The backward's chunks: `body(dlogits, r0, r1)` with dlogits of rows [r0, r1) in place of their logits. */
function eachDlogitsChunk(r: Rows, W: Float32Array, d: number, V: number, coef: number, body: (z: Float32Array, r0: number, r1: number) => void): void {
  eachChunk(r.x, W, r.T, d, V, (z, r0, r1, wb) => {
    dlogits(z, r0, r1, V, r.labels, r.mask, r.lse!, coef, wb);
    body(z, r0, r1);
  });
}

/** The rows a kernel works on: x [T, d] with their labels, mask and (backward) logsumexp. */
interface Rows {
  x: Float32Array;
  labels: Int32Array | Float32Array;
  mask: Float32Array | Int32Array;
  lse?: Float32Array;
  T: number;
}

/**
 * The rows that reach the loss (a label in [0, V), mask != 0) gathered, or null when every row does. The others
 * add nothing to the loss and get no gradient, so neither their logits nor their logsumexp is formed (at 8x256
 * with 70% of the tokens in the loss, 30% of the head's GEMMs and exponentials; prompt tokens masked out in SFT,
 * more): their lse is stored as 0 and their dx is 0. The reference differs only where a row outside the loss
 * has non-finite logits (its 0·NaN term makes the reference's loss NaN); MCPC_XENT_COMPACT=0 forms every row.
 */
function lossRows(x: Float32Array, d: number, labels: Int32Array | Float32Array, mask: Float32Array | Int32Array, V: number, lse?: Float32Array): { rows: Int32Array; r: Rows } | null {
  if (process.env.MCPC_XENT_COMPACT === '0') return null;
  const T = labels.length;
  const all = scratchArray('xent-rows', Int32Array, T);
  let n = 0;
  for (let t = 0; t < T; t++) if (labels[t]! >= 0 && labels[t]! < V && mask[t] !== 0) all[n++] = t;
  if (n === T) return null;
  const rows = all.subarray(0, n);
  const r: Rows = { x: keptF32('x', n * d), labels: scratchArray('xent-labels', Int32Array, n), mask: keptF32('mask', n), T: n, ...(lse ? { lse: keptF32('lse', n) } : {}) };
  gatherRows(x, d, rows, r.x);
  for (let i = 0; i < n; i++) {
    const t = rows[i]!;
    r.labels[i] = labels[t]!;
    r.mask[i] = mask[t]!;
    if (lse) r.lse![i] = lse[t]!;
  }
  return { rows, r };
}

/** dst row i = src row rows[i] (rows of d floats). */
function gatherRows(src: Float32Array, d: number, rows: Int32Array, dst: Float32Array): void {
  for (let i = 0; i < rows.length; i++) for (let j = 0, s = rows[i]! * d, o = i * d; j < d; j++) dst[o + j] = src[s + j]!;
}

/** dst row rows[i] = src row i; dst's other rows 0. */
function scatterRows(src: Float32Array, d: number, rows: Int32Array, dst: Float32Array): void {
  dst.fill(0);
  for (let i = 0; i < rows.length; i++) for (let j = 0, s = i * d, o = rows[i]! * d; j < d; j++) dst[o + j] = src[s + j]!;
}

/**
 * Σ_t mask_t·(lse_t − z_t[label_t]) over the rows (the loss before its division), their lse into `lse`; with
 * `keep` ([T, V]), also each chunk's dlogits for an upstream gradient of 1 (coef = 1/Σ mask) into it, formed in
 * place on the logits the forward has anyway (what the backward would recompute: see savedD).
 */
function lossSum(r: Rows, W: Float32Array, d: number, V: number, lse: Float32Array, keep?: { D: Float32Array; coef: number }): number {
  let sum = 0;
  const { labels, mask } = r;
  const kept = (z: Float32Array, r0: number, r1: number, wb: WasmBlocks | null) => {
    if (!keep) return;
    dlogits(z, r0, r1, V, labels, mask, lse, keep.coef, wb);
    keep.D.set(z.subarray(0, (r1 - r0) * V), r0 * V);
  };
  eachChunk(r.x, W, r.T, d, V, (z, r0, r1, wb) => {
    if (wb) {
      wb.m.lse(wb.zAt, r1 - r0, V, wb.stAt);
      for (let t = r0; t < r1; t++) {
        const L = wb.st[2 * (t - r0)]! + Math.log(wb.st[2 * (t - r0) + 1]!);
        lse[t] = L;
        const label = labels[t]!;
        if (label >= 0 && label < V) sum += mask[t]! * (L - z[(t - r0) * V + label]!);
      }
      kept(z, r0, r1, wb);
      return;
    }
    for (let t = r0; t < r1; t++) {
      const o = (t - r0) * V;
      let m = -Infinity;
      for (let v = 0; v < V; v++) if (z[o + v]! > m) m = z[o + v]!;
      let s = 0;
      for (let v = 0; v < V; v++) s += Math.exp(z[o + v]! - m);
      const L = m + Math.log(s);
      lse[t] = L;
      const label = labels[t]!;
      if (label >= 0 && label < V) sum += mask[t]! * (L - z[o + label]!);
    }
    kept(z, r0, r1, null);
  });
  return sum;
}

/**
 * The forward's dlogits for an upstream gradient of 1, kept for McpcLmHeadXentDx by the dataId of the forward's
 * lse output (the gradient gets that output back as its saved copy, sharing the dataId, as attention's P): the
 * backward then multiplies them by W and by dy, and forms neither the logits nor their exponentials again nor
 * gathers the rows (at 8x256, V 256: the logits' GEMM and exp, ~1-1.5 ms of a step's loss). Kept only under a
 * gradient tape (attr saveD), up to SAVED_D floats a call (above: recomputed); an entry whose backward never
 * comes (x off the gradient path) goes at the next forward once its lse is gone. MCPC_XENT_SAVE=0: recomputed.
 */
const SAVED_D = 1 << 24;
/** Buffers handed back by the backward (or the sweep), reused by the next forwards: no fresh pages each step. */
const spareD: Float32Array[] = [];
function takeD(n: number): Float32Array {
  const i = spareD.findIndex((b) => b.length >= n);
  return i >= 0 ? spareD.splice(i, 1)[0]!.subarray(0, n) : new Float32Array(n);
}
function giveD(D: Float32Array): void {
  spareD.push(new Float32Array(D.buffer));
  if (spareD.length > 1) spareD.shift();
}
const savedD = new KeptForGradient<{ D: Float32Array; rows: Int32Array | null }>((k) => giveD(k.D));

/** How McpcLmHeadXentDx got its dlogits, counted for tests: kept by the forward or recomputed. */
export const xentDlogitsCounts = { saved: 0, recomputed: 0 };
/** Forwards' dlogits kept now (for tests: none outlives its backward and the next forward). */
export const keptDlogits = (): number => savedD.size;

function register(): void {
  registerCpuKernel(
    'McpcLmHeadXent',
    {
      shapes: (ins) => [[], [ins[0]!.shape[0]!]],
      writesAll: true,
      run: ([x, W, labels, mask], [loss, lse], infos, a, outInfos) => {
        const d = infos[0]!.shape[1]!;
        const V = infos[1]!.shape[0]!;
        const all: Rows = { x: x as Float32Array, labels: labels!, mask: mask!, T: infos[0]!.shape[0]! };
        const c = lossRows(all.x, d, all.labels, all.mask, V);
        const r = c ? c.r : all;
        const count = maskCount(mask!);
        savedD.sweep();
        const keep = a.saveD && process.env.MCPC_XENT_SAVE !== '0' && r.T > 0 && r.T * V <= SAVED_D ? { D: takeD(r.T * V), coef: 1 / count } : undefined;
        if (!c) loss![0] = lossSum(all, W as Float32Array, d, V, lse!, keep) / count;
        else {
          const lseA = scratchArray('xent-lse-rows', Float32Array, c.r.T);
          loss![0] = (c.r.T ? lossSum(c.r, W as Float32Array, d, V, lseA, keep) : 0) / count;
          lse!.fill(0);
          c.rows.forEach((t, i) => (lse![t] = lseA[i]!));
        }
        if (keep) savedD.set(outInfos[1]!.dataId, { D: keep.D, rows: c ? c.rows.slice() : null });
      },
    },
    {
      inputsToSave: ['0', '1', '2', '3'],
      outputsToSave: [false, true],
      gradFunc: ((dy: Tensor | Tensor[], saved: Tensor[]) => {
        const g = Array.isArray(dy) ? dy[0]! : dy;
        const [x, W, labels, mask, lse] = saved as [Tensor, Tensor, Tensor, Tensor, Tensor];
        const args = [x, W, labels, mask, lse, g] as unknown as tf.NamedTensorMap;
        return {
          0: () => tf.engine().runKernel('McpcLmHeadXentDx', args) as Tensor,
          1: () => tf.engine().runKernel('McpcLmHeadXentDw', args) as Tensor,
          2: () => tf.zerosLike(labels),
          3: () => tf.zerosLike(mask),
        };
      }) as any,
    },
  );
  registerCpuKernel('McpcLmHeadXentDx', {
    shapes: (ins) => [ins[0]!.shape as number[]],
    writesAll: true,
    run: (ins, [dx], infos) => {
      const kept = savedD.take(infos[4]!.dataId);
      xentDlogitsCounts[kept ? 'saved' : 'recomputed']++;
      if (kept) {
        // dx = dy·(D·W), D the forward's dlogits for dy = 1 (the same products as below when dy is 1)
        const d = infos[0]!.shape[1]!;
        const V = infos[1]!.shape[0]!;
        const g = (ins[5] as Float32Array)[0]!;
        const n = kept.D.length / V;
        const out = kept.rows ? keptF32('dx', n * d) : dx!;
        matmulInto(kept.D, ins[1] as Float32Array, out, { batchA: 1, batchB: 1, M: n, N: d, K: V, transposeA: false, transposeB: false });
        if (g !== 1) for (let i = 0; i < n * d; i++) out[i] = out[i]! * g;
        if (kept.rows) scatterRows(out, d, kept.rows, dx!);
        giveD(kept.D);
        return;
      }
      const { W, d, V, coef, c, r } = backwardRows(ins, infos);
      const out = c ? keptF32('dx', r.T * d) : dx!;
      if (r.T) eachDlogitsChunk(r, W, d, V, coef, (z, r0, r1) => matmulInto(z, W, out.subarray(r0 * d, r1 * d), { batchA: 1, batchB: 1, M: r1 - r0, N: d, K: V, transposeA: false, transposeB: false }));
      if (c) scatterRows(out, d, c.rows, dx!);
    },
  });
  registerCpuKernel('McpcLmHeadXentDw', {
    shapes: (ins) => [ins[1]!.shape as number[]],
    run: (ins, [dW], infos) => {
      const { W, d, V, coef, r } = backwardRows(ins, infos);
      const part = new Float32Array(V * d);
      if (r.T)
        eachDlogitsChunk(r, W, d, V, coef, (z, r0, r1) => {
          // dW += dlogitsᵀ·x over the chunk (dlogits read as stored: gemm_tn); dW starts zeroed.
          matmulInto(z, r.x.subarray(r0 * d, r1 * d), part, { batchA: 1, batchB: 1, M: V, N: d, K: r1 - r0, transposeA: true, transposeB: false });
          for (let i = 0; i < part.length; i++) dW![i] = dW![i]! + part[i]!;
        });
    },
  });
}

/** The gradients' inputs (x, W, labels, mask, lse, dy): sizes, dlogits' scale, and the rows they work on (lossRows). */
function backwardRows(ins: (Float32Array | Int32Array)[], infos: tf.TensorInfo[]) {
  const [x, W, labels, mask, lse, dy] = ins as [Float32Array, Float32Array, Int32Array, Float32Array, Float32Array, Float32Array];
  const d = infos[0]!.shape[1]!;
  const V = infos[1]!.shape[0]!;
  const c = lossRows(x, d, labels, mask, V, lse);
  const r: Rows = c ? c.r : { x, labels, mask, lse, T: infos[0]!.shape[0]! };
  return { W, d, V, coef: dy[0]! / maskCount(mask), c, r };
}

/** Whether the kernel takes these inputs: x [T, d], W [V, d] float32, labels [T] int32 (the executor's; float labels go to the reference, which truncates them), mask [T] float32. */
export function lmHeadXentFits(x: Tensor, W: Tensor, labels: Tensor, mask: Tensor): boolean {
  return x.dtype === 'float32' && W.dtype === 'float32' && mask.dtype === 'float32' && labels.dtype === 'int32' && x.rank === 2 && W.rank === 2 && x.shape[1] === W.shape[1] && labels.rank === 1 && mask.rank === 1 && labels.shape[0] === x.shape[0] && mask.shape[0] === x.shape[0] && x.shape[0]! >= 1 && W.shape[0]! >= 1 && x.shape[1]! >= 1;
}

/** The mean masked cross-entropy of softmax(x·Wᵀ) against `labels` (a scalar), its gradient lazy per input. */
export function lmHeadXentCpu(x: Tensor, W: Tensor, labels: Tensor, mask: Tensor): Tensor {
  register();
  // dlogits kept for the backward only when a gradient tape records this call (tf.grads, engine.gradients)
  const [loss] = tf.engine().runKernel('McpcLmHeadXent', [x, W, labels, mask] as unknown as tf.NamedTensorMap, { saveD: tf.engine().isTapeOn() } as unknown as tf.NamedAttrMap) as Tensor[];
  return loss!;
}
