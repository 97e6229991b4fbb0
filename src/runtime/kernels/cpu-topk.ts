/**
 * `topk_gate` for the CPU kernel table as one tfjs kernel each way (McpcTopkGate, McpcTopkGateGrad), where the
 * reference records TopK, a one-hot mask, Mul, Sum and RealDiv and their backward. p [T, E] masked to each
 * token's k largest entries (ties to the lower index, as tf.topk), renormalised over them when asked; k >= E
 * keeps every expert. The backward recomputes the mask from the saved p (the mask has no gradient):
 *
 *   renormalize   g = kept / S, S = Σ kept      dp_e = mask_e · (dg_e − Σ_e' dg_e'·g_e') / S
 *   otherwise     g = kept                      dp_e = mask_e · dg_e
 *
 * The same arithmetic as ../webgpu/topk-gate.ts; in f64 per row, stored as f32.
 */
import { tf, type Tensor } from '../tfjs/index.js';
import { heapExports, wasmHeap } from '../tfjs/wasm-extra.js';
import { registerCpuKernel } from './cpu-ops.js';

/* eslint-disable @typescript-eslint/no-explicit-any -- tfjs kernel plumbing. */

/**
 * mask[e] for row `o` of p: whether e is among the row's k largest (ties to the lower index). k picks of the
 * largest entry not yet picked, scanning up with a strict `>` (so a tie keeps the lower index): E·k
 * comparisons where counting, for each entry, the entries above it took E² (a MedCare stage-1 step gates
 * 12 x 2048 rows of 8 experts each way). A row holding NaN takes the counting rule, whose NaN semantics
 * (nothing is above a NaN, a NaN is above nothing) the picks would not keep.
 */
function rowMask(p: Float32Array, o: number, E: number, k: number, mask: Uint8Array): void {
  mask.fill(0);
  let nan = false;
  for (let j = 0; j < E; j++) if (p[o + j] !== p[o + j]) nan = true;
  if (nan) {
    for (let e = 0; e < E; e++) {
      const me = p[o + e]!;
      let above = 0;
      for (let j = 0; j < E && above < k; j++) {
        const x = p[o + j]!;
        if (x > me || (x === me && j < e)) above++;
      }
      mask[e] = above < k ? 1 : 0;
    }
    return;
  }
  for (let pick = 0; pick < k && pick < E; pick++) {
    let best = -1;
    let bv = 0;
    for (let j = 0; j < E; j++) {
      if (mask[j]) continue;
      const x = p[o + j]!;
      if (best < 0 || x > bv) {
        best = j;
        bv = x;
      }
    }
    mask[best] = 1;
  }
}

/**
 * The indices of the k largest of p[o .. o + E) into idx[0 .. k), by value descending, ties to the lower index
 * (one insertion pass: a later equal value never passes an earlier one); false, with nothing chosen, where the
 * row holds a NaN (rowMask's rule then decides).
 */
function topIndices(p: Float32Array, o: number, E: number, k: number, idx: Int32Array): boolean {
  let n = 0;
  for (let j = 0; j < E; j++) {
    const x = p[o + j]!;
    if (x !== x) return false;
    let q: number;
    if (n < k) q = n++;
    else if (x > p[o + idx[k - 1]!]!) q = k - 1;
    else continue;
    while (q > 0 && x > p[o + idx[q - 1]!]!) {
      idx[q] = idx[q - 1]!;
      q--;
    }
    idx[q] = j;
  }
  return true;
}

/** Row t's chosen experts into idx (k of them), by topIndices or, for a row with a NaN, rowMask. */
function chosen(p: Float32Array, o: number, E: number, k: number, idx: Int32Array, mask: Uint8Array): number {
  if (topIndices(p, o, E, k, idx)) return k;
  rowMask(p, o, E, k, mask);
  let n = 0;
  for (let e = 0; e < E; e++) if (mask[e]) idx[n++] = e;
  return n;
}

/** Calls that took topk.wat (how tests see that the WebAssembly path ran). */
export const topTwoCalls = { n: 0 };

interface Topk {
  gates2(p: number, T: number, E: number, g: number, renorm: number): number;
  gates2_grad(p: number, dg: number, T: number, E: number, dp: number, renorm: number): number;
}
const topkFor = heapExports<Topk>('topk.wasm');

/**
 * For k = 2 on tfjs-backend-wasm's heap, ../tfjs/topk.wat's whole kernel (each row's two largest without a branch
 * on the data, then the kept gates or their gradient, in f64 in this file's order, 0 elsewhere): on fresh random
 * rows at 2048 x 8, what training sees, the JavaScript pick ran 0.52-0.59 ms a call against topk.wat's
 * 0.33-0.38 (`npx tsx bench/topk-gate.ts`), and the rows' arithmetic here in JavaScript cost as much again. Null
 * where it does not apply. Rows holding a NaN are left to the JavaScript rule (eachRow below).
 */
