/**
 * `mcpc run [plan.json | pipeline.mcp]`: train every stage of a plan on the CPU reference runtime
 * (src/runtime/run.ts), with metrics, checkpoints, resume, reuse of unchanged stages and the plan's exports.
 * A .mcp is compiled first; with no argument, the plan `mcpc compile` wrote for the project's pipeline.
 */
import { existsSync, readFileSync } from 'node:fs';
import { isAbsolute, relative, resolve } from 'node:path';
import { Diagnostics } from '../../compiler/diagnostics/diagnostic.js';
import type { Plan } from '../../plan/types.js';
import { validatePlan } from '../../plan/validate.js';
import { DataError } from '../../runtime/data/errors.js';
import { BACKENDS, startBackend, type BackendChoice, type ChosenBackend } from '../../runtime/backend.js';
import { constraintValue, exportedWhat, exportGaps, RunError, runPlan, type RunResult } from '../../runtime/run.js';
import { RunnerError } from '../../runtime/executor.js';
import { checkSwitches, SWITCHES } from '../../runtime/switches.js';
import { AtomicWriteError } from '../../runtime/io/atomic.js';
import { CheckpointError } from '../../runtime/io/checkpoint.js';
import { SafetensorsError } from '../../runtime/io/safetensors.js';
import { TokenizerError } from '../../runtime/tokenizer/index.js';
import { WeightsError } from '../../runtime/weights/errors.js';
import { intOption, parse } from '../args.js';
import { compileInput } from '../compile-input.js';
import { folderProblem, fsErrorLine } from '../fs.js';
import { UsageError, type Command } from '../io.js';
import { loadProject } from '../project.js';
import { renderDiagnostics, useColor } from '../report/index.js';

export const runHelp = `usage: mcpc run [plan.json | pipeline.mcp] [options]

Train every stage of a plan, write checkpoints and metrics, then the plan's exports.
With no argument: <out>/<pipeline>.plan.json of the project's pipeline (run \`mcpc compile\` first);
a .mcp file is compiled first.

options:
  --out DIR              run folder (default: <out>/<pipeline>/)
  --backend NAME         auto (default: a hardware WebGPU adapter, else the fastest CPU path, wasm),
                         webgpu, wasm, cpu (the pure-JavaScript reference), tensorflow (tfjs-node-gpu, if installed)
  --max-steps N          at most N optimizer steps per stage (smoke runs)
  --resume               continue from the newest complete checkpoint in the run folder
  --skip-bad-records     skip and count bad data records instead of stopping at the first
  --seed N               override every stage's seed (0 to 2147483647)
  --save-init FILE       first write the initial weights (safetensors by plan id), e.g. for
                         \`python train.py --init-from FILE\` of \`mcpc compile --target torch\`
  --project FILE         project file

Ctrl-C (or SIGTERM) stops after the step in flight with a checkpoint of it (exit 130; --resume continues
from it); another one, a second or more later, stops without waiting for the step.

environment switches (checked before anything runs: a value a switch does not take stops the run,
an MCPC_* name that is no switch is a warning):
${SWITCHES.filter((s) => s.name !== 'MCPC_DEBUG')
  .map((s) => `  ${s.name.padEnd(22)} ${s.what}`)
  .join('\n')}
`;

