/**
 * Tile sizes for the f32 GEMM (./gemm-wgsl.ts), chosen per device and shape class.
 *
 * `tileFor(device, m, n, k)` is what a kernel asks, synchronously: the cached choice for this device and
 * shape class when there is one, else a heuristic default (and the class is remembered as untuned).
 * `tune(...)` / `tunePending()` time the candidate tiles on the current device (each a few runs of the real
 * shape, after a warm-up) and store the fastest in `$XDG_CACHE_HOME/mcpc/gemm-tiles.json` (or
 * `~/.cache/mcpc/…`), keyed by the adapter's description and the shape class; later processes read it.
 * Tuning is asynchronous (it waits for the GPU), so the runtime calls it where it may await: before the
 * first step, and `bench/` before timing. `MCPC_GEMM_TUNE=0` turns tuning and the cache off (defaults only).
 */
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { checkTile, tileKey, tileSharedBytes, type Tile } from './gemm-wgsl.js';
import { withErrorScopes } from './faults.js';

/* eslint-disable @typescript-eslint/no-explicit-any -- WebGPU objects. */

export const CANDIDATES: Tile[] = [
  { bm: 32, bn: 32, bk: 16, tm: 4, tn: 4 },
  { bm: 64, bn: 64, bk: 16, tm: 4, tn: 4 },
  { bm: 64, bn: 64, bk: 16, tm: 8, tn: 4 },
  { bm: 64, bn: 128, bk: 16, tm: 8, tn: 8 },
  { bm: 128, bn: 64, bk: 16, tm: 8, tn: 8 },
  { bm: 128, bn: 128, bk: 16, tm: 8, tn: 8 },
  { bm: 128, bn: 128, bk: 8, tm: 8, tn: 8 },
  // With prefetch (the next slice's loads in flight during this slice's FMAs).
  { bm: 64, bn: 64, bk: 16, tm: 8, tn: 4, pf: true },
  { bm: 64, bn: 128, bk: 16, tm: 8, tn: 8, pf: true },
  { bm: 128, bn: 64, bk: 16, tm: 8, tn: 8, pf: true },
  { bm: 128, bn: 128, bk: 8, tm: 8, tn: 8, pf: true },
  { bm: 128, bn: 128, bk: 16, tm: 8, tn: 8, pf: true },
  { bm: 128, bn: 128, bk: 32, tm: 8, tn: 8, pf: true },
  // Double buffered (one barrier per K-slice), and 8x16 / 16x8 thread blocks.
  { bm: 128, bn: 128, bk: 8, tm: 8, tn: 8, pf: true, db: true },
  { bm: 128, bn: 128, bk: 16, tm: 8, tn: 8, pf: true, db: true },
  { bm: 64, bn: 128, bk: 16, tm: 8, tn: 8, pf: true, db: true },
  { bm: 128, bn: 256, bk: 8, tm: 8, tn: 16, pf: true, db: true },
  { bm: 256, bn: 128, bk: 8, tm: 16, tn: 8, pf: true, db: true },
  // Swizzled workgroup order (groups of 8 block rows share A and B slices in L2) on the H200's best tiles.
  { bm: 128, bn: 128, bk: 8, tm: 8, tn: 8, sw: 8 },
  { bm: 128, bn: 128, bk: 8, tm: 8, tn: 8, pf: true, db: true, sw: 8 },
  { bm: 128, bn: 128, bk: 16, tm: 8, tn: 8, pf: true, db: true, sw: 8 },
  // The K-slice's steps written out (ur) on the tiles the H200 picked (128x128x8, with and without prefetch).
  { bm: 128, bn: 128, bk: 8, tm: 8, tn: 8, ur: true },
  { bm: 128, bn: 128, bk: 8, tm: 8, tn: 8, pf: true, ur: true },
  { bm: 128, bn: 128, bk: 8, tm: 8, tn: 8, pf: true, db: true, ur: true },
];

