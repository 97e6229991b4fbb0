/** The optimizer's formulas (schedule, clipping, AdamW, SGD), in isolation. */
import { beforeAll, describe, expect, it } from 'vitest';
import { clipFactor, globalNorm, learningRate, update, warmupSteps, zeroState } from '../../src/runtime/optimizer.js';
import { initBackend, tf } from '../../src/runtime/tfjs/index.js';
import type { PlanStageSettings } from '../../src/plan/types.js';

beforeAll(() => initBackend('cpu'));

const sched = (kind: 'constant' | 'linear' | 'cosine', warmup: { percent: number } | { steps: number }, minLr = 0): Pick<PlanStageSettings, 'lr' | 'schedule'> => ({ lr: 1, schedule: { kind, warmup, minLr } });

describe('learning-rate schedule', () => {
  it('warmup ramps to the peak; cosine and linear decay to min_lr; constant stays', () => {
    expect(warmupSteps({ kind: 'cosine', warmup: { percent: 3 }, minLr: 0 }, 100)).toBe(3);
    expect(warmupSteps({ kind: 'cosine', warmup: { percent: 3 }, minLr: 0 }, 10)).toBe(1);
    expect([0, 1, 2, 3].map((s) => learningRate(sched('constant', { steps: 4 }), s, 10))).toEqual([0.25, 0.5, 0.75, 1]);
    expect(learningRate(sched('constant', { steps: 4 }), 9, 10)).toBe(1);
    const cos = sched('cosine', { steps: 2 }, 0.1);
    expect(learningRate(cos, 2, 12)).toBeCloseTo(1, 12);
    expect(learningRate(cos, 7, 12)).toBeCloseTo(0.1 + 0.9 * 0.5, 12);
    expect(learningRate(cos, 12, 12)).toBeCloseTo(0.1, 12);
    const lin = sched('linear', { percent: 0 });
    expect([0, 5, 10].map((s) => learningRate(lin, s, 10))).toEqual([1, 0.5, 0]);
  });
});

describe('AdamW and SGD', () => {
  it('AdamW matches PyTorch’s formula step by step (decoupled decay, bias correction)', () => {
    const opt = { kind: 'adamw' as const, beta1: 0.9, beta2: 0.999, eps: 1e-8 };
    const [lr, wd] = [1e-2, 0.1];
    const p0 = [0.5, -1, 2];
    const gs = [
      [0.1, -0.2, 0.3],
      [-0.05, 0.4, 0.1],
      [0.2, 0.2, -0.3],
    ];
    // Reference: torch.optim.AdamW, written out in f64.
    const ref = p0.slice();
    const m = [0, 0, 0];
    const v = [0, 0, 0];
    let p: tf.Tensor = tf.tensor1d(p0);
    let s = zeroState(opt, [3]);
    gs.forEach((g, i) => {
      const t = i + 1;
      for (let j = 0; j < 3; j++) {
        ref[j] *= 1 - lr * wd;
        m[j] = 0.9 * m[j] + 0.1 * g[j];
        v[j] = 0.999 * v[j] + 0.001 * g[j] * g[j];
        const denom = Math.sqrt(v[j]) / Math.sqrt(1 - 0.999 ** t) + 1e-8;
        ref[j] -= (lr / (1 - 0.9 ** t)) * (m[j] / denom);
      }
      const next = update(opt, p, tf.tensor1d(g), s, lr, wd, t);
      p = next.p;
      s = next.s;
    });
    const got = Array.from(p.dataSync());
    got.forEach((x, j) => expect(x).toBeCloseTo(ref[j], 6));
    Array.from(s.m.dataSync()).forEach((x, j) => expect(x).toBeCloseTo(m[j], 7));
  });

  it('SGD with momentum (PyTorch: the first buffer is the gradient)', () => {
    const opt = { kind: 'sgd' as const, momentum: 0.5 };
    let p: tf.Tensor = tf.tensor1d([1]);
    let s = zeroState(opt, [1]);
    for (const [t, g] of [[1, 2], [2, 2]]) {
      const n = update(opt, p, tf.tensor1d([g]), s, 0.1, 0, t);
      p = n.p;
      s = n.s;
    }
    // b1 = 2, p = 0.8; b2 = 0.5·2 + 2 = 3, p = 0.5
    expect(p.dataSync()[0]).toBeCloseTo(0.5, 6);
  });

  it('global-norm clipping (clip_grad_norm_)', async () => {
    expect(await globalNorm([tf.tensor1d([3]), tf.tensor1d([4])])).toBeCloseTo(5, 6);
    expect(clipFactor(5, 1)).toBeCloseTo(1 / (5 + 1e-6), 12);
    expect(clipFactor(0.5, 1)).toBe(1);
    expect(clipFactor(5, 0)).toBe(1);
    expect(await globalNorm([tf.tensor1d([NaN, 1])])).toBeNaN();
  });
});
