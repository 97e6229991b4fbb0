/**
 * `mcpc compile [file] [-o dir] [-O0] [--format json|yaml] [--emit ts]`: compile a pipeline to its execution
 * plan, `<out>/<pipeline>.plan.json` (or .yaml), and with `--emit ts` a typed TypeScript module beside it,
 * `<out>/<pipeline>.plan.ts` (type-checked before it is written). Written atomically; the same input gives
 * the same bytes. `--target torch` writes a PyTorch program instead (compiler/5-emit/torch).
 */
import { mkdirSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import { stringify } from 'yaml';
import { parse } from '../args.js';
import { compileInput, takeOptLevel } from '../compile-input.js';
import { fileProblem, folderProblem, fsErrorLine, writeAtomically } from '../fs.js';
import { UsageError, type Command } from '../io.js';

export const compileHelp = `usage: mcpc compile [file] [options]

Compile a pipeline (default: the one mcpc.yaml names) to an execution plan.

options:
  -o, --out DIR          output folder (default: mcpc.yaml's out, else out/)
  -O0                    turn every optimization pass off (for comparison and debugging)
  --format json|yaml     plan format (default json)
  --emit ts              also write <out>/<pipeline>.plan.ts: the plan with types (stage names,
                         hyperparameter overrides), type-checked before it is written
  --plan-module SPEC     import specifier of the plan module in that file (default: the relative
                         path from the output folder to mcpc's src/plan/index.js)
  --target plan|torch    plan (default): the execution plan; torch: a self-contained PyTorch program
                         (train.py and its modules) in the -o folder (default <out>/<pipeline>-torch/),
                         run with \`python train.py\`, \`--nproc N\` or torchrun; files mcpc wrote there
                         before are replaced, others are not (the compile stops and says which)
  --force                with --target torch: replace those other files too
  --project FILE         project file
environment:
  MCPC_DEBUG=ir          verify the IR after every pass and dump it to stderr
`;

export const compileCommand: Command = async (argv0, io) => {
  const { argv, optLevel } = takeOptLevel(argv0);
  const { values, positionals } = parse(argv, {
    out: { type: 'string', short: 'o' },
    format: { type: 'string', default: 'json' },
    emit: { type: 'string', multiple: true, default: [] },
    'plan-module': { type: 'string' },
    project: { type: 'string' },
    target: { type: 'string', default: 'plan' },
    force: { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false },
  });
  if (values.help) {
    io.stdout(compileHelp);
    return 0;
  }
  if (values.target !== 'plan' && values.target !== 'torch') throw new UsageError(`--target must be plan or torch, not '${values.target}'`);
  if (values.target === 'torch') {
    if (values.emit.length || values['plan-module'] !== undefined || values.format !== 'json') throw new UsageError('--target torch writes a PyTorch program: --emit, --plan-module and --format go with the plan target');
    const { compileTorch } = await import('../torch.js');
    return compileTorch(positionals, io, values.out, values.project, values.force);
  }
  if (values.force) throw new UsageError('--force goes with --target torch (the plan target always replaces the plan it wrote)');
  if (values.format !== 'json' && values.format !== 'yaml') throw new UsageError(`--format must be json or yaml, not '${values.format}'`);
  const emit = values.emit.flatMap((e) => e.split(',')).filter(Boolean);
  for (const e of emit) if (e !== 'ts') throw new UsageError(`--emit takes ts, not '${e}'`);
  if (values['plan-module'] !== undefined && !emit.includes('ts')) throw new UsageError('--plan-module goes with --emit ts');
  if (values['plan-module'] !== undefined) {
    const { planModuleSpecifierProblem } = await import('../../compiler/5-emit/typescript.js');
    const problem = planModuleSpecifierProblem(values['plan-module']);
    if (problem) throw new UsageError(`--plan-module: ${problem}`);
  }
  const compiled = compileInput(positionals, io, optLevel, values.project);
  if (!compiled) return 1;
  const { cfg, result } = compiled;
  const plan = result.plan!;
  const outDir = values.out ? resolve(io.cwd, values.out) : resolve(cfg.root, cfg.out);
  const file = join(outDir, `${plan.pipeline}.plan.${values.format}`);
  const text = values.format === 'json' ? JSON.stringify(plan, null, 1) + '\n' : stringify(plan, { aliasDuplicateObjects: false, lineWidth: 0 });
  // The TypeScript module is generated and type-checked before anything is written (ts-morph loads only here).
  let module: { file: string; text: string } | undefined;
  if (emit.includes('ts')) {
    const { emitTypeScript } = await import('../../compiler/5-emit/typescript.js');
    const tsFile = join(outDir, `${plan.pipeline}.plan.ts`);
    const source = plan.sources[0]?.path;
    module = { file: tsFile, text: emitTypeScript(plan, { file: tsFile, ...(values['plan-module'] !== undefined ? { planModule: values['plan-module'] } : {}), ...(source ? { source } : {}) }).text };
  }
  // Checked before anything is written: a file where the folder goes, a folder where a file goes.
  const shown = (f: string) => relative(io.cwd, f) || f;
  const elsewhere = values.out ? 'give -o another folder' : `give -o another folder (or change \`out\` in ${cfg.file ?? 'mcpc.yaml'})`;
  const problem = folderProblem(outDir, shown) ?? fileProblem(file, shown) ?? (module ? fileProblem(module.file, shown) : undefined);
  if (problem) {
    io.stderr(`mcpc compile: ${problem}: move it away, or ${elsewhere}\n`);
    return 1;
  }
  try {
    mkdirSync(outDir, { recursive: true });
    writeAtomically(file, text);
    if (module) writeAtomically(module.file, module.text);
  } catch (e) {
    const line = fsErrorLine(e, shown);
    if (!line) throw e;
    io.stderr(`mcpc compile: ${line}\n`);
    return 1;
  }
  const kernels = plan.stages.map((s) => `${s.name} ${s.estimates.kernels}`).join(', ');
  const written = [file, ...(module ? [module.file] : [])].map((f) => relative(io.cwd, f) || f).join(', ');
  io.stdout(`compiled ${plan.pipeline} -> ${written} (${plan.stages.length} stage${plan.stages.length === 1 ? '' : 's'}; kernels per step: ${kernels}; -O${optLevel})\n`);
  return 0;
};