export function tuningEnabled(): boolean {
  return process.env.MCPC_GEMM_TUNE !== '0';
}

export function cachePath(): string {
  const base = process.env.XDG_CACHE_HOME || join(homedir(), '.cache');
  return join(base, 'mcpc', 'gemm-tiles.json');
}

/** Dimensions bucketed so that one tuned choice serves a neighbourhood of shapes. */
export function shapeClass(m: number, n: number, k: number): string {
  const b = (x: number) => (x < 48 ? 's' : x < 384 ? 'm' : x < 1536 ? 'l' : 'x');
  return `${b(m)}${b(n)}${b(k)}`;
}

const deviceKeys = new WeakMap<object, string>();
export function deviceKey(device: any): string {
  // Once per device: tileFor asks on every GEMM call (~3 us a time through Dawn's adapterInfo).
  const known = device && typeof device === 'object' ? deviceKeys.get(device) : undefined;
  if (known !== undefined) return known;
  const i = device?.adapterInfo ?? {};
  const key = [i.vendor, i.architecture, i.device, i.description].map((s) => String(s ?? '')).join('|');
  if (device && typeof device === 'object') deviceKeys.set(device, key);
  return key;
}

/** The candidates that fit the device's workgroup memory. */
export function candidatesFor(device: any): Tile[] {
  const limit = Number(device?.limits?.maxComputeWorkgroupStorageSize ?? 16384);
  const threads = Number(device?.limits?.maxComputeInvocationsPerWorkgroup ?? 256);
  return CANDIDATES.filter((t) => !checkTile(t) && tileSharedBytes(t) <= limit && (t.bm / t.tm) * (t.bn / t.tn) <= threads);
}

/** The heuristic choice: big tiles only when the output has enough of them to fill a GPU. */
export function defaultTile(m: number, n: number): Tile {
  if (m * n >= 1024 * 1024) return { bm: 128, bn: 128, bk: 16, tm: 8, tn: 8 };
  if (m * n >= 128 * 128) return { bm: 64, bn: 64, bk: 16, tm: 4, tn: 4 };
  return { bm: 32, bn: 32, bk: 16, tm: 4, tn: 4 };
}

type CacheFile = Record<string, Tile>;
let cache: CacheFile | undefined;
const pending = new Map<string, { m: number; n: number; k: number }>();

/**
 * A tile cache file's entries that `parse` accepts (an entry it returns undefined for is skipped); {} when
 * tuning is off or the file is missing or unreadable. Shared with the f16 GEMM's cache (gemm-f16.ts).
 */
export function readTileCache<T>(path: string, parse: (v: unknown) => T | undefined): Record<string, T> {
  const out: Record<string, T> = {};
  if (!tuningEnabled()) return out;
  try {
    const parsed = JSON.parse(readFileSync(path, 'utf8')) as unknown;
    if (parsed && typeof parsed === 'object') {
      for (const [k, v] of Object.entries(parsed as Record<string, unknown>)) {
        const t = parse(v);
        if (t !== undefined) out[k] = t;
      }
    }
  } catch {
    // No cache yet, or an unreadable one: tune again.
  }
  return out;
}

/** Write a tile cache atomically; false when tuning is off or the directory is read-only (re-tuning next time). */
export function writeTileCache(path: string, entries: Record<string, unknown>): boolean {
  if (!tuningEnabled()) return false;
  try {
    mkdirSync(dirname(path), { recursive: true });
    const tmp = `${path}.${process.pid}.tmp`;
    writeFileSync(tmp, `${JSON.stringify(entries, null, 1)}\n`);
    renameSync(tmp, path);
    return true;
  } catch {
    return false;
  }
}

