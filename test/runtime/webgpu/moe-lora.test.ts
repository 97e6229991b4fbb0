/**
 * The fused mixture-of-LoRA linear (src/runtime/webgpu/moe-lora.ts) against the composition of the plan's
 * reference kernels it replaces (linear + lora_down/lora_up for the shared pair + router + topk_gate +
 * moe_down_batched + moe_up_grouped), on the cpu backend: outputs y, p, gates and the gradients of a random
 * weighting of all three with respect to x and every weight, on awkward shapes (sizes off every tile, one
 * token, top_k = experts, ranks that are not multiples of 4, sigmoid without renormalisation, plain LoRA,
 * no adapter at all). Needs WebGPU: see kernels-support.ts for skip-or-fail.
 */
import { expect, it } from 'vitest';
import { reference, type KernelContext, type KernelStep } from '../../../src/runtime/kernels/reference.js';
import { initBackend, tf, type Tensor } from '../../../src/runtime/tfjs/index.js';
import { moeLoraLinear, moeLoraLinearPair } from '../../../src/runtime/webgpu/moe-lora.js';
import { CANDIDATES, forceTile } from '../../../src/runtime/webgpu/gemm-tune.js';
import type { Tile } from '../../../src/runtime/webgpu/gemm-wgsl.js';
import { compare, describeGpu, randn, type Arg } from './kernels-support.js';
import { cachedCopy, cachedCopyCount, emulateF16, F16_EMULATION_TILES, releaseCachedCopies, setF16Tile, type Emulation } from '../../../src/runtime/webgpu/gemm-f16.js';
import { runWgsl } from '../../../src/runtime/webgpu/program.js';

interface Case {
  name: string;
  T: number;
  din: number;
  dout: number;
  RS: number;
  E: number;
  r: number;
  topK: number;
  renormalize: boolean;
  activation: 'softmax' | 'sigmoid';
  bias: boolean;
  routerBias: boolean;
  scale: number;
}

const base = { RS: 0, E: 0, r: 0, topK: 0, renormalize: true, activation: 'softmax' as const, bias: false, routerBias: false, scale: 2 };
const cases: Case[] = [
  { ...base, name: 'linear without adapters', T: 6, din: 5, dout: 7, bias: true },
  { ...base, name: 'plain LoRA, rank 3, bias', T: 5, din: 7, dout: 9, RS: 3, bias: true },
  { ...base, name: 'shared 4 + 4 experts rank 3 top-2, router bias', T: 13, din: 10, dout: 11, RS: 4, E: 4, r: 3, topK: 2, bias: true, routerBias: true },
  { ...base, name: 'one token, top_k = experts = 3, rank 4', T: 1, din: 8, dout: 12, E: 3, r: 4, topK: 3, routerBias: true },
  { ...base, name: 'sigmoid router, top-1, no renormalisation, rank 8', T: 9, din: 12, dout: 6, E: 5, r: 8, topK: 1, renormalize: false, activation: 'sigmoid', routerBias: true, scale: 0.5 },
  { ...base, name: 'several tiles: T 70, dout 68, shared 8, 8 experts rank 4 top-2', T: 70, din: 36, dout: 68, RS: 8, E: 8, r: 4, topK: 2, bias: true, routerBias: true },
];

const step = (op: KernelStep['op'], attrs: Record<string, unknown>): KernelStep => ({ node: 'n', op, inputs: [], outputs: [], attrs });
const ctx = {} as KernelContext;

function args(c: Case, seed: number): Arg[] {
  const a: Arg[] = [randn(seed, [c.T, c.din]), randn(seed + 1, [c.dout, c.din], 0.5)];
  if (c.bias) a.push(randn(seed + 2, [c.dout], 0.5));
  if (c.RS) a.push(randn(seed + 3, [c.RS, c.din], 0.5), randn(seed + 4, [c.dout, c.RS], 0.5));
  if (c.E) {
    a.push(randn(seed + 5, [c.E, c.din], 1));
    if (c.routerBias) a.push(randn(seed + 6, [c.E], 0.5));
    a.push(randn(seed + 7, [c.E, c.r, c.din], 0.5), randn(seed + 8, [c.E, c.dout, c.r], 0.5));
  }
  return a;
}

