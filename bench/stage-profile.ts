/**
 * `npx tsx bench/stage-profile.ts [--stage align|aggregate] [-O0] [--steps N] [--rows R] [--seq S]
 *   [--kernels REGEX] [--js N] [--ab VAR=VALUE] [--rerun REGEX] [--sequence]`:
 * one plan's stage of the training bench (./support/step.ts: bench/train-step.ts's pipeline and micro-batch,
 * default 8x256, -O1, stage align) run alone in this process on the wasm backend, after 3 warm-up steps, and
 * where its step goes:
 *
 *   - the median and the fastest step;
 *   - per tfjs kernel (those matching REGEX, default all; the 25 largest), the wall ms a step inside it;
 *   - with `--js N`: the N largest self times a step of JavaScript functions and the garbage collector, from a
 *     CPU profile taken (node:inspector) around the timed steps only, WebAssembly functions left out: what
 *     the kernel wall times hide (zero fills, copies, JavaScript loops inside a kernel, the executor's own
 *     work). A `--cpu-prof` of a whole run mixes compilation and warm-up in;
 *   - with `--ab VAR=VALUE`: the steps alternate VAR=VALUE and VAR unset (a switch read per call, e.g.
 *     `--ab MCPC_XENT_SAVE=0`), each column's median and kernel times: an A/B in one process, kernel by kernel,
 *     where bench/train-step.ts --ab compares whole steps;
 *   - with `--rerun REGEX`: each call of a kernel matching REGEX runs twice in its place in the step, the first
 *     result freed: the first call's wall time is listed as NAME#1 (what it costs where the step calls it, its
 *     inputs as cold as they are there), the second as NAME (the same call again, its data now in cache). The gap is
 *     what the step's memory traffic costs that kernel (`--rerun Moe`: the mixture kernels). For kernels that keep
 *     nothing for their gradient (not attention, the loss or fused elementwise kernels, whose kept data is
 *     keyed by the first, freed, output); the step's own time includes both calls;
 *   - with `--sequence`: every timed step's ms in order (the shared machine's slow phases show as runs).
 *
 * No target: a tool for finding where a step goes (BENCHMARKS.md's figures marked *profile*).
 */
import { Session } from 'node:inspector/promises';
import { parseArgs } from 'node:util';
import { createStageRunner } from '../src/runtime/executor.js';
import { initBackend, tf } from '../src/runtime/tfjs/index.js';
import { benchMicroBatch, compileBench } from './support/step.js';

const { values } = parseArgs({
  options: {
    stage: { type: 'string', default: 'align' },
    O0: { type: 'boolean', short: 'O', default: false },
    steps: { type: 'string', default: '20' },
    rows: { type: 'string', default: '8' },
    seq: { type: 'string', default: '256' },
    kernels: { type: 'string', default: '.' },
    js: { type: 'string' },
    ab: { type: 'string' },
    rerun: { type: 'string' },
    sequence: { type: 'boolean', default: false },
  },
});
const [rows, seq, steps] = [Number(values.rows), Number(values.seq), Number(values.steps)];
const optLevel = values.O0 ? 0 : 1;
const [abVar, abValue] = values.ab ? [values.ab.split('=')[0]!, values.ab.split('=').slice(1).join('=') || '0'] : [undefined, undefined];
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

await initBackend('wasm');
const [plan] = compileBench(rows, seq, [{ optLevel }]);
if (!plan!.stages.some((s) => s.name === values.stage)) throw new Error(`--stage: no stage '${values.stage}' (${plan!.stages.map((s) => s.name).join(', ')})`);
const runner = await createStageRunner(plan!, values.stage!, { backend: 'wasm' });
const mbs = [benchMicroBatch(rows, seq, 1)];
for (let i = 0; i < 3; i++) await runner.step(mbs);