function asTile(v: unknown): Tile | undefined {
  const t = v as Tile;
  if (!t || typeof t !== 'object' || checkTile(t)) return undefined;
  return {
    bm: t.bm,
    bn: t.bn,
    bk: t.bk,
    tm: t.tm,
    tn: t.tn,
    ...(t.pf === true ? { pf: true } : {}),
    ...(t.db === true ? { db: true } : {}),
    ...(Number.isInteger(t.sw) && t.sw! >= 1 ? { sw: t.sw } : {}),
    ...(t.ur === true ? { ur: true } : {}),
  };
}

function load(): CacheFile {
  return (cache ??= readTileCache(cachePath(), asTile));
}

function save(): void {
  if (cache) writeTileCache(cachePath(), cache);
}

let forced: Tile | undefined;
/** Tests: every `tileFor` answers `t` (where it fits the device) until called with undefined. */
export function forceTile(t: Tile | undefined): void {
  forced = t;
}

/** The tile to use now (synchronous). */
export function tileFor(device: any, m: number, n: number, k: number): Tile {
  if (forced && tileSharedBytes(forced) <= Number(device?.limits?.maxComputeWorkgroupStorageSize ?? 16384)) return forced;
  const key = `${deviceKey(device)}#${shapeClass(m, n, k)}`;
  const hit = load()[key];
  const limit = Number(device?.limits?.maxComputeWorkgroupStorageSize ?? 16384);
  if (hit && tileSharedBytes(hit) <= limit) return hit;
  if (tuningEnabled() && !pending.has(key)) pending.set(key, { m, n, k });
  const d = defaultTile(m, n);
  return tileSharedBytes(d) <= limit ? d : CANDIDATES[0];
}

/** Forget in-memory choices (tests). */
export function resetTuning(): void {
  cache = undefined;
  pending.clear();
}

export interface TuneResult {
  key: string;
  best: Tile;
  /** Median milliseconds per run of each candidate. */
  timings: { tile: Tile; ms: number }[];
  /** Candidates left out: the device raised an error running them (a failed kernel would time as nothing). */
  failed: { tile: Tile; error: string }[];
}

/**
 * Time every candidate on a real GEMM of this shape with `run(tile, times)` (which must record the work
 * `times` times and return when the GPU has finished all of it) and cache the fastest. Each sample records
 * several runs before waiting once: one wait costs about as much as a 4096³ product on an H100 (waiting
 * after every run made the choice noise).
 */
export async function tune(device: any, m: number, n: number, k: number, run: (tile: Tile, times: number) => Promise<void>, reps = 3, batch = 4): Promise<TuneResult> {
  const key = `${deviceKey(device)}#${shapeClass(m, n, k)}`;
  const timings: { tile: Tile; ms: number }[] = [];
  const failed: { tile: Tile; error: string }[] = [];
  for (const tile of candidatesFor(device)) {
    // Compile and warm up, in error scopes: a tile this device cannot run is left out, not timed (its
    // dispatches would do nothing, fast) and not left to stop the run as an uncaptured error.
    const { error } = await withErrorScopes(device, () => run(tile, 1));
    if (error) {
      failed.push({ tile, error: `${error.kind}: ${error.message}` });
      continue;
    }
    const ts: number[] = [];
    for (let i = 0; i < reps; i++) {
      const t0 = performance.now();
      await run(tile, batch);
      ts.push((performance.now() - t0) / batch);
    }
    ts.sort((a, b) => a - b);
    timings.push({ tile, ms: ts[ts.length >> 1] });
  }
  if (!timings.length) throw new Error(`no GEMM tile runs on this device (${failed.map((f) => `${tileKey(f.tile)}: ${f.error}`).join('; ')})`);
  const best = timings.reduce((a, b) => (b.ms < a.ms ? b : a)).tile;
  if (tuningEnabled()) {
    load()[key] = best;
    save();
  }
  pending.delete(key);
  return { key, best, timings, failed };
}

/** Shapes seen by `tileFor` whose class has no cached choice yet. */
export function pendingShapes(): { m: number; n: number; k: number }[] {
  return [...pending.values()];
}
