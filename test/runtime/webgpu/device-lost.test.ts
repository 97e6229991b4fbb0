/**
 * A run whose WebGPU device is lost (src/runtime/run.ts with src/runtime/webgpu/faults.ts): the next read of
 * the device rejects with an empty AbortError, and the run stops with what happened instead: the device was
 * lost, where, the last good checkpoint, rerun with --resume. Its own file (its own process under vitest's
 * forks pool): a destroyed device does not come back, and openDawn keeps one device per process.
 */
import { mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { compileFile, nodeHost } from '../../../src/compiler/index.js';
import { GpuFaultError, runPlan } from '../../../src/runtime/run.js';
import { tf } from '../../../src/runtime/tfjs/index.js';
import { openDawn } from '../../../src/runtime/webgpu/device.js';
import { describeGpu } from './kernels-support.js';

describeGpu('a run on webgpu whose device is lost', () => {
  it('stops with the loss, where it happened and the last good checkpoint, not an empty AbortError', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'mcpc-gpu-lost-'));
    writeFileSync(
      join(dir, 'p.mcp'),
      `pipeline small
model base = builtin("qwen2-micro", layers: 1, hidden: 32, ffn: 64, heads: 2, kv_heads: 1)
data d = jsonl("d.jsonl")
adapter a = lora(r: 4, alpha: 8) at layers[*].attn.{q, v}
stage one {
  train a on d
  steps 4
  lr 1e-2
  batch 2
  micro_batch 2
  max_len 32
  checkpoint_every 1
}
`,
    );
    const record = (i: number) => JSON.stringify({ messages: [{ role: 'user', content: `Q${i}?` }, { role: 'assistant', content: `A${i * 3}.` }] });
    writeFileSync(join(dir, 'd.jsonl'), Array.from({ length: 8 }, (_, i) => record(i)).join('\n') + '\n');
    const res = compileFile(join(dir, 'p.mcp'), nodeHost(dir, dir), {}, { optLevel: 1 });
    if (!res.plan) throw new Error(res.diagnostics.map((d) => d.message).join('\n'));
    const gpu = await openDawn();
    if ('unavailable' in gpu) throw new Error(gpu.unavailable);
    let text = '';
    const err = await runPlan(res.plan, {
      root: dir,
      runDir: join(dir, 'run'),
      backend: 'webgpu',
      write: (t) => void (text += t),
      // After step 2 has run (its loss read back): the device goes, and a read (as the checkpoint's would)
      // rejects with an empty AbortError before the loss is recorded (the exception path; when the loss is
      // recorded first, the check before the checkpoint stops the run with the same message).
      afterStep: async ({ step }) => {
        if (step !== 2) return;
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
    expect(f.message).toMatch(/^the GPU device was lost \(reason destroyed.*\), during stage one, step 2; nothing computed after it was saved; the last good checkpoint is .*step-000001\. .*rerun with --resume \(a new process opens it again\)\.$/);
    // Step 1's checkpoint, and nothing read back from the lost device.
    expect(readdirSync(join(dir, 'run/checkpoints')).sort()).toEqual(['step-000001']);
  });
});
