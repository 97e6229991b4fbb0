/**
 * `npm run bench` (or `npx tsx bench/train-step.ts [--quick] [--backend wasm|cpu] [--reps N] [--warmup N] [--rows R] [--seq S]`):
 * the training step of a tiny MedCare-like pipeline (the demo base model's shape: Qwen2, hidden 64, 4 layers,
 * 4 query / 2 KV heads, SwiGLU 176, byte vocabulary; MedCare's adapters: attention LoRA r16, a 2-expert
 * shared LoRA r16 and an 8-expert top-2 mixture r16 in stage one; an r32 alignment LoRA held orthogonal to
 * the knowledge adapter in stage two), compiled at -O0 and at -O1, run by stage runners on the same backend
 * (default wasm, what `mcpc run --backend auto` picks without a GPU) in this one process. After warm-up it
 * times alternating optimizer steps of the two plans on identical micro-batches (so machine load hits both
 * alike) and prints, per stage, the median ms/step of each and their ratio, then
 *
 *     speedup optimized/-O0: <ratio>x
 *
 * (the geometric mean over the stages of -O0 median / -O1 median). Target (issue 5): >= 2x; exits 1 below it.
 * Each stage's line also gives the compiler's cost model of both plans (GFLOP per step, as `mcpc explain`),
 * and the line before the speedup the same mean over those FLOP ratios: the speedup equal kernel efficiency
 * would give, i.e. how much of the ratio is arithmetic the -O1 passes removed.
 * `--quick` (what `npm run bench -- --quick` passes) shrinks the micro-batch and the repetitions to fit the
 * whole quick bench run in 40 s. MCPC_KERNELS=reference runs the plain reference kernels instead of the
 * backend's kernel table (kernels/cpu.ts on wasm), to see what the fused CPU kernels buy.
 *
 * `--ab VAR` (e.g. `--ab MCPC_FUSED_WASM`) compares instead the -O1 plan with the environment variable VAR=0
 * against the same plan with VAR unset, alternating their steps in this one process the same way (for switches
 * read per call); the last line is then `speedup VAR on/off: <ratio>x`, with no target.
 *
 * `--without-pass NAME` (e.g. `--without-pass fold-trainable-lora`) compares instead the -O1 plan compiled without
 * that optimization pass against the full -O1 plan, the same way; the last line is `speedup NAME on/off: <ratio>x`.
 *
 * `--profile` also prints, per stage and plan, the wall time per timed step inside each tfjs kernel by name
 * (`--profile-shapes BatchMatMul,...`: those kernels apart per input shapes and transposes)
 * (kernels called from inside other kernels count in both), the largest first: where each plan's step goes.
 */
import { loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import { passes } from '../src/compiler/4-optimize/index.js';
import { createStageRunner, type StageRunner } from '../src/runtime/executor.js';
import type { Plan } from '../src/plan/types.js';
import { tf } from '../src/runtime/tfjs/index.js';
import { benchMicroBatch, compileBench } from './support/step.js';

const { values } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    backend: { type: 'string', default: 'wasm' },
    reps: { type: 'string' },
    warmup: { type: 'string' },
    rows: { type: 'string' },
    seq: { type: 'string' },
    target: { type: 'string', default: '2' },
    ab: { type: 'string' },
    profile: { type: 'boolean', default: false },
    'profile-shapes': { type: 'string' },
    'without-pass': { type: 'string' },
  },
});
const quick = values.quick!;
const backend = values.backend!;
// Defaults: 15 timed steps a plan after 3 warm-up (7 after 2 with --quick). The shared 2-core host has slow phases
// of tens of seconds; with 7 (or 3) steps one of them moved the median of a plan by 10-50%.
const reps = Number(values.reps ?? (quick ? 7 : 15));
const warmup = Number(values.warmup ?? (quick ? 2 : 3));
const rows = Number(values.rows ?? (quick ? 2 : 8));
const seq = Number(values.seq ?? (quick ? 128 : 256));
const target = Number(values.target);
const ab = values.ab;
const without = values['without-pass'];


