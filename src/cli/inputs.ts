/** Which pipeline files a command works on: those named (files or folders), else the project's. */
import { readdirSync, statSync } from 'node:fs';
import { join, relative, resolve, sep } from 'node:path';
import { UsageError } from './io.js';
import { projectPipelines, type ProjectConfig } from './project.js';

export function pipelineFiles(args: string[], cfg: ProjectConfig, cwd: string): string[] {
  if (!args.length) {
    const files = projectPipelines(cfg).map((rel) => relative(cwd, join(cfg.root, rel)).split(sep).join('/'));
    if (!files.length) throw new UsageError(`no pipelines match ${cfg.pipelines.join(', ')}${cfg.file ? ` (from ${cfg.file})` : ''}`);
    return files;
  }
  const out: string[] = [];
  for (const a of args) {
    let st;
    try {
      st = statSync(resolve(cwd, a));
    } catch {
      out.push(a); // reported as unreadable by the command, with the other results
      continue;
    }
    if (st.isDirectory()) out.push(...walk(resolve(cwd, a)).map((f) => relative(cwd, f).split(sep).join('/')));
    else out.push(a);
  }
  return out;
}

function walk(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir).sort()) {
    if (name === 'node_modules' || name.startsWith('.')) continue;
    const abs = join(dir, name);
    if (statSync(abs).isDirectory()) out.push(...walk(abs));
    else if (name.endsWith('.mcp')) out.push(abs);
  }
  return out;
}
