/**
 * The fused optimizer's arithmetic in WebAssembly SIMD (./adamw.wat), in place on tfjs-backend-wasm's heap:
 * what the CPU `McpcAdamW` kernel (../kernels/cpu-ops.ts) runs on the `wasm` backend. Bit-identical to the
 * JavaScript loop it replaces (every step one IEEE f32 operation, in the same order), ~10x faster: 0.49M
 * parameters took ~22 ms a step in JavaScript.
 */
import { heapExport, wasmHeap } from './wasm-extra.js';

/** The step's f32 scalars, as the kernel derives them (optimizer.ts adamwScalars, rounded to f32). */
export interface AdamWConsts {
  DEC: number;
  GS: number;
  B1: number;
  OB1: number;
  B2: number;
  OB2: number;
  SB2: number;
  EPS: number;
  LRB: number;
}

type AdamWFn = (p: number, P: number, g: number, m: number, v: number, M: number, V: number, n: number, ...k: number[]) => void;

/** Kernel calls that ran here (for tests: the wasm backend must not fall back to JavaScript unnoticed). */
export const adamwWasmCalls = { count: 0 };

const fnFor = heapExport<AdamWFn>('adamw.wasm', 'adamw');

/**
 * One AdamW step of every tensor: ps[i] (parameters) into Ps[i], the flat g/m/v (the tensors' elements one
 * after the other) into M/V. Runs only where every array is a view of tfjs-backend-wasm's heap and returns
 * whether it did (false: the caller computes it otherwise, e.g. on the `cpu` backend). MCPC_ADAMW_WASM=0
 * switches it off.
 */
export function adamwOnHeap(ps: Float32Array[], Ps: Float32Array[], g: Float32Array, m: Float32Array, v: Float32Array, M: Float32Array, V: Float32Array, k: AdamWConsts): boolean {
  if (process.env.MCPC_ADAMW_WASM === '0') return false;
  const heap = wasmHeap();
  if (!heap) return false;
  const buf = heap.buffer;
  if (![g, m, v, M, V].every((a) => a.buffer === buf) || !ps.every((a, i) => a.buffer === buf && Ps[i]!.buffer === buf)) return false;
  const fn = fnFor(heap);
  const consts = [k.DEC, k.GS, k.B1, k.OB1, k.B2, k.OB2, k.SB2, k.EPS, k.LRB];
  let o = 0;
  for (let i = 0; i < ps.length; i++) {
    const n = ps[i]!.length;
    fn(ps[i]!.byteOffset, Ps[i]!.byteOffset, g.byteOffset + 4 * o, m.byteOffset + 4 * o, v.byteOffset + 4 * o, M.byteOffset + 4 * o, V.byteOffset + 4 * o, n, ...consts);
    o += n;
  }
  adamwWasmCalls.count++;
  return true;
}
