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
 *   slice; this one copies only the slice, from a view of the heap. `SplitV` likewise (the package's calls
 *   its own Slice, not the registered kernel).
 */
import { readFileSync } from 'node:fs';
import { tf } from './index.js';

/** What mcpc's kernels use of tfjs-backend-wasm's BackendWasm: outputs in its heap and views of them. */
export interface WasmBackendLike {
  incRef(dataId: object): void;
  makeOutput(shape: number[], dtype: string): tf.TensorInfo;
  /** A view of the tensor's bytes in the heap, typed by its dtype; invalid once the heap grows (any makeOutput). */
  typedArrayFromHeap(t: tf.TensorInfo): Float32Array | Int32Array | Uint8Array;
}

/**
 * The heap of tfjs-backend-wasm when that backend has been initialised and its memory is not shared, else
 * null: the emscripten module (`backend.wasm`) keeps its exports, the memory included, in `asm`. Read from the
 * engine's registry, which (unlike tf.findBackend) initialises nothing. Modules of ours that import this
 * memory run in place on the kernels' inputs and outputs (fused-wasm.ts, adamw.ts).
 */
export function wasmHeap(): WebAssembly.Memory | null {
  const b = (tf.engine() as unknown as { registry: Record<string, { wasm?: { asm?: { memory?: unknown } } } | undefined> }).registry.wasm;
  const m = b?.wasm?.asm?.memory;
  // A shared memory (the threaded build) would need a shared import: such arrays take the copy.
  return m instanceof WebAssembly.Memory && !(typeof SharedArrayBuffer !== 'undefined' && m.buffer instanceof SharedArrayBuffer) ? m : null;
}

/**
 * On the wasm backend, a view of a float32 tensor's data where it lies in the heap (no copy; read it before the
 * heap can grow: before any tfjs op or malloc), else null (read with data()). Reading back with data() there
 * copies into a fresh array, and fresh arrays are dear on this kind of machine (page faults and the collector:
 * ~2 us a KB for arrays of tens of KB).
 */
export function heapView(t: tf.Tensor): Float32Array | null {
  if (t.dtype !== 'float32' || tf.getBackend() !== 'wasm' || !wasmHeap()) return null;
  return (tf.backend() as unknown as WasmBackendLike).typedArrayFromHeap(t) as Float32Array;
}

const scratch = new Map<string, Float32Array | Int32Array>();
/**
 * An array of n elements kept per `name` and reused, grown as needed (fresh arrays are dear here, see heapView):
 * for a kernel's own use while it runs. Its contents are stale: fill what is read.
 */
export function scratchArray<T extends Float32Array | Int32Array>(name: string, make: new (n: number) => T, n: number): T {
  let a = scratch.get(name) as T | undefined;
  if (!a || a.length < n || a.constructor !== make) scratch.set(name, (a = new make(Math.max(n, 2 * (a?.length ?? 0)))));
  return a.subarray(0, n) as T;
}

/**
 * An array of n elements to fill and hand to tf.tensor: on the wasm backend, whose write copies the values into
 * its heap, scratchArray's (reused); elsewhere a new one (the cpu and webgpu backends keep the array they are
 * given). Its contents are stale: fill every element.
 */
export function tensorScratch<T extends Float32Array | Int32Array>(name: string, make: new (n: number) => T, n: number): T {
  return tf.getBackend() === 'wasm' ? scratchArray(name, make, n) : new make(n);
}

/**
 * The exports of a module of ours (a .wasm beside this file that imports its memory as `e.m`), instantiated over
 * tfjs-backend-wasm's heap: `heapExports<T>('gemm-ld.wasm')` returns a lookup of those exports for a memory
 * (`wasmHeap()`'s), compiled once and instantiated once per memory (the memory object survives the heap's
 * growth). `heapExport(file, name)`: one export of it.
 */
export function heapExports<T>(file: string): (heap: WebAssembly.Memory) => T {
  let mod: WebAssembly.Module | undefined;
  const instances = new WeakMap<WebAssembly.Memory, T>();
  return (heap) => {
    let ex = instances.get(heap);
    if (!ex) {
      mod ??= new WebAssembly.Module(readFileSync(new URL(`./${file}`, import.meta.url)));
      ex = new WebAssembly.Instance(mod, { e: { m: heap } }).exports as T;
      instances.set(heap, ex);
    }
    return ex;
  };
}

export function heapExport<F>(file: string, name: string): (heap: WebAssembly.Memory) => F {
  const exportsFor = heapExports<Record<string, F>>(file);
  return (heap) => exportsFor(heap)[name]!;
}

type HeapView = Float32Array | Int32Array | Uint8Array;

/**
 * Views of tfjs-backend-wasm's heap that outlive a malloc: call before it (this reads their offsets), then the
 * returned function after it for the same arrays over the heap as it is then. Growing the heap detaches every
 * view of its old buffer, whose byteOffset then reads 0 and whose elements read undefined. Arrays off the heap
 * come back as they are.
 */