export const runCommand: Command = async (argv, io) => {
  const { values, positionals } = parse(argv, {
    out: { type: 'string', short: 'o' },
    backend: { type: 'string', default: 'auto' },
    'max-steps': { type: 'string' },
    resume: { type: 'boolean', default: false },
    'skip-bad-records': { type: 'boolean', default: false },
    seed: { type: 'string' },
    project: { type: 'string' },
    'save-init': { type: 'string' },
    'stop-after': { type: 'string' }, // testing: stop as if killed after N steps
    help: { type: 'boolean', short: 'h', default: false },
  });
  if (values.help) {
    io.stdout(runHelp);
    return 0;
  }
  if (!(BACKENDS as readonly string[]).includes(values.backend)) throw new UsageError(`unknown backend '${values.backend}' (${BACKENDS.join(', ')})`);
  const maxSteps = intOption(values['max-steps'], '--max-steps', { min: 1 });
  const seed = intOption(values.seed, '--seed', { max: MAX_SEED });
  const stopAfter = intOption(values['stop-after'], '--stop-after', { min: 1 });
  if (positionals.length > 1) throw new UsageError('give one plan or pipeline file');
  const switches = checkSwitches(io.env);
  for (const w of switches.warnings) io.stderr(`mcpc run: warning: ${w}\n`);
  if (switches.errors.length) throw new UsageError(`${switches.errors.join('; ')} (mcpc run --help lists the switches)`);

  let plan: Plan;
  let root: string;
  let out: string;
  let allowOutsideRoot: boolean;
  const arg = positionals[0];
  if (arg !== undefined && arg.endsWith('.mcp')) {
    const compiled = compileInput([arg], io, 1, values.project);
    if (!compiled) return 1;
    plan = compiled.result.plan!;
    root = compiled.cfg.root;
    out = resolve(compiled.cfg.root, compiled.cfg.out);
    allowOutsideRoot = compiled.cfg.allowOutsideRoot;
  } else {
    const diags = new Diagnostics();
    const cfg = loadProject(io.cwd, diags, values.project);
    if (diags.items.length) {
      io.stderr(renderDiagnostics('text', diags.items, cfg.sources, { color: useColor({ isTTY: io.isTTY, env: io.env }), cwd: io.cwd }));
      throw new UsageError(`${cfg.file ?? 'mcpc.yaml'} is invalid`);
    }
    root = cfg.root;
    out = resolve(cfg.root, cfg.out);
    allowOutsideRoot = cfg.allowOutsideRoot;
    let file: string;
    if (arg !== undefined) file = resolve(io.cwd, arg);
    else {
      const name = pipelineName(resolve(cfg.root, cfg.pipeline));
      file = resolve(out, `${name}.plan.json`);
      if (!existsSync(file)) {
        io.stderr(`mcpc run: no plan at ${relative(io.cwd, file) || file}: run \`mcpc compile\` first, or give a .mcp or plan file\n`);
        return 1;
      }
    }
    let json: unknown;
    try {
      json = JSON.parse(readFileSync(file, 'utf8'));
    } catch (e) {
      io.stderr(`mcpc run: cannot read the plan ${relative(io.cwd, file) || file}: ${(e as Error).message}\n`);
      return 1;
    }
    const v = validatePlan(json);
    if (!v.ok) {
      io.stderr(`mcpc run: ${relative(io.cwd, file) || file} is not a valid plan (recompile it with \`mcpc compile\`):\n${v.errors.slice(0, 10).map((e) => `  ${typeof e === 'string' ? e : JSON.stringify(e)}`).join('\n')}\n`);
      return 1;
    }
    plan = json as Plan;
  }
  // A compiled plan is validated too (a compiler bug should not train garbage).
  const v = validatePlan(plan);
  if (!v.ok) {
    io.stderr(`mcpc run: the compiled plan is not valid (a compiler bug):\n${v.errors.slice(0, 10).map((e) => `  ${typeof e === 'string' ? e : JSON.stringify(e)}`).join('\n')}\n`);
    return 2;
  }
  const runDir = values.out ? resolve(io.cwd, values.out) : resolve(out, plan.pipeline);
  const rel = (f: string) => relative(io.cwd, f) || f;
  const blocked = folderProblem(runDir, rel);
  if (blocked) {
    io.stderr(`mcpc run: cannot use ${rel(runDir)} as the run folder: ${blocked}; give --out another folder, or move the file away\n`);
    return 1;
  }
  const t0 = performance.now();
  let backend: ChosenBackend;
  try {
    backend = await startBackend(values.backend as BackendChoice);
  } catch (e) {
    io.stderr(`mcpc run: cannot start the ${values.backend} backend: ${(e as Error).message}\n`);
    return 1;
  }
  io.stdout(`run ${plan.pipeline}: ${plan.stages.length} stage${plan.stages.length === 1 ? '' : 's'} on ${backend.why}\n${switches.set.length ? `switches ${switches.set.join(' ')}\n` : ''}run folder ${relative(io.cwd, runDir) || runDir}\n`);
  // The first Ctrl-C (or SIGTERM, as schedulers send before a kill) ends the run after the step in flight, with a
  // checkpoint of it; a later one ends the process without waiting (the checkpoints written so far stand). One
  // press often arrives twice (the terminal signals the process group, and npm / npx forward it to their child):
  // a repeat within a second counts as the same.
  const interrupt = new AbortController();
  let first = 0;
  const onSignal = (sig: NodeJS.Signals) => {
    if (interrupt.signal.aborted) {
      if (Date.now() - first < 1000) return;
      io.stderr(`\nmcpc run: ${sig} again: stopping now; the last complete checkpoint stands (the same command with --resume continues from it)\n`);
      process.exit(130);
    }
    first = Date.now();
    interrupt.abort();
    io.stderr(`\nmcpc run: ${sig}: finishing the step in flight and writing a checkpoint of it (${sig} again stops without it)\n`);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    if (values['save-init'] !== undefined) {
      const { saveInitialWeights } = await import('../save-init.js');
      const n = saveInitialWeights(plan, root, resolve(io.cwd, values['save-init']), seed);
      io.stdout(`initial weights: ${n} tensors -> ${values['save-init']}\n`);
    }
    const r = await runPlan(plan, {
      root,
      runDir,
      backend: backend.name,
      resume: values.resume,
      skipBadRecords: values['skip-bad-records'],
      allowOutsideRoot,
      tty: io.isTTY,
      write: (t) => io.stdout(t),
      ...(maxSteps !== undefined ? { maxSteps } : {}),
      ...(seed !== undefined ? { seed } : {}),
      ...(stopAfter !== undefined ? { stopAfter } : {}),
      signal: interrupt.signal,
    });
    if (r.code !== 0) {
      io.stderr(`mcpc run: ${r.message ?? 'stopped'}\n`);
      return r.code;
    }
    io.stdout(formatSummary(r, backend.name, (performance.now() - t0) / 1000, (f) => relative(io.cwd, f) || f));
    return 0;
  } catch (e) {
    if (e instanceof SafetensorsError) {
      io.stderr(`mcpc run: ${damagedSafetensors(e, rel)}\n`);
      return 1;
    }
    if (e instanceof DataError || e instanceof RunError || e instanceof RunnerError || e instanceof WeightsError || e instanceof TokenizerError || e instanceof CheckpointError || e instanceof AtomicWriteError) {
      const hint =
        e instanceof DataError ? (skippable(e, plan, values['skip-bad-records']) ? ' (--skip-bad-records skips and counts bad records)' : '')
        : e instanceof AtomicWriteError ? ' (check that the folder exists and is writable; nothing was replaced)'
        : e instanceof WeightsError && /has neither model\.safetensors/.test(e.message) ? '\nThe model has no weights yet: produce them first (for models/tiny-med-base: `mcpc run pipelines/pretrain.mcp`).'
        : '';
      io.stderr(`mcpc run: ${e.message}${hint}\n`);
      return 1;
    }
    // A file or folder the run writes that the system refused (a file where a folder goes, no permission, a full disk).
    const fs = fsErrorLine(e, rel);
    if (fs) {
      io.stderr(`mcpc run: ${fs}\n`);
      return 1;
    }
    throw e;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
};

/** The language's cap on `seed` (docs/reference.md). */
const MAX_SEED = 2 ** 31 - 1;

/** Whether --skip-bad-records would have got past this error: one record of a JSONL data file, the flag off. */
function skippable(e: DataError, plan: Plan, skipping: boolean): boolean {
  if (skipping || e.line === 0 || /^(cannot read|probe )/.test(e.problem)) return false;
  return plan.data.some((d) => d.path === e.file && d.kind === 'jsonl' && d.format !== 'text');
}

/**
 * A safetensors file that does not parse, named with what to do: the model's weights, an adapter or init file
 * (the runtime reads a checkpoint's files itself and passes over a damaged checkpoint with a warning).
 */
export function damagedSafetensors(e: SafetensorsError, rel: (f: string) => string): string {
  const what = `${e.tensor !== undefined ? `tensor ${JSON.stringify(e.tensor)}: ` : ''}${e.detail}`;
  return `${isAbsolute(e.file) ? rel(e.file) : e.file}: ${what}\nThe file is damaged or not a safetensors file: download or export it again (an interrupted copy leaves it short).`;
}

const secs = (x: number): string => (x >= 60 ? `${Math.floor(x / 60)}m${String(Math.round(x % 60)).padStart(2, '0')}s` : `${x.toFixed(1)}s`);

/** The per-stage summary printed at the end of a run: losses, evaluations, constraints, time, exports. */
export function formatSummary(r: RunResult, backend: string, wallSecs: number, rel: (f: string) => string): string {
  const rows = r.stages.map((s) => {
    const loss = s.reused ? 'reused' : s.firstLoss !== undefined && s.finalLoss !== undefined ? `${s.firstLoss.toFixed(3)} -> ${s.finalLoss.toFixed(3)}` : s.finalLoss !== undefined ? s.finalLoss.toFixed(3) : '-';
    const ce = s.firstCe !== undefined && s.finalCe !== undefined && s.finalLoss !== undefined && Math.abs(s.finalLoss - s.finalCe) > 1e-9 ? `${s.firstCe.toFixed(3)} -> ${s.finalCe.toFixed(3)}` : '';
    return [s.stage, String(s.steps), loss, ce, s.reused ? '-' : secs(s.secs), s.tokensPerSec ? String(Math.round(s.tokensPerSec)) : '-'];
  });
  const head = ['stage', 'steps', 'loss (first -> last)', 'cross-entropy', 'time', 'tok/s'];
  const width = head.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
  const fmt = (cells: string[]) => '  ' + cells.map((c, i) => c.padEnd(width[i]!)).join('  ').trimEnd();
  const out = [`\nsummary (${backend}, ${secs(wallSecs)}):`, fmt(head), ...rows.map(fmt)];
  for (const s of r.stages) {
    for (const e of s.evals ?? []) out.push(`  ${s.stage}: ${e.probe} ${e.metric} ${Number.isInteger(e.value) ? e.value : e.value.toFixed(4)} (${e.examples} examples)`);
    for (const c of s.constraints) out.push(`  ${s.stage}: orthogonality ${c.target} vs ${c.other}: ${constraintValue(c)}`);
    if (s.mergeCheck) out.push(`  ${s.stage}: merge check max |merged - unmerged| = ${s.mergeCheck.maxAbsDiff.toExponential(2)} ${s.mergeCheck.ok ? 'ok' : 'FAILED'}`);
  }
  for (const e of r.exports) {
    out.push(`  export ${e.format}: ${rel(e.path)}${exportedWhat(e)}`);
    for (const n of exportGaps(e)) out.push(`    not in it: ${n.adapter} (${n.reason})`);
  }
  return out.join('\n') + '\n';
}

/** The `pipeline NAME` a .mcp declares (else its file name). */
function pipelineName(file: string): string {
  try {
    const m = /^\s*pipeline\s+([A-Za-z_][\w-]*)/m.exec(readFileSync(file, 'utf8'));
    if (m) return m[1];
  } catch {
    /* fall through */
  }
  return file.replace(/^.*[\\/]/, '').replace(/\.mcp$/, '');
}
