/**
 * Every WGSL kernel (src/runtime/webgpu/kernels/) against its reference (src/runtime/kernels/reference.ts):
 * forward outputs and gradients on random data, awkward shapes included (sizes that are not multiples of the
 * workgroup, one token, one head, kvHeads < heads). Ours run on WebGPU (llvmpipe on a CPU), the reference on
 * the tfjs cpu backend. Needs a WebGPU adapter: see kernels-support.ts for skip-or-fail.
 */
import { afterAll, expect, it } from 'vitest';
import { reference, ropeTables, type KernelContext, type KernelStep } from '../../../src/runtime/kernels/reference.js';
import { initBackend, type Tensor } from '../../../src/runtime/tfjs/index.js';
import { attention, segmentTensor } from '../../../src/runtime/webgpu/kernels/attention.js';
import { rmsnorm } from '../../../src/runtime/webgpu/kernels/rmsnorm.js';
import { rope } from '../../../src/runtime/webgpu/kernels/rope.js';
import { swiglu } from '../../../src/runtime/webgpu/kernels/swiglu.js';
import { lmHeadXent } from '../../../src/runtime/webgpu/kernels/xent.js';
import { adamwFlat } from '../../../src/runtime/webgpu/kernels/adamw.js';
import { orthoPenaltyBatched, type OrthoTermSpec } from '../../../src/runtime/webgpu/kernels/ortho.js';
import { flat, unflat, update, type SlotState } from '../../../src/runtime/optimizer.js';
import { tf } from '../../../src/runtime/tfjs/index.js';
import { compare, describeGpu, rand, randn, type Arg } from './kernels-support.js';

const step = (op: KernelStep['op'], attrs: Record<string, unknown>, inputs: string[] = [], outputs: string[] = ['y']): KernelStep => ({ node: 'n', op, inputs, outputs, attrs });
/**
 * A batch context of `rows` rows of S tokens: each row packs examples of random lengths (positions restart,
 * segments 1, 2, ...) and ends with `pad` padding tokens (segment 0, position 0).
 */
function batchCtx(rows: number, S: number, seed: number, pad = 2): KernelContext {
  let x = seed;
  const next = () => ((x = (x * 1103515245 + 12345) >>> 0), x / 2 ** 32);
  const positions = new Int32Array(rows * S);
  const segments = new Int32Array(rows * S);
  for (let r = 0; r < rows; r++) {
    let seg = 1;
    let pos = 0;
    const real = Math.max(1, S - pad);
    for (let t = 0; t < S; t++) {
      if (t >= real) continue;
      if (pos > 0 && next() < 0.15) {
        seg++;
        pos = 0;
      }
      segments[r * S + t] = seg;
      positions[r * S + t] = pos++;
    }
  }
  return { rows, seqLen: S, positions, segments, cache: new Map() };
}
const noCtx = { rows: 1, seqLen: 1, positions: new Int32Array(1), segments: new Int32Array(1), cache: new Map<string, Tensor>() };

