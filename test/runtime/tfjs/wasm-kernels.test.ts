/**
 * The kernels mcpc gives the tfjs `wasm` backend (src/runtime/tfjs/gemm.ts, wasm-extra.ts) against plain
 * definitions: the SIMD GEMM on random shapes (sizes off the 4 x 8 tile, transposes, batch broadcast,
 * K = 1), the slice copier on random boxes, and the same ops through tfjs on `wasm` vs `cpu`.
 */
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { matmulInto, setGemmBlocking } from '../../../src/runtime/tfjs/gemm.js';
import { heapGemmCalls } from '../../../src/runtime/tfjs/gemm-heap.js';
import { initBackend, tf } from '../../../src/runtime/tfjs/index.js';
import { sliceInto } from '../../../src/runtime/tfjs/wasm-extra.js';

const root = fileURLToPath(new URL('../../../', import.meta.url));

function naive(a: Float32Array, b: Float32Array, s: { batchA: number; batchB: number; M: number; N: number; K: number; transposeA: boolean; transposeB: boolean }): Float64Array {
  const batch = Math.max(s.batchA, s.batchB);
  const out = new Float64Array(batch * s.M * s.N);
  for (let t = 0; t < batch; t++) {
    const ao = (s.batchA === 1 ? 0 : t) * s.M * s.K;
    const bo = (s.batchB === 1 ? 0 : t) * s.K * s.N;
    for (let i = 0; i < s.M; i++)
      for (let j = 0; j < s.N; j++) {
        let acc = 0;
        for (let k = 0; k < s.K; k++) acc += a[ao + (s.transposeA ? k * s.M + i : i * s.K + k)]! * b[bo + (s.transposeB ? j * s.K + k : k * s.N + j)]!;
        out[t * s.M * s.N + i * s.N + j] = acc;
      }
  }
  return out;
}

