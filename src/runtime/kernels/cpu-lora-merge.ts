/**
 * `lora_merge` (fold-trainable-lora) for the CPU kernel table as one tfjs kernel each way: W' = W + s·(B·A)
 * (`McpcLoraMerge`: one product in mcpc's WebAssembly GEMM, then the scale and the sum in one pass) and the
 * gradient of A or B (`McpcLoraMergeGrad`: g·s once, then Bᵀ·(s·g) or (s·g)·Aᵀ), only for what autodiff asks;
 * W's gradient is the incoming one itself (shared). The reference's composition (BatchMatMul, Multiply, Add and
 * their gradients) is the same arithmetic in the same order (the product, then the scale, then the sum; the
 * gradient scaled before its products) in 3 tfjs kernels forward and 5 backward per site and micro-batch.
 */
import { matmulInto } from '../tfjs/gemm.js';
import { addScaledOnHeap, scaleOnHeap } from '../tfjs/gemm-heap.js';
import { heapFor } from '../tfjs/moe.js';
import { heapViews } from '../tfjs/wasm-extra.js';
import { tf, type Tensor } from '../tfjs/index.js';
import { share } from '../tfjs/share.js';
import { registerCpuKernel } from './cpu-ops.js';

/* eslint-disable @typescript-eslint/no-explicit-any -- tfjs kernel plumbing. */

const f = Math.fround;

/**
 * dst = s·src: in WebAssembly SIMD on the wasm heap (../tfjs/gemm-ld.wat `scale`; the JavaScript loop cost ~0.7 ms
 * of the -O1 align step's 24 calls), this loop elsewhere. The same f32 products either way.
 */
function scaleInto(dst: Float32Array, src: Float32Array, s: number): void {
  if (scaleOnHeap(dst, src, s)) return;
  for (let i = 0; i < dst.length; i++) dst[i] = src[i]! * s;
}

/** y = W + s·y, each step rounded to f32 (the reference's Multiply, then Add); SIMD on the heap as scaleInto. */
function addScaledInto(y: Float32Array, w: Float32Array, s: number): void {
  if (addScaledOnHeap(y, w, s)) return;
  for (let i = 0; i < y.length; i++) y[i] = f(w[i]! + f(y[i]! * s));
}

function register(): void {
  registerCpuKernel(
    'McpcLoraMerge',
    {
      shapes: (ins) => [ins[0]!.shape as number[]],
      writesAll: true,
      run: ([W, A, B], [y], infos, attrs) => {
        const [O, I] = infos[0]!.shape as [number, number];
        const R = infos[1]!.shape[0]!;
        const s = f(attrs.scale as number);
        // The product may malloc heap scratch (and so detach the views): y and W are taken again after it.
        const again = heapViews([y!, W as Float32Array]);
        matmulInto(B as Float32Array, A as Float32Array, y!, { batchA: 1, batchB: 1, M: O, N: I, K: R, transposeA: false, transposeB: false });
        const [yv, wv] = again();
        addScaledInto(yv, wv, s);
      },
    },
    {
      inputsToSave: ['1', '2'],
      gradFunc: ((dy: Tensor, saved: Tensor[], attrs: any) => {
        const grad = (which: 'A' | 'B') => tf.engine().runKernel('McpcLoraMergeGrad', [dy, saved[0]!, saved[1]!] as unknown as tf.NamedTensorMap, { scale: attrs.scale, which } as unknown as tf.NamedAttrMap) as Tensor;
        return { 0: () => share(dy), 1: () => grad('A'), 2: () => grad('B') };
      }) as any,
    },
  );
  registerCpuKernel('McpcLoraMergeGrad', {
    shapes: (ins, attrs) => [(attrs.which === 'A' ? ins[1]! : ins[2]!).shape as number[]],
    writesAll: true,
    run: ([g, A, B], [d], infos, attrs) => {
      const [O, I] = infos[0]!.shape as [number, number];
      const R = infos[1]!.shape[0]!;
      const s = f(attrs.scale as number);
      // s·g in scratch on the wasm heap where the operands lie there, so that the product runs in place
      // (../tfjs/gemm-heap.ts); in a JavaScript array otherwise. The malloc may grow the heap (and so detach the
      // views): they are taken again after it.
      const hp = heapFor([g, A, B, d!] as Float32Array[]);
      const again = heapViews([g, A, B, d!] as Float32Array[]);
      const at = hp ? hp.malloc(4 * O * I) : 0;
      const [gv, av, bv, out] = again();
      const gs = hp && at ? new Float32Array(hp.memory.buffer, at, O * I) : new Float32Array(O * I);
      scaleInto(gs, gv!, s);
      if (attrs.which === 'A') matmulInto(bv!, gs, out!, { batchA: 1, batchB: 1, M: R, N: I, K: O, transposeA: true, transposeB: false });
      else matmulInto(gs, av!, out!, { batchA: 1, batchB: 1, M: O, N: R, K: I, transposeA: false, transposeB: true });
      if (hp && at) hp.free(at);
    },
  });
}

/** W + s·B·A (checked by reference.ts `loraMergeShapesFit`), differentiable in W, A and B. */
export function loraMergeCpu(w: Tensor, a: Tensor, b: Tensor, scale: number): Tensor {
  register();
  return tf.engine().runKernel('McpcLoraMerge', [w, a, b] as unknown as tf.NamedTensorMap, { scale } as unknown as tf.NamedAttrMap) as Tensor;
}
