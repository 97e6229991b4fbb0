/**
 * The wasm GEMM on worker threads (src/runtime/tfjs/gemm-threads.ts): products split into row blocks across
 * threads over one shared memory equal one thread's bit for bit, plain and with A transposed, with batches
 * and row counts that do not divide evenly; small products stay on the calling thread; MCPC_THREADS is checked.
 */
import { readFileSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { gemmThreadCount, threadedGemm, type GemmEngine } from '../../../src/runtime/tfjs/gemm-threads.js';

interface Single {
  memory: WebAssembly.Memory;
  gemm(...args: number[]): void;
  gemm_tn(...args: number[]): void;
}
const single = new WebAssembly.Instance(new WebAssembly.Module(readFileSync(new URL('../../../src/runtime/tfjs/gemm.wasm', import.meta.url))), {}).exports as unknown as Single;

/** Run one product of packed blocks (A [M,K] or [K,M], B [K,N]; M a multiple of 4, N of 8) on `memory`. */
function product(memory: WebAssembly.Memory, run: (tn: boolean, a: number, b: number, c: number) => void, tn: boolean, batch: number, M: number, N: number, K: number, seed: number): Float32Array {
  const need = 4 * batch * (M * K + K * N + M * N);
  if (memory.buffer.byteLength < need) memory.grow(Math.ceil((need - memory.buffer.byteLength) / 65536));
  const mem = new Float32Array(memory.buffer);
  let x = seed;
  const rnd = () => ((x = (Math.imul(x, 1103515245) + 12345) | 0) >>> 8) / 2 ** 23 - 1;
  for (let i = 0; i < batch * (M * K + K * N); i++) mem[i] = rnd();
  const c = batch * (M * K + K * N);
  mem.fill(NaN, c, c + batch * M * N);
  run(tn, 0, 4 * batch * M * K, 4 * c);
  return new Float32Array(memory.buffer).slice(c, c + batch * M * N);
}

describe('wasm GEMM on threads', () => {
  const saved = process.env.MCPC_THREADS;
  afterEach(() => {
    if (saved === undefined) delete process.env.MCPC_THREADS;
    else process.env.MCPC_THREADS = saved;
  });

  it('equals one thread bit for bit, row blocks split unevenly, A plain and transposed, batches', () => {
    for (const threads of [2, 3]) {
      const e = threadedGemm(threads) as GemmEngine;
      expect(e, 'shared memory and worker threads are available in Node').not.toBeNull();
      expect(e.threads).toBe(threads);
      for (const [batch, M, N, K] of [
        [1, 2052, 24, 520],
        [3, 516, 40, 700],
        [1, 4, 64, 70000],
        [2, 404, 8, 1500],
      ] as const)
        for (const tn of [false, true]) {
          const want = product(single.memory, (t, a, b, c) => (t ? single.gemm_tn : single.gemm)(a, b, c, batch, M, N, K), tn, batch, M, N, K, 5);
          const got = product(e.memory, (t, a, b, c) => e.run(t, a, b, c, batch, M, N, K), tn, batch, M, N, K, 5);
          expect(Buffer.from(got.buffer).equals(Buffer.from(want.buffer)), `${threads} threads ${batch}x${M}x${N}x${K} tn=${tn}`).toBe(true);
        }
      expect(e.workerShares, 'the workers took chunks of the products').toBeGreaterThan(0);
    }
  });

  it('runs again and again without losing a hand-off', () => {
    const e = threadedGemm(2) as GemmEngine;
    const small = product(e.memory, (t, a, b, c) => e.run(t, a, b, c, 1, 64, 16, 64), false, 1, 64, 16, 64, 3);
    expect(small.every(Number.isFinite)).toBe(true);
    expect(e.workerShares, 'a small product stays on the calling thread').toBe(0);
    const want = product(single.memory, (t, a, b, c) => single.gemm(a, b, c, 1, 1024, 32, 256), false, 1, 1024, 32, 256, 9);
    for (let r = 0; r < 200; r++) {
      const got = product(e.memory, (t, a, b, c) => e.run(t, a, b, c, 1, 1024, 32, 256), false, 1, 1024, 32, 256, 9);
      if (!Buffer.from(got.buffer).equals(Buffer.from(want.buffer))) throw new Error(`round ${r} differs`);
    }
    expect(e.workerShares).toBeGreaterThan(0);
  });

  it('MCPC_THREADS: the count asked for, 1 means no engine, anything else is an error', () => {
    process.env.MCPC_THREADS = '3';
    expect(gemmThreadCount()).toBe(3);
    expect(threadedGemm(1)).toBeNull();
    process.env.MCPC_THREADS = 'two';
    expect(() => gemmThreadCount()).toThrow(/MCPC_THREADS must be a positive integer/);
    process.env.MCPC_THREADS = '0';
    expect(() => gemmThreadCount()).toThrow(/positive integer/);
    delete process.env.MCPC_THREADS;
    expect(gemmThreadCount()).toBeGreaterThanOrEqual(1);
  });
});