export function heapViews<T extends HeapView[]>(arrays: [...T]): () => T {
  const heap = wasmHeap();
  const spans = arrays.map((a) => ({ a, off: a.byteOffset, len: a.length, on: !!heap && a.buffer === heap.buffer }));
  return () =>
    spans.map(({ a, off, len, on }) => (on && a.buffer !== heap!.buffer ? new (a.constructor as new (b: ArrayBufferLike, o: number, n: number) => HeapView)(heap!.buffer, off, len) : a)) as T;
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
  // The package's SplitV calls its own Slice (the one above replaces only the registered kernel), so every
  // part read the whole input into JavaScript first: 7 ms per split of a [2048, 344] product.
  const splitV = tf.getKernel('SplitV', 'wasm');
  if (splitV) {
    tf.unregisterKernel('SplitV', 'wasm');
    tf.registerKernel({
      kernelName: 'SplitV',
      backendName: 'wasm',
      kernelFunc: (args) => {
        const { x } = args.inputs as { x: tf.TensorInfo };
        if (x.dtype === 'string') return splitV.kernelFunc(args);
        const { numOrSizeSplits, axis } = args.attrs as unknown as { numOrSizeSplits: number | number[]; axis: number };
        const $axis = tf.util.parseAxisParam(axis, x.shape)[0]!;
        const sizes = tf.backend_util.prepareSplitSize(x as tf.TensorInfo as tf.Tensor, numOrSizeSplits, $axis);
        const b = args.backend as unknown as WasmBackendLike;
        const begin = x.shape.map(() => 0);
        const outs = sizes.map((s) => {
          const size = [...x.shape];
          size[$axis] = s;
          const out = b.makeOutput(size, x.dtype);
          // Views after the allocation: it may grow (and so move) the heap.
          sliceInto(b.typedArrayFromHeap(x), x.shape, begin, size, b.typedArrayFromHeap(out));
          begin[$axis]! += s;
          return out;
        });
        return outs;
      },
    });
  }
  // The package's Concat copies each input's run of each outer row with subarray + set: an allocation per run,
  // 0.9 ms to join the [2048, 176 | 32 | 128 | 8] gradients of a concat_linear. Short runs by a loop here.
  const concat = tf.getKernel('Concat', 'wasm');
  if (concat) {
    tf.unregisterKernel('Concat', 'wasm');
    tf.registerKernel({
      kernelName: 'Concat',
      backendName: 'wasm',
      kernelFunc: (args) => {
        const inputs = args.inputs as unknown as tf.TensorInfo[];
        if (!inputs.length || inputs[0]!.dtype === 'string') return concat.kernelFunc(args);
        const axis = tf.util.parseAxisParam((args.attrs as unknown as { axis: number }).axis, inputs[0]!.shape)[0]!;
        const parts = inputs.filter((t) => tf.util.sizeFromShape(t.shape) > 0);
        if (parts.length < 2) return concat.kernelFunc(args);
        tf.backend_util.assertParamsConsistent(inputs.map((t) => t.shape), axis);
        const shape = tf.backend_util.computeOutShape(inputs.map((t) => t.shape), axis);
        const b = args.backend as unknown as WasmBackendLike;
        const out = b.makeOutput(shape, inputs[0]!.dtype);
        const o = b.typedArrayFromHeap(out);
        const outer = tf.util.sizeFromShape(parts[0]!.shape.slice(0, axis));
        const runs = parts.map((t) => tf.util.sizeFromShape(t.shape.slice(axis)));
        const width = runs.reduce((a, r) => a + r, 0);
        let col = 0;
        parts.forEach((t, i) => {
          const v = b.typedArrayFromHeap(t);
          const run = runs[i]!;
          for (let r = 0; r < outer; r++) {
            const src = r * run;
            const dst = r * width + col;
            if (run < 64) for (let j = 0; j < run; j++) o[dst + j] = v[src + j]!;
            else o.set(v.subarray(src, src + run), dst);
          }
          col += run;
        });
        return out;
      },
    });
  }
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
export function sliceInto(x: ArrayLike<number> & { subarray(a: number, b: number): ArrayLike<number> }, shape: number[], begin: number[], size: number[], out: { set(a: ArrayLike<number>, o: number): void; [i: number]: number }): void {
  const rank = shape.length;
  if (size.some((d) => d === 0)) return;
  if (rank === 0) {
    out.set(x.subarray(0, 1), 0);
    return;
  }
  const strides = new Array<number>(rank);
  strides[rank - 1] = 1;
  for (let d = rank - 2; d >= 0; d--) strides[d] = strides[d + 1]! * shape[d + 1]!;
  // Merge the trailing dimensions the slice takes whole into one contiguous run (a short run is copied by a
  // loop: subarray + set costs an allocation per run, most of the time of a narrow column slice).
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
    if (run < 64) for (let j = 0; j < run; j++) out[o + j] = x[off + j]!;
    else out.set(x.subarray(off, off + run), o);
    o += run;
    for (let d = inner - 1; d >= 0; d--) {
      if (++idx[d]! < outer[d]!) break;
      idx[d] = 0;
    }
  }
}
