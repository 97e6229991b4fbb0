/**
 * `mcpc fmt [files|folders...] [--check]`: rewrite pipelines in the canonical layout. A file with syntax
 * errors is never rewritten (its diagnostics are printed). Files are replaced atomically: a link's target is
 * rewritten (the link stays), with the file's permissions.
 */
import { readFileSync, realpathSync, statSync } from 'node:fs';
import { relative, resolve } from 'node:path';
import { describeReadError } from '../../compiler/2-check/host.js';
import { Diagnostics, type Diagnostic } from '../../compiler/diagnostics/diagnostic.js';
import { formatSource } from '../../compiler/format/index.js';
import { SourceFile } from '../../compiler/source.js';
import { parse } from '../args.js';
import { fsErrorLine, writeAtomically } from '../fs.js';
import { pipelineFiles } from '../inputs.js';
import type { Command } from '../io.js';
import { loadProject } from '../project.js';
import { renderDiagnostics, useColor } from '../report/index.js';

export const fmtHelp = `usage: mcpc fmt [files or folders...] [--check]

Rewrite pipelines in the canonical layout, keeping every comment. With no files, formats the pipelines
mcpc.yaml names. Files with syntax errors are left untouched.

options:
  --check          write nothing; list the files that would change and exit 1 if any would
  --stdout         print the formatted text instead of writing files
  --project FILE   project file (default: mcpc.yaml here or in a parent folder)
`;

export const fmtCommand: Command = async (argv, io) => {
  const { values, positionals } = parse(argv, {
    check: { type: 'boolean', default: false },
    stdout: { type: 'boolean', default: false },
    project: { type: 'string' },
    help: { type: 'boolean', short: 'h', default: false },
  });
  if (values.help) {
    io.stdout(fmtHelp);
    return 0;
  }
  const projDiags = new Diagnostics();
  const cfg = loadProject(io.cwd, projDiags, values.project);
  const color = useColor({ isTTY: io.isTTY, env: io.env });
  if (projDiags.items.length) {
    io.stderr(renderDiagnostics('text', projDiags.items, cfg.sources, { color, cwd: io.cwd }));
    return 2;
  }
  const files = pipelineFiles(positionals, cfg, io.cwd, (w) => io.stderr(`mcpc fmt: warning: ${w}\n`));
  const problems: Diagnostic[] = [];
  const sources = new Map<string, SourceFile>();
  const changed: string[] = [];
  const unwritable: string[] = [];
  for (const f of files) {
    const abs = resolve(io.cwd, f);
    let text: string;
    try {
      text = readFileSync(abs, 'utf8');
    } catch (err) {
      const src = new SourceFile(f, '');
      const d = new Diagnostics();
      const code = (err as NodeJS.ErrnoException).code;
      const why = code === 'ELOOP' ? 'a loop of links' : code ? describeReadError(code) : String(err);
      d.report('unreadable_file', src.span(0, 0), `cannot read ${f}: ${why}`, { hint: 'check the path (relative to the current folder) and that the file is readable' });
      problems.push(...d.items);
      sources.set(f, src);
      continue;
    }
    const res = formatSource(f, text);
    if (res.output === undefined) {
      problems.push(...res.diagnostics);
      sources.set(f, new SourceFile(f, text));
      continue;
    }
    if (values.stdout) {
      io.stdout(res.output);
      continue;
    }
    if (res.output === text) continue;
    if (!values.check) {
      // Through a link, its target is rewritten; the file keeps its permissions.
      try {
        const real = realpathSync(abs);
        writeAtomically(real, res.output, statSync(real).mode & 0o7777);
      } catch (err) {
        const line = fsErrorLine(err, (p) => relative(io.cwd, p) || p);
        if (!line) throw err;
        unwritable.push(`mcpc fmt: ${line}; ${f} was left as it was\n`);
        continue;
      }
    }
    changed.push(f);
  }
  if (problems.length) io.stderr(renderDiagnostics('text', problems, sources, { color, cwd: io.cwd }));
  for (const u of unwritable) io.stderr(u);
  if (values.check) {
    for (const f of changed) io.stdout(`would reformat ${f}\n`);
    if (!changed.length && !problems.length) io.stdout(`${files.length} file${files.length === 1 ? '' : 's'} already formatted\n`);
    return changed.length || problems.length ? 1 : 0;
  }
  if (!values.stdout) for (const f of changed) io.stdout(`formatted ${f}\n`);
  return problems.length || unwritable.length ? 1 : 0;
};
