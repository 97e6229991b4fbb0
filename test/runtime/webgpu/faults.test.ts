/**
 * GPU faults (src/runtime/webgpu/faults.ts, and how src/runtime/run.ts stops on one): Dawn's uncaptured errors
 * and a device loss are recorded per device, a run reads those after its mark, and the message says what the
 * device said, where, the last good checkpoint and what to do. On llvmpipe: a validation error raised between
 * two steps of a real run stops it before that step is recorded or saved, and `--resume` then ends where an
 * uninterrupted run ends. (A device loss: device-lost.test.ts, its own process: the device does not come back.)
 */
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { describeGpuFault, GpuFaultError, RunError, runPlan } from '../../../src/runtime/run.js';
import { classifyGpuError, gpuFaultMark, gpuFaultSince, settleGpuFaults, takeGpuErrors, watchDevice, withErrorScopes } from '../../../src/runtime/webgpu/faults.js';
import { SafetensorsReader } from '../../../src/runtime/io/safetensors.js';
import { compileInline, TWO_STAGES } from '../executor/helpers.js';
import { dawn, describeGpu, relErr } from './kernels-support.js';

class GPUOutOfMemoryError extends Error {}
class GPUValidationError extends Error {}
class GPUInternalError extends Error {}

/** A device as far as watchDevice looks: an event target for `uncapturederror` and a `lost` promise. */
function fakeDevice() {
  const target = new EventTarget();
  let lose!: (info: { reason: string; message: string }) => void;
  const lost = new Promise<{ reason: string; message: string }>((r) => (lose = r));
  const raise = (error: Error) => {
    const ev = new Event('uncapturederror', { cancelable: true }) as Event & { error: Error };
    ev.error = error;
    target.dispatchEvent(ev);
    return ev.defaultPrevented;
  };
  return { device: { addEventListener: target.addEventListener.bind(target), lost }, raise, lose };
}

describe('GPU faults', () => {
  it('classifies WebGPU errors by their class and keeps the first line of the message', () => {
    expect(classifyGpuError(new GPUOutOfMemoryError('Out of memory allocating 3 GiB.\n - While calling [Device].CreateBuffer'))).toEqual({ kind: 'out-of-memory', message: 'Out of memory allocating 3 GiB.' });
    expect(classifyGpuError(new GPUValidationError('Buffer is invalid.\n - While encoding'))).toEqual({ kind: 'validation', message: 'Buffer is invalid.' });
    expect(classifyGpuError(new GPUInternalError('  lost in the driver  '))).toEqual({ kind: 'internal', message: 'lost in the driver' });
    expect(classifyGpuError(new GPUValidationError(''))).toEqual({ kind: 'validation', message: '(GPUValidationError without a message)' });
    expect(classifyGpuError(undefined).kind).toBe('error');
  });

  it('records a watched device\'s uncaptured errors and its loss; a run sees those after its mark', async () => {
    const { device, raise, lose } = fakeDevice();
    watchDevice(device);
    watchDevice(device); // idempotent: one record per error
    const before = gpuFaultMark();
    expect(gpuFaultSince(before)).toBeUndefined();
    // Dawn prints the error (the event is not cancelled) unless a consumer has taken the errors.
    expect(raise(new GPUOutOfMemoryError('Out of memory.\nmore'))).toBe(false);
    const release = takeGpuErrors();
    expect(raise(new GPUValidationError('Buffer is invalid.'))).toBe(true);
    release();
    release(); // once only
    expect(raise(new GPUValidationError('Buffer is invalid.'))).toBe(false);
    expect(gpuFaultSince(before)).toEqual({ kind: 'out-of-memory', message: 'Out of memory.', more: 2 });
    const later = gpuFaultMark();
    expect(gpuFaultSince(later)).toBeUndefined();
    // A loss settles asynchronously: settleGpuFaults waits for it (briefly) when nothing is recorded yet.
    setTimeout(() => lose({ reason: 'unknown', message: 'Device was lost.\n - detail' }), 10);
    expect(await settleGpuFaults(later, 2000)).toEqual({ kind: 'lost', message: 'reason unknown: Device was lost.', more: 0 });
  });

  it('says what the device said, where, the last good checkpoint and what to do, per kind', () => {
    const oom = describeGpuFault({ kind: 'out-of-memory', message: 'Out of memory.', more: 3 }, 'stage one, step 4', 'checkpoints/step-000003');
    expect(oom).toBe(
      'the GPU reported running out of memory: Out of memory. (and 3 more errors after it), during stage one, step 4; nothing computed after it was saved; the last good checkpoint is checkpoints/step-000003. ' +
        "Lower the stage's micro_batch (batch stays: more micro-batches a step) or max_len, or state the GPU's memory (`memory 80GB` in the stage, or `memory:` in mcpc.yaml: " +
        'the compiler then picks the largest micro_batch that fits and recomputes activations if it must); then rerun with --resume.',
    );
    const lost = describeGpuFault({ kind: 'lost', message: 'reason unknown', more: 0 }, 'stage two, step 1', undefined);
    expect(lost).toMatch(/^the GPU device was lost \(reason unknown\), during stage two, step 1; nothing computed after it was saved; no checkpoint was written yet\. .*: rerun \(a new process opens it again\)\.$/);
    const bug = describeGpuFault({ kind: 'validation', message: 'Binding size is zero.', more: 1 }, 'stage one, step 2', 'c/step-000001');
    expect(bug).toMatch(/^the GPU reported a validation error: Binding size is zero\. \(and 1 more error after it\), during stage one, step 2;/);
    expect(bug).toMatch(/rerun with --resume; to tell which, MCPC_DAWN_ROBUSTNESS=1 .* MCPC_GEMM_WGSL=0/);
    expect(new GpuFaultError({ kind: 'internal', message: 'x', more: 0 }, 'the exports', undefined)).toBeInstanceOf(RunError);
  });
});


