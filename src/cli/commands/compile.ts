/**
 * `mcpc compile [file] [-o dir] [-O0] [--format json|yaml]`: compile a pipeline to its execution plan,
 * `<out>/<pipeline>.plan.json` (or .yaml). Written atomically; the same input gives the same bytes.
 */
import { mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import { stringify } from 'yaml';
import { parse } from '../args.js';
import { compileInput, takeOptLevel } from '../compile-input.js';
import { UsageError, type Command } from '../io.js';

export const compileHelp = `usage: mcpc compile [file] [options]

Compile a pipeline (default: the one mcpc.yaml names) to an execution plan.

options:
  -o, --out DIR          output folder (default: mcpc.yaml's out, else out/)
  -O0                    turn every optimization pass off (for comparison and debugging)
  --format json|yaml     plan format (default json)
  --project FILE         project file
environment:
  MCPC_DEBUG=ir          verify the IR after every pass and dump it to stderr
`;

export const compileCommand: Command = async (argv0, io) => {
  const { argv, optLevel } = takeOptLevel(argv0);
  const { values, positionals } = parse(argv, {
    out: { type: 'string', short: 'o' },
    format: { type: 'string', default: 'json' },
    project: { type: 'string' },
    help: { type: 'boolean', short: 'h', default: false },
  });
  if (values.help) {
    io.stdout(compileHelp);
    return 0;
  }
  if (values.format !== 'json' && values.format !== 'yaml') throw new UsageError(`--format must be json or yaml, not '${values.format}'`);
  const compiled = compileInput(positionals, io, optLevel, values.project);
  if (!compiled) return 1;
  const { cfg, result } = compiled;
  const plan = result.plan!;
  const outDir = values.out ? resolve(io.cwd, values.out) : resolve(cfg.root, cfg.out);
  mkdirSync(outDir, { recursive: true });
  const file = join(outDir, `${plan.pipeline}.plan.${values.format}`);
  const text = values.format === 'json' ? JSON.stringify(plan, null, 1) + '\n' : stringify(plan, { aliasDuplicateObjects: false, lineWidth: 0 });
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, text);
  renameSync(tmp, file);
  const kernels = plan.stages.map((s) => `${s.name} ${s.estimates.kernels}`).join(', ');
  io.stdout(`compiled ${plan.pipeline} -> ${relative(io.cwd, file) || file} (${plan.stages.length} stage${plan.stages.length === 1 ? '' : 's'}; kernels per step: ${kernels}; -O${optLevel})\n`);
  return 0;
};