/** Plans 0 and 1: -O0 and -O1, or with --without-pass NAME the -O1 plan without that pass and the full -O1 plan. */
function compileBoth(): Plan[] {
  if (without && !passes.some((p) => p.name === without)) throw new Error(`--without-pass: no pass '${without}' (passes: ${passes.map((p) => p.name).join(', ')})`);
  return compileBench(rows, seq, without ? [{ optLevel: 1, passes: passes.filter((p) => p.name !== without) }, { optLevel: 1 }] : [{ optLevel: 0 }, { optLevel: 1 }]);
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

const t0 = performance.now();
const both = compileBoth() as [Plan, Plan];
// With --ab: plan 0 is -O1 with the variable at 0, plan 1 -O1 with it unset.
const [p0, p1] = ab ? [both[1], both[1]] : both;
const label = ab ? [`${ab}=0`, 'default'] : without ? [`-O1 without ${without}`, '-O1'] : ['-O0', '-O1'];
const setEnv = (i: number) => {
  if (!ab) return;
  if (i === 0) process.env[ab] = '0';
  else delete process.env[ab];
};
const mbs = [benchMicroBatch(rows, seq, 1)];

/** --profile-shapes NAME,...: these kernels profiled per input shapes and transposes (which products cost). */
const byShape = new Set((values['profile-shapes'] ?? '').split(',').filter(Boolean));
const shapesOf = (args: { inputs: unknown; attrs?: unknown }): string => {
  const ins = Object.values(args.inputs as Record<string, { shape?: number[] }>).map((t) => `[${t.shape?.join('x') ?? ''}]`);
  const at = (args.attrs ?? {}) as Record<string, unknown>;
  const tr = ['transposeA', 'transposeB'].filter((a) => at[a]).map((a) => a.slice(-1));
  return ` ${ins.join('·')}${tr.length ? ` T${tr.join('')}` : ''}`;
};
/** Calls per profiled shape (--profile-shapes), over every profiled step of both plans. */
const calls = new Map<string, number>();
/** --profile: wall ms per kernel name, accumulated into `profileInto` while it is set. */
let profileInto: Map<string, number> | undefined;
const wrapped = new Set<string>();
/** Wraps every kernel the backend has now (the stage runners register theirs when created). */
const wrapKernels = () => {
  for (const k of tf.getKernelsForBackend(backend)) {
    if (wrapped.has(k.kernelName)) continue;
    wrapped.add(k.kernelName);
    const f = k.kernelFunc;
    (k as { kernelFunc: typeof f }).kernelFunc = ((args: Parameters<typeof f>[0]) => {
      if (!profileInto) return f(args);
      const t = performance.now();
      const out = f(args);
      const name = byShape.has(k.kernelName) ? `${k.kernelName}${shapesOf(args)}` : k.kernelName;
      profileInto.set(name, (profileInto.get(name) ?? 0) + performance.now() - t);
      if (byShape.has(k.kernelName)) calls.set(name, (calls.get(name) ?? 0) + 1);
      return out;
    }) as typeof f;
  }
};
const printProfile = (name: string, prof: Map<string, number>, steps: number) => {
  const rowsOut = [...prof].sort((a, b) => b[1] - a[1]).slice(0, Number(process.env.PROFILE_TOP ?? (byShape.size ? 24 : 14)));
  console.log(`    ${name}: ${rowsOut.map(([k, ms]) => `${k} ${(ms / steps).toFixed(1)}${calls.has(k) ? ` (${calls.get(k)! / steps} calls)` : ''}`).join(', ')}`);
};
console.log(`train step: ${backend}, kernels ${process.env.MCPC_KERNELS ?? 'default'}, micro-batch ${rows}x${seq} = ${rows * seq} tokens, ${warmup} warm-up + ${reps} timed steps per plan, load avg ${loadavg()[0]!.toFixed(2)}${quick ? ' (quick)' : ''}`);

const ratios: number[] = [];
const flopRatios: number[] = [];
let carried: [Map<string, Float32Array>, Map<string, Float32Array>] | undefined;
for (const stage of ['aggregate', 'align']) {
  const runners: StageRunner[] = [];
  for (const [i, p] of [p0, p1].entries()) runners.push(await createStageRunner(p, stage, { backend, ...(carried ? { parameters: carried[i] } : {}) }));
  const times: number[][] = [[], []];
  const profiles = [new Map<string, number>(), new Map<string, number>()];
  for (let r = 0; r < warmup + reps; r++) {
    // Alternate which plan goes first, so neither always runs on a cache or heap the other just warmed.
    const order = r % 2 ? [1, 0] : [0, 1];
    for (const i of order) {
      setEnv(i);
      if (values.profile && r >= warmup) {
        wrapKernels();
        profileInto = profiles[i];
      }
      const t = performance.now();
      const res = await runners[i]!.step(mbs);
      const ms = performance.now() - t;
      profileInto = undefined;
      if (!Number.isFinite(res.loss)) throw new Error(`${stage} -O${i}: loss ${res.loss}`);
      if (r >= warmup) times[i]!.push(ms);
    }
  }
  const [m0, m1] = [median(times[0]!), median(times[1]!)];
  ratios.push(m0 / m1);
  // The compiler's cost model (what `mcpc explain` prints): the arithmetic each plan asks for per step.
  const [f0, f1] = [p0, p1].map((p) => p.stages.find((s) => s.name === stage)!.estimates.flopsPerStep);
  flopRatios.push(f0! / f1!);
  console.log(`  ${stage.padEnd(9)} ${label[0]} ${m0.toFixed(0).padStart(6)} ms/step   ${label[1]} ${m1.toFixed(0).padStart(6)} ms/step   ${(m0 / m1).toFixed(2)}x   (${label[0]} min ${Math.min(...times[0]!).toFixed(0)}, ${label[1]} min ${Math.min(...times[1]!).toFixed(0)}; cost model ${(f0! / 1e9).toFixed(2)} / ${(f1! / 1e9).toFixed(2)} GFLOP, ${(f0! / f1!).toFixed(2)}x)`);
  if (values.profile) for (const i of [0, 1]) printProfile(label[i]!, profiles[i]!, reps);
  if (stage === 'aggregate') {
    for (const r of runners) await r.applyExit();
    carried = [await runners[0]!.parameters(), await runners[1]!.parameters()];
  }
  runners.forEach((r) => r.dispose());
}
const geomean = (xs: number[]) => Math.exp(xs.reduce((a, r) => a + Math.log(r), 0) / xs.length);
const speedup = geomean(ratios);
if (ab || without) {
  console.log(`speedup ${ab ?? without} on/off: ${speedup.toFixed(2)}x (${((performance.now() - t0) / 1000).toFixed(1)} s, tensors ${tf.memory().numTensors})`);
  process.exit(0);
}
// Where the time ratio can go at equal kernel efficiency: the same mean over the cost model's FLOP ratios.
console.log(`arithmetic -O0/-O1 (cost model, same mean): ${geomean(flopRatios).toFixed(2)}x`);
const pass = speedup >= target;
console.log(`speedup optimized/-O0: ${speedup.toFixed(2)}x (target >= ${target}x: ${pass ? 'PASS' : 'FAIL'}; ${((performance.now() - t0) / 1000).toFixed(1)} s, tensors ${tf.memory().numTensors})`);
process.exitCode = pass ? 0 : 1;