// Kernel wall times: every kernel the backend has, wrapped (the runner registered its own by now).
let into: Map<string, number> | undefined;
const rerun = values.rerun ? new RegExp(values.rerun) : undefined;
const addTime = (name: string, since: number) => into!.set(name, (into!.get(name) ?? 0) + performance.now() - since);
for (const k of tf.getKernelsForBackend('wasm')) {
  const f = k.kernelFunc;
  (k as { kernelFunc: typeof f }).kernelFunc = ((args: Parameters<typeof f>[0]) => {
    if (!into) return f(args);
    if (rerun?.test(k.kernelName)) {
      const t = performance.now();
      const first = f(args);
      addTime(`${k.kernelName}#1`, t);
      for (const o of Array.isArray(first) ? first : [first]) (args.backend as { disposeData(id: object): void }).disposeData(o.dataId);
    }
    const t = performance.now();
    const out = f(args);
    addTime(k.kernelName, t);
    return out;
  }) as typeof f;
}

const session = values.js ? new Session() : undefined;
if (session) {
  session.connect();
  await session.post('Profiler.enable');
  await session.post('Profiler.setSamplingInterval', { interval: 200 });
  await session.post('Profiler.start');
}
const cols = abVar ? [`${abVar}=${abValue}`, `${abVar} unset`] : ['step'];
const times: number[][] = cols.map(() => []);
const kernels = cols.map(() => new Map<string, number>());
for (let i = 0; i < steps; i++) {
  const c = abVar ? i % 2 : 0;
  if (abVar && c === 0) process.env[abVar] = abValue;
  else if (abVar) delete process.env[abVar];
  into = kernels[c];
  const t = performance.now();
  await runner.step(mbs);
  times[c]!.push(performance.now() - t);
  into = undefined;
}
if (abVar) delete process.env[abVar];
const profile = session ? ((await session.post('Profiler.stop')) as { profile: { nodes: { id: number; callFrame: { functionName: string; url: string } }[]; samples: number[]; timeDeltas: number[] } }).profile : undefined;
runner.dispose();

const perStep = (ms: number, c: number) => (ms / times[c]!.length).toFixed(2).padStart(7);
console.log(`${values.stage} -O${optLevel}, ${rows}x${seq}, ${steps} steps: ${cols.map((c, i) => `${c} median ${median(times[i]!).toFixed(1)} ms, fastest ${Math.min(...times[i]!).toFixed(1)}`).join('; ')}`);
if (values.sequence) cols.forEach((c, i) => console.log(`  ${c}: ${times[i]!.map((t) => t.toFixed(0)).join(' ')}`));
const pattern = new RegExp(values.kernels!);
console.log(`kernel wall ms a step (${cols.join(' | ')}):`);
for (const [name, ms] of [...kernels[0]!].filter(([n]) => pattern.test(n)).sort((a, b) => b[1] - a[1]).slice(0, 25))
  console.log(`  ${name.padEnd(26)}${cols.map((_, c) => perStep(c === 0 ? ms : (kernels[c]!.get(name) ?? 0), c)).join('  ')}`);

if (profile) {
  // Self time per JavaScript function (and the collector), per step over all timed steps.
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const self = new Map<string, number>();
  profile.samples.forEach((id, i) => {
    const { functionName, url } = byId.get(id)!.callFrame;
    // WebAssembly, idle time, and natives other than the collector (the profiler's own stop shows as `dispatch`)
    if (url.startsWith('wasm://') || (!url && functionName !== '(garbage collector)')) return;
    const where = url ? `${functionName || '(anonymous)'} ${url.split('/').slice(-2).join('/')}` : functionName;
    self.set(where, (self.get(where) ?? 0) + (profile.timeDeltas[i] ?? 0) / 1000);
  });
  console.log(`JavaScript self ms a step (all ${steps} steps${abVar ? ', both columns' : ''}):`);
  for (const [where, ms] of [...self].sort((a, b) => b[1] - a[1]).slice(0, Number(values.js))) console.log(`  ${(ms / steps).toFixed(2).padStart(6)}  ${where}`);
}
