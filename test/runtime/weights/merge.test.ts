import { describe, expect, it } from 'vitest';
import { foldAdapters, foldedWeight, loraDelta, loraViews, maxAbsDiff, mergeAdapter, mergeLora, unmergeLora } from '../../../src/runtime/weights/merge.js';
import { compileInline, pipeline, randomParameters, randomValues } from './helpers.js';

/** W + s B A by the textbook triple loop, in float64. */
function naive(W: Float32Array, A: Float32Array, B: Float32Array, s: number, out: number, inF: number): Float64Array {
  const r = A.length / inF;
  const res = new Float64Array(out * inF);
  for (let o = 0; o < out; o++) {
    for (let i = 0; i < inF; i++) {
      let acc = 0;
      for (let k = 0; k < r; k++) acc += B[o * r + k]! * A[k * inF + i]!;
      res[o * inF + i] = W[o * inF + i]! + s * acc;
    }
  }
  return res;
}

/** y = x M^T for x [n, in], M [out, in]. */
function matmulT(x: Float64Array | Float32Array, M: ArrayLike<number>, n: number, inF: number, out: number): Float64Array {
  const y = new Float64Array(n * out);
  for (let t = 0; t < n; t++) for (let o = 0; o < out; o++) {
    let acc = 0;
    for (let i = 0; i < inF; i++) acc += x[t * inF + i]! * M[o * inF + i]!;
    y[t * out + o] = acc;
  }
  return y;
}

describe('mergeLora', () => {
  const out = 24;
  const inF = 40;
  const r = 6;
  const W = randomValues('W', out * inF, 0.5);
  const A = randomValues('A', r * inF, 0.3);
  const B = randomValues('B', out * r, 0.3);

  it('equals the naive triple loop, to one float32 rounding', () => {
    const expected = naive(W, A, B, 1.5, out, inF);
    const got = mergeLora(Float32Array.from(W), A, B, 1.5, out, inF);
    // The same float64 sum rounded once: identical to Math.fround of the naive result.
    expect(Array.from(got)).toEqual(Array.from(expected, Math.fround));
  });

  it('merged and unmerged linears agree on sample inputs', () => {
    const n = 5;
    const x = randomValues('x', n * inF, 1);
    const s = 2;
    const merged = matmulT(x, foldedWeight(W, A, B, s, out, inF), n, inF, out);
    // x W^T + s (x A^T) B^T
    const base = matmulT(x, W, n, inF, out);
    const xa = matmulT(x, A, n, inF, r);
    const lora = matmulT(xa, B, n, r, out);
    const unmerged = base.map((v, i) => v + s * lora[i]!);
    expect(maxAbsDiff(merged, unmerged)).toBeLessThan(1e-5);
  });

  it('foldedWeight copies; unmergeLora inverts; loraDelta is the update alone', () => {
    const before = Float32Array.from(W);
    const f = foldedWeight(W, A, B, 2, out, inF);
    expect(W).toEqual(before);
    expect(maxAbsDiff(f, W)).toBeGreaterThan(0.01);
    expect(maxAbsDiff(unmergeLora(Float32Array.from(f), A, B, 2, out, inF), W)).toBeLessThan(1e-6);
    const d = loraDelta(A, B, 2, out, inF);
    expect(maxAbsDiff(d.map((v, i) => v + W[i]!), f)).toBeLessThan(1e-6);
  });

  it('a zero B changes nothing; bad shapes throw', () => {
    expect(mergeLora(Float32Array.from(W), A, new Float32Array(out * r), 3, out, inF)).toEqual(W);
    expect(() => mergeLora(Float32Array.from(W), A, B, 1, out, inF + 1)).toThrow(RangeError);
    expect(() => mergeLora(Float32Array.from(W), A, B.subarray(1), 1, out, inF)).toThrow(/B has/);
  });

  it('maxAbsDiff reports NaN and length mismatches', () => {
    expect(maxAbsDiff([1, NaN], [1, 2])).toBeNaN();
    expect(maxAbsDiff([1], [1, 2])).toBe(Infinity);
  });
});

describe('plan-level merges', () => {
  const { plan } = compileInline(
    pipeline('builtin("qwen2-micro")', [
      'adapter a = lora(r: 4, alpha: 8) at layers[*].attn.{q, v}',
      'adapter k = lora(r: 4, alpha: 8, experts: 2) at layers[*].mlp.{gate, down}',
      'adapter m = moe_lora(experts: 4, top_k: 2, shared: 2, r: 4, alpha: 16) at layers[1].mlp.up',
    ]),
  );

  it('finds each site\'s A, B and base weight, with the experts\' rank and the plan\'s scale', () => {
    const a = loraViews(plan, 'a');
    expect(a.map((v) => v.site)).toEqual(['layers[0].attn.q', 'layers[0].attn.v', 'layers[1].attn.q', 'layers[1].attn.v']);
    expect(a[1]).toMatchObject({ weight: 'base.layers[0].attn.v.weight', A: 'a.layers[0].attn.v.A', B: 'a.layers[0].attn.v.B', out: 32, in: 64, rank: 4, scale: 2, module: 'model.layers.0.self_attn.v_proj' });
    const k = loraViews(plan, 'k');
    expect(k.every((v) => v.rank === 8 && v.scale === 2)).toBe(true);
    expect(k.find((v) => v.site === 'layers[0].mlp.down')).toMatchObject({ out: 64, in: 176 });
    // A mixture's low-rank part is its shared experts.
    expect(loraViews(plan, 'm')).toEqual([expect.objectContaining({ A: 'm.layers[1].mlp.up.shared_A', B: 'm.layers[1].mlp.up.shared_B', rank: 8, scale: 4 })]);
  });

  it('mergeAdapter changes exactly the adapter\'s base weights; foldAdapters leaves the map alone', () => {
    const params = randomParameters(plan);
    const snapshot = new Map([...params].map(([k, v]) => [k, Float32Array.from(v)]));
    const folded = foldAdapters(plan, params, ['a', 'k']);
    for (const [k, v] of params) expect(v).toEqual(snapshot.get(k));
    expect([...folded.keys()].sort()).toEqual([...loraViews(plan, 'a'), ...loraViews(plan, 'k')].map((v) => v.weight).sort());

    const changed = mergeAdapter(plan, params, 'a');
    expect(changed).toEqual(loraViews(plan, 'a').map((v) => v.weight));
    for (const [id, v] of params) {
      const view = loraViews(plan, 'a').find((x) => x.weight === id);
      if (!view) {
        expect(v).toEqual(snapshot.get(id));
        continue;
      }
      const want = naive(snapshot.get(id)!, params.get(view.A)!, params.get(view.B)!, view.scale, view.out, view.in);
      expect(maxAbsDiff(v, want)).toBeLessThan(1e-6);
      expect(v).toEqual(folded.get(id));
    }
  });

  it('mergeAdapter can be limited to some sites, and names missing parameters', () => {
    const params = randomParameters(plan);
    expect(mergeAdapter(plan, params, 'a', ['layers[1].attn.q'])).toEqual(['base.layers[1].attn.q.weight']);
    params.delete('a.layers[0].attn.q.B');
    expect(() => mergeAdapter(plan, params, 'a')).toThrow(/a\.layers\[0\]\.attn\.q\.B is not in the parameter map/);
    expect(() => loraViews(plan, 'nope')).toThrow(/no adapter named "nope"/);
  });
});