function topkOnHeap(arrays: Float32Array[], k: number, E: number): Topk | null {
  const heap = wasmHeap();
  if (k !== 2 || E < 2 || !heap || arrays.some((a) => a.buffer !== heap.buffer)) return null;
  topTwoCalls.n++;
  return topkFor(heap);
}

/**
 * `row(o)` for every row of p [T, E]; where `onHeap` applies (topk.wat's kernel, returning how many rows held a
 * NaN and were left unwritten), only for the rows holding a NaN.
 */
function eachRow(p: Float32Array, T: number, E: number, onHeap: (() => number) | null, row: (o: number) => void): void {
  if (onHeap && onHeap() === 0) return;
  const hasNaN = (o: number) => p.subarray(o, o + E).some((x) => x !== x);
  for (let o = 0; o < T * E; o += E) if (!onHeap || hasNaN(o)) row(o);
}

/** g [T, E] = p masked to each row's k largest, renormalised over them when asked. */
function gatesForward(p: Float32Array, g: Float32Array, T: number, E: number, k: number, renormalize: boolean): void {
  const idx = new Int32Array(E);
  const mask = new Uint8Array(E);
  const row = (o: number) => {
    g.fill(0, o, o + E);
    const n = chosen(p, o, E, k, idx, mask);
    let s = 0;
    for (let i = 0; i < n; i++) s += p[o + idx[i]!]!;
    const inv = renormalize ? 1 / s : 1;
    for (let i = 0; i < n; i++) g[o + idx[i]!] = p[o + idx[i]!]! * inv;
  };
  const wasm = topkOnHeap([p, g], k, E);
  eachRow(p, T, E, wasm && (() => wasm.gates2(p.byteOffset, T, E, g.byteOffset, renormalize ? 1 : 0)), row);
}

/** dp [T, E] from p and dg (see the header), the mask recomputed from p. */
function gatesBackward(p: Float32Array, dg: Float32Array, dp: Float32Array, T: number, E: number, k: number, renormalize: boolean): void {
  const idx = new Int32Array(E);
  const mask = new Uint8Array(E);
  const row = (o: number) => {
    dp.fill(0, o, o + E);
    const n = chosen(p, o, E, k, idx, mask);
    if (!renormalize) {
      for (let i = 0; i < n; i++) dp[o + idx[i]!] = dg[o + idx[i]!]!;
      return;
    }
    let s = 0;
    for (let i = 0; i < n; i++) s += p[o + idx[i]!]!;
    const inv = 1 / s;
    let dot = 0;
    for (let i = 0; i < n; i++) dot += dg[o + idx[i]!]! * p[o + idx[i]!]! * inv;
    for (let i = 0; i < n; i++) dp[o + idx[i]!] = (dg[o + idx[i]!]! - dot) * inv;
  };
  const wasm = topkOnHeap([p, dg, dp], k, E);
  eachRow(p, T, E, wasm && (() => wasm.gates2_grad(p.byteOffset, dg.byteOffset, T, E, dp.byteOffset, renormalize ? 1 : 0)), row);
}

function register(): void {
  registerCpuKernel(
    'McpcTopkGate',
    {
      shapes: (ins) => [ins[0]!.shape as number[]],
      writesAll: true,
      run: ([p], [g], infos, a) => {
        const [T, E] = infos[0]!.shape as [number, number];
        gatesForward(p as Float32Array, g!, T, E, Math.min(a.k as number, E), !!a.renormalize);
      },
    },
    {
      inputsToSave: ['0'],
      gradFunc: ((dy: Tensor, saved: Tensor[], attrs: any) => ({
        0: () => tf.engine().runKernel('McpcTopkGateGrad', [saved[0]!, dy] as unknown as tf.NamedTensorMap, { k: attrs.k, renormalize: attrs.renormalize } as unknown as tf.NamedAttrMap) as Tensor,
      })) as any,
    },
  );
  registerCpuKernel('McpcTopkGateGrad', {
    shapes: (ins) => [ins[0]!.shape as number[]],
    writesAll: true,
    run: ([p, dg], [dp], infos, a) => {
      const [T, E] = infos[0]!.shape as [number, number];
      gatesBackward(p as Float32Array, dg as Float32Array, dp!, T, E, Math.min(a.k as number, E), !!a.renormalize);
    },
  });
}

/** Whether the kernel takes p: float32 [T, E], T, E >= 1, and an integer k >= 1. */
export function topkGateCpuFits(p: Tensor, k: number): boolean {
  return p.dtype === 'float32' && p.rank === 2 && p.shape[0]! >= 1 && p.shape[1]! >= 1 && Number.isInteger(k) && k >= 1;
}

/** topk_gate of p [T, E] (checked by {@link topkGateCpuFits}); k past E keeps every expert, as the reference. */
export function topkGateCpu(p: Tensor, k: number, renormalize: boolean): Tensor {
  register();
  return tf.engine().runKernel('McpcTopkGate', [p] as unknown as tf.NamedTensorMap, { k: Math.min(k, p.shape[1]!), renormalize } as unknown as tf.NamedAttrMap) as Tensor;
}
