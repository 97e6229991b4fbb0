/**
 * The whole chain: check -> 3-lower -> 4-optimize -> 5-emit, for one file.
 */
import { resolve } from 'node:path';
import type { Level } from './diagnostics/catalogue.js';
import type { CheckHost } from './2-check/host.js';
import { checkFile, type CheckFileResult } from './check-file.js';
import { Diagnostics, sortDiagnostics } from './diagnostics/diagnostic.js';
import { lower } from './3-lower/index.js';
import { optimize, passes as defaultPasses, type PassReport } from './4-optimize/index.js';
import { reportMemoryBudgets } from './4-optimize/memory-diagnostics.js';
import type { Pass } from './4-optimize/pass.js';
import { emitPlan } from './5-emit/plan.js';
import type { IR } from './ir/types.js';
import type { Plan } from '../plan/types.js';

export interface CompileOptions {
  optLevel: 0 | 1;
  /** Verify the IR after every pass (on in tests; MCPC_DEBUG=ir turns it on and dumps the IR). */
  verify?: boolean;
  onPass?: (pass: string, ir: IR) => void;
  compilerVersion?: string;
  /** Replace the pass list (tests of single passes). */
  passes?: Pass[];
  /** Memory budget in bytes for stages that set none (mcpc.yaml `memory:`); used by plan-memory. */
  memoryBudget?: number;
}

export interface CompileResult extends CheckFileResult {
  plan?: Plan;
  ir?: IR;
  passes?: PassReport[];
}

/** Compile one pipeline file to a plan. No plan when the pipeline has errors. */
export function compileFile(path: string, host: CheckHost, levels: Partial<Record<string, Level>>, opts: CompileOptions): CompileResult {
  const checked = checkFile(path, host, levels);
  if (!checked.pipeline || checked.diagnostics.some((d) => d.severity === 'error')) return checked;
  const ir = lower(checked.pipeline);
  const reports = optimize(ir, { optLevel: opts.optLevel, verify: opts.verify ?? false, onPass: opts.onPass, ...(opts.memoryBudget !== undefined ? { memoryBudget: opts.memoryBudget } : {}) }, opts.passes ?? defaultPasses);
  const sources = (checked.composed?.files ?? []).map((f) => ({ path: relativeToRoot(host, f.source.path), text: f.source.text }));
  const plan = emitPlan(ir, { compilerVersion: opts.compilerVersion ?? '0.0.0', optLevel: opts.optLevel, passes: reports, sources });
  const memDiags = new Diagnostics(levels);
  if (checked.composed) reportMemoryBudgets(ir, checked.composed, memDiags);
  const diagnostics = memDiags.items.length ? sortDiagnostics([...checked.diagnostics, ...memDiags.items]) : checked.diagnostics;
  return { ...checked, diagnostics, plan, ir, passes: reports };
}

function relativeToRoot(host: CheckHost, shown: string): string {
  const abs = resolve(host.cwd, shown);
  const rel = abs.startsWith(host.root + '/') ? abs.slice(host.root.length + 1) : abs;
  return rel.split('\\').join('/');
}
