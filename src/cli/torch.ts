/**
 * `mcpc compile --target torch`: the pipeline compiled at -O0 (the unfused step list the PyTorch program is
 * generated from) and at -O1 (whose memory planning decides activation recomputation), emitted by
 * compiler/5-emit/torch into a folder. Files are written to a staging folder first and moved in one by
 * one, so an interrupted compile never leaves a half-written file.
 *
 * The folder's `.mcpc-generated.json` records the sha256 of each file written, so a later compile replaces
 * its own files, and refuses (without `--force`) to replace one that mcpc did not write or that was edited since.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join, relative, resolve, sep } from 'node:path';
import { compileFile, nodeHost } from '../compiler/index.js';
import { emitTorch, TorchEmitError } from '../compiler/5-emit/torch/index.js';
import { compileInput } from './compile-input.js';
import { fileProblem, folderProblem, fsErrorLine, writeAtomically } from './fs.js';
import type { CliIO } from './io.js';
import { version } from './version.js';

/** The record of the files mcpc wrote into a `--target torch` folder (name -> sha256 of the contents). */
export const GENERATED_MANIFEST = '.mcpc-generated.json';

const sha256 = (b: string | Buffer) => createHash('sha256').update(b).digest('hex');

/** The files the manifest in `dir` records, by name; empty when there is none or it does not parse. */
function generatedFiles(dir: string): Map<string, string> {
  try {
    const m = JSON.parse(readFileSync(join(dir, GENERATED_MANIFEST), 'utf8')) as { format?: unknown; files?: unknown };
    if (m.format !== 'mcpc-generated' || typeof m.files !== 'object' || m.files === null) return new Map();
    return new Map(Object.entries(m.files as Record<string, unknown>).filter((e): e is [string, string] => typeof e[1] === 'string'));
  } catch {
    return new Map();
  }
}

export function compileTorch(positionals: string[], io: CliIO, out: string | undefined, project: string | undefined, force = false): number {
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
  const rel = (f: string) => relative(io.cwd, f) || '.';
  const elsewhere = out ? 'give -o another folder' : `give -o another folder (or change \`out\` in ${cfg.file ?? 'mcpc.yaml'})`;
  // Checked before anything is written: a file where the folder goes, a folder where a file goes, files mcpc did not write.
  const names = [...emitted.files.keys(), GENERATED_MANIFEST];
  const problem = folderProblem(outDir, rel) ?? names.map((n) => fileProblem(join(outDir, n), rel)).find((p) => p !== undefined);
  if (problem) {
    io.stderr(`mcpc compile: ${problem}: move it away, or ${elsewhere}\n`);
    return 1;
  }
  if (!force) {
    const ours = generatedFiles(outDir);
    const foreign = [...emitted.files].filter(([name, text]) => {
      let now: Buffer;
      try {
        now = readFileSync(join(outDir, name));
      } catch {
        return false; // absent (or unreadable: the write below says so)
      }
      return !now.equals(Buffer.from(text)) && ours.get(name) !== sha256(now);
    });
    if (foreign.length) {
      const n = foreign.map(([name]) => name);
      const list = n.length === 1 ? n[0] : `${n.slice(0, -1).join(', ')} and ${n[n.length - 1]}`;
      io.stderr(`mcpc compile: ${rel(outDir)} already holds ${list}, which mcpc did not write (or which ${foreign.length === 1 ? 'was' : 'were'} edited since); nothing was written: ${elsewhere}, or add --force to replace ${foreign.length === 1 ? 'it' : 'them'}\n`);
      return 1;
    }
  }
  const staging = join(outDir, `.staging-${process.pid}`);
  try {
    mkdirSync(outDir, { recursive: true });
    rmSync(staging, { recursive: true, force: true });
    mkdirSync(staging);
    for (const [name, text] of emitted.files) writeFileSync(join(staging, name), text);
    for (const name of emitted.files.keys()) renameSync(join(staging, name), join(outDir, name));
    const files = Object.fromEntries([...emitted.files].map(([name, text]) => [name, sha256(text)]));
    writeAtomically(join(outDir, GENERATED_MANIFEST), JSON.stringify({ format: 'mcpc-generated', generator: `mcpc ${version} --target torch`, files }, null, 1) + '\n');
  } catch (e) {
    const line = fsErrorLine(e, rel);
    if (!line) throw e;
    io.stderr(`mcpc compile: ${line}\n`);
    return 1;
  } finally {
    try {
      rmSync(staging, { recursive: true, force: true });
    } catch {
      /* a staging folder that cannot be removed holds only copies */
    }
  }
  const shown = rel(outDir);
  const stages = emitted.stages.map((s) => `${s.name}: ${s.steps} steps in ${s.blocks} blocks${s.recompute ? ', recomputed' : ''}`).join('; ');
  io.stdout(`compiled ${plan.pipeline} -> ${shown}/train.py (PyTorch, from the -O0 step list; ${stages})\n`);
  io.stdout(`run: python ${join(shown, 'train.py')} [--max-steps N] [--nproc N] [--init-from FILE]   (or torchrun --nproc_per_node N ${join(shown, 'train.py')})\n`);
  // The program trains without them (README, train.py's docstring): said where a user reads, not only there.
  for (const a of plan.adapters) {
    for (const [what, v] of [['dropout', a.dropout], ['router_noise', a.routerNoise]] as const) {
      if (v > 0) io.stderr(`warning: adapter ${a.name} has ${what} ${v}, which the PyTorch program does not apply (mcpc run does): the two engines train it differently\n`);
    }
  }
  if (!existsSync(join(outDir, 'train.py'))) return 2;
  return 0;
}
