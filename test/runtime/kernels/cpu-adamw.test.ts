/**
 * The CPU table's fused optimizer step (src/runtime/kernels/cpu-ops.ts McpcAdamW, what the executor runs when
 * the plan fused the optimizer; gradient and moments flat, parameters tensors of their own): every tensor's new
 * weights and moments equal optimizer.ts `update` per tensor (after the clipping multiply) bit for bit, on the
 * cpu and wasm backends (on wasm both the WebAssembly SIMD loop of src/runtime/tfjs/adamw.wat and, with
 * MCPC_ADAMW_WASM=0, the JavaScript one), with and without weight decay and clipping, at the first step and a
 * later one; sizes not multiples of four take adamw.wat's scalar tail.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { adamwFlatCpu } from '../../../src/runtime/kernels/cpu-ops.js';
import { flat, unflat, update } from '../../../src/runtime/optimizer.js';
import { adamwWasmCalls } from '../../../src/runtime/tfjs/adamw.js';
import { initBackend, tf, type Tensor } from '../../../src/runtime/tfjs/index.js';

function rnd(seed: number) {
  let x = seed;
  return () => ((x = (Math.imul(x, 1103515245) + 12345) | 0) >>> 8) / 2 ** 23 - 1;
}

afterAll(() => {
  delete process.env.MCPC_ADAMW_WASM;
  return initBackend('cpu');
});

describe('McpcAdamW', () => {
  for (const [backend, js] of [['cpu', true], ['wasm', false], ['wasm', true]] as const)
    it(`equals the per-tensor AdamW update bit for bit (${backend}${backend === 'wasm' ? (js ? ', JavaScript loop' : ', WebAssembly SIMD') : ''})`, async () => {
      await initBackend(backend);
      if (js) process.env.MCPC_ADAMW_WASM = '0';
      else delete process.env.MCPC_ADAMW_WASM;
      const calls = adamwWasmCalls.count;
      const r = rnd(11);
      const shapes = [[7, 5], [16], [3, 4, 2], [1, 1], [64, 33]];
      const opt = { kind: 'adamw' as const, beta1: 0.9, beta2: 0.999, eps: 1e-8 };
      for (const [t, lr, wd, clip] of [
        [1, 2e-4, 0, 1],
        [7, 1e-3, 0.01, 0.37],
        [250, 3e-5, 0.1, 1],
      ] as const) {
        const mk = (scale: number, pos = false) => shapes.map((s) => tf.tensor(Float32Array.from({ length: s.reduce((a, b) => a * b, 1) }, () => (pos ? Math.abs(r()) : r()) * scale), s));
        const ps = mk(1);
        const gs = mk(0.01);
        const ms = mk(0.001);
        const vs = mk(1e-5, true);
        const res = adamwFlatCpu(ps, flat(gs), flat(ms), flat(vs), { lr, weightDecay: wd, beta1: opt.beta1, beta2: opt.beta2, eps: opt.eps, t, gradScale: clip });
        const got = { p: res.p, m: unflat(res.m, shapes), v: unflat(res.v, shapes) };
        ps.forEach((p, i) => {
          const g = clip === 1 ? gs[i]! : tf.mul(gs[i]!, clip);
          const want = update(opt, p, g, { m: ms[i]!, v: vs[i]! }, lr, wd, t);
          // The bytes of the values (a slice of a flat tensor may be a view into its buffer).
          const bytes = (x: Tensor) => {
            const d = x.dataSync() as Float32Array;
            return Buffer.from(d.buffer, d.byteOffset, d.byteLength);
          };
          const same = (a: Tensor, b: Tensor, what: string) => expect(bytes(a).equals(bytes(b)), `${what} ${i} t=${t}`).toBe(true);
          same(got.p[i]!, want.p, 'p');
          same(got.m[i]!, want.s.m, 'm');
          same(got.v[i]!, want.s.v!, 'v');
        });
      }
      expect(adamwWasmCalls.count - calls).toBe(backend === 'wasm' && !js ? 3 : 0);
    });
});
