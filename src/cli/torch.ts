/**
 * `mcpc compile --target torch`: the pipeline compiled at -O0 (the unfused step list the PyTorch program is
 * generated from) and at -O1 (whose memory planning decides activation recomputation), emitted by
 * compiler/5-emit/torch into a folder. Files are written to a staging folder first and moved in one by
 * one, so an interrupted compile never leaves a half-written file.
 */
import { existsSync, mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join, relative, resolve, sep } from 'node:path';
import { compileFile, nodeHost } from '../compiler/index.js';
import { emitTorch, TorchEmitError } from '../compiler/5-emit/torch/index.js';
import { compileInput } from './compile-input.js';
import type { CliIO } from './io.js';
import { version } from './version.js';

export function compileTorch(positionals: string[], io: CliIO, out: string | undefined, project: string | undefined): number {
  const compiled = compileInput(positionals, io, 0, project);
  if (!compiled) return 1;
  const { cfg, file, result } = compiled;
  const plan = result.plan!;
  const optimized = compileFile(file, nodeHost(cfg.root, io.cwd, cfg.allowOutsideRoot), cfg.lint.rules, {
    optLevel: 1,
    compilerVersion: version,
    ...(cfg.memory !== undefined ? { memoryBudget: cfg.memory } : {}),
  }).plan;
  const outDir = out ? resolve(io.cwd, out) : resolve(cfg.root, cfg.out, `${plan.pipeline}-torch`);
  const projectRoot = relative(outDir, cfg.root).split(sep).join('/') || '.';
  let emitted;
  try {
    emitted = emitTorch(plan, { projectRoot, ...(optimized ? { memoryPlan: optimized } : {}), ...(plan.sources[0] ? { source: plan.sources[0].path } : {}) });
  } catch (e) {
    if (e instanceof TorchEmitError) {
      io.stderr(`internal error: ${e.message}\n  (a compiler bug: please report it with the pipeline)\n`);
      return 2;
    }
    throw e;
  }
  mkdirSync(outDir, { recursive: true });
  const staging = join(outDir, `.staging-${process.pid}`);
  rmSync(staging, { recursive: true, force: true });
  mkdirSync(staging);
  for (const [name, text] of emitted.files) writeFileSync(join(staging, name), text);
  for (const name of emitted.files.keys()) renameSync(join(staging, name), join(outDir, name));
  rmSync(staging, { recursive: true, force: true });
  const shown = relative(io.cwd, outDir) || '.';
  const stages = emitted.stages.map((s) => `${s.name}: ${s.steps} steps in ${s.blocks} blocks${s.recompute ? ', recomputed' : ''}`).join('; ');
  io.stdout(`compiled ${plan.pipeline} -> ${shown}/train.py (PyTorch, from the -O0 step list; ${stages})\n`);
  io.stdout(`run: python ${join(shown, 'train.py')} [--max-steps N] [--nproc N] [--init-from FILE]   (or torchrun --nproc_per_node N ${join(shown, 'train.py')})\n`);
  if (!existsSync(join(outDir, 'train.py'))) return 2;
  return 0;
}
