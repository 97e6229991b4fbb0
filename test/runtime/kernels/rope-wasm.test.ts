/**
 * The CPU rotary embedding (McpcRope / McpcRopeInverse) in WebAssembly SIMD on the wasm backend's heap
 * (src/runtime/tfjs/rope.wat): forward and gradient against the rotation written out in f32, and against the
 * JavaScript loop (MCPC_ROPE_WASM=0), for head dims whose half is not a multiple of 4 (the scalar tail).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ropeOp } from '../../../src/runtime/kernels/cpu-ops.js';
import { ropeWasmCalls } from '../../../src/runtime/tfjs/rope.js';
import { initBackend, tf, type Tensor } from '../../../src/runtime/tfjs/index.js';
import { lcg } from '../executor/helpers.js';

const rnd = lcg(4242);
const randn = (n: number) => Float32Array.from({ length: n }, () => rnd() * 2 - 1);

/** The rotation in f32, each product and sum rounded (sg −1: its transpose). */
function expected(x: Float32Array, cos: Float32Array, sin: Float32Array, T: number, H: number, d: number, sg: number): Float32Array {
  const f = Math.fround;
  const half = d / 2;
  const y = new Float32Array(x.length);
  for (let t = 0; t < T; t++)
    for (let h = 0; h < H; h++)
      for (let i = 0; i < half; i++) {
        const o = (t * H + h) * d;
        const c = cos[t * half + i]!;
        const s = sg * sin[t * half + i]!;
        const x1 = x[o + i]!;
        const x2 = x[o + half + i]!;
        y[o + i] = f(f(x1 * c) - f(x2 * s));
        y[o + half + i] = f(f(x2 * c) + f(x1 * s));
      }
  return y;
}

describe('rope in WebAssembly SIMD (wasm backend)', () => {
  beforeAll(() => initBackend('wasm'));
  afterAll(() => initBackend('cpu'));

  it('forward and gradient match the f32 rotation and the JavaScript loop: d 2/4/6/8/10/16/18, T 1/7/33', () => {
    for (const [T, H, d] of [
      [7, 4, 16],
      [1, 1, 2],
      [33, 3, 6],
      [7, 2, 10],
      [5, 1, 18],
      [4, 2, 8],
      [3, 4, 4],
    ] as const) {
      const xa = randn(T * H * d);
      const ca = randn((T * d) / 2);
      const sa = randn((T * d) / 2);
      const ga = randn(T * H * d);
      const run = () =>
        tf.tidy(() => {
          const [x, cos, sin, g] = [tf.tensor2d(xa, [T, H * d]), tf.tensor2d(ca, [T, d / 2]), tf.tensor2d(sa, [T, d / 2]), tf.tensor2d(ga, [T, H * d])];
          const y = Float32Array.from(ropeOp(x, cos, sin, H, d).dataSync());
          const dx = Float32Array.from(tf.grad((z: Tensor) => tf.sum(tf.mul(ropeOp(z, cos, sin, H, d), g)) as tf.Scalar)(x).dataSync());
          return { y, dx };
        });
      const calls = ropeWasmCalls.count;
      const w = run();
      expect(ropeWasmCalls.count).toBe(calls + 3);
      expect(w.y).toEqual(expected(xa, ca, sa, T, H, d, 1));
      expect(w.dx).toEqual(expected(ga, ca, sa, T, H, d, -1));
      process.env.MCPC_ROPE_WASM = '0';
      try {
        const js = run();
        expect(ropeWasmCalls.count).toBe(calls + 3);
        for (const [a, b] of [
          [w.y, js.y],
          [w.dx, js.dx],
        ] as const)
          for (let i = 0; i < a.length; i++) expect(Math.abs(a[i]! - b[i]!)).toBeLessThanOrEqual(1e-6 * (1 + Math.abs(b[i]!)));
      } finally {
        delete process.env.MCPC_ROPE_WASM;
      }
    }
  });
});
