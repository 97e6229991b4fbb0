/**
 * Shuffling as a pure function of (seed, epoch): the order of epoch e is a Fisher-Yates permutation driven
 * by a PRNG seeded from a hash of (seed, e). No global state, no Math.random, no clock: any process can
 * recompute any epoch's order, which is what lets a resumed run replay nothing and skip nothing.
 */

/** A seeded 32-bit PRNG (mulberry32): small, fast, and the same on every platform. */
export class Mulberry32 {
  private state: number;

  constructor(seed: number) {
    this.state = seed >>> 0;
  }

  /** The next 32-bit unsigned integer. */
  nextU32(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }

  /** A uniform integer in [0, n), n <= 2^32, without modulo bias (rejection sampling). */
  below(n: number): number {
    if (n <= 1) return 0;
    const limit = 0x100000000 - (0x100000000 % n);
    for (;;) {
      const x = this.nextU32();
      if (x < limit) return x % n;
    }
  }

  /** The state, to save in a checkpoint. */
  get current(): number {
    return this.state;
  }
}

/** murmur3's 32-bit finaliser: spreads every input bit over the output. */
function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** The PRNG seed of one epoch: a hash of (seed, epoch), so neighbouring seeds and epochs are unrelated. */
export function epochSeed(seed: number, epoch: number): number {
  checkIndex('seed', seed, 2 ** 53);
  checkIndex('epoch', epoch, 2 ** 32);
  const lo = seed >>> 0;
  const hi = Math.floor(seed / 0x100000000) >>> 0;
  return fmix32(fmix32(lo ^ 0x9e3779b9) ^ Math.imul(hi + 1, 0x85ebca6b) ^ fmix32(epoch + 0x632be5ab));
}

/**
 * The order of `n` records in `epoch`: a permutation of 0..n-1, a pure function of (n, seed, epoch).
 * With `shuffle: false`, the identity (file order) every epoch.
 */
export function epochOrder(n: number, seed: number, epoch: number, shuffle = true): Uint32Array {
  checkIndex('n', n, 2 ** 32);
  const order = new Uint32Array(n);
  for (let i = 0; i < n; i++) order[i] = i;
  if (!shuffle) return order;
  const rng = new Mulberry32(epochSeed(seed, epoch));
  for (let i = n - 1; i > 0; i--) {
    const j = rng.below(i + 1);
    const t = order[i]!;
    order[i] = order[j]!;
    order[j] = t;
  }
  return order;
}

function checkIndex(what: string, v: number, limit: number): void {
  if (!Number.isInteger(v) || v < 0 || v >= limit) throw new RangeError(`${what} must be an integer in [0, ${limit}), got ${v}`);
}
