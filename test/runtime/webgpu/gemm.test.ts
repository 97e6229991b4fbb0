/**
 * The WGSL f32 GEMM (src/runtime/webgpu/gemm.ts) against tf.matMul on the cpu backend: every transpose
 * combination, the fused bias, forward and gradients, on shapes that are not multiples of any tile (one
 * row, one column, primes), every candidate tile of the tuner, and the tuner's cache (written under a
 * temporary XDG_CACHE_HOME, read back, turned off by MCPC_GEMM_TUNE=0). Needs WebGPU: see
 * kernels-support.ts for skip-or-fail.
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { initBackend, tf, type Tensor } from '../../../src/runtime/tfjs/index.js';
import { GEMM_KERNEL, gemm, gemmSpec, gpuSync, linear, registerGemm, tuneGemm } from '../../../src/runtime/webgpu/gemm.js';
import { gpuFaultMark, gpuFaultSince } from '../../../src/runtime/webgpu/faults.js';
import { F16_CANDIDATES, gemmF16, probeF16 } from '../../../src/runtime/webgpu/gemm-f16.js';
import { CANDIDATES, cachePath, candidatesFor, defaultTile, deviceKey, resetTuning, shapeClass, tileFor, tune } from '../../../src/runtime/webgpu/gemm-tune.js';
import { gemmWgsl, tileKey, type Tile } from '../../../src/runtime/webgpu/gemm-wgsl.js';
import { compare, describeGpu, randn, run, type Arg, type Result } from './kernels-support.js';

const TOL = 1e-4;

describeGpu('WGSL GEMM on WebGPU', () => {
  const shapes: [number, number, number][] = [
    [1, 1, 1],
    [1, 9, 8],
    [5, 7, 3],
    [33, 17, 19],
    [64, 64, 64],
    [70, 130, 45],
  ];
  for (const [M, N, K] of shapes) {
    for (const tA of [false, true]) {
      for (const tB of [false, true]) {
        it(`C = ${tA ? 'Aᵀ' : 'A'}·${tB ? 'Bᵀ' : 'B'}, M=${M} N=${N} K=${K}: forward and gradients`, async () => {
          const seed = M * 1000 + N * 10 + K + (tA ? 3 : 0) + (tB ? 5 : 0);
          const args = [randn(seed, tA ? [K, M] : [M, K]), randn(seed + 1, tB ? [N, K] : [K, N])];
          const { worst, what } = await compare(
            ([a, b]) => [gemm(a!, b!, tA, tB)],
            ([a, b]) => [tf.matMul(a as tf.Tensor2D, b as tf.Tensor2D, tA, tB)],
            args,
          );
          expect(worst, what).toBeLessThan(TOL);
        });
      }
    }
  }

  it('linear x·Wᵀ + b fuses the bias, and its gradients include db', async () => {
    const args = [randn(1, [23, 13]), randn(2, [11, 13]), randn(3, [11])];
    const { worst, what } = await compare(
      ([x, w, b]) => [linear(x!, w!, b)],
      ([x, w, b]) => [tf.add(tf.matMul(x as tf.Tensor2D, w as tf.Tensor2D, false, true), b!)],
      args,
    );
    expect(worst, what).toBeLessThan(TOL);
  });

  /** Max |McpcGemm(a, b) with `tile` − reference| over the product. */
  async function tileError(a: Arg, b: Arg, tA: boolean, tB: boolean, tile: Tile, ref: Result): Promise<number> {
    const got = await run(
      'webgpu',
      ([x, w]) => {
        registerGemm();
        return [tf.engine().runKernel(GEMM_KERNEL, [x, w] as never, { transA: tA, transB: tB, tile } as never) as Tensor];
      },
      [a, b],
    );
    let err = 0;
    for (let i = 0; i < ref.outs[0]!.length; i++) err = Math.max(err, Math.abs(got.outs[0]![i]! - ref.outs[0]![i]!));
    return err;
  }
  const refProduct = (a: Arg, b: Arg, tA: boolean, tB: boolean) => run('cpu', ([x, w]) => [tf.matMul(x as tf.Tensor2D, w as tf.Tensor2D, tA, tB)], [a, b]);

  it('a swizzled workgroup order covers every block once: many blocks, a last group of fewer rows, both operand orders', async () => {
    const [M, N, K] = [150, 100, 40];
    for (const [tA, tB] of [[false, true], [true, false]] as const) {
      const a = randn(21, tA ? [K, M] : [M, K], 1, false);
      const b = randn(22, tB ? [N, K] : [K, N], 1, false);
      const ref = await refProduct(a, b, tA, tB);
      for (const sw of [1, 2, 3, 8]) expect(await tileError(a, b, tA, tB, { bm: 32, bn: 32, bk: 16, tm: 4, tn: 4, sw }, ref), `sw ${sw} tA ${tA}`).toBeLessThan(1e-4);
    }
  });

  it('every candidate tile computes the same product (awkward shape, both operand orders)', async () => {
    const [M, N, K] = [37, 45, 29];
    const a = randn(11, [M, K], 1, false);
    const b = randn(12, [N, K], 1, false);
    const ref = await refProduct(a, b, false, true);
    for (const tile of CANDIDATES) expect(await tileError(a, b, false, true, tile, ref), JSON.stringify(tile)).toBeLessThan(1e-4);
    // Both operands stored k-major (A as [K, M], B as [K, N]): the other loader and staging path.
    const at = randn(13, [K, M], 1, false);
    const bt = randn(14, [K, 48], 1, false);
    const refT = await refProduct(at, bt, true, false);
    for (const tile of CANDIDATES) expect(await tileError(at, bt, true, false, tile, refT), `k-major ${JSON.stringify(tile)}`).toBeLessThan(1e-4);
  });

  // The probes bench/gpu.ts times beside the tuned tile: each takes out what it says and nothing else.
  it('timing probes: cross keeps one FMA per value read, nostage stages nothing, hoist reads the tiles once before the K loop', async () => {
    const [M, N, K] = [64, 128, 48];
    const a = randn(15, [M, K], 1, false);
    const b = randn(16, [N, K], 1, false);
    const ref = (await refProduct(a, b, false, true)).outs[0]!;
    const product = async (tile: Tile) =>
      (
        await run(
          'webgpu',
          ([x, w]) => {
            registerGemm();
            return [tf.engine().runKernel(GEMM_KERNEL, [x, w] as never, { transA: false, transB: true, tile } as never) as Tensor];
          },
          [a, b],
        )
      ).outs[0]!;
    for (const base of [{ bm: 32, bn: 64, bk: 16, tm: 4, tn: 8 }, { bm: 32, bn: 64, bk: 16, tm: 4, tn: 8, pf: true, db: true }] as Tile[]) {
      // cross, one row group (tm 4) and two column groups (tn 8, 8 threads across): a row keeps every column where
      // it is the first of its four (a0.x), else only its first column group's (b0: the first 32 of each 64).
      const cross = await product({ ...base, probe: 'cross' });
      for (let r = 0; r < M; r++) {
        for (let c = 0; c < N; c++) {
          const want = r % 4 === 0 || c % 64 < 32 ? ref[r * N + c]! : 0;
          expect(Math.abs(cross[r * N + c]! - want), `${JSON.stringify(base)} cross ${r},${c}`).toBeLessThan(1e-4);
        }
      }
      // nostage and hoist multiply workgroup memory this workgroup did not write (on llvmpipe, what an earlier
      // workgroup left there: nothing to compare against), so their text is checked: nostage neither loads an
      // operand nor writes a tile; hoist reads the tiles once, before the K loop, which still stages. Both build
      // and run without a device error.
      const spec = (probe: Tile['probe']) => gemmWgsl(gemmSpec([M, K], [N, K], false, true, { ...base, probe }, false));
      const main = (code: string) => code.slice(code.indexOf('fn main'));
      const staging = /loadA0\(|loadB0\(|[AB]s\[[^\]]*\](\[[^\]]*\])?\s*=[^=]/;
      expect(main(spec(undefined))).toMatch(staging);
      const nostage = main(spec('nostage'));
      expect(nostage).not.toMatch(staging);
      expect(nostage).toMatch(/let a0 = As\[/);
      const hoist = main(spec('hoist'));
      expect(hoist.match(/let a0 = As\[/g)).toHaveLength(1);
      expect(hoist.indexOf('let a0 = As[')).toBeLessThan(hoist.indexOf('for (var k0'));
      expect(hoist.slice(hoist.indexOf('for (var k0'))).toMatch(staging);
      const device = (tf.findBackend('webgpu') as unknown as { device: GPUDevice }).device;
      for (const probe of ['nostage', 'hoist'] as const) {
        device.pushErrorScope('validation');
        expect(await product({ ...base, probe })).toHaveLength(M * N);
        expect(await device.popErrorScope(), `${JSON.stringify(base)} ${probe}`).toBeNull();
      }
      // The tile without a probe, after them, is its own kernel again (specs were once cached by the tile's sizes
      // and pf/db alone, so a probe or a swizzled tile ran whichever kernel of those sizes came first).
      const full = await product(base);
      expect(Math.max(...Array.from(full, (x, i) => Math.abs(x - ref[i]!))), JSON.stringify(base)).toBeLessThan(1e-4);
    }
  });

  it('tileKey tells apart tiles that differ in any one field (spec and module caches key on it)', () => {
    // Required<Tile>: a field added to Tile must be added here (tsc), and then to tileKey for this to pass.
    const full: Required<Tile> = { bm: 64, bn: 64, bk: 16, tm: 8, tn: 8, pf: true, db: true, sw: 4, ur: true, probe: 'cross' };
    const other: Required<Tile> = { bm: 32, bn: 32, bk: 8, tm: 4, tn: 4, pf: false, db: false, sw: 2, ur: false, probe: 'hoist' };
    for (const f of Object.keys(full) as (keyof Tile)[]) expect(tileKey({ ...full, [f]: other[f] }), f).not.toBe(tileKey(full));
    // Absent and off are the same tile.
    expect(tileKey({ bm: 64, bn: 64, bk: 16, tm: 8, tn: 8 })).toBe(tileKey({ bm: 64, bn: 64, bk: 16, tm: 8, tn: 8, pf: false, db: false, ur: false }));
  });

  it('the f16 subgroup-matrix GEMM runs where the adapter offers it (checked against f32), and says why not elsewhere', async () => {
    await initBackend('webgpu');
    const device = (tf.backend() as unknown as { device: { features: Set<string> } }).device;
    const sup = await probeF16(device);
    const a = randn(21, [45, 70], 1, false);
    const b = randn(22, [38, 70], 1, false);
    if (!sup.ok) {
      // llvmpipe: no shader-f16, no subgroup matrices. The kernel must refuse, naming what is missing.
      expect(sup.why).toMatch(/shader-f16|subgroup/);
      expect(() => gemmF16(tf.tensor(a.data, a.shape), tf.tensor(b.data, b.shape), false, true)).toThrow(/unavailable/);
      return;
    }
    const ref = await run('cpu', ([x, w]) => [tf.matMul(x as tf.Tensor2D, w as tf.Tensor2D, false, true)], [a, b]);
    for (const tile of F16_CANDIDATES) {
      const got = await run('webgpu', ([x, w]) => [gemmF16(x!, w!, false, true, tile)], [a, b]);
      let err = 0;
      let scale = 0;
      ref.outs[0]!.forEach((v, i) => ((err = Math.max(err, Math.abs(v - got.outs[0]![i]!))), (scale = Math.max(scale, Math.abs(v)))));
      expect(err / scale, JSON.stringify(tile)).toBeLessThan(5e-3);
    }
  });

  const cacheDir = mkdtempSync(join(tmpdir(), 'mcpc-gemm-cache-'));
  const saved = { xdg: process.env.XDG_CACHE_HOME, tune: process.env.MCPC_GEMM_TUNE };
  afterAll(() => {
    if (saved.xdg === undefined) delete process.env.XDG_CACHE_HOME;
    else process.env.XDG_CACHE_HOME = saved.xdg;
    if (saved.tune === undefined) delete process.env.MCPC_GEMM_TUNE;
    else process.env.MCPC_GEMM_TUNE = saved.tune;
    resetTuning();
    rmSync(cacheDir, { recursive: true, force: true });
  });

  it('the tuner times the candidates, caches the fastest per device and shape class, and can be turned off', async () => {
    process.env.XDG_CACHE_HOME = cacheDir;
    delete process.env.MCPC_GEMM_TUNE;
    resetTuning();
    await initBackend('webgpu');
    const device = (tf.backend() as unknown as { device: unknown }).device;
    const res = await tuneGemm(40, 24, 16);
    expect(res.timings.length).toBeGreaterThan(1);
    expect(res.timings.every((t) => t.ms > 0)).toBe(true);
    const file = JSON.parse(readFileSync(cachePath(), 'utf8')) as Record<string, unknown>;
    const key = `${deviceKey(device)}#${shapeClass(40, 24, 16)}`;
    expect(file[key]).toEqual(res.best);
    // A fresh process (in-memory cache dropped) reads the choice back from the file.
    resetTuning();
    expect(tileFor(device, 40, 24, 16)).toEqual(res.best);
    process.env.MCPC_GEMM_TUNE = '0';
    resetTuning();
    expect(tileFor(device, 40, 24, 16)).toEqual(defaultTile(40, 24));
  });

  it('a tile the device raises an error on is left out of the tuning (not timed as nothing), and stops nothing', async () => {
    process.env.XDG_CACHE_HOME = cacheDir;
    process.env.MCPC_GEMM_TUNE = '0'; // time, but write no cache
    resetTuning();
    await initBackend('webgpu');
    registerGemm();
    const device = (tf.backend() as unknown as { device: GPUDevice }).device;
    const bad = candidatesFor(device)[0]!;
    const a = tf.randomUniform([40, 16]);
    const b = tf.randomUniform([24, 16]);
    const mark = gpuFaultMark();
    try {
      // The first candidate's runs also ask for a buffer past the device's limit: Dawn raises a validation error.
      const res = await tune(device, 40, 24, 16, async (tile, times) => {
        if (tile === bad) device.createBuffer({ size: 2 ** 40, usage: 0x80 });
        for (let i = 0; i < times; i++) tf.dispose(tf.engine().runKernel(GEMM_KERNEL, [a, b] as never, { transA: false, transB: true, tile } as never) as Tensor);
        await gpuSync();
      });
      expect(res.failed).toHaveLength(1);
      expect(res.failed[0]!.tile).toBe(bad);
      expect(res.failed[0]!.error).toMatch(/^validation: Buffer size \(1099511627776\) exceeds/);
      expect(res.timings.map((t) => t.tile)).not.toContain(bad);
      expect(res.timings.length).toBe(candidatesFor(device).length - 1);
      expect(res.best).not.toBe(bad);
      // Captured by the tuner's error scopes: nothing for a run to stop on.
      expect(gpuFaultSince(mark)).toBeUndefined();
      // A device on which no tile runs: the tuner says so, naming the errors.
      await expect(
        tune(device, 40, 24, 16, async () => {
          device.createBuffer({ size: 2 ** 40, usage: 0x80 });
        }),
      ).rejects.toThrow(/^no GEMM tile runs on this device \(.*validation: Buffer size/);
      expect(gpuFaultSince(mark)).toBeUndefined();
    } finally {
      tf.dispose([a, b]);
      delete process.env.MCPC_GEMM_TUNE;
      resetTuning();
    }
  });

  it('a cached tile keeps every option (prefetch, double buffering, swizzle, unrolled steps); malformed options and probes are dropped', async () => {
    process.env.XDG_CACHE_HOME = cacheDir;
    delete process.env.MCPC_GEMM_TUNE;
    await initBackend('webgpu');
    const device = (tf.backend() as unknown as { device: unknown }).device;
    const tile = { bm: 32, bn: 32, bk: 16, tm: 4, tn: 4, pf: true, db: true, sw: 8, ur: true };
    const key = (m: number) => `${deviceKey(device)}#${shapeClass(m, 24, 16)}`;
    mkdirSync(dirname(cachePath()), { recursive: true });
    writeFileSync(cachePath(), JSON.stringify({ [key(40)]: tile, [key(400)]: { ...tile, sw: -1, db: 'yes', ur: 1, probe: 'cross' } }));
    resetTuning();
    expect(tileFor(device, 40, 24, 16)).toEqual(tile);
    expect(tileFor(device, 400, 24, 16)).toEqual({ bm: 32, bn: 32, bk: 16, tm: 4, tn: 4, pf: true });
    resetTuning();
  });
});
