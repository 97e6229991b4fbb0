/** An in-memory CliIO for running commands in tests. */
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
