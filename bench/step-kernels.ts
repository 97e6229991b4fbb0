/**
 * What the host records for one training step on webgpu: tfjs kernels per step, by name and by plan op
 * (forward, and backward through the tape nodes each op recorded), and the host time of recording the
 * forward+backward (the wall time of `tf.engine().gradients` less the time spent inside `queue.submit`,
 * where a software adapter such as llvmpipe runs the shaders). MedCare stage 1 on the demo base's shape, as
 * bench/gpu.ts's training step.
 *
 *   npx tsx bench/step-kernels.ts                     # MCPC_FUSED_WGSL=0 compares the reference fused path
 *   npx tsx bench/step-kernels.ts --seq 224 --steps 5
 *   npx tsx bench/step-kernels.ts --by-name           # also each plan op's kernels by name (F: forward, B: backward)
 *   npx tsx bench/step-kernels.ts --backend wasm --seq 256   # the same counts on a CPU backend (host = wall there)
 *
 * The load average is printed with the timings: on a shared machine they move with it. Dispatches made with
 * src/runtime/webgpu/kernels/run.ts `dispatch` (rmsnorm, swiglu, rope, attention, ...) are not tfjs kernels
 * and do not appear in the counts; those made through registered kernels (McpcGemm, McpcFusedWgsl:*, ...) do.
 */
import { loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import { createStageRunner } from '../src/runtime/executor.js';
import type { Kernel } from '../src/runtime/kernels/reference.js';
import { tf } from '../src/runtime/tfjs/index.js';
import { tunePending } from '../src/runtime/webgpu/gemm.js';
import { medcarePlan, syntheticBatch } from './support/medcare.js';

/* eslint-disable @typescript-eslint/no-explicit-any -- tfjs engine and backend internals. */

process.env.EGL_PLATFORM ??= 'surfaceless';
const { values } = parseArgs({ options: { seq: { type: 'string' }, steps: { type: 'string' }, 'by-name': { type: 'boolean' }, backend: { type: 'string', default: 'webgpu' } } });
const seqLen = Number(values.seq ?? 64);
const reps = Number(values.steps ?? 5);

const { plan, dir } = medcarePlan(1);
const stage = plan.stages[0]!;
const rows = stage.settings.microBatch;
const mbs = [syntheticBatch(rows, seqLen, 1), syntheticBatch(rows, seqLen, 2)];
const runner = (await createStageRunner(plan, stage.name, { backend: values.backend!, root: dir, totalSteps: 1000 })) as any;
const eng = tf.engine() as any;
const backend = tf.backend() as any;

// Time inside queue.submit, and the wall time of the forward+backward recording.
let submitMs = 0;
// (A CPU backend has no queue: there nothing is subtracted.)
const queue = backend.queue ?? { submit: () => undefined };
const submit = queue.submit.bind(queue);
queue.submit = (buffers: unknown) => {
  const t = performance.now();
  const r = submit(buffers);
  submitMs += performance.now() - t;
  return r;
};
let recordMs = 0;
let recordSubmitMs = 0;
const gradients = eng.gradients.bind(eng);
eng.gradients = (...args: unknown[]) => {
  const s0 = submitMs;
  const t = performance.now();
  const r = gradients(...args);
  recordMs += performance.now() - t;
  recordSubmitMs += submitMs - s0;
  return r;
};

await runner.step(mbs);
await tunePending();
await runner.step(mbs);
const timings: { wall: number; host: number; record: number; recordHost: number }[] = [];
for (let i = 0; i < reps; i++) {
  submitMs = recordMs = recordSubmitMs = 0;
  const t0 = performance.now();
  await runner.step(mbs);
  const wall = performance.now() - t0;
  timings.push({ wall, host: wall - submitMs, record: recordMs, recordHost: recordMs - recordSubmitMs });
}
const load = loadavg()
  .map((x) => x.toFixed(2))
  .join(' ');

// Kernels per plan op: wrap the runner's kernel table, and the gradient of every tape node an op records.
const profile = () => eng.state.activeProfile?.kernels?.length ?? 0;
const attributed = new Set<number>();
const forward = new Map<string, number>();
const backward = new Map<string, number>();
/** Per plan op: kernel name (prefixed F: or B:) → count, for --by-name. */
const names = new Map<string, Map<string, number>>();
const count = (m: Map<string, number>, op: string, from: number) => {
  const to = profile();
  m.set(op, (m.get(op) ?? 0) + to - from);
  const kernels = eng.state.activeProfile?.kernels ?? [];
  const byOp = names.get(op) ?? new Map<string, number>();
  names.set(op, byOp);
  for (let i = from; i < to; i++) {
    attributed.add(i);
    const key = `${m === forward ? 'F' : 'B'}:${kernels[i].name}`;
    byOp.set(key, (byOp.get(key) ?? 0) + 1);
  }
};
const table = runner.kernels as Record<string, Kernel>;
for (const [op, k] of Object.entries(table)) {
  table[op] = (inputs, step, ctx) => {
    const k0 = profile();
    const tape = eng.state.activeTape as any[] | undefined;
    const t0 = tape?.length ?? 0;
    const r = k(inputs, step, ctx);
    count(forward, op, k0);
    if (tape)
      for (const node of tape.slice(t0)) {
        const g = node.gradient;
        if (!g) continue;
        node.gradient = (dys: unknown) => {
          const a = profile();
          const closures = g(dys);
          count(backward, op, a);
          return Object.fromEntries(
            Object.entries(closures as Record<string, () => unknown>).map(([key, f]) => [
              key,
              () => {
                const b = profile();
                const x = f();
                count(backward, op, b);
                return x;
              },
            ]),
          );
        };
      }
    return r;
  };
}
const info = await tf.profile(async () => {
  await runner.step(mbs);
  return [] as any;
});
runner.dispose();

const byName = new Map<string, number>();
const rest = new Map<string, number>();
info.kernels.forEach((k, i) => {
  byName.set(k.name, (byName.get(k.name) ?? 0) + 1);
  if (!attributed.has(i)) rest.set(k.name, (rest.get(k.name) ?? 0) + 1);
});
const top = (m: Map<string, number>, n = 16) =>
  [...m]
    .sort((a, b) => b[1] - a[1])
    .slice(0, n)
    .map(([k, v]) => `${k} ${v}`)
    .join(', ');
const median = (xs: number[]) => xs.slice().sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const min = (xs: number[]) => Math.min(...xs);
console.log(`MedCare stage ${stage.name}, ${mbs.length} x ${rows} x ${seqLen} tokens, MCPC_FUSED_WGSL=${process.env.MCPC_FUSED_WGSL ?? '(unset)'}`);
console.log(`kernels per step: ${info.kernels.length}: ${top(byName)}`);
for (const op of new Set([...forward.keys(), ...backward.keys()])) {
  const f = forward.get(op) ?? 0;
  const b = backward.get(op) ?? 0;
  if (f + b) console.log(`  ${op.padEnd(24)} forward ${String(f).padStart(5)}  backward ${String(b).padStart(5)}`);
  if (values['by-name'] && f + b) console.log(`  ${''.padEnd(24)} ${top(names.get(op) ?? new Map(), 64)}`);
}
console.log(`  ${'outside plan ops'.padEnd(24)} ${[...rest.values()].reduce((a, b) => a + b, 0)}: ${top(rest, 10)}`);
console.log(
  `median of ${reps} steps: wall ${median(timings.map((t) => t.wall)).toFixed(1)} ms, host (wall less queue.submit) ${median(timings.map((t) => t.host)).toFixed(1)} ms; ` +
    `forward+backward recording ${median(timings.map((t) => t.record)).toFixed(1)} ms, host ${median(timings.map((t) => t.recordHost)).toFixed(1)} ms; load average ${load}`,
);
// On a shared machine the least of the steps moves less with the load than the median.
console.log(`least of ${reps} steps: host ${min(timings.map((t) => t.host)).toFixed(1)} ms; forward+backward recording host ${min(timings.map((t) => t.recordHost)).toFixed(1)} ms`);
process.exit(0);
