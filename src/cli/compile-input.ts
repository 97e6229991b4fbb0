/** Shared by `compile` and `explain`: resolve the pipeline, compile it, print diagnostics. */
import { compileFile, nodeHost, type CompileResult } from '../compiler/index.js';
import { Diagnostics } from '../compiler/diagnostics/diagnostic.js';
import { dumpIR } from '../compiler/ir/dump.js';
import { UsageError, type CliIO } from './io.js';
import { loadProject, type ProjectConfig } from './project.js';
import { renderDiagnostics, useColor } from './report/index.js';
import { relative, resolve } from 'node:path';
import { version } from './version.js';

/** Pull `-O0` / `-O1` out of argv (parseArgs has no such short-option form). */
export function takeOptLevel(argv: string[]): { argv: string[]; optLevel: 0 | 1 } {
  let optLevel: 0 | 1 = 1;
  const rest: string[] = [];
  for (const a of argv) {
    if (a === '-O0') optLevel = 0;
    else if (a === '-O1' || a === '-O') optLevel = 1;
    else if (/^-O\d+$/.test(a)) throw new UsageError(`unknown optimization level ${a}: use -O0 (every optimization pass off) or -O1 (default)`);
    else rest.push(a);
  }
  return { argv: rest, optLevel };
}

export interface CompiledInput {
  cfg: ProjectConfig;
  file: string;
  result: CompileResult;
}

/** Compile the named pipeline (or the project's default); returns undefined after printing errors. */
export function compileInput(positionals: string[], io: CliIO, optLevel: 0 | 1, projectFile?: string): CompiledInput | undefined {
  if (positionals.length > 1) throw new UsageError('give one pipeline file');
  const projDiags = new Diagnostics();
  const cfg = loadProject(io.cwd, projDiags, projectFile);
  const color = useColor({ isTTY: io.isTTY, env: io.env });
  if (projDiags.items.length) {
    io.stderr(renderDiagnostics('text', projDiags.items, cfg.sources, { color, cwd: io.cwd }));
    throw new UsageError(`${cfg.file ?? 'mcpc.yaml'} is invalid`);
  }
  const file = positionals[0] ?? relative(io.cwd, resolve(cfg.root, cfg.pipeline)) ?? cfg.pipeline;
  const host = nodeHost(cfg.root, io.cwd, cfg.allowOutsideRoot);
  const debug = (io.env.MCPC_DEBUG ?? '').split(',').includes('ir');
  const result = compileFile(file, host, cfg.lint.rules, {
    optLevel,
    verify: debug,
    compilerVersion: version,
    ...(cfg.memory !== undefined ? { memoryBudget: cfg.memory } : {}),
    ...(debug ? { onPass: (pass, ir) => io.stderr(`=== IR after ${pass} ===\n${dumpIR(ir)}\n`) } : {}),
  });
  if (result.diagnostics.length) io.stderr(renderDiagnostics('text', result.diagnostics, result.sources, { color, cwd: io.cwd }));
  if (!result.plan) return undefined;
  return { cfg, file, result };
}
