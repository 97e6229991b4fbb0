/**
 * Saving for the gradient without Identity kernels (src/runtime/webgpu/program.ts, src/runtime/tfjs/share.ts):
 * `share`, `runKernelSaving`, `customOp` and `shareSavedTensors` (tfjs's own saving, on webgpu, cpu and wasm). The gradients match the cpu backend's, no
 * Identity kernel is recorded, and every saved tensor is freed once the backward pass is over. Needs WebGPU:
 * see kernels-support.ts for skip-or-fail.
 */
import { expect, it } from 'vitest';
import { initBackend, tf, type Tensor } from '../../../src/runtime/tfjs/index.js';
import { customOp, share } from '../../../src/runtime/webgpu/program.js';
import { compare, describeGpu, randn } from './kernels-support.js';

/** Kernel names recorded by `f` run under tf.engine().gradients with respect to `xs`; the results are disposed. */
async function recorded(f: () => tf.Scalar, xs: Tensor[]): Promise<string[]> {
  let kept: Tensor[] = [];
  const info = await tf.profile(() => {
    const { value, grads } = tf.engine().gradients(f, xs);
    kept = [value, ...grads];
    return [];
  });
  tf.dispose(kept);
  return info.kernels.map((k) => k.name);
}

describeGpu('saving for the gradient on webgpu shares buffers', () => {
  it('share: a new tensor on the same buffer, which outlives the original', async () => {
    await initBackend('webgpu');
    const a = tf.tensor([1, 2, 3]);
    const b = share(a);
    expect(b.id).not.toBe(a.id);
    expect(b.dataId).toBe(a.dataId);
    a.dispose();
    expect(Array.from(await b.data())).toEqual([1, 2, 3]);
    b.dispose();
  });

  it('tfjs ops: no Identity for what their gradients save, same gradients as on cpu, nothing left after backward', async () => {
    const f = (xs: Tensor[]): Tensor[] => [tf.mul(tf.exp(xs[0]!), tf.matMul(xs[0]! as tf.Tensor2D, xs[1]! as tf.Tensor2D))];
    const args = [randn(1, [5, 5], 0.5), randn(2, [5, 5], 0.5)];
    const c = await compare(f, f, args);
    expect(c.worst, c.what).toBeLessThan(1e-4);
    await initBackend('webgpu');
    const xs = [tf.randomNormal([5, 5]), tf.randomNormal([5, 5])];
    const before = tf.memory().numTensors;
    const names = await recorded(() => tf.sum(f(xs)[0]!) as tf.Scalar, xs);
    // Exp saves its output, Multiply and BatchMatMul their inputs: four tensors, no Identity for them.
    expect(names).toContain('BatchMatMul');
    expect(names).not.toContain('Identity');
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose(xs);
  });

  it('customOp: saves inputs and tensors made in its forward (kept, not cloned), freed after backward; nothing kept without a tape', async () => {
    // y = x·t with t = x + 1 made inside: dy/dx = 2x + 1.
    const op = customOp((x: Tensor) => {
      const t = tf.add(x, 1);
      return { value: tf.mul(x, t), save: [x, t], gradFunc: (dy: Tensor, [sx, st]: Tensor[]) => tf.mul(dy, tf.add(sx!, st!)) };
    });
    await initBackend('webgpu');
    const x = tf.tensor([1, -2, 0.5]);
    const before = tf.memory().numTensors;
    let g: Tensor[] = [];
    const names = (
      await tf.profile(() => {
        const r = tf.engine().gradients(() => tf.sum(op(x)) as tf.Scalar, [x]);
        g = [r.value, ...r.grads];
        return [];
      })
    ).kernels.map((k) => k.name);
    expect(Array.from(await g[1]!.data())).toEqual([3, -3, 2]);
    tf.dispose(g);
    expect(names).not.toContain('Identity');
    expect(tf.memory().numTensors).toBe(before);
    // Outside a gradient: the value only, nothing saved or kept.
    const y = op(x);
    expect(Array.from(await y.data())).toEqual([2, 2, 0.75]);
    y.dispose();
    expect(tf.memory().numTensors).toBe(before);
    x.dispose();
  });

  it.each(['cpu', 'wasm'] as const)('on %s too, tfjs saves by sharing the buffer: same gradients, no Identity, nothing left', async (backend) => {
    await initBackend(backend);
    const xs = [tf.tensor2d([1, 2, 3, 4, 5, 6, 7, 8, 9], [3, 3]), tf.tensor2d([0.5, -1, 2, 0, 1, -2, 3, 1, 0.25], [3, 3])];
    const before = tf.memory().numTensors;
    const names = await recorded(() => tf.sum(tf.mul(tf.exp(tf.mul(xs[0]!, 0.1)), xs[1]!)) as tf.Scalar, xs);
    expect(names).not.toContain('Identity');
    expect(tf.memory().numTensors).toBe(before);
    const g = tf.grads((a: Tensor, b: Tensor) => tf.sum(tf.mul(tf.exp(tf.mul(a, 0.1)), b)) as tf.Scalar)(xs);
    const want0 = [0.5, -1, 2, 0, 1, -2, 3, 1, 0.25].map((b, i) => b * 0.1 * Math.exp(0.1 * (i + 1)));
    const want1 = [1, 2, 3, 4, 5, 6, 7, 8, 9].map((a) => Math.exp(0.1 * a));
    Array.from(g[0]!.dataSync()).forEach((v, i) => expect(v).toBeCloseTo(want0[i]!, 5));
    Array.from(g[1]!.dataSync()).forEach((v, i) => expect(v).toBeCloseTo(want1[i]!, 5));
    tf.dispose([...g, ...xs]);
  });
});