describeGpu('withErrorScopes on llvmpipe', () => {
  it('returns what the device raised during f (not recorded as a fault), f\'s value, and rethrows with the scopes popped', async () => {
    const gpu = dawn();
    const device = gpu.device;
    const mark = gpuFaultMark();
    expect(await withErrorScopes(device, () => 7)).toEqual({ value: 7 });
    const bad = await withErrorScopes(device, async () => {
      device.createBuffer({ size: 2 ** 40, usage: 0x80 });
      return 'made';
    });
    expect(bad.value).toBe('made');
    expect(bad.error).toEqual({ kind: 'validation', message: expect.stringMatching(/^Buffer size \(1099511627776\) exceeds/) });
    await expect(withErrorScopes(device, () => Promise.reject(new Error('boom')))).rejects.toThrow('boom');
    expect(gpuFaultSince(mark)).toBeUndefined();
    // Every scope was popped: an error after them is uncaptured again, and recorded.
    device.createBuffer({ size: 2 ** 40, usage: 0x80 });
    expect(gpuFaultSince(mark)).toMatchObject({ kind: 'validation', more: 0 });
    expect(await withErrorScopes({}, () => 3)).toEqual({ value: 3 });
  });
});

describeGpu('a run on webgpu that the device faults', () => {
  it('stops before the faulted step is recorded or saved; --resume ends where an uninterrupted run ends', async () => {
    const {
      dir,
      plans: [plan],
    } = compileInline(TWO_STAGES, [1]);
    const gpu = dawn();
    const finalParams = (runDir: string) => {
      const rec = JSON.parse(readFileSync(join(dir, runDir, 'stages/two.json'), 'utf8')) as { checkpoint: number };
      const r = SafetensorsReader.fromBytes(readFileSync(join(dir, runDir, 'checkpoints', `step-${String(rec.checkpoint).padStart(6, '0')}`, 'params.safetensors')), 'params');
      return new Map(r.names.map((k) => [k, Float32Array.from(r.readFloat32(k))]));
    };

    const full = await runPlan(plan!, { root: dir, runDir: join(dir, 'full'), backend: 'webgpu', write: () => {} });
    expect(full.code).toBe(0);

    // Between stage two's second step and its checks, a buffer larger than the device allows: Dawn raises an
    // uncaptured validation error (an allocation that fails for want of memory takes the same path).
    let text = '';
    const failed = runPlan(plan!, {
      root: dir,
      runDir: join(dir, 'cut'),
      backend: 'webgpu',
      write: (t) => void (text += t),
      afterStep: ({ stage, step }) => {
        if (stage === 'two' && step === 2) gpu.device.createBuffer({ size: 2 ** 40, usage: 0x80 });
      },
    });
    const err = await failed.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err, text).toBeInstanceOf(GpuFaultError);
    const f = err as GpuFaultError;
    expect(f.fault.kind).toBe('validation');
    expect(f.message).toMatch(/^the GPU reported a validation error: Buffer size \(1099511627776\) exceeds the max buffer size limit .*, during stage two, step 2; nothing computed after it was saved; the last good checkpoint is .*step-(\d+)\. That is a bug/);
    // Stage one's end, then stage two's first step; nothing of step 2: no checkpoint, no metrics line.
    const kept = readdirSync(join(dir, 'cut/checkpoints')).sort();
    expect(f.lastCheckpoint).toMatch(new RegExp(`${kept[kept.length - 1]}$`));
    expect(kept).toHaveLength(2);
    const lines = readFileSync(join(dir, 'cut/metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { stage: string; step: number; loss?: number });
    expect(lines.filter((l) => l.stage === 'two' && l.loss !== undefined).map((l) => l.step)).toEqual([0]);

    // A later run in the same process (the device itself is fine) resumes from that checkpoint.
    let resumedText = '';
    const resumed = await runPlan(plan!, { root: dir, runDir: join(dir, 'cut'), backend: 'webgpu', resume: true, write: (t) => void (resumedText += t) });
    expect(resumed.code, resumedText).toBe(0);
    expect(resumedText).toMatch(/stage two: resuming at step 1\/3/);
    expect(existsSync(join(dir, 'cut/stages/two.json'))).toBe(true);
    const a = finalParams('full');
    const b = finalParams('cut');
    expect([...b.keys()].sort()).toEqual([...a.keys()].sort());
    for (const [id, v] of a) expect(relErr(b.get(id)!, v, 1e-6), id).toBeLessThan(1e-5);
  });
});
