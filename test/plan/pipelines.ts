/** The repository's pipelines (pipelines/ and examples/, not examples/broken), compiled in process. */
import { readdirSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { compileFile, nodeHost } from '../../src/compiler/index.js';
import { version } from '../../src/cli/version.js';
import type { Plan } from '../../src/plan/types.js';

export const ROOT = resolve(fileURLToPath(new URL('../..', import.meta.url)));

function walk(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? walk(join(dir, e.name)) : e.name.endsWith('.mcp') ? [join(dir, e.name)] : []));
}

/** Every pipeline that must compile, relative to the root, sorted. */
export const PIPELINES: string[] = [...walk(join(ROOT, 'pipelines')), ...walk(join(ROOT, 'examples')).filter((f) => !relative(ROOT, f).startsWith('examples/broken'))]
  .map((f) => relative(ROOT, f).split('\\').join('/'))
  .sort();

/** Compile `file` (relative to the root) as `mcpc compile` does; throws with the diagnostics when it fails. */
export function compilePlan(file: string, optLevel: 0 | 1 = 1): Plan {
  const res = compileFile(file, nodeHost(ROOT, ROOT), {}, { optLevel, verify: true, compilerVersion: version });
  if (!res.plan) throw new Error(`${file} does not compile:\n${res.diagnostics.map((d) => `${d.code}: ${d.message}`).join('\n')}`);
  return res.plan;
}
