/** The repository's valid pipelines: every .mcp under pipelines/ and examples/ outside examples/broken/. */
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const repoRoot = fileURLToPath(new URL('../../', import.meta.url));

/** Root-relative paths, sorted. */
export function validPipelines(root: string = repoRoot): string[] {
  const out: string[] = [];
  const walk = (rel: string) => {
    for (const e of readdirSync(join(root, rel), { withFileTypes: true })) {
      const r = `${rel}/${e.name}`;
      if (e.isDirectory()) {
        if (r !== 'examples/broken') walk(r);
      } else if (e.name.endsWith('.mcp')) out.push(r);
    }
  };
  walk('pipelines');
  walk('examples');
  return out.sort();
}
