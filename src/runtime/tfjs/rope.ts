/**
 * Rotary embedding (rotate-half) in WebAssembly SIMD (./rope.wat), in place on tfjs-backend-wasm's heap: what
 * the CPU `McpcRope` / `McpcRopeInverse` kernels (../kernels/cpu-ops.ts) run on the `wasm` backend instead of
 * their JavaScript loop (8x256 tokens, 4 + 2 heads of 16: ~1-2 ms a call in JavaScript in a training step).
 */
import { heapExport, wasmHeap } from './wasm-extra.js';

type RopeFn = (x: number, y: number, cos: number, sin: number, T: number, H: number, half: number, sg: number) => void;

/** Kernel calls that ran here (for tests: the wasm backend must not fall back to JavaScript unnoticed). */
export const ropeWasmCalls = { count: 0 };

const fnFor = heapExport<RopeFn>('rope.wasm', 'rope');

/**
 * y [T, H·d] = x rotated by the tables cos, sin [T, d/2] (d even; the transpose of the rotation when
 * `inverse`). Runs only where every array is a view of tfjs-backend-wasm's heap and returns whether it did
 * (false: the caller computes it otherwise, e.g. on the `cpu` backend). MCPC_ROPE_WASM=0 switches it off.
 */
export function ropeOnHeap(x: Float32Array, y: Float32Array, cos: Float32Array, sin: Float32Array, T: number, H: number, d: number, inverse: boolean): boolean {
  if (process.env.MCPC_ROPE_WASM === '0') return false;
  const heap = wasmHeap();
  if (!heap) return false;
  const buf = heap.buffer;
  if (![x, y, cos, sin].every((a) => a.buffer === buf)) return false;
  fnFor(heap)(x.byteOffset, y.byteOffset, cos.byteOffset, sin.byteOffset, T, H, d / 2, inverse ? -1 : 1);
  ropeWasmCalls.count++;
  return true;
}