describeGpu('WGSL kernels match the reference', () => {
  afterAll(() => initBackend('cpu'));

  it.each([
    [1, 7, true],
    [5, 130, true],
    [33, 64, false],
    [300, 24, true],
  ])('rmsnorm T=%i D=%i weight=%s', async (T, D, withW) => {
    const args = [randn(1, [T, D], 2), ...(withW ? [randn(2, [D])] : [])];
    const s = step('rmsnorm', { eps: 1e-6 });
    const c = await compare(
      (xs) => [rmsnorm(xs[0]!, xs[1], 1e-6)],
      (xs) => reference.rmsnorm(xs, s, noCtx),
      args,
    );
    expect(c.worst, c.what).toBeLessThan(2e-5);
  });

  it.each([[1], [37], [1000]])('swiglu n=%i', async (n) => {
    const c = await compare((xs) => [swiglu(xs[0]!, xs[1]!)], (xs) => reference.swiglu(xs, step('swiglu', {}), noCtx), [randn(3, [n], 4), randn(4, [n])]);
    expect(c.worst, c.what).toBeLessThan(2e-5);
  });

  it.each([
    // rows, S, heads, kvHeads, headDim
    [1, 1, 1, 1, 2],
    [2, 9, 4, 2, 6],
    [1, 40, 3, 1, 16],
  ])('rope rows=%i S=%i heads=%i kvHeads=%i d=%i', async (rows, S, H, KV, d) => {
    const ctx = batchCtx(rows, S, 5);
    const T = rows * S;
    const attrs = { theta: 10000, headDim: d, heads: H, kvHeads: KV };
    const c = await compare(
      (xs) => {
        const [cos, sin] = ropeTables({ ...ctx, cache: new Map() }, d, 10000, 2);
        return [rope(xs[0]!, cos, sin, H, d), rope(xs[1]!, cos, sin, KV, d)];
      },
      (xs) => reference.rope(xs, step('rope', attrs, [], ['q', 'k']), { ...ctx, cache: new Map() }),
      [randn(6, [T, H * d]), randn(7, [T, KV * d])],
    );
    expect(c.worst, c.what).toBeLessThan(2e-5);
  });

  it.each([
    // rows, S, heads, kvHeads, headDim, causal
    [1, 1, 1, 1, 8, true],
    [2, 9, 4, 2, 6, true],
    [1, 70, 2, 1, 16, true],
    [2, 5, 3, 3, 10, false],
    [2, 5, 4, 2, 10, false],
    [2, 5, 3, 3, 10, true],
    [1, 9, 1, 1, 2, true],
    [1, 67, 2, 1, 72, true],
  ])('attention rows=%i S=%i heads=%i kvHeads=%i d=%i causal=%s', async (rows, S, H, KV, d, causal) => {
    const ctx = batchCtx(rows, S, 11);
    const T = rows * S;
    const a = { rows, seqLen: S, heads: H, kvHeads: KV, headDim: d, causal };
    const c = await compare(
      (xs) => [attention(xs[0]!, xs[1]!, xs[2]!, segmentTensor(ctx.segments), a)],
      (xs) => reference.attention(xs, step('attention', { heads: H, kvHeads: KV, headDim: d, causal }), { ...ctx, cache: new Map() }),
      [randn(8, [T, H * d], 1.5), randn(9, [T, KV * d], 1.5), randn(10, [T, KV * d])],
    );
    expect(c.worst, c.what).toBeLessThan(1e-4);
  });

  it.each([
    // T, Dm, V, masked share, labels as float, chunk width (default: XENT_CHUNK), labels out of range
    [1, 8, 5, 0, false, undefined, false],
    [13, 24, 300, 0.3, true, undefined, false],
    [70, 130, 129, 0.5, false, undefined, false],
    [9, 20, 20000, 0.2, false, undefined, false],
    [6, 16, 40, 1, false, undefined, false],
    [1, 3, 5, 0, false, 3, false],
    [13, 24, 300, 0.3, false, 128, false],
    [37, 9, 131, 0.1, false, 33, true],
    [5, 7, 64, 0, false, 64, true],
  ])('lm_head_xent T=%i Dm=%i V=%i masked=%f float labels=%s chunk=%s labels out of range=%s', async (T, Dm, V, masked, floatLabels, chunk, outside) => {
    const r = rand(T * 31 + V);
    // Out of range (-1, V): the reference's one-hot row is all zeros, so the token adds nothing.
    const labels = Int32Array.from({ length: T }, (_, t) => (outside && t % 3 === 1 ? (t % 2 ? -1 : V) : Math.floor(((r() + 1) / 2) * V)));
    const mask = Float32Array.from({ length: T }, () => ((r() + 1) / 2 < masked ? 0 : 1));
    const args: Arg[] = [randn(12, [T, Dm]), randn(13, [V, Dm], 0.5), { data: floatLabels ? Float32Array.from(labels) : labels, shape: [T] }, { data: mask, shape: [T] }];
    const c = await compare(
      (xs) => [lmHeadXent(xs[0]!, xs[1]!, xs[2]!, xs[3]!, chunk)],
      (xs) => reference.lm_head_xent(xs, step('lm_head_xent', {}), noCtx),
      args,
    );
    expect(c.worst, c.what).toBeLessThan(5e-5);
  });

  it('lm_head_xent records one kernel forward and one per gradient asked for (no tfjs ops, no Identity), its saved tensors freed after backward', async () => {
    await initBackend('webgpu');
    const T = 11;
    const xs = [tf.randomNormal([T, 6]), tf.randomNormal([50, 6]), tf.tensor(Int32Array.from({ length: T }, (_, t) => (t * 7) % 50), [T], 'int32'), tf.ones([T])];
    try {
      const before = tf.memory().numTensors;
      let kept: Tensor[] = [];
      const only = async (diff: number[]): Promise<string[]> =>
        (
          await tf.profile(() => {
            const { value, grads } = tf.engine().gradients(() => lmHeadXent(xs[0]!, xs[1]!, xs[2]!, xs[3]!, 16) as tf.Scalar, diff.map((i) => xs[i]!));
            kept = [value, ...grads];
            return [];
          })
        ).kernels.map((k) => k.name);
      // The objective is the loss itself: autodiff seeds dy with ones (Fill) and records nothing else but ours.
      expect((await only([0, 1])).filter((n) => n !== 'Fill')).toEqual(['McpcXent', 'McpcXentGrad', 'McpcXentGrad']);
      tf.dispose(kept);
      expect((await only([0])).filter((n) => n !== 'Fill')).toEqual(['McpcXent', 'McpcXentGrad']);
      tf.dispose(kept);
      expect(tf.memory().numTensors).toBe(before);
    } finally {
      tf.dispose(xs);
    }
  });

  it.each([
    ['A', 'l1', true],
    ['A', 'fro', true],
    ['B', 'l2', false],
  ])('ortho_penalty_batched matrix=%s norm=%s weighted=%s', async (matrix, norm, weighted) => {
    // Two sites of different widths; adapter a (plain LoRA, rank 3), b (routed experts 2 × rank 2, shared rank 1),
    // c (rank 5): terms a⊥b, a⊥c at both sites and b⊥c at one, so rows appear in several terms.
    const sites = [
      { s: 's1', in: 7, out: 9 },
      { s: 's2', in: 130, out: 5 },
    ];
    const ids: string[] = [];
    const args: Arg[] = [];
    let seed = 40;
    const add = (id: string, shape: number[]) => {
      ids.push(id);
      args.push(randn(seed++, shape, 0.5));
    };
    for (const { s, in: i, out: o } of sites) {
      add(`a.${s}.A`, matrix === 'A' ? [3, i] : [o, 3]);
      add(`b.${s}.shared`, matrix === 'A' ? [1, i] : [o, 1]);
      add(`b.${s}.expert`, matrix === 'A' ? [2, 2, i] : [2, o, 2]);
      add(`c.${s}.A`, matrix === 'A' ? [5, i] : [o, 5]);
    }
    const terms: OrthoTermSpec[] = [];
    sites.forEach(({ s }, k) => {
      terms.push({ targetParams: [`a.${s}.A`], otherParams: [`b.${s}.shared`, `b.${s}.expert`], matrix, norm, weight: 0.5 + k });
      terms.push({ targetParams: [`a.${s}.A`], otherParams: [`c.${s}.A`], matrix, norm, weight: 0.25 });
    });
    terms.push({ targetParams: [`b.s2.shared`, `b.s2.expert`], otherParams: [`c.s2.A`], matrix, norm, weight: 2 });
    const st = step('ortho_penalty_batched', { terms, weighted }, ids);
    const c = await compare(
      (xs) => [orthoPenaltyBatched(terms, (id) => xs[ids.indexOf(id)]!, weighted)!],
      (xs) => reference.ortho_penalty_batched(xs, st, noCtx),
      args,
    );
    expect(c.worst, c.what).toBeLessThan(5e-5);
  });

  it('adamw_all updates every tensor as optimizer.ts does', async () => {
    const shapes = [[3, 5], [1], [130], [2, 3, 4]];
    const opt = { kind: 'adamw' as const, beta1: 0.9, beta2: 0.999, eps: 1e-8 };
    const mk = (seed: number, s: number[]) => randn(seed, s).data as Float32Array;
    const data = shapes.map((s, i) => ({ p: mk(60 + i, s), g: mk(70 + i, s), m: mk(80 + i, s).map((x) => x * 0.1), v: mk(90 + i, s).map((x) => x * x * 0.01) }));
    const results: Record<string, Float32Array[]> = {};
    for (const backend of ['cpu', 'webgpu'] as const) {
      await initBackend(backend);
      const out: Float32Array[] = [];
      for (const [t, lr, wd, clip] of [[1, 1e-3, 0.01, 1], [7, 3e-4, 0, 0.37]] as const) {
        const ts = tf.tidy(() => {
          const P = data.map((d, i) => tf.tensor(d.p, shapes[i]));
          const G = data.map((d, i) => tf.tensor(d.g, shapes[i]));
          const M = data.map((d, i) => tf.tensor(d.m, shapes[i]));
          const V = data.map((d, i) => tf.tensor(d.v, shapes[i]));
          if (backend === 'webgpu') {
            const r = adamwFlat(flat(P), flat(G), flat(M), flat(V), { lr, weightDecay: wd, beta1: opt.beta1, beta2: opt.beta2, eps: opt.eps, t, gradScale: clip });
            return [r.p, r.m, r.v].flatMap((x) => unflat(x, shapes));
          }
          const rs = P.map((p, i) => update(opt, p, clip === 1 ? G[i]! : tf.mul(G[i]!, clip), { m: M[i]!, v: V[i]! } as SlotState, lr, wd, t));
          return [...rs.map((r) => r.p), ...rs.map((r) => r.s.m), ...rs.map((r) => r.s.v!)];
        });
        for (const x of ts) out.push(Float32Array.from(await x.data()));
        tf.dispose(ts);
      }
      results[backend] = out;
    }
    results.cpu!.forEach((ref, i) => {
      const ours = results.webgpu![i]!;
      const diff = Math.max(...Array.from(ref, (x, k) => Math.abs(x - ours[k]!) / Math.max(1e-6, Math.abs(x))));
      expect(diff, `tensor ${i}`).toBeLessThan(1e-6);
    });
  });
});
