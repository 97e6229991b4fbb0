/**
 * The plan's GEMM ops that run our WGSL GEMMs on webgpu (src/runtime/kernels/webgpu.ts: concat_linear through
 * src/runtime/webgpu/concat-linear.ts; linear, lora_down, lora_up through McpcGemm; topk_gate through src/runtime/webgpu/topk-gate.ts; lora_merge through src/runtime/webgpu/lora-merge.ts; moe_up_grouped through src/runtime/webgpu/moe-up.ts) against the reference kernels on the cpu backend: forward outputs and
 * every gradient (frozen inputs included: their gradient is simply not asked for), on awkward shapes (one
 * token, sizes that are not multiples of any tile or of 4), router parts with softmax and sigmoid, expert
 * stacks [E, r, in]; and MCPC_GEMM_WGSL=0 running the reference. Needs WebGPU: see kernels-support.ts.
 */
import { afterAll, expect, it } from 'vitest';
import { reference, type KernelStep } from '../../../src/runtime/kernels/reference.js';
import { webgpuKernels } from '../../../src/runtime/kernels/webgpu.js';
import { initBackend, tf, type Tensor } from '../../../src/runtime/tfjs/index.js';
import { compare, describeGpu, randn, type Arg } from './kernels-support.js';

const noCtx = { rows: 1, seqLen: 1, positions: new Int32Array(1), segments: new Int32Array(1), cache: new Map<string, Tensor>() };
const step = (op: KernelStep['op'], attrs: Record<string, unknown>, outputs: string[] = ['y']): KernelStep => ({ node: 'n', op, inputs: [], outputs, attrs });

interface PartCase {
  kind: 'linear' | 'lora_down' | 'moe_down_batched' | 'router';
  /** Shapes of the weights (without the in dimension). */
  weights: number[][];
  bias?: boolean;
  activation?: 'softmax' | 'sigmoid';
  /** Frozen weights (no gradient asked). */
  frozen?: boolean;
}

function concatCase(T: number, K: number, parts: PartCase[], seed: number): { st: KernelStep; args: Arg[] } {
  const args: Arg[] = [randn(seed, [T, K])];
  let s = seed + 1;
  const attrsParts = parts.map((p, i) => {
    const params = p.weights.map((shape, k) => {
      args.push(randn(s++, [...shape, K], 0.5, !p.frozen));
      return `w${i}_${k}`;
    });
    const out = p.weights.reduce((a, w) => a + w.reduce((x, y) => x * y, 1), 0);
    if (p.bias) args.push(randn(s++, [out], 0.5, !p.frozen));
    return { kind: p.kind, out, params, ...(p.bias ? { bias: `b${i}` } : {}), ...(p.activation ? { activation: p.activation } : {}) };
  });
  return { st: step('concat_linear', { parts: attrsParts }, parts.map((_, i) => `y${i}`)), args };
}