function unpack(c: Case, xs: Tensor[]) {
  let i = 0;
  const x = xs[i++]!;
  const w = xs[i++]!;
  const b = c.bias ? xs[i++] : undefined;
  const sharedA = c.RS ? xs[i++] : undefined;
  const sharedB = c.RS ? xs[i++] : undefined;
  const routerW = c.E ? xs[i++] : undefined;
  const routerB = c.E && c.routerBias ? xs[i++] : undefined;
  const expertA = c.E ? xs[i++] : undefined;
  const expertB = c.E ? xs[i++] : undefined;
  return { x, w, b, sharedA, sharedB, routerW, routerB, expertA, expertB };
}

function ours(c: Case, base: 'fused' | 'f32' | 'f16' = 'fused') {
  return (xs: Tensor[]): Tensor[] => {
    const { x, ...wts } = unpack(c, xs);
    const res = moeLoraLinear(x, wts, { scale: c.scale, topK: c.topK, renormalize: c.renormalize, activation: c.activation, base });
    return c.E ? [res.y, res.p!, res.gates!] : [res.y];
  };
}

/** The plan's ops, one reference kernel each. */
function planOps(c: Case) {
  return (xs: Tensor[]): Tensor[] => {
    const v = unpack(c, xs);
    const terms = [reference.linear(v.b ? [v.x, v.w, v.b] : [v.x, v.w], step('linear', {}), ctx)[0]!];
    if (c.RS) {
      const h = reference.lora_down([v.x, v.sharedA!], step('lora_down', {}), ctx)[0]!;
      terms.push(reference.lora_up([h, v.sharedB!], step('lora_up', { scale: c.scale }), ctx)[0]!);
    }
    if (!c.E) return [terms.length === 1 ? terms[0]! : tf.addN(terms)];
    const p = reference.router(v.routerB ? [v.x, v.routerW!, v.routerB] : [v.x, v.routerW!], step('router', { activation: c.activation }), ctx)[0]!;
    const gates = reference.topk_gate([p], step('topk_gate', { k: c.topK, renormalize: c.renormalize }), ctx)[0]!;
    const h = reference.moe_down_batched([v.x, v.expertA!], step('moe_down_batched', {}), ctx)[0]!;
    terms.push(reference.moe_up_grouped([h, gates, v.expertB!], step('moe_up_grouped', { sharedRank: 0, rank: c.r, experts: c.E, scale: c.scale }), ctx)[0]!);
    return [tf.addN(terms), p, gates];
  };
}

/** Two sites of the same x (an FFN's gate and up): args x, c1's weights, c2's weights (c2 shares T, din and the options). */
function pairArgs(c1: Case, c2: Case, seed: number): Arg[] {
  return [...args(c1, seed), ...args(c2, seed + 50).slice(1)];
}
const split = (c1: Case, xs: Tensor[]) => {
  const n1 = args(c1, 0).length;
  return [xs.slice(0, n1), [xs[0]!, ...xs.slice(n1)]] as [Tensor[], Tensor[]];
};
const outsOf = (c: Case, r: { y: Tensor; p?: Tensor; gates?: Tensor }) => (c.E ? [r.y, r.p!, r.gates!] : [r.y]);
function oursPair(c1: Case, c2: Case, base: 'fused' | 'f32' | 'f16' = 'fused') {
  return (xs: Tensor[]): Tensor[] => {
    const [xs1, xs2] = split(c1, xs);
    const { x, ...w1 } = unpack(c1, xs1);
    const { x: _x, ...w2 } = unpack(c2, xs2);
    void _x;
    const [r1, r2] = moeLoraLinearPair(x, [w1, w2], { scale: c1.scale, topK: c1.topK, renormalize: c1.renormalize, activation: c1.activation, base });
    return [...outsOf(c1, r1), ...outsOf(c2, r2)];
  };
}
function planPair(c1: Case, c2: Case) {
  return (xs: Tensor[]): Tensor[] => {
    const [xs1, xs2] = split(c1, xs);
    return [...planOps(c1)(xs1), ...planOps(c2)(xs2)];
  };
}

/** fn with every f16 GEMM in the emulated spelling (`mode`, see Emulation) on a tile whose f32 staging fits llvmpipe's 32 KiB (the default's does not). */
async function emulatingF16(mode: Emulation, fn: () => Promise<void>): Promise<void> {
  emulateF16(mode);
  setF16Tile(F16_EMULATION_TILES[3]!);
  try {
    await fn();
  } finally {
    emulateF16(false);
    setF16Tile(undefined);
  }
}

