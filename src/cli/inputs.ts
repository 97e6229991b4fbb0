/** Which pipeline files a command works on: those named (files or folders), else the project's. */
import { statSync } from 'node:fs';
import { join, relative, resolve, sep } from 'node:path';
import { UsageError } from './io.js';
import { projectPipelines, walkTree, type ProjectConfig } from './project.js';

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
    if (!st.isDirectory()) {
      out.push(a);
      continue;
    }
    walkTree(
      resolve(cwd, a),
      {
        file: (abs, err) => {
          if (abs.endsWith('.mcp')) out.push(show(abs)); // a broken one is reported as unreadable by the command, with the other results
          else if (err) warn(`skipped ${show(abs)}: ${unfollowable(err)}`);
        },
        skipped: (abs, why) => {
          if ('err' in why) warn(`skipped ${show(abs)}: ${unfollowable(why.err)}`);
          else if (why.again !== abs) warn(`skipped ${show(abs)}: it is ${show(why.again)} again, reached through a link`); // else named twice
        },
      },
      seen,
    );
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
