/**
 * Kernels that tfjs-backend-wasm 4.22 lacks but the reference path needs, implemented in JavaScript over
 * the backend's heap views:
 * - `UnsortedSegmentSum`, which the gradient of `gather` (the embedding lookup) calls: missing.
 * - `OneHot`: the package's kernel ignores a float32 `dtype` and writes int32 bit patterns (1 reads as
 *   1.4e-45), which silently zeroes the cross-entropy; replaced.
 * - `Identity`: the package copies the tensor; tfjs clones every input a gradient needs through Identity,
 *   so training copied every saved activation (16% of a step). Tensors are immutable, so the output shares
 *   the input's memory (reference counted, as the package's own Reshape does and the cpu backend's Identity).
 * - `Slice`: the package reads the whole input into a new JavaScript array (`readSync`) before taking the
 *   slice; this one copies only the slice, from a view of the heap.
 */
import { tf } from './index.js';

/** What mcpc's kernels use of tfjs-backend-wasm's BackendWasm: outputs in its heap and views of them. */
export interface WasmBackendLike {
  incRef(dataId: object): void;
  makeOutput(shape: number[], dtype: string): tf.TensorInfo;
  /** A view of the tensor's bytes in the heap, typed by its dtype; invalid once the heap grows (any makeOutput). */
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
  tf.unregisterKernel('Identity', 'wasm');
  tf.registerKernel({
    kernelName: 'Identity',
    backendName: 'wasm',
    kernelFunc: ({ inputs, backend }) => {
      const { x } = inputs as { x: tf.TensorInfo };
      (backend as unknown as WasmBackendLike).incRef(x.dataId);
      return { dataId: x.dataId, shape: x.shape, dtype: x.dtype };
    },
  });
  const slice = tf.getKernel('Slice', 'wasm')!;
  tf.unregisterKernel('Slice', 'wasm');
  tf.registerKernel({
    kernelName: 'Slice',
    backendName: 'wasm',
    kernelFunc: (args) => {
      const { x } = args.inputs as { x: tf.TensorInfo };
      if (x.dtype === 'string') return slice.kernelFunc(args);
      const { begin, size } = args.attrs as unknown as { begin: number | number[]; size: number | number[] };
      const [b0, s0] = tf.slice_util.parseSliceParams(x as tf.TensorInfo as tf.Tensor, begin, size);
      const b = args.backend as unknown as WasmBackendLike;
      const out = b.makeOutput(s0, x.dtype);
      const xv = b.typedArrayFromHeap(x);
      const ov = b.typedArrayFromHeap(out);
      sliceInto(xv, x.shape, b0, s0, ov);
      return out;
    },
  });
  tf.unregisterKernel('OneHot', 'wasm');
  tf.registerKernel({
    kernelName: 'OneHot',
    backendName: 'wasm',
    kernelFunc: ({ inputs, backend, attrs }) => {
      const { indices } = inputs as { indices: tf.TensorInfo };
      const { depth, onValue, offValue, dtype } = attrs as unknown as { depth: number; onValue: number; offValue: number; dtype: string };
      const b = backend as unknown as WasmBackendLike;
      const out = b.makeOutput([...indices.shape, depth], dtype);
      const o = b.typedArrayFromHeap(out);
      o.fill(offValue);
      const ids = b.typedArrayFromHeap(indices);
      for (let i = 0; i < ids.length; i++) {
        const id = ids[i]!;
        if (id >= 0 && id < depth) o[i * depth + id] = onValue;
      }
      return out;
    },
  });
}

/** Copy the box `begin`..`begin + size` of a row-major tensor of `shape` into `out` (row-major). */
export function sliceInto(x: ArrayLike<number> & { subarray(a: number, b: number): ArrayLike<number> }, shape: number[], begin: number[], size: number[], out: { set(a: ArrayLike<number>, o: number): void }): void {
  const rank = shape.length;
  if (size.some((d) => d === 0)) return;
  if (rank === 0) {
    out.set(x.subarray(0, 1), 0);
    return;
  }
  const strides = new Array<number>(rank);
  strides[rank - 1] = 1;
  for (let d = rank - 2; d >= 0; d--) strides[d] = strides[d + 1]! * shape[d + 1]!;
  // Merge the trailing dimensions the slice takes whole into one contiguous run.
  let inner = rank - 1;
  let run = size[rank - 1]!;
  while (inner > 0 && begin[inner] === 0 && size[inner] === shape[inner]) {
    inner--;
    run *= size[inner]!;
  }
  const outer = size.slice(0, inner);
  const count = outer.reduce((p, d) => p * d, 1);
  const idx = new Array<number>(inner).fill(0);
  let o = 0;
  for (let n = 0; n < count; n++) {
    let off = begin[inner]! * strides[inner]!;
    for (let d = 0; d < inner; d++) off += (begin[d]! + idx[d]!) * strides[d]!;
    out.set(x.subarray(off, off + run), o);
    o += run;
    for (let d = inner - 1; d >= 0; d--) {
      if (++idx[d]! < outer[d]!) break;
      idx[d] = 0;
    }
  }
}
