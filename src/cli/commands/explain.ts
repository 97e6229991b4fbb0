/**
 * `mcpc explain [file] [--format text|json] [-O0]`: what the compiler made of a pipeline. Per stage: which
 * adapters are trainable, frozen, folded, merged and dropped (parameters and bytes), the constraints, the
 * kernels with their FLOPs, the estimated peak memory; and what each pass changed.
 */
import { fmtBytes as bytes } from '../../plan/units.js';
import type { Plan, PlanStage } from '../../plan/types.js';
import { parse } from '../args.js';
import { compileInput, takeOptLevel } from '../compile-input.js';
import { UsageError, type Command } from '../io.js';

export const explainHelp = `usage: mcpc explain [file] [options]

Show what the compiler made of a pipeline (default: the one mcpc.yaml names).

options:
  --format text|json   output (default text)
  -O0                  explain the plan with every optimization pass off
  --project FILE       project file
`;

export interface ExplainStage {
  name: string;
  trainable: string[];
  frozen: string[];
  folded: string[];
  merged: string[];
  dropped: string[];
  inactive: string[];
  constraints: { kind: string; target: string; others: string[]; weight: number; norm: string; sites: number }[];
  kernels: number;
  flopsPerStep: number;
  peakBytes: number;
  trainableParams: number;
  adapterParams: Record<string, { params: number; bytes: number; state: string }>;
  kernelTable: { kernel: string; count: number; flops: number }[];
}

export interface Explanation {
  pipeline: string;
  optLevel: 0 | 1;
  stages: ExplainStage[];
  passes: { name: string; changes: number; ran: boolean; required: boolean; notes: string[] }[];
}

export function explainPlan(plan: Plan): Explanation {
  return {
    pipeline: plan.pipeline,
    optLevel: plan.compiler.optLevel,
    stages: plan.stages.map((s) => explainStage(plan, s)),
    passes: plan.compiler.passes.map((p) => ({ name: p.name, changes: p.changes, ran: p.ran, required: p.required, notes: p.notes })),
  };
}

function explainStage(plan: Plan, s: PlanStage): ExplainStage {
  const adapterParams: ExplainStage['adapterParams'] = {};
  for (const prm of plan.parameters) {
    const state = prm.states[s.name];
    if (prm.owner === 'base' || state === 'absent') continue;
    const n = prm.shape.reduce((a, b) => a * b, 1);
    const e = (adapterParams[prm.owner] ??= { params: 0, bytes: 0, state });
    e.params += n;
    e.bytes += n * 4;
  }
  const table = new Map<string, { kernel: string; count: number; flops: number }>();
  for (const f of s.forward) {
    const e = table.get(f.kernel) ?? { kernel: f.kernel, count: 0, flops: 0 };
    e.count++;
    e.flops += f.flops;
    table.set(f.kernel, e);
  }
  for (const b of s.backward) {
    const e = table.get(b.kernel) ?? { kernel: b.kernel, count: 0, flops: 0 };
    e.count++;
    e.flops += b.flops;
    table.set(b.kernel, e);
  }
  if (s.optimizer.dispatches) table.set(`${s.optimizer.kind}${s.optimizer.fused ? '_fused' : ''}`, { kernel: `${s.optimizer.kind}${s.optimizer.fused ? '_fused' : ''}`, count: s.optimizer.dispatches, flops: 0 });
  return {
    name: s.name,
    trainable: s.adapters.trainable.concat(s.trainBase ? ['base'] : []),
    frozen: s.adapters.frozen,
    folded: s.adapters.folded,
    merged: s.adapters.merged,
    dropped: s.adapters.dropped,
    inactive: s.adapters.inactive,
    constraints: s.constraints.map((c) => ({ kind: c.kind, target: c.target, others: c.others, weight: c.weight, norm: c.norm, sites: c.sites.length })),
    kernels: s.estimates.kernels,
    flopsPerStep: s.estimates.flopsPerStep,
    peakBytes: s.estimates.peakBytes,
    trainableParams: s.estimates.trainableParams,
    adapterParams,
    kernelTable: [...table.values()].sort((a, b) => b.flops - a.flops || (a.kernel < b.kernel ? -1 : 1)),
  };
}

const si = (n: number, unit: string) => {
  const units = ['', 'K', 'M', 'G', 'T', 'P'];
  let i = 0;
  while (Math.abs(n) >= 1000 && i < units.length - 1) {
    n /= 1000;
    i++;
  }
  return `${n.toFixed(n >= 100 || i === 0 ? 0 : n >= 10 ? 1 : 2)} ${units[i]}${unit}`;
};

export function renderExplanation(x: Explanation): string {
  const out: string[] = [`pipeline ${x.pipeline} (-O${x.optLevel})`, ''];
  for (const s of x.stages) {
    out.push(`stage ${s.name}`);
    const list = (label: string, names: string[]) => {
      if (!names.length) return;
      const parts = names.map((n) => {
        const p = s.adapterParams[n];
        return p ? `${n} (${si(p.params, '').trim()} params, ${bytes(p.bytes)})` : n;
      });
      out.push(`  ${label.padEnd(10)} ${parts.join(', ')}`);
    };
    list('trainable', s.trainable);
    list('frozen', s.frozen);
    list('folded', s.folded);
    list('merged', s.merged);
    list('dropped', s.dropped);
    list('inactive', s.inactive);
    for (const c of s.constraints) out.push(`  constraint ${c.kind}(${[c.target, ...c.others].join(', ')}) weight ${c.weight} norm ${c.norm} over ${c.sites} sites`);
    out.push(`  step       ${si(s.flopsPerStep, 'FLOP')}, ${s.kernels} kernel launches per micro-batch, peak ${bytes(s.peakBytes)}, ${s.trainableParams.toLocaleString('en-US')} trainable parameters`);
    out.push('  kernels    launches  FLOPs (one micro-batch)');
    for (const k of s.kernelTable.slice(0, 12)) out.push(`    ${k.kernel.padEnd(28)} ${String(k.count).padStart(5)}  ${si(k.flops, 'FLOP')}`);
    if (s.kernelTable.length > 12) out.push(`    ... ${s.kernelTable.length - 12} more`);
    out.push('');
  }
  out.push('passes');
  for (const p of x.passes) {
    out.push(`  ${p.name.padEnd(26)} ${p.ran ? `${p.changes} change${p.changes === 1 ? '' : 's'}` : 'off (-O0)'}${p.required ? ' (required)' : ''}`);
    for (const n of p.notes.slice(0, 6)) out.push(`    ${n}`);
    if (p.notes.length > 6) out.push(`    ... ${p.notes.length - 6} more`);
  }
  return out.join('\n') + '\n';
}

export const explainCommand: Command = async (argv0, io) => {
  const { argv, optLevel } = takeOptLevel(argv0);
  const { values, positionals } = parse(argv, {
    format: { type: 'string', default: 'text' },
    project: { type: 'string' },
    help: { type: 'boolean', short: 'h', default: false },
  });
  if (values.help) {
    io.stdout(explainHelp);
    return 0;
  }
  if (values.format !== 'text' && values.format !== 'json') throw new UsageError(`--format must be text or json, not '${values.format}'`);
  const compiled = compileInput(positionals, io, optLevel, values.project);
  if (!compiled) return 1;
  const x = explainPlan(compiled.result.plan!);
  io.stdout(values.format === 'json' ? JSON.stringify(x, null, 2) + '\n' : renderExplanation(x));
  return 0;
};
