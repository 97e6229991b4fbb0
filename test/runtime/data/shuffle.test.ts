import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { epochOrder, epochSeed, Mulberry32 } from '../../../src/runtime/data/index.js';

const isPermutation = (p: Uint32Array) => {
  const seen = new Uint8Array(p.length);
  for (const x of p) {
    if (x >= p.length || seen[x]) return false;
    seen[x] = 1;
  }
  return true;
};

describe('epochOrder: a pure function of (n, seed, epoch)', () => {
  it('is a permutation: nothing lost, nothing repeated (property)', () => {
    fc.assert(fc.property(fc.nat(300), fc.nat(), fc.nat(1000), (n, seed, epoch) => isPermutation(epochOrder(n, seed, epoch))));
  });

  it('gives the same order for the same seed and epoch (property)', () => {
    fc.assert(fc.property(fc.nat(300), fc.nat(), fc.nat(1000), (n, seed, epoch) => {
      expect(Array.from(epochOrder(n, seed, epoch))).toEqual(Array.from(epochOrder(n, seed, epoch)));
    }));
  });

  it('gives a different order in a different epoch and under a different seed', () => {
    fc.assert(fc.property(fc.integer({ min: 20, max: 300 }), fc.nat(), fc.nat(1000), (n, seed, epoch) => {
      const a = Array.from(epochOrder(n, seed, epoch));
      expect(Array.from(epochOrder(n, seed, epoch + 1))).not.toEqual(a);
      expect(Array.from(epochOrder(n, seed + 1, epoch))).not.toEqual(a);
    }));
  });

  it('does not depend on anything but its arguments (pinned values: same on every platform and release)', () => {
    expect(Array.from(epochOrder(10, 42, 0))).toEqual([4, 9, 6, 8, 1, 7, 2, 3, 5, 0]);
    expect(Array.from(epochOrder(10, 42, 1))).toEqual([8, 9, 5, 1, 2, 4, 0, 6, 7, 3]);
    expect(epochSeed(42, 0)).toBe(2947381824);
  });

  it('is the identity with shuffle off', () => {
    expect(Array.from(epochOrder(5, 1, 3, false))).toEqual([0, 1, 2, 3, 4]);
  });

  it('spreads records evenly: every record lands in every position about equally often', () => {
    const n = 8;
    const counts = Array.from({ length: n }, () => new Array(n).fill(0));
    const epochs = 4000;
    for (let e = 0; e < epochs; e++) epochOrder(n, 7, e).forEach((rec, pos) => counts[rec]![pos]++);
    for (const row of counts) for (const c of row) expect(Math.abs(c - epochs / n)).toBeLessThan(epochs / n / 4);
  });

  it('rejects seeds and epochs that are not non-negative integers', () => {
    expect(() => epochOrder(3, -1, 0)).toThrow(RangeError);
    expect(() => epochOrder(3, 1, 0.5)).toThrow(RangeError);
  });
});

describe('Mulberry32', () => {
  it('draws below n without bias and reproducibly', () => {
    const a = new Mulberry32(123);
    const b = new Mulberry32(123);
    for (let i = 0; i < 100; i++) expect(a.nextU32()).toBe(b.nextU32());
    const r = new Mulberry32(9);
    for (let i = 0; i < 1000; i++) {
      const x = r.below(7);
      expect(Number.isInteger(x) && x >= 0 && x < 7).toBe(true);
    }
  });
});
