/** Shared by the example tests: where the examples are, and running the real `mcpc` entry in memory. */
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { main } from '../../src/cli/main.js';
import { memoryIO } from '../support/memory-io.js';

/** The repository root (the folder of mcpc.yaml). */
export const root = fileURLToPath(new URL('../../', import.meta.url));

export const brokenDir = join(root, 'examples', 'broken');

/** Base pipelines the composition examples extend; they are not broken and promise no code. */
export const basesDir = join(brokenDir, 'bases');

/** `examples/broken/<code>.mcp`, as root-relative paths, sorted. */
export function brokenExamples(): string[] {
  return readdirSync(brokenDir)
    .filter((f) => f.endsWith('.mcp'))
    .sort()
    .map((f) => `examples/broken/${f}`);
}

export function baseFiles(): string[] {
  return readdirSync(basesDir)
    .filter((f) => f.endsWith('.mcp'))
    .sort()
    .map((f) => `examples/broken/bases/${f}`);
}

/** Every `.mcp` below `dir` (root-relative), skipping folders for which `skip` is true. */
export function mcpFilesUnder(dir: string, skip: (rel: string) => boolean = () => false): string[] {
  const out: string[] = [];
  const walk = (rel: string) => {
    for (const name of readdirSync(join(root, rel), { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1))) {
      const r = `${rel}/${name.name}`;
      if (name.isDirectory()) {
        if (!skip(r)) walk(r);
      } else if (name.name.endsWith('.mcp')) out.push(r);
    }
  };
  walk(dir);
  return out;
}

export interface CliRun {
  code: number;
  out: string;
  err: string;
}

/** `mcpc ...argv` through src/cli/main.ts with an in-memory CliIO (no TTY, no colour). */
export async function mcpc(argv: string[], cwd: string = root): Promise<CliRun> {
  const io = memoryIO(cwd);
  const code = await main(argv, io);
  return { code, out: io.out, err: io.err };
}

/** The code an example promises: its file name. */
export const codeOf = (file: string): string => file.replace(/^.*\//, '').replace(/\.mcp$/, '');