describe('SIMD GEMM (gemm.wat)', () => {
  it('equals the naive product on random shapes, transposes and batch broadcasts', () => {
    fc.assert(
      fc.property(
        fc.record({ batch: fc.integer({ min: 1, max: 3 }), bcast: fc.constantFrom('none', 'a', 'b'), M: fc.integer({ min: 1, max: 19 }), N: fc.integer({ min: 1, max: 21 }), K: fc.integer({ min: 1, max: 17 }), transposeA: fc.boolean(), transposeB: fc.boolean(), seed: fc.integer() }),
        (r) => {
          const s = { batchA: r.bcast === 'a' ? 1 : r.batch, batchB: r.bcast === 'b' ? 1 : r.batch, M: r.M, N: r.N, K: r.K, transposeA: r.transposeA, transposeB: r.transposeB };
          let x = r.seed | 0;
          const rnd = () => ((x = (Math.imul(x, 1103515245) + 12345) | 0) >>> 8) / 2 ** 23 - 1;
          const a = Float32Array.from({ length: s.batchA * r.M * r.K }, rnd);
          const b = Float32Array.from({ length: s.batchB * r.K * r.N }, rnd);
          const out = new Float32Array(r.batch * r.M * r.N).fill(NaN);
          matmulInto(a, b, out, s);
          const want = naive(a, b, s);
          for (let i = 0; i < out.length; i++) expect(Math.abs(out[i]! - want[i]!)).toBeLessThan(1e-5 * (1 + r.K));
        },
      ),
      { numRuns: 200 },
    );
  });

  it('equals the naive product where the transposed packing spans several 32x32 blocks', () => {
    let x = 7;
    const rnd = () => ((x = (Math.imul(x, 1103515245) + 12345) | 0) >>> 8) / 2 ** 23 - 1;
    for (const [M, N, K] of [
      [70, 45, 100],
      [33, 97, 64],
      [1, 130, 65],
    ] as const) {
      for (const transposeA of [false, true]) {
        for (const transposeB of [false, true]) {
          const s = { batchA: 2, batchB: 1, M, N, K, transposeA, transposeB };
          const a = Float32Array.from({ length: 2 * M * K }, rnd);
          const b = Float32Array.from({ length: K * N }, rnd);
          const out = new Float32Array(2 * M * N).fill(NaN);
          matmulInto(a, b, out, s);
          const want = naive(a, b, s);
          let worst = 0;
          for (let i = 0; i < out.length; i++) worst = Math.max(worst, Math.abs(out[i]! - want[i]!));
          expect(worst, `${M}x${N}x${K} tA=${transposeA} tB=${transposeB}`).toBeLessThan(1e-4 * K);
        }
      }
    }
  });

  it('in blocks of B (large products: column blocks, K slices added into C) equals the naive product', () => {
    const prev = setGemmBlocking({ blockFrom: 0, blockBytes: 4 * 8 * 24 });
    try {
      fc.assert(
        fc.property(
          fc.record({ M: fc.integer({ min: 1, max: 19 }), N: fc.integer({ min: 1, max: 41 }), K: fc.integer({ min: 1, max: 70 }), transposeA: fc.boolean(), transposeB: fc.boolean(), seed: fc.integer() }),
          (r) => {
            const s = { batchA: 1, batchB: 1, M: r.M, N: r.N, K: r.K, transposeA: r.transposeA, transposeB: r.transposeB };
            let x = r.seed | 0;
            const rnd = () => ((x = (Math.imul(x, 1103515245) + 12345) | 0) >>> 8) / 2 ** 23 - 1;
            const a = Float32Array.from({ length: r.M * r.K }, rnd);
            const b = Float32Array.from({ length: r.K * r.N }, rnd);
            const out = new Float32Array(r.M * r.N).fill(NaN);
            matmulInto(a, b, out, s);
            const want = naive(a, b, s);
            for (let i = 0; i < out.length; i++) expect(Math.abs(out[i]! - want[i]!)).toBeLessThan(1e-5 * (1 + r.K));
          },
        ),
        { numRuns: 200 },
      );
      // Blocks of B smaller than one column tile and one K step still cover everything.
      setGemmBlocking({ blockFrom: 0, blockBytes: 4 });
      const a = Float32Array.from({ length: 5 * 9 }, (_, i) => (i % 7) - 3);
      const b = Float32Array.from({ length: 9 * 11 }, (_, i) => (i % 5) - 2);
      const out = new Float32Array(5 * 11);
      const s = { batchA: 1, batchB: 1, M: 5, N: 11, K: 9, transposeA: false, transposeB: false };
      matmulInto(a, b, out, s);
      expect(Array.from(out)).toEqual(Array.from(naive(a, b, s)));
    } finally {
      setGemmBlocking(prev);
    }
  });

  it('the committed gemm.wasm is assembled from gemm.wat (npx tsx scripts/build-wasm.ts)', () => {
    expect(() => execFileSync(process.execPath, ['--import', 'tsx', 'scripts/build-wasm.ts', '--check'], { cwd: root, stdio: 'pipe' })).not.toThrow();
  });
});

describe('slice copier', () => {
  it('copies exactly the box of random shapes', () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 1, max: 5 }), { minLength: 1, maxLength: 4 }).chain((shape) => fc.tuple(fc.constant(shape), fc.tuple(...shape.map((d) => fc.integer({ min: 0, max: d - 1 }).chain((b) => fc.tuple(fc.constant(b), fc.integer({ min: 0, max: d - b })))))) ), ([shape, box]) => {
        const n = shape.reduce((p, d) => p * d, 1);
        const x = Float32Array.from({ length: n }, (_, i) => i);
        const begin = box.map((b) => b[0]);
        const size = box.map((b) => b[1]);
        const out = new Float32Array(size.reduce((p, d) => p * d, 1));
        sliceInto(x, shape, begin, size, out);
        const want = tf.tidy(() => tf.slice(tf.tensor(x, shape), begin, size).dataSync());
        expect(Array.from(out)).toEqual(Array.from(want));
      }),
      { numRuns: 300 },
    );
  });
});

