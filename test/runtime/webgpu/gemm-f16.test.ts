/**
 * The f16 subgroup-matrix GEMM's kernel text (src/runtime/webgpu/gemm-f16.ts) run in its emulated spelling:
 * the same generator, with each subgroup-matrix builtin replaced by plain WGSL that computes whole 16×16
 * fragments in every lane (f32 in place of f16). llvmpipe has neither shader-f16 nor subgroup matrices, so
 * this is how CI checks the indexing of every tile feature (staging, register prefetch, double-buffered
 * slices, swizzled workgroup order, 8-subgroup blocks, edge tiles) against tfjs's product. The 'f16' emulation
 * rounds the operands to f16 in the cast, as the GPU path stores them: its products are checked against the
 * product of f16-rounded operands (and matmul-f16.test.ts trains with it); the tensor cores themselves are
 * checked on a GPU (bench/gpu.ts, gemm.test.ts where the adapter offers it).
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, expect, it } from 'vitest';
import { initBackend, tf } from '../../../src/runtime/tfjs/index.js';
import {
  castF16,
  F16_CANDIDATES,
  F16_EMULATION_TILES,
  f16CachePath,
  f16Dims,
  f16SharedBytes,
  f16TileFor,
  f16TileName,
  f16TileProblem,
  gemmF16,
  gemmF16Packed,
  matmulWgsl,
  rememberF16Tile,
  resetF16Tiles,
  setF16Tile,
  type F16Tile,
} from '../../../src/runtime/webgpu/gemm-f16.js';
import { compare, describeGpu, randn, relErr, roundToF16 } from './kernels-support.js';
import { openDawn } from '../../../src/runtime/webgpu/device.js';

const TILES = F16_EMULATION_TILES;

describeGpu('f16 subgroup-matrix GEMM, emulated spelling', () => {
  let storage = 0;
  // A pipeline that fails validation writes nothing, and tfjs may hand out a recycled buffer that holds an
  // earlier (correct) product: Dawn's errors are collected here rather than trusted to the comparison. (A
  // listener, not an error scope per product: ninety popErrorScope promises in one file hung a run.)
  const deviceErrors: string[] = [];
  beforeAll(async () => {
    await initBackend('webgpu');
    const device = (tf.findBackend('webgpu') as unknown as { device: GPUDevice }).device;
    device.addEventListener('uncapturederror', (e) => deviceErrors.push(String((e as GPUUncapturedErrorEvent).error.message).split('\n')[0]!));
    const gpu = await openDawn();
    storage = 'unavailable' in gpu ? 0 : gpu.limits.maxComputeWorkgroupStorageSize!;
  });

  it('every emulation tile fits the adapter and covers the features the GPU candidates use', () => {
    for (const t of TILES) expect(f16SharedBytes(t, 4), f16TileName(t)).toBeLessThanOrEqual(storage);
    const has = (f: (t: F16Tile) => boolean) => TILES.some(f) && F16_CANDIDATES.some(f);
    expect(has((t) => !!t.db)).toBe(true);
    expect(has((t) => !!t.sw)).toBe(true);
    expect(has((t) => t.bk === 64)).toBe(true);
    expect(has((t) => !!t.sg)).toBe(true);
    expect(has((t) => !!t.fs && !!t.pf)).toBe(true);
    expect(has((t) => t.pad === 0)).toBe(true);
    expect(has((t) => !!t.il)).toBe(true);
    expect(has((t) => !!t.w16 && !!t.pf)).toBe(true);
    expect(has((t) => !!t.lp)).toBe(true);
    // The GPU candidates all generate, and fit an H100/H200's 48 KiB of workgroup memory in f16.
    for (const t of F16_CANDIDATES) {
      expect(f16TileProblem(t), f16TileName(t)).toBeUndefined();
      expect(f16SharedBytes(t, 2), f16TileName(t)).toBeLessThanOrEqual(49152);
    }
  });

  // Awkward shapes: nothing a multiple of the block, one row, K not a multiple of the slice, more block rows
  // than the swizzle group (and a last group of fewer rows).
  const shapes: [number, number, number][] = [
    [70, 45, 50],
    [1, 33, 17],
    [150, 40, 96],
    // M and N multiples of 16 but not of the block: no partial 16×16 tile, so no staging array for edges;
    // whole tiles past the end are skipped.
    [64, 48, 40],
  ];
  for (const t of TILES) {
    it(`${f16TileName(t)}: op(a)·op(b) equals tfjs's product on awkward shapes, all four transpositions`, async () => {
      for (const [m, n, k] of shapes) {
        for (const [tA, tB] of [[false, true], [false, false], [true, false], [true, true]] as const) {
          if ((tA || !tB) && m !== 70) continue; // every transposition on one shape keeps llvmpipe's time down
          const a = randn(m * 7 + k, tA ? [k, m] : [m, k], 1, false);
          const b = randn(n * 5 + k, tB ? [n, k] : [k, n], 1, false);
          const seen = deviceErrors.length;
          const { worst, what } = await compare(([x, y]) => [gemmF16(x!, y!, tA, tB, t, true)], ([x, y]) => [tf.matMul(x!, y!, tA, tB)], [a, b]);
          expect(deviceErrors.slice(seen)).toEqual([]);
          expect(worst, `${m}x${n}x${k} tA ${tA} tB ${tB}: ${what}`).toBeLessThan(1e-5);
        }
      }
      // Well under a second alone; one run beside a CPU benchmark took a minute (llvmpipe shares the cores).
    }, 180_000);
  }

  it('roundToF16 (the tests\' reference) rounds to the nearest f16, ties to even, subnormals, overflow', () => {
    expect(roundToF16(1 + 2 ** -11)).toBe(1); // a tie: the even neighbour
    expect(roundToF16(1 + 3 * 2 ** -11)).toBe(1 + 2 ** -9); // a tie: up to the even neighbour
    expect(roundToF16(1 + 2 ** -11 + 2 ** -20)).toBe(1 + 2 ** -10);
    expect(roundToF16(-0.1)).toBe(-0.0999755859375); // 0x2e66
    expect(roundToF16(65504)).toBe(65504);
    expect(roundToF16(65519)).toBe(65504);
    expect(roundToF16(65520)).toBe(Infinity);
    expect(roundToF16(2 ** -24)).toBe(2 ** -24);
    expect(roundToF16(1.5 * 2 ** -24)).toBe(2 ** -23);
    expect(roundToF16(2 ** -25)).toBe(0);
    expect(roundToF16(3 * 2 ** -26)).toBe(2 ** -24);
    expect(roundToF16(2 ** -14 + 2 ** -25)).toBe(2 ** -14); // the smallest normal's spacing is the subnormals'
  });

  it("the 'f16' emulation's cast rounds every operand as f16 does: bit for bit the reference, padding zero", async () => {
    const special = [1 + 2 ** -11, 1 + 3 * 2 ** -11, 1 + 2 ** -11 + 2 ** -20, -0.1, 65504, 65519, 2 ** -24, 1.5 * 2 ** -24, 2 ** -25, 3 * 2 ** -26, -(2 ** -14 + 2 ** -25), 0];
    const r = randn(21, [45]).data as Float32Array;
    const values = Float32Array.from([...special, ...Array.from(r, (v) => v * 7)]);
    const [m, k] = [values.length / 19, 19]; // 57 values: 3 rows of 19
    const t = TILES[0]!;
    const x = tf.tensor(values, [m, k]);
    const a16 = castF16(x, 'a', m, 16, k, false, t, 'f16');
    const got = await a16.data();
    const { mp, kp } = f16Dims(m, 16, k, t); // the cast pads rows to the block and K to the slice
    expect(got.length).toBe(mp * kp);
    let bad = 0;
    for (let i = 0; i < got.length; i++) {
      const [row, col] = [Math.floor(i / kp), i % kp];
      const want = row < m && col < k ? roundToF16(values[row * k + col]!) : 0;
      if (!Object.is(got[i], want) && !(want === 0 && got[i] === 0)) bad++;
    }
    expect(bad).toBe(0);
    tf.dispose([x, a16]);
  });

  it("the 'f16' emulation: op(a)·op(b) equals the product of the f16-rounded operands, not the f32 one", async () => {
    const t = TILES[3]!;
    const [m, n, k] = [70, 45, 50];
    for (const [tA, tB] of [[false, true], [true, false]] as const) {
      const a = randn(31, tA ? [k, m] : [m, k]).data as Float32Array;
      const b = randn(32, tB ? [n, k] : [k, n]).data as Float32Array;
      const [ra, rb] = [Float64Array.from(a, roundToF16), Float64Array.from(b, roundToF16)];
      const at = (i: number, p: number) => (tA ? p * m + i : i * k + p);
      const bt = (p: number, j: number) => (tB ? j * k + p : p * n + j);
      const rounded = new Float64Array(m * n);
      const exact = new Float64Array(m * n);
      for (let i = 0; i < m; i++)
        for (let j = 0; j < n; j++)
          for (let p = 0; p < k; p++) {
            rounded[i * n + j] += ra[at(i, p)]! * rb[bt(p, j)]!;
            exact[i * n + j] += a[at(i, p)]! * b[bt(p, j)]!;
          }
      const [x, y] = [tf.tensor(a, tA ? [k, m] : [m, k]), tf.tensor(b, tB ? [n, k] : [k, n])];
      const c = gemmF16(x, y, tA, tB, t, 'f16');
      const got = await c.data();
      expect(relErr(got, rounded), `tA ${tA} tB ${tB}`).toBeLessThan(1e-5);
      // f16 keeps 11 significant bits: the product moves by ~2^-11 of its terms' scale from the f32 one
      expect(relErr(got, exact)).toBeGreaterThan(1e-4);
      expect(relErr(got, exact)).toBeLessThan(5e-3);
      tf.dispose([x, y, c]);
    }
  });

  it('gradients through the kernel (each a product of the same kernel) equal tfjs\'s', async () => {
    const t = TILES[3]!;
    const { worst, what } = await compare(([x, y]) => [gemmF16(x!, y!, false, true, t, true)], ([x, y]) => [tf.matMul(x!, y!, false, true)], [randn(3, [37, 50]), randn(4, [29, 50])]);
    expect(worst, what).toBeLessThan(1e-5);
  });

  it('cast once, multiply many: castF16 + gemmF16Packed equal gemmF16', async () => {
    const t = TILES[2]!;
    const [m, n, k] = [70, 45, 50];
    const a = tf.tensor(randn(11, [m, k]).data, [m, k]);
    const b = tf.tensor(randn(12, [n, k]).data, [n, k]);
    const a16 = castF16(a, 'a', m, n, k, false, t, true);
    const b16 = castF16(b, 'b', m, n, k, false, t, true);
    const packed = await gemmF16Packed(a16, b16, m, n, k, t, true).data();
    const whole = await gemmF16(a, b, false, true, t, true).data();
    expect(relErr(packed, whole)).toBe(0);
    tf.dispose([a, b, a16, b16]);
  });

  it('the tile: forced, else cached per adapter and shape class (entries it cannot make ignored), else the default', () => {
    const saved = { xdg: process.env.XDG_CACHE_HOME, tune: process.env.MCPC_GEMM_TUNE };
    const dir = mkdtempSync(join(tmpdir(), 'mcpc-f16-cache-'));
    try {
      process.env.XDG_CACHE_HOME = dir;
      delete process.env.MCPC_GEMM_TUNE;
      resetF16Tiles();
      const device = { adapterInfo: { vendor: 'nvidia', architecture: 'hopper', device: '', description: 'H200' }, limits: { maxComputeWorkgroupStorageSize: 49152 } };
      const dflt = f16TileFor(device, 4096, 4096, 4096);
      const tuned: F16Tile = { variant: 'staged', tm: 4, tn: 4, pf: true, sw: 8, pad: 0, w16: true, lp: true };
      expect(rememberF16Tile(device, 4096, 4096, 4096, tuned)).toBe(f16CachePath());
      resetF16Tiles(); // a fresh process reads it back
      expect(f16TileFor(device, 4000, 3000, 2000)).toEqual(tuned); // same shape class
      expect(f16TileFor(device, 64, 64, 64)).toEqual(dflt); // another class
      expect(f16TileFor({ ...device, adapterInfo: { ...device.adapterInfo, description: 'H100' } }, 4096, 4096, 4096)).toEqual(dflt);
      // An entry that does not fit the device, and one this generator cannot make, fall back to the default.
      expect(f16TileFor({ ...device, limits: { maxComputeWorkgroupStorageSize: 8192 } }, 4096, 4096, 4096)).toEqual(dflt);
      const file = JSON.parse(readFileSync(f16CachePath(), 'utf8')) as Record<string, unknown>;
      const key = Object.keys(file)[0]!;
      writeFileSync(f16CachePath(), JSON.stringify({ [key]: { variant: 'staged', tm: 4, tn: 4, db: true } }));
      resetF16Tiles();
      expect(f16TileFor(device, 4096, 4096, 4096)).toEqual(dflt);
      // Options not spelled as the generator takes them, and a timing probe, are dropped from an entry.
      writeFileSync(f16CachePath(), JSON.stringify({ [key]: { variant: 'staged', tm: 4, tn: 4, pf: true, w16: 'yes', lp: 1, probe: 'cross' } }));
      resetF16Tiles();
      expect(f16TileFor(device, 4096, 4096, 4096)).toEqual({ variant: 'staged', tm: 4, tn: 4, pf: true });
      // Forced beats the cache; off (MCPC_GEMM_TUNE=0) neither reads nor writes.
      setF16Tile(TILES[0]);
      expect(f16TileFor(device, 4096, 4096, 4096)).toEqual(TILES[0]);
      setF16Tile(undefined);
      process.env.MCPC_GEMM_TUNE = '0';
      resetF16Tiles();
      expect(rememberF16Tile(device, 4096, 4096, 4096, tuned)).toBeUndefined();
    } finally {
      if (saved.xdg === undefined) delete process.env.XDG_CACHE_HOME;
      else process.env.XDG_CACHE_HOME = saved.xdg;
      if (saved.tune === undefined) delete process.env.MCPC_GEMM_TUNE;
      else process.env.MCPC_GEMM_TUNE = saved.tune;
      resetF16Tiles();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  // The probes bench/gpu.ts times beside the tuner's winner: each takes out what it says and nothing else.
  it('timing probes: cross multiplies each loaded fragment once, hoist loads the k 0 fragments only, nostage stages nothing', async () => {
    const [m, n, k] = [64, 64, 48];
    const a = tf.tensor(randn(21, [m, k]).data, [m, k]);
    const b = tf.tensor(randn(22, [n, k]).data, [n, k]);
    const full = await tf.matMul(a, b, false, true).data();
    const run = async (t: F16Tile) => {
      const seen = deviceErrors.length;
      const out = gemmF16(a, b, false, true, t, true);
      const got = await out.data();
      out.dispose();
      expect(deviceErrors.slice(seen), f16TileName(t)).toEqual([]);
      return got;
    };
    // cross, 2x2 fragments a subgroup: fragment (i, j) of each subgroup's 32x32 is multiplied only when i or j is 0.
    const cross = await run({ variant: 'staged', tm: 2, tn: 2, probe: 'cross' });
    let kept = 0;
    for (let r = 0; r < m; r++) {
      for (let c = 0; c < n; c++) {
        const inner = Math.floor((r % 32) / 16) === 0 || Math.floor((c % 32) / 16) === 0;
        const want = inner ? full[r * n + c]! : 0;
        kept += +inner;
        expect(Math.abs(cross[r * n + c]! - want), `cross ${r},${c}`).toBeLessThan(1e-4 * (1 + Math.abs(want)));
      }
    }
    expect(kept).toBe((m * n * 3) / 4);
    // hoist, direct loads: every K-step multiplies the k 0 fragments, (K padded to 64) / 16 = 4 times.
    const hoist = await run({ variant: 'direct', tm: 1, tn: 2, probe: 'hoist' });
    const [ad, bd] = [await a.data(), await b.data()];
    for (let r = 0; r < m; r++) {
      for (let c = 0; c < n; c++) {
        let s = 0;
        for (let q = 0; q < 16; q++) s += ad[r * k + q]! * bd[c * k + q]!;
        expect(Math.abs(hoist[r * n + c]! - 4 * s), `hoist ${r},${c}`).toBeLessThan(1e-4 * (1 + Math.abs(4 * s)));
      }
    }
    // nostage and staged hoist multiply workgroup memory this workgroup did not write (on llvmpipe, what an earlier
    // workgroup left there: nothing to compare against), so their text is checked: nostage neither loads an
    // operand nor writes a slice; hoist loads each fragment once, before the K loop, which still stages. Both
    // build and run without a device error.
    const main = (t: F16Tile) => {
      const code = matmulWgsl(m, n, k, t, 'templated', 32);
      return code.slice(code.indexOf('fn main'));
    };
    const staging = /[ab]4\[|[AB]s\[[^\]]*\]\s*=[^=]/;
    const nostage: F16Tile = { variant: 'staged', tm: 2, tn: 2, pf: true, probe: 'nostage' };
    expect(main({ ...nostage, probe: undefined })).toMatch(staging);
    expect(main(nostage).replace(/_ = [ab]4\[0\];/g, '')).not.toMatch(staging);
    expect(main(nostage)).toMatch(/subgroupMatrixLoad/);
    const hoisted: F16Tile = { variant: 'staged', tm: 2, tn: 1, pf: true, db: true, probe: 'hoist' };
    const h = main(hoisted);
    expect(h.match(/subgroupMatrixLoad/g)).toHaveLength(3);
    expect(h.lastIndexOf('subgroupMatrixLoad')).toBeLessThan(h.indexOf('for (var k0'));
    expect(h.slice(h.indexOf('for (var k0'))).toMatch(staging);
    for (const t of [nostage, hoisted]) expect(await run(t)).toHaveLength(m * n);
    tf.dispose([a, b]);
  });

  it('refuses tiles it cannot generate, naming the problem', () => {
    expect(() => matmulWgsl(64, 64, 64, { variant: 'direct', tm: 1, tn: 1, probe: 'nostage' }, 'emulated', 32)).toThrow(/nostage needs a staged tile/);
    expect(() => matmulWgsl(64, 64, 64, { variant: 'staged', tm: 1, tn: 1, probe: 'half' as F16Tile['probe'] }, 'emulated', 32)).toThrow(/probe must be/);
    expect(() => rememberF16Tile({}, 64, 64, 64, { variant: 'staged', tm: 1, tn: 1, probe: 'cross' })).toThrow(/not a tuning result/);
    expect(() => matmulWgsl(64, 64, 64, { variant: 'staged', tm: 1, tn: 1, db: true }, 'emulated', 32)).toThrow(/db needs .*pf/);
    expect(() => matmulWgsl(64, 64, 64, { variant: 'staged', tm: 1, tn: 1, bk: 24 }, 'emulated', 32)).toThrow(/bk must be a multiple of 16/);
    expect(() => matmulWgsl(64, 64, 64, { variant: 'staged', tm: 1, tn: 1, sw: 0 }, 'emulated', 32)).toThrow(/sw/);
    expect(() => matmulWgsl(64, 64, 64, { variant: 'staged', tm: 1, tn: 1, sg: [4, 2], fs: true }, 'emulated', 32)).toThrow(/fs needs the fragments/);
    expect(() => matmulWgsl(64, 64, 64, { variant: 'direct', tm: 1, tn: 1, fs: true }, 'emulated', 32)).toThrow(/fs needs a staged tile/);
    expect(() => matmulWgsl(64, 64, 64, { variant: 'staged', tm: 1, tn: 1, pad: 4 }, 'emulated', 32)).toThrow(/pad must be a multiple of 8/);
    expect(() => matmulWgsl(64, 64, 64, { variant: 'staged', tm: 1, tn: 1, fs: true, w16: true }, 'emulated', 32)).toThrow(/w16 needs a staged tile without fs/);
    expect(() => matmulWgsl(64, 64, 64, { variant: 'direct', tm: 1, tn: 1, w16: true }, 'emulated', 32)).toThrow(/w16 needs/);
    expect(() => matmulWgsl(64, 64, 64, { variant: 'staged', tm: 1, tn: 1, il: true, lp: true }, 'emulated', 32)).toThrow(/lp needs a staged tile without il/);
  });
});
