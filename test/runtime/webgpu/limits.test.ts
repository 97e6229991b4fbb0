/**
 * The WebGPU pre-flight (src/runtime/webgpu/limits.ts): the tensors of a stage that exceed the device's
 * largest storage binding, with T = micro_batch · max_len, largest first; the message names them and what
 * shrinks them; on llvmpipe (128 MiB bindings) `createStageRunner` refuses such a stage before uploading a weight.
 */
import { describe, expect, it } from 'vitest';
import type { Plan } from '../../../src/plan/types.js';
import { createStageRunner, RunnerError } from '../../../src/runtime/executor.js';
import { tf } from '../../../src/runtime/tfjs/index.js';
import { bindingLimit, limitsProblem, oversizedTensors } from '../../../src/runtime/webgpu/limits.js';
import { compileInline } from '../executor/helpers.js';
import { dawn, describeGpu } from './kernels-support.js';

/** A one-stage pipeline on `model` with LoRA on attention (compiled at -O1 in a fresh folder). */
function compile(model: string, microBatch: number, maxLen: number): Plan {
  const text = `pipeline big
model base = ${model}
data d = jsonl("d.jsonl")
adapter a = lora(r: 16, alpha: 32) at layers[*].attn.{q, k, v, o}
stage one {
  train a on d
  steps 2
  batch ${microBatch}
  micro_batch ${microBatch}
  max_len ${maxLen}
}
`;
  return compileInline(text, [1]).plans[0]!;
}

const H200 = { maxStorageBufferBindingSize: 2 ** 31, maxBufferSize: 2 ** 31 };

describe('WebGPU binding limits', () => {
  it('Qwen1.5-7B on an H200\'s limits: the embedding and the LM head (2.3 GiB each) do not fit a 2 GiB binding', () => {
    const plan = compile('builtin("qwen1.5-7b")', 4, 3072);
    const over = oversizedTensors(plan, 'one', H200);
    expect(over.map((o) => [o.id, o.shape, o.bytes, o.what])).toEqual([
      ['base.embed.weight', [151936, 4096], 151936 * 4096 * 4, 'parameter'],
      ['base.lm_head.weight', [151936, 4096], 151936 * 4096 * 4, 'parameter'],
    ]);
    expect(limitsProblem(plan, 'one', H200)).toBe(
      'stage one cannot run on this WebGPU device: 2 tensors exceed the largest buffer one kernel can bind (2.0 GiB: maxStorageBufferBindingSize 2147483648, maxBufferSize 2147483648): ' +
        'base.embed.weight [151936, 4096] 2.3 GiB (parameter); base.lm_head.weight [151936, 4096] 2.3 GiB (parameter). ' +
        'A parameter or the optimizer state that size needs a device with a larger limit, `--backend tensorflow` or `mcpc compile --target torch`.',
    );
  });

  it('activations count with T = micro_batch · max_len, largest first; five named, the rest counted', () => {
    const plan = compile('builtin("qwen2-micro")', 8, 512);
    // The tiny model's weights fit 64 KiB; a [T, 176] FFN activation at T = 4096 is 2.75 MiB.
    const over = oversizedTensors(plan, 'one', { maxStorageBufferBindingSize: 2 ** 20 });
    expect(over.length).toBeGreaterThan(5);
    expect(over.every((o) => o.what === 'activation' && o.shape[0] === 4096 && o.bytes > 2 ** 20)).toBe(true);
    expect(over.map((o) => o.bytes)).toEqual([...over.map((o) => o.bytes)].sort((a, b) => b - a));
    const msg = limitsProblem(plan, 'one', { maxStorageBufferBindingSize: 2 ** 20 })!;
    expect(msg).toMatch(new RegExp(`^stage one cannot run on this WebGPU device: ${over.length} tensors exceed the largest buffer one kernel can bind \\(1\\.0 MiB: maxStorageBufferBindingSize 1048576, maxBufferSize -\\): `));
    expect(msg).toMatch(new RegExp(`; and ${over.length - 5} more\\. Activations shrink with micro_batch \\(8\\) and max_len \\(512\\): T = 4096 tokens a micro-batch\\.$`));
    // Limits that fit, and a device that states none.
    expect(limitsProblem(plan, 'one', H200)).toBeUndefined();
    expect(oversizedTensors(plan, 'one', {})).toEqual([]);
    expect(bindingLimit({ maxBufferSize: 10, maxStorageBufferBindingSize: 20 })).toBe(10);
  });
});

describeGpu('the pre-flight on llvmpipe', () => {
  it('createStageRunner on webgpu refuses a stage whose activations exceed the device\'s bindings, uploading nothing', async () => {
    const gpu = dawn();
    const limit = bindingLimit(gpu.limits);
    // T = 64 · 1024 tokens of a 1024-wide FFN: 256 MiB a [T, 1024] activation, over llvmpipe's 128 MiB.
    const plan = compile('builtin("qwen2-micro", hidden: 64, ffn: 1024)', 64, 1024);
    expect(oversizedTensors(plan, 'one', gpu.limits).length > 0).toBe(limit < 64 * 1024 * 1024 * 4);
    if (limit >= 64 * 1024 * 1024 * 4) return; // a device with larger bindings runs it
    await tf.ready();
    const before = tf.memory().numTensors;
    const err = await createStageRunner(plan, 'one', { backend: 'webgpu' }).then(
      (r) => {
        r.dispose();
        return undefined;
      },
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(RunnerError);
    expect((err as Error).message).toMatch(/^stage one cannot run on this WebGPU device: \d+ tensors exceed the largest buffer one kernel can bind .*\[65536, 1024\] 256\.0 MiB \(activation\)/);
    expect(tf.memory().numTensors).toBe(before);
  });
});