describe('through tfjs: wasm equals cpu', () => {
  afterAll(() => initBackend('cpu'));
  it('matMul (all transposes, batched, broadcast), slice, clone, oneHot, split and concat', async () => {
    const run = () =>
      tf.tidy(() => {
        const a = tf.tensor3d(Float32Array.from({ length: 2 * 5 * 7 }, (_, i) => Math.sin(i)), [2, 5, 7]);
        const b = tf.tensor3d(Float32Array.from({ length: 2 * 7 * 3 }, (_, i) => Math.cos(i)), [2, 7, 3]);
        const w = tf.tensor2d(Float32Array.from({ length: 9 * 7 }, (_, i) => Math.sin(3 * i)), [9, 7]);
        const x = tf.reshape(a, [10, 7]);
        return [
          tf.matMul(a, b),
          tf.matMul(x, w, false, true),
          tf.matMul(w, x, false, true),
          tf.matMul(x, x, true, false),
          tf.matMul(a, tf.slice(b, [0, 0, 0], [1, 7, 3])),
          tf.slice(a, [1, 1, 2], [1, 3, 4]),
          tf.clone(a),
          tf.oneHot(tf.tensor1d([2, 0, 1], 'int32'), 4, 1, 0, 'float32' as never),
          // SplitV and Concat (replaced in wasm-extra.ts): narrow and wide (>= 64) runs, inner and outer axes.
          ...tf.split(x, [2, 4, 1], 1),
          ...tf.split(a, [1, 4], 1),
          tf.concat([x, tf.reshape(tf.tile(x, [1, 10]), [10, 70]), tf.slice(x, [0, 0], [10, 1])], 1),
          tf.concat([w, x], 0),
          tf.concat([a, tf.slice(a, [0, 0, 0], [2, 2, 7])], 1),
        ].map((t) => Array.from(t.dataSync()));
      });
    await initBackend('cpu');
    const want = run();
    await initBackend('wasm');
    const got = run();
    expect(got.map((g) => g.length)).toEqual(want.map((g) => g.length));
    for (let i = 0; i < want.length; i++) for (let j = 0; j < want[i]!.length; j++) expect(Math.abs(got[i]![j]! - want[i]![j]!)).toBeLessThan(1e-5);
  });

  it('BatchMatMul in place on the heap (M a multiple of 4, N of 8): the naive product, K past a panel, every transpose and broadcast', async () => {
    await initBackend('wasm');
    const before = heapGemmCalls.matmul;
    let ran = 0;
    fc.assert(
      fc.property(
        fc.record({ batch: fc.integer({ min: 1, max: 3 }), bcast: fc.constantFrom('none', 'a', 'b'), M: fc.integer({ min: 1, max: 6 }), N: fc.integer({ min: 1, max: 4 }), K: fc.oneof(fc.integer({ min: 1, max: 20 }), fc.integer({ min: 120, max: 300 })), transposeA: fc.boolean(), transposeB: fc.boolean(), seed: fc.integer() }),
        (r) => {
          const s = { batchA: r.bcast === 'a' ? 1 : r.batch, batchB: r.bcast === 'b' ? 1 : r.batch, M: 4 * r.M, N: 8 * r.N, K: r.K, transposeA: r.transposeA, transposeB: r.transposeB };
          let x = r.seed | 0;
          const rnd = () => ((x = (Math.imul(x, 1103515245) + 12345) | 0) >>> 8) / 2 ** 23 - 1;
          const a = Float32Array.from({ length: s.batchA * s.M * s.K }, rnd);
          const b = Float32Array.from({ length: s.batchB * s.K * s.N }, rnd);
          const got = tf.tidy(() => {
            const A = tf.tensor3d(a, s.transposeA ? [s.batchA, s.K, s.M] : [s.batchA, s.M, s.K]);
            const B = tf.tensor3d(b, s.transposeB ? [s.batchB, s.N, s.K] : [s.batchB, s.K, s.N]);
            return tf.matMul(A, B, s.transposeA, s.transposeB).dataSync();
          });
          ran++;
          const want = naive(a, b, s);
          expect(got.length).toBe(want.length);
          for (let i = 0; i < want.length; i++) expect(Math.abs(got[i]! - want[i]!)).toBeLessThan(1e-5 * (1 + s.K));
        },
      ),
      { numRuns: 60 },
    );
    expect(heapGemmCalls.matmul - before).toBe(ran);
  });
});
