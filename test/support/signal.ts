/** Signalling a child process in tests (test/cli/run-interrupt.test.ts, the torch program's differential test). */
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';

export interface Ended {
  code: number | null;
  signal: string | null;
  out: string;
  err: string;
}

/**
 * Run `cmd args` in `cwd` and send it `sig` (`times` times, 50 ms apart: one key press that npm also
 * forwards) once `ready()` says so (polled every 10 ms). Resolves with how the child ended and everything it
 * printed (on 'close': its output drained); a child still running after `timeoutMs` is killed.
 */
export function runAndSignal(cmd: string, args: string[], cwd: string, sig: NodeJS.Signals, ready: () => boolean, times = 1, timeoutMs = 90_000): Promise<Ended> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    const timer = setInterval(() => {
      if (!ready()) return;
      clearInterval(timer);
      // Repeats 50 ms apart, as a forwarding parent's copy arrives (sent at once, the OS would merge them).
      for (let i = 0; i < times; i++) setTimeout(() => child.kill(sig), 50 * i);
    }, 10);
    const guard = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearInterval(timer);
      clearTimeout(guard);
      resolve({ code, signal, out, err });
    });
  });
}

/** The lines with a loss in a metrics.jsonl (0 before the file exists): the optimizer steps it has logged. */
export function lossLines(file: string): number {
  return existsSync(file) ? readFileSync(file, 'utf8').split('\n').filter((l) => l.includes('"loss"')).length : 0;
}