describeGpu('plan GEMM ops on WGSL match the reference', () => {
  afterAll(() => initBackend('cpu'));

  const cases: [string, number, number, PartCase[]][] = [
    [
      'base+bias (frozen), lora_down, moe_down_batched (shared + expert stack), softmax router with bias; one token',
      1,
      13,
      [
        { kind: 'linear', weights: [[11]], bias: true, frozen: true },
        { kind: 'lora_down', weights: [[3]] },
        { kind: 'moe_down_batched', weights: [[2], [3, 2]] },
        { kind: 'router', weights: [[3]], bias: true, activation: 'softmax' },
      ],
    ],
    [
      'trainable base, sigmoid router without bias, T=37 K=29',
      37,
      29,
      [
        { kind: 'linear', weights: [[17]] },
        { kind: 'router', weights: [[5]], activation: 'sigmoid' },
        { kind: 'lora_down', weights: [[7]] },
      ],
    ],
    [
      'multiples of 4 (vec4 loads and stores), two routers, T=70 K=64',
      70,
      64,
      [
        { kind: 'linear', weights: [[64]], bias: true, frozen: true },
        { kind: 'moe_down_batched', weights: [[4], [4, 4]] },
        { kind: 'router', weights: [[4]], bias: true, activation: 'softmax' },
        { kind: 'router', weights: [[8]], activation: 'sigmoid' },
      ],
    ],
    [
      'sites merged on one x (concat-shared-input): q, k, v base weights each with a bias (frozen), LoRA A on q and v; T=33 K=24',
      33,
      24,
      [
        { kind: 'linear', weights: [[24]], bias: true, frozen: true },
        { kind: 'lora_down', weights: [[4]] },
        { kind: 'linear', weights: [[8]], bias: true, frozen: true },
        { kind: 'linear', weights: [[8]], bias: true, frozen: true },
        { kind: 'lora_down', weights: [[4]] },
      ],
    ],
    [
      'trainable base weights with biases on three sites, one token',
      1,
      7,
      [
        { kind: 'linear', weights: [[5]], bias: true },
        { kind: 'linear', weights: [[3]], bias: true },
        { kind: 'linear', weights: [[2]], bias: true },
      ],
    ],
    [
      // 1 + 2 × (W, b, A, A_sh, A_e, W_r, b_r) inputs + 8 outputs = 23 storage buffers: more than llvmpipe's 16
      // (and WebGPU's default 8), so the kernel runs in chunks of parts.
      'gate and up of two mixture sites merged (23 bindings: run in chunks), T=19 K=12',
      19,
      12,
      [
        { kind: 'linear', weights: [[20]], bias: true, frozen: true },
        { kind: 'lora_down', weights: [[4]] },
        { kind: 'moe_down_batched', weights: [[2], [3, 2]] },
        { kind: 'router', weights: [[3]], bias: true, activation: 'softmax' },
        { kind: 'linear', weights: [[20]], bias: true, frozen: true },
        { kind: 'lora_down', weights: [[4]] },
        { kind: 'moe_down_batched', weights: [[2], [3, 2]] },
        { kind: 'router', weights: [[3]], bias: true, activation: 'sigmoid' },
      ],
    ],
    ['one part, one column', 5, 3, [{ kind: 'lora_down', weights: [[1]] }]],
    ['a router alone (one expert)', 9, 6, [{ kind: 'router', weights: [[1]], bias: true, activation: 'softmax' }]],
  ];
  for (const [name, T, K, parts] of cases) {
    it(`concat_linear: ${name}`, async () => {
      const { st, args } = concatCase(T, K, parts, T * 31 + K);
      const c = await compare(
        (xs) => webgpuKernels.concat_linear(xs, st, noCtx),
        (xs) => reference.concat_linear(xs, st, noCtx),
        args,
      );
      expect(c.worst, c.what).toBeLessThan(1e-4);
    });
  }

  const lin: [string, number, number, number][] = [
    ['one token', 1, 7, 5],
    ['odd sizes', 37, 29, 3],
    ['multiples of 4', 64, 32, 16],
  ];
  for (const [name, T, K, N] of lin) {
    it(`linear (with and without bias), lora_down, lora_up (scale 0.75): ${name} T=${T} in=${K} out=${N}`, async () => {
      const seed = T * 7 + K;
      const cases: [KernelStep, ReturnType<typeof randn>[]][] = [
        [step('linear', {}), [randn(seed, [T, K]), randn(seed + 1, [N, K])]],
        [step('linear', {}), [randn(seed, [T, K]), randn(seed + 1, [N, K]), randn(seed + 2, [N])]],
        [step('lora_down', { rank: N }), [randn(seed, [T, K]), randn(seed + 1, [N, K])]],
        [step('lora_up', { scale: 0.75 }), [randn(seed, [T, K]), randn(seed + 1, [N, K])]],
        // a frozen B: only dh is asked for
        [step('lora_up', { scale: 2 }), [randn(seed, [T, K]), randn(seed + 1, [N, K], 1, false)]],
      ];
      for (const [st, args] of cases) {
        const c = await compare(
          (xs) => webgpuKernels[st.op](xs, st, noCtx),
          (xs) => reference[st.op](xs, st, noCtx),
          args,
        );
        expect(c.worst, `${st.op} ${args.length} inputs: ${c.what}`).toBeLessThan(1e-4);
      }
    });
  }

  it.each([
    [1, 4, 2, true],
    [37, 7, 3, true],
    [37, 7, 3, false],
    [70, 8, 8, true],
    [5, 6, 9, true],
    [9, 2, 2, false],
  ])('topk_gate T=%i E=%i k=%i renormalize=%s (k = E and k > E keep every expert)', async (T, E, k, renorm) => {
    const st = step('topk_gate', { k, renormalize: renorm });
    // Positive probabilities with ties (a repeated value) so that the tie order matters.
    const p = randn(T * 13 + E, [T, E]);
    p.data = Float32Array.from(p.data, (v, i) => (i % 5 === 3 ? 0.25 : Math.abs(v) + 0.01));
    const c = await compare(
      (xs) => webgpuKernels.topk_gate(xs, st, noCtx),
      (xs) => reference.topk_gate(xs, st, noCtx),
      [p],
    );
    expect(c.worst, c.what).toBeLessThan(1e-4);
  });

  it.each([
    [7, 5, 3, 2, true],
    [176, 64, 32, 0.5, false],
    [64, 176, 16, 2, true],
    [1, 1, 1, 1.5, false],
    [33, 9, 1, 1, true],
  ])('lora_merge W [%i, %i] rank %i scale %f (base trained: %s): W + s·B·A and dW, dA, dB', async (O, I, R, s, trainW) => {
    const st = step('lora_merge', { scale: s });
    const args = [randn(O * 7 + I, [O, I], 1, trainW), randn(O + 3 * R, [R, I], 0.5), randn(I + 5 * R, [O, R], 0.5)];
    const c = await compare(
      (xs) => webgpuKernels.lora_merge(xs, st, noCtx),
      (xs) => reference.lora_merge(xs, st, noCtx),
      args,
    );
    expect(c.worst, c.what).toBeLessThan(1e-4);
    // One kernel forward (the reference runs three: the product, its scaling and the sum).
    await initBackend('webgpu');
    const xs = args.map((x) => tf.tensor(x.data, x.shape));
    const prof = await tf.profile(() => webgpuKernels.lora_merge(xs, st, noCtx)[0]!);
    expect(prof.kernelNames).toEqual(['McpcLoraMerge']);
    tf.dispose(xs);
  });

  // moe_up_grouped: [T, out, experts, rank, sharedRank, topK (gates zero outside it), scale, frozen B's]
  const moeUp: [number, number, number, number, number, number, number, boolean][] = [
    [1, 5, 3, 2, 0, 2, 0.5, false],
    [37, 13, 4, 3, 2, 4, 1, false],
    [70, 64, 4, 4, 4, 2, 2, false],
    [9, 7, 2, 5, 3, 1, 0.75, true],
    [5, 3, 1, 1, 0, 1, 1.5, false],
    [11, 6, 5, 7, 1, 5, 1, false],
  ];
  for (const [T, out, E, r, R, k, scale, frozen] of moeUp) {
    it(`moe_up_grouped T=${T} out=${out} experts=${E} rank=${r} sharedRank=${R} topK=${k} scale=${scale}${frozen ? ' (frozen B)' : ''}`, async () => {
      const seed = T * 101 + out * 7 + E;
      const gates = randn(seed, [T, E]);
      // Gates as topk_gate leaves them: zero outside each token's top-k (here the k experts from t mod E on).
      gates.data = Float32Array.from(gates.data, (v, i) => (((i % E) - Math.floor(i / E) + 2 * E) % E < k ? Math.abs(v) + 0.05 : 0));
      const args = [randn(seed + 1, [T, R + E * r]), gates, ...(R ? [randn(seed + 2, [out, R], 0.5, !frozen)] : []), randn(seed + 3, [E, out, r], 0.5, true)];
      const st = step('moe_up_grouped', { sharedRank: R, rank: r, experts: E, scale, k });
      const c = await compare(
        (xs) => webgpuKernels.moe_up_grouped(xs, st, noCtx),
        (xs) => reference.moe_up_grouped(xs, st, noCtx),
        args,
      );
      expect(c.worst, c.what).toBeLessThan(1e-4);
    });
  }

  // moe_down_routed: [T, in, experts, rank, topK (gates zero outside it), frozen A]
  const moeDown: [number, number, number, number, number, boolean][] = [
    [1, 5, 3, 2, 2, false],
    [37, 13, 4, 3, 1, false],
    [70, 64, 8, 16, 2, false],
    [9, 7, 2, 5, 2, true],
    [11, 9, 4, 3, 4, false],
    [1, 1, 1, 1, 1, false],
    [33, 17, 5, 7, 2, false],
  ];
  for (const [T, K, E, r, k, frozen] of moeDown) {
    it(`moe_down_routed T=${T} in=${K} experts=${E} rank=${r} topK=${k}${frozen ? ' (frozen A)' : ''}`, async () => {
      const seed = T * 31 + K * 5 + E;
      const gates = randn(seed, [T, E], 1, true);
      gates.data = Float32Array.from(gates.data, (v, i) => (((i % E) - Math.floor(i / E) + 2 * E) % E < k ? Math.abs(v) + 0.05 : 0));
      const args = [randn(seed + 1, [T, K], 1, true), gates, randn(seed + 2, [E, r, K], 0.5, !frozen)];
      const st = step('moe_down_routed', { rank: r, experts: E });
      const c = await compare(
        (xs) => webgpuKernels.moe_down_routed(xs, st, noCtx),
        (xs) => reference.moe_down_routed(xs, st, noCtx),
        args,
      );
      expect(c.worst, c.what).toBeLessThan(1e-4);
    });
  }

  it('moe_down_routed records one kernel forward and one per gradient asked for (no Identity, Reshape, mask or zeros), and the reference under MCPC_GEMM_WGSL=0', async () => {
    const st = step('moe_down_routed', { rank: 3, experts: 4 });
    await initBackend('webgpu');
    const xs = [randn(1, [6, 10]), randn(2, [6, 4]), randn(3, [4, 3, 10])].map((a) => tf.tensor(a.data, a.shape));
    const names = async (): Promise<string[]> => (await tf.profile(() => webgpuKernels.moe_down_routed(xs, st, noCtx))).kernelNames;
    try {
      expect(await names()).toEqual(['McpcMoeDown']);
      const before = tf.memory().numTensors;
      // Forward and backward: the gradient of Σ h with respect to x, gates and A (the gates get none: not on the tape).
      let kept: Tensor[] = [];
      const { kernels } = await tf.profile(() => {
        const { value, grads } = tf.engine().gradients(() => tf.sum(webgpuKernels.moe_down_routed(xs, st, noCtx)[0]!) as tf.Scalar, xs, undefined, true);
        expect(grads[1]).toBeUndefined();
        kept = [value, grads[0]!, grads[2]!];
        return [];
      });
      tf.dispose(kept);
      const kernelNames = kernels.map((k) => k.name);
      // tf.sum and its gradient record Sum, Reshape, Identity, Multiply; nothing else but ours.
      expect(kernelNames.filter((n) => !['Sum', 'Reshape', 'Identity', 'Multiply'].includes(n)).sort()).toEqual(['McpcMoeDown', 'McpcMoeDownDa', 'McpcMoeDownDx']);
      expect(kernelNames.filter((n) => n === 'Identity').length, 'only the Sum gradient’s').toBeLessThanOrEqual(1);
      expect(tf.memory().numTensors, 'saved tensors freed after the backward pass').toBe(before);
      process.env.MCPC_GEMM_WGSL = '0';
      expect(await names()).not.toContain('McpcMoeDown');
    } finally {
      delete process.env.MCPC_GEMM_WGSL;
      tf.dispose(xs);
    }
  });

  it('moe_up_grouped backward: U and dh from one kernel, then dg, dB_e, dB_sh one each (no Identity); what it kept is freed once the backward pass is over', async () => {
    const st = step('moe_up_grouped', { sharedRank: 2, rank: 3, experts: 4, scale: 0.5 });
    await initBackend('webgpu');
    const xs = [randn(1, [6, 14]), randn(2, [6, 4]), randn(3, [5, 2]), randn(4, [4, 5, 3])].map((a) => tf.tensor(a.data, a.shape));
    try {
      const before = tf.memory().numTensors;
      let kept: Tensor[] = [];
      const { kernels } = await tf.profile(() => {
        const { value, grads } = tf.engine().gradients(() => tf.sum(webgpuKernels.moe_up_grouped(xs, st, noCtx)[0]!) as tf.Scalar, xs);
        kept = [value, ...grads];
        return [];
      });
      tf.dispose(kept);
      // tf.sum and its gradient record Sum, Reshape, Identity, Multiply; nothing else but ours.
      const ours = kernels.map((k) => k.name).filter((n) => !['Sum', 'Reshape', 'Identity', 'Multiply'].includes(n));
      expect(ours.sort()).toEqual(['McpcMoeUp', 'McpcMoeUpDb', 'McpcMoeUpDb', 'McpcMoeUpDg', 'McpcMoeUpU']);
      await new Promise((r) => setTimeout(r, 0));
      expect(tf.memory().numTensors).toBe(before);
    } finally {
      tf.dispose(xs);
    }
  });

  it('moe_up_grouped runs one tfjs kernel forward, and the reference under MCPC_GEMM_WGSL=0', async () => {
    const st = step('moe_up_grouped', { sharedRank: 2, rank: 3, experts: 4, scale: 0.5 });
    await initBackend('webgpu');
    const xs = [randn(1, [6, 14]), randn(2, [6, 4]), randn(3, [5, 2]), randn(4, [4, 5, 3])].map((a) => tf.tensor(a.data, a.shape));
    const names = async (): Promise<string[]> => (await tf.profile(() => webgpuKernels.moe_up_grouped(xs, st, noCtx))).kernelNames;
    try {
      expect(await names()).toEqual(['McpcMoeUp']);
      process.env.MCPC_GEMM_WGSL = '0';
      expect((await names()).includes('McpcMoeUp')).toBe(false);
    } finally {
      delete process.env.MCPC_GEMM_WGSL;
      tf.dispose(xs);
    }
  });

  it('concat_linear runs one tfjs kernel forward (none of the reference ops), and the reference under MCPC_GEMM_WGSL=0', async () => {
    const { st, args } = concatCase(6, 10, cases[0]![3], 3);
    await initBackend('webgpu');
    const names = async (): Promise<string[]> => {
      const xs = args.map((a) => tf.tensor(a.data, a.shape));
      let n = 0;
      const info = await tf.profile(() => {
        const ys = webgpuKernels.concat_linear(xs, st, noCtx);
        n = ys.length;
        return ys;
      });
      tf.dispose(xs);
      expect(n).toBe(4);
      return info.kernelNames;
    };
    const ours = await names();
    expect(ours.filter((n) => !n.startsWith('McpcConcatLinearWgsl'))).toEqual([]);
    expect(ours.length).toBe(1);
    process.env.MCPC_GEMM_WGSL = '0';
    try {
      expect((await names()).some((n) => n.startsWith('McpcConcatLinearWgsl'))).toBe(false);
    } finally {
      delete process.env.MCPC_GEMM_WGSL;
    }
  });

  it('concat_linear over more storage buffers than the device binds runs as chunks of parts, each one WGSL GEMM', async () => {
    await initBackend('webgpu');
    const limit = (tf.backend() as unknown as { device: { limits: { maxStorageBuffersPerShaderStage: number } } }).device.limits.maxStorageBuffersPerShaderStage;
    // n base parts with biases: 1 + 3n bindings (x, then W, b and the output per part).
    const n = Math.floor((limit - 1) / 3) + 2;
    const { st, args } = concatCase(4, 5, Array.from({ length: n }, () => ({ kind: 'linear' as const, weights: [[3]], bias: true })), 11);
    const xs = args.map((a) => tf.tensor(a.data, a.shape));
    let ys: Tensor[] = [];
    const info = await tf.profile(() => (ys = webgpuKernels.concat_linear(xs, st, noCtx)));
    const gemms = info.kernelNames.filter((k) => k.startsWith('McpcConcatLinearWgsl'));
    expect(info.kernelNames.length).toBe(gemms.length);
    // Greedy chunks of consecutive parts, each within the limit: ⌊(limit − 1) / 3⌋ parts per chunk.
    expect(gemms.length).toBe(Math.ceil(n / Math.floor((limit - 1) / 3)));
    expect(gemms.length).toBeGreaterThan(1);
    expect(ys).toHaveLength(n);
    const want = reference.concat_linear(xs, st, noCtx);
    for (let i = 0; i < n; i++) {
      const [a, b] = [await ys[i]!.data(), await want[i]!.data()];
      for (let j = 0; j < a.length; j++) expect(Math.abs(a[j]! - b[j]!)).toBeLessThan(1e-4);
    }
    tf.dispose([...xs, ...ys, ...want]);
  });
});