describeGpu('fused mixture-of-LoRA linear on WebGPU', () => {
  cases.forEach((c, i) => {
    it(`${c.name}: y, p, gates and every gradient equal the plan's reference ops`, async () => {
      const { worst, what } = await compare(ours(c), planOps(c), args(c, 100 * (i + 1)), 11 + i);
      expect(worst, what).toBeLessThan(2e-4);
    });
  });

  it('tiles of every kind (prefetch, double buffering, 8x16 blocks, swizzled order, one too big beside the kernel arrays) compute the fused kernels alike', async () => {
    const c = cases.find((x) => x.E && x.RS) ?? cases[0]!;
    try {
      const bad: string[] = [];
      // One of each kind (a 58 s loop over all on llvmpipe): prefetch, a 32 KB tile that with the kernel's own
      // arrays exceeds llvmpipe's 32 KB (the kernels fall back to a smaller tile), double buffering, 8x16 blocks.
      const kinds = [
        CANDIDATES.find((t) => t.pf && !t.db),
        CANDIDATES.find((t) => t.pf && t.bk === 32),
        CANDIDATES.find((t) => t.db && t.bk === 16),
        CANDIDATES.find((t) => t.db && t.tn === 16),
        // Swizzled order: the router writes its outputs from the first column of blocks, found by n0; with the
        // K-slice's steps written out (ur) in every segment.
        { bm: 32, bn: 32, bk: 16, tm: 4, tn: 4, sw: 2, ur: true },
      ];
      expect(kinds.every(Boolean)).toBe(true);
      for (const tile of kinds as Tile[]) {
        forceTile(tile);
        const { worst, what } = await compare(ours(c), planOps(c), args(c, 7), 3);
        if (!(worst < 2e-4)) bad.push(`${JSON.stringify(tile)} ${what} ${worst}`);
      }
      expect(bad).toEqual([]);
    } finally {
      forceTile(undefined);
    }
    // 34 s on a cold shader cache (a fresh CI machine: llvmpipe compiles each tile's kernels), ~1 s warm.
  }, 180_000);

  it('the base product apart (the tensor-core path\'s plumbing, here through the f32 GEMM): y, p, gates and every gradient, W\'s too', async () => {
    for (const c of cases.filter((x) => x.E || x.RS)) {
      const { worst, what } = await compare(ours(c, 'f32'), planOps(c), args(c, 31), 9);
      expect(worst, `${c.name}: ${what}`).toBeLessThan(2e-4);
    }
  });

  it('the tensor-core base path (the f16 GEMM in its emulated spelling, W\'s cached copy), single sites and pairs: outputs and every gradient', async () => {
    await emulatingF16(true, async () => {
      // Emulated modules compile slowly on llvmpipe: shared + routed experts, one token with top_k = experts,
      // and the pair of sites of several tiles.
      for (const c of [cases[2]!, cases[3]!]) {
        const { worst, what } = await compare(ours(c, 'f16'), planOps(c), args(c, 32), 9);
        expect(worst, `${c.name}: ${what}`).toBeLessThan(2e-4);
      }
      const c1 = cases[5]!;
      const b = { ...c1, dout: 61, bias: false, routerBias: false };
      const r = await compare(oursPair(c1, b, 'f16'), planPair(c1, b), pairArgs(c1, b, 74), 8);
      expect(r.worst, `pair: ${r.what}`).toBeLessThan(2e-4);
    });
  });

  it('the tensor-core base path with its operands rounded to f16 (the GPU\'s arithmetic): within f16\'s rounding of the f32 reference', async () => {
    await emulatingF16('f16', async () => {
      // bench/gpu.ts checks the FFN layer's tensor-core path against the f32 one at 4.7e-4 on an H200; here the same
      // kind of check on llvmpipe: the base product's x and W rounded to f16, sums in f32, routing in f32.
      const c = cases[2]!;
      const { worst, what } = await compare(ours(c, 'f16'), planOps(c), args(c, 33), 9);
      expect(worst, `${c.name}: ${what}`).toBeLessThan(5e-3); // 3.1e-4 here (a gradient)
      expect(worst).toBeGreaterThan(1e-5); // the rounding took effect: without it the two differ by f32 rounding only
    });
  });

  it('only the gradients asked for: x alone (adapters frozen), the adapters alone (x needs none), fused and apart', async () => {
    const c = cases[5]!;
    for (const baseMode of ['fused', 'f32'] as const) {
      const xOnly = args(c, 61).map((a, i) => ({ ...a, diff: i === 0 }));
      const r1 = await compare(ours(c, baseMode), planOps(c), xOnly, 6);
      expect(r1.worst, `${baseMode} x only: ${r1.what}`).toBeLessThan(2e-4);
      const adaptersOnly = args(c, 62).map((a, i) => ({ ...a, diff: i > 1 }));
      const r2 = await compare(ours(c, baseMode), planOps(c), adaptersOnly, 7);
      expect(r2.worst, `${baseMode} adapters only: ${r2.what}`).toBeLessThan(2e-4);
    }
  });

  it('two sites of one x as one op (moeLoraLinearPair): outputs and every gradient, fused and apart, routed with plain LoRA, x alone, adapters alone', async () => {
    const c1 = cases[5]!;
    const pairsOf: [Case, Case][] = [
      [c1, { ...c1, dout: 61, bias: false, routerBias: false }],
      [cases[2]!, { ...cases[2]!, E: 0, r: 0, RS: 5, dout: 9, bias: false, routerBias: false }],
    ];
    for (const [a, b] of pairsOf) {
      for (const baseMode of ['fused', 'f32'] as const) {
        const r = await compare(oursPair(a, b, baseMode), planPair(a, b), pairArgs(a, b, 71), 8);
        expect(r.worst, `${a.name} + ${b.dout}, ${baseMode}: ${r.what}`).toBeLessThan(2e-4);
      }
    }
    const [a, b] = pairsOf[0]!;
    const xOnly = pairArgs(a, b, 72).map((t, i) => ({ ...t, diff: i === 0 }));
    const r1 = await compare(oursPair(a, b), planPair(a, b), xOnly, 9);
    expect(r1.worst, `x only: ${r1.what}`).toBeLessThan(2e-4);
    const n1 = args(a, 0).length;
    const secondOnly = pairArgs(a, b, 73).map((t, i) => ({ ...t, diff: i > n1 }));
    const r2 = await compare(oursPair(a, b, 'f32'), planPair(a, b), secondOnly, 10);
    expect(r2.worst, `the second site's adapters only: ${r2.what}`).toBeLessThan(2e-4);
  });

  it('the pair records one tfjs kernel forward and one backward, x\'s gradient summed in the second dx GEMM (no Add)', async () => {
    const a = { ...cases[2]!, bias: false };
    const b = { ...a, dout: 7 };
    await initBackend('webgpu');
    const xs = pairArgs(a, b, 81).map((t) => tf.tensor(t.data, t.shape));
    const n1 = args(a, 0).length;
    const trained = xs.filter((_, i) => i !== 1 && i !== n1);
    const dys = [tf.randomNormal([a.T, a.dout]), tf.randomNormal([b.T, b.dout])];
    for (const baseMode of ['fused', 'f32'] as const) {
      const info = await tf.profile(() => {
        const { grads } = tf.engine().gradients(
          () => {
            const o = oursPair(a, b, baseMode)(xs);
            return tf.addN([tf.sum(tf.mul(o[0]!, dys[0]!)), tf.sum(tf.mul(o[3]!, dys[1]!))]) as tf.Scalar;
          },
          trained,
          undefined,
          true,
        );
        tf.dispose(grads);
      });
      const names = info.kernels.map((k) => k.name).filter((n) => n.startsWith('McpcMoe') || ['McpcGemm', 'Add'].includes(n));
      expect(names.sort(), baseMode).toEqual(['McpcMoeLoraPair', 'McpcMoeLoraPairGrad']);
    }
    tf.dispose([...xs, ...dys]);
  });

  it('p and gates alone differentiate (y off the backward path: its dy is null, not an array of zeros)', async () => {
    const c = cases[2]!;
    const pg = (f: (xs: Tensor[]) => Tensor[]) => (xs: Tensor[]) => f(xs).slice(1);
    const { worst, what } = await compare(pg(ours(c)), pg(planOps(c)), args(c, 55), 4);
    expect(worst, what).toBeLessThan(2e-4);
  });

  it('forward+backward is one tfjs kernel forward and one backward, the base product apart or not (no GEMM, Add, Slice or Sum kernels beside them)', async () => {
    // Router bias trained (its column sum is a dispatch of McpcMoeLoraGrad); no base bias (whose gradient is a Sum).
    const c = { ...cases[2]!, bias: false };
    await initBackend('webgpu');
    const xs = args(c, 77).map((t) => tf.tensor(t.data, t.shape));
    const trained = xs.filter((_, i) => i !== 1);
    const dy = tf.randomNormal([c.T, c.dout]);
    for (const baseMode of ['fused', 'f32'] as const) {
      const info = await tf.profile(() => {
        const { grads } = tf.engine().gradients(() => ours(c, baseMode)(xs)[0]!, trained, dy, true);
        tf.dispose(grads);
      });
      const names = info.kernels.map((k) => k.name).filter((n) => n.startsWith('McpcMoe') || ['McpcGemm', 'Add', 'Slice', 'Sum'].includes(n));
      expect(names.sort(), baseMode).toEqual(['McpcMoeLora', 'McpcMoeLoraGrad']);
    }
    tf.dispose([...xs, dy]);
  });

  it("a frozen tensor's cached copy (the tensor-core path's f16 W) is made once, remade for a different tensor, released with its source", async () => {
    await initBackend('webgpu');
    const backend = tf.backend() as any;
    releaseCachedCopies(backend);
    // The copy here is 2·src in f32 (llvmpipe has no f16): the cache is the same whatever `make` derives.
    const code = `@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read_write> b: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) { if (g.x < arrayLength(&b)) { b[g.x] = 2.0 * a[g.x]; } }`;
    let made = 0;
    const copyOf = (t: tf.Tensor) =>
      cachedCopy(backend, t, 'x2', () => {
        made++;
        return runWgsl(backend, { code, inputs: [t], outputs: [{ shape: t.shape, dtype: 'float32' }], dispatch: [Math.ceil(t.size / 64), 1, 1] })[0]!;
      });
    const read = async (info: any) => Array.from(await backend.read(info.dataId) as Float32Array);
    const w1 = tf.tensor([1, 2, 3, 4, 5]);
    const c1 = copyOf(w1);
    expect(copyOf(w1)).toBe(c1);
    expect(made).toBe(1);
    expect(await read(c1)).toEqual([2, 4, 6, 8, 10]);
    // The same values in a different tensor (a weight replaced, as an update or a variable's assign does) miss.
    const w2 = tf.tensor([7, 8, 9, 10, 11]);
    const c2 = copyOf(w2);
    expect(made).toBe(2);
    expect(await read(c2)).toEqual([14, 16, 18, 20, 22]);
    expect(cachedCopyCount(backend)).toBe(2);
    // A disposed source's copy goes at the next lookup (a shared reference keeps the source alive until it goes too).
    const kept = tf.keep(w1.clone());
    w1.dispose();
    copyOf(w2);
    expect(cachedCopyCount(backend)).toBe(2);
    kept.dispose();
    await tf.ready();
    const { gpuSync } = await import('../../../src/runtime/webgpu/gemm.js');
    await gpuSync();
    copyOf(w2);
    expect(cachedCopyCount(backend)).toBe(1);
    expect(backend.tensorMap.has(c1.dataId)).toBe(false);
    expect(made).toBe(2);
    w2.dispose();
    releaseCachedCopies(backend);
    expect(cachedCopyCount(backend)).toBe(0);
  });

  it('a frozen base weight costs no gradient GEMM, and y alone still differentiates (p, gates unused)', async () => {
    const c = cases[2]!;
    const a = args(c, 900);
    a[1] = { ...a[1]!, diff: false };
    const { worst, what } = await compare((xs) => [ours(c)(xs)[0]!], (xs) => [planOps(c)(xs)[0]!], a, 5);
    expect(worst, what).toBeLessThan(2e-4);
    // Which kernels the backward ran: the per-token routing backward and the fused dx/dA/dB, no base dW.
    await initBackend('webgpu');
    const xs = a.map((t) => tf.tensor(t.data, t.shape));
    const trained = xs.filter((_, i) => i !== 1);
    const info = await tf.profile(() => {
      const { grads } = tf.engine().gradients(() => tf.sum(ours(c)(xs)[0]!) as tf.Scalar, trained, undefined, true);
      tf.dispose(grads);
    });
    const names = info.kernels.map((k) => k.name);
    expect(names).toContain('McpcMoeLoraGrad');
    expect(names.filter((n) => n === 'McpcGemm')).toEqual([]);
    tf.dispose(xs);
  });
});
