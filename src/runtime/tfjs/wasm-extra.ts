/**
 * Kernels that tfjs-backend-wasm 4.22 lacks but the reference path needs, implemented in JavaScript over
 * the backend's heap views. Today one: `UnsortedSegmentSum`, which the gradient of `gather` (the
 * embedding lookup) calls.
 */
import { tf } from './index.js';

interface WasmBackendLike {
  makeOutput(shape: number[], dtype: string): tf.TensorInfo;
  typedArrayFromHeap(t: tf.TensorInfo): Float32Array | Int32Array | Uint8Array;
}

let registered = false;

export function registerWasmExtras(): void {
  if (registered) return;
  registered = true;
  tf.registerKernel({
    kernelName: 'UnsortedSegmentSum',
    backendName: 'wasm',
    kernelFunc: ({ inputs, backend, attrs }) => {
      const { x, segmentIds } = inputs as { x: tf.TensorInfo; segmentIds: tf.TensorInfo };
      const numSegments = (attrs as { numSegments: number }).numSegments;
      const b = backend as unknown as WasmBackendLike;
      // segmentIds index x's first dimension; the rest of x is one row per id.
      const rows = segmentIds.shape.reduce((a, d) => a * d, 1);
      const inner = x.shape.slice(segmentIds.shape.length).reduce((a, d) => a * d, 1);
      const out = b.makeOutput([numSegments, ...x.shape.slice(segmentIds.shape.length)], x.dtype);
      const o = b.typedArrayFromHeap(out);
      o.fill(0);
      const xv = b.typedArrayFromHeap(x);
      const ids = b.typedArrayFromHeap(segmentIds);
      for (let r = 0; r < rows; r++) {
        const id = ids[r]!;
        if (id < 0 || id >= numSegments) continue;
        const src = r * inner;
        const dst = id * inner;
        for (let j = 0; j < inner; j++) o[dst + j] += xv[src + j]!;
      }
      return out;
    },
  });
}
