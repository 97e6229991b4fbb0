/**
 * `mcpc lint [files|folders...]`: parse and check pipelines, print diagnostics as text, json or sarif.
 * Exit 0 clean, 1 errors or more warnings than --max-warnings, 2 usage or internal error.
 */
import { checkFile, type CheckFileResult } from '../../compiler/check-file.js';
import { nodeHost } from '../../compiler/2-check/host.js';
import { Diagnostics, type Diagnostic } from '../../compiler/diagnostics/diagnostic.js';
import type { CheckedPipeline } from '../../compiler/2-check/checked.js';
import type { SourceFile } from '../../compiler/source.js';
import { intOption, parse } from '../args.js';
import { pipelineFiles } from '../inputs.js';
import { UsageError, type Command } from '../io.js';
import { loadProject } from '../project.js';
import { isReportFormat, renderDiagnostics, useColor } from '../report/index.js';
import { version } from '../version.js';

export const lintHelp = `usage: mcpc lint [files or folders...] [options]

Check pipelines: syntax, names, types, selectors against the model, and the lint rules.
With no files, lints the pipelines mcpc.yaml names.

options:
  --format text|json|sarif   output format (default text)
  --max-warnings N           exit 1 when there are more than N warnings (default: mcpc.yaml, else unlimited)
  --show-sites               print the modules each adapter's selector matched, with shapes
  --project FILE             project file (default: mcpc.yaml here or in a parent folder)
`;

export const lintCommand: Command = async (argv, io) => {
  const { values, positionals } = parse(argv, {
    format: { type: 'string', default: 'text' },
    'max-warnings': { type: 'string' },
    'show-sites': { type: 'boolean', default: false },
    project: { type: 'string' },
    help: { type: 'boolean', short: 'h', default: false },
  });
  if (values.help) {
    io.stdout(lintHelp);
    return 0;
  }
  const format = values.format!;
  if (!isReportFormat(format)) throw new UsageError(`--format must be text, json or sarif, not '${format}'`);
  const maxFlag = intOption(values['max-warnings'], '--max-warnings');

  const projDiags = new Diagnostics();
  const cfg = loadProject(io.cwd, projDiags, values.project);
  const color = format === 'text' && useColor(io);
  const render = (diags: Diagnostic[], sources: Map<string, SourceFile>) => renderDiagnostics(format, diags, sources, { color, root: cfg.root, cwd: io.cwd, toolVersion: version });
  if (projDiags.items.length) {
    // Nothing is linted with a broken project file. json and sarif still print a document, carrying its problems
    // (a code-scanning upload of an empty file fails and shows nothing); text goes to stderr as usage errors do.
    if (format === 'text') io.stderr(renderDiagnostics('text', projDiags.items, cfg.sources, { color: useColor({ isTTY: false, env: io.env }) && color, cwd: io.cwd }));
    else io.stdout(render(projDiags.items, cfg.sources));
    return 2;
  }
  const host = nodeHost(cfg.root, io.cwd, cfg.allowOutsideRoot);
  const files = pipelineFiles(positionals, cfg, io.cwd, (w) => io.stderr(`mcpc lint: warning: ${w}\n`));

  const all: Diagnostic[] = [];
  const sources = new Map<string, SourceFile>();
  const sites: string[] = [];
  for (const f of files) {
    let res: CheckFileResult = checkFile(f, host, cfg.lint.rules);
    // A memory budget (in a stage or in mcpc.yaml) is checked by the memory planner: compile such pipelines.
    const budgeted = cfg.memory !== undefined || res.pipeline?.stages.some((s) => s.settings.memoryBytes !== undefined);
    if (budgeted && res.pipeline && !res.diagnostics.some((d) => d.severity === 'error')) {
      // The full compiler is loaded only for pipelines with a memory budget (memory_budget_exceeded).
      const { compileFile } = await import('../../compiler/compile.js');
      res = compileFile(f, host, cfg.lint.rules, { optLevel: 1, ...(cfg.memory !== undefined ? { memoryBudget: cfg.memory } : {}) });
    }
    for (const d of res.diagnostics) all.push(d); // not push(...): 100 000s of arguments overflow the stack
    for (const [k, v] of res.sources) sources.set(k, v);
    if (values['show-sites']) sites.push(showSites(f, res.pipeline));
  }

  if (values['show-sites'] && format === 'text') io.stdout(sites.join('\n') + '\n');
  io.stdout(render(all, sources));
  const errors = all.filter((d) => d.severity === 'error').length;
  const warnings = all.length - errors;
  const maxWarnings = maxFlag ?? cfg.lint.maxWarnings;
  if (errors > 0) return 1;
  if (maxWarnings !== undefined && warnings > maxWarnings) {
    if (format === 'text') {
      const limit = maxFlag !== undefined ? `--max-warnings ${maxWarnings}` : `lint.max_warnings: ${maxWarnings} in ${cfg.file ?? 'mcpc.yaml'}`;
      io.stderr(`mcpc: ${warnings} warning${warnings === 1 ? '' : 's'}, more than ${limit} allows\n`);
    }
    return 1;
  }
  return 0;
};

/** The `--show-sites` listing of one file: each adapter, its selector, and the sites with shapes. */
export function showSites(file: string, p: CheckedPipeline | undefined): string {
  if (!p) return `${file}: sites unavailable (the model did not resolve)\n`;
  const lines = [`${file}: model ${p.model.name} (${p.model.source.kind === 'hf' ? `hf ${p.model.source.path}` : `builtin ${p.model.source.name}`}: ${p.model.config.layers} layers, hidden ${p.model.config.hidden}, ffn ${p.model.config.ffn})`];
  for (const a of p.adapters) {
    const kind = a.type === 'lora' ? `lora r${a.lora.r}${a.experts > 1 ? ` x${a.experts}` : ''}` : `moe_lora ${a.experts} experts top-${a.topK} r${a.lora.r}${a.shared ? ` + ${a.shared} shared` : ''}`;
    lines.push(`  adapter ${a.name} (${kind}) at ${a.placement}${a.declaredIn ? ` [stage ${a.declaredIn}]` : ''}: ${a.sites.length} site${a.sites.length === 1 ? '' : 's'}`);
    const shape = (s: { in: number; out: number }) => `[${s.in} -> ${s.out}]`;
    const width = Math.max(0, ...a.sites.map((s) => s.path.length));
    const sw = Math.max(0, ...a.sites.map((s) => shape(s).length));
    for (const s of a.sites) lines.push(`    ${s.path.padEnd(width)}  ${shape(s).padEnd(sw)}  ${s.hfName}`);
  }
  return lines.join('\n') + '\n';
}
