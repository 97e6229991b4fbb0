/** An in-memory CliIO for running commands in tests. */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { CliIO } from '../../src/cli/io.js';

export interface MemoryIO extends CliIO {
  out: string;
  err: string;
}

export function memoryIO(cwd: string, opts: { isTTY?: boolean; env?: Record<string, string | undefined> } = {}): MemoryIO {
  const io: MemoryIO = {
    out: '',
    err: '',
    cwd,
    isTTY: opts.isTTY ?? false,
    env: opts.env ?? {},
    stdout: (t) => {
      io.out += t;
    },
    stderr: (t) => {
      io.err += t;
    },
  };
  return io;
}

/** Runs one mcpc command in-process in `dir`: its exit code and what it printed. */
export async function mcpcIn(dir: string, args: string[]): Promise<{ code: number; out: string; err: string }> {
  const { main } = await import('../../src/cli/main.js');
  const io = memoryIO(dir);
  const code = await main(args, io);
  return { code, out: io.out, err: io.err };
}

/** A fresh project folder: mcpc.yaml naming p.mcp (out: out), the pipeline `p.mcp` and `d.jsonl` of `records`. */
export function cliProject(pipeline: string, records: readonly string[], prefix = 'mcpc-cli-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  writeFileSync(join(dir, 'mcpc.yaml'), 'pipeline: p.mcp\nout: out\n');
  writeFileSync(join(dir, 'p.mcp'), pipeline);
  writeFileSync(join(dir, 'd.jsonl'), records.join('\n') + '\n');
  return dir;
}
