/** Which pipeline files a command works on: those named (files or folders), else the project's. */
import { readdirSync, realpathSync, statSync } from 'node:fs';
import { join, relative, resolve, sep } from 'node:path';
import { UsageError } from './io.js';
import { projectPipelines, type ProjectConfig } from './project.js';

/**
 * The pipeline files of `args` (a folder stands for the .mcp files below it), else the project's. What a folder
 * holds that cannot be followed (a broken link, a loop of links, a link back to a folder already searched) is
 * passed to `warn`, one line naming it, and left out; a broken `*.mcp` is kept, to be reported as unreadable.
 */
export function pipelineFiles(args: string[], cfg: ProjectConfig, cwd: string, warn: (line: string) => void = () => {}): string[] {
  const show = (abs: string) => relative(cwd, abs).split(sep).join('/') || '.';
  if (!args.length) {
    const files = projectPipelines(cfg).map((rel) => show(join(cfg.root, rel)));
    if (!files.length) {
      if (!cfg.file) throw new UsageError(`no pipelines match ${cfg.pipelines.join(', ')} (the default; there is no mcpc.yaml): give files or folders on the command line, or list them under \`pipelines\` in an mcpc.yaml`);
      if (!cfg.pipelines.length) throw new UsageError(`\`pipelines\` in ${cfg.file} is empty: give files or folders on the command line, or list globs under it`);
      throw new UsageError(`no pipelines match ${cfg.pipelines.join(', ')} (from ${cfg.file}): give files or folders on the command line, or change \`pipelines\` there`);
    }
    return files;
  }
  const out: string[] = [];
  const seen = new Map<string, string>();
  for (const a of args) {
    let st;
    try {
      st = statSync(resolve(cwd, a));
    } catch {
      out.push(a); // reported as unreadable by the command, with the other results
      continue;
    }
    if (st.isDirectory()) out.push(...walk(resolve(cwd, a), seen, show, warn).map(show));
    else out.push(a);
  }
  return out;
}

function walk(dir: string, seen: Map<string, string>, show: (abs: string) => string, warn: (line: string) => void): string[] {
  let real: string;
  let names: string[];
  try {
    real = realpathSync(dir);
    names = readdirSync(dir).sort();
  } catch (e) {
    warn(`skipped ${show(dir)}: ${unfollowable(e)}`);
    return [];
  }
  const first = seen.get(real);
  if (first !== undefined) {
    if (first === show(dir)) return []; // named twice
    warn(`skipped ${show(dir)}: it is ${first} again, reached through a link`);
    return [];
  }
  seen.set(real, show(dir));
  const out: string[] = [];
  for (const name of names) {
    if (name === 'node_modules' || name.startsWith('.')) continue;
    const abs = join(dir, name);
    let st;
    try {
      st = statSync(abs);
    } catch (e) {
      if (name.endsWith('.mcp')) out.push(abs); // reported as unreadable by the command, with the other results
      else warn(`skipped ${show(abs)}: ${unfollowable(e)}`);
      continue;
    }
    if (st.isDirectory()) out.push(...walk(abs, seen, show, warn));
    else if (name.endsWith('.mcp')) out.push(abs);
  }
  return out;
}

/** Why a folder entry cannot be followed. */
function unfollowable(e: unknown): string {
  const code = (e as NodeJS.ErrnoException).code;
  if (code === 'ENOENT') return 'a link to something that does not exist (ENOENT)';
  if (code === 'ELOOP') return 'a loop of links (ELOOP)';
  return `cannot read it (${code ?? String(e)})`;
}
