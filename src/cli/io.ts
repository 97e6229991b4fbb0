/** What a command may touch of the outside world; tests pass their own. */
export interface CliIO {
  stdout(text: string): void;
  stderr(text: string): void;
  cwd: string;
  /** Whether stdout is a terminal (colour, progress bars). */
  isTTY: boolean;
  env: Record<string, string | undefined>;
}

/** A command returns its exit code: 0 clean, 1 findings (errors, or warnings over the limit), 2 usage or internal error. */
export type Command = (argv: string[], io: CliIO) => Promise<number>;

export class UsageError extends Error {}

export function processIO(): CliIO {
  return {
    stdout: (t) => process.stdout.write(t),
    stderr: (t) => process.stderr.write(t),
    cwd: process.cwd(),
    isTTY: !!process.stdout.isTTY,
    env: process.env,
  };
}
