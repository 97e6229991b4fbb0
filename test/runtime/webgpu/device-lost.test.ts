/**
 * A run whose WebGPU device is lost (src/runtime/run.ts with src/runtime/webgpu/faults.ts): the next read of
 * the device rejects with an empty AbortError, and the run stops with what happened instead: the device was
 * lost, where, the last good checkpoint, rerun with --resume. Its own file (its own process under vitest's
 * forks pool): a destroyed device does not come back, and openDawn keeps one device per process.
 */
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { GpuFaultError, runPlan } from '../../../src/runtime/run.js';
import { tf } from '../../../src/runtime/tfjs/index.js';
import { compileInline, TWO_STAGES } from '../executor/helpers.js';
import { dawn, describeGpu } from './kernels-support.js';

describeGpu('a run on webgpu whose device is lost', () => {
  it('stops with the loss, where it happened and the last good checkpoint, not an empty AbortError', async () => {
    const {
      dir,
      plans: [plan],
    } = compileInline(TWO_STAGES, [1]);
    const gpu = dawn();
    let text = '';
    const err = await runPlan(plan!, {
      root: dir,
      runDir: join(dir, 'run'),
      backend: 'webgpu',
      write: (t) => void (text += t),
      // After stage two's step 2 has run (its loss read back): the device goes, and a read (as the checkpoint's
      // would) rejects with an empty AbortError before the loss is recorded (the exception path; when the loss
      // is recorded first, the check before the checkpoint stops the run with the same message).
      afterStep: async ({ stage, step }) => {
        if (stage !== 'two' || step !== 2) return;
        gpu.device.destroy();
        const t = tf.tidy(() => tf.matMul(tf.ones([4, 4]), tf.ones([4, 4])));
        try {
          await t.data();
        } finally {
          t.dispose();
        }
      },
    }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err, text).toBeInstanceOf(GpuFaultError);
    const f = err as GpuFaultError;
    expect(f.fault.kind).toBe('lost');
    expect(f.message).toMatch(/^the GPU device was lost \(reason destroyed.*\), during stage two, step 2; nothing computed after it was saved; the last good checkpoint is .*step-000002\. .*rerun with --resume \(a new process opens it again\)\.$/);
    // Stage one's end and stage two's step 1, nothing read back from the lost device.
    expect(readdirSync(join(dir, 'run/checkpoints')).sort()).toEqual(['step-000001', 'step-000002']);
  });
});
