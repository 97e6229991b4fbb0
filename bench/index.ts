/**
 * `npm run bench`: runs every benchmark script in bench/ (each `bench/*.ts` but this one), one at a time,
 * each in its own process so timings do not share a warmed-up JIT or heap. `npm run bench -- compile lint`
 * runs only the named ones. Exits 1 when any benchmark fails (misses its target or crashes).
 * `npm run bench -- --quick` runs only the quick CPU set (QUICK: lint, compile, train-step, with fewer files, runs
 * and steps; the WebGPU benches gpu.ts and kernels.ts need an adapter and have their own quick modes), in
 * under 40 s on a 2-core machine.
 */
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const dir = fileURLToPath(new URL('.', import.meta.url));
const self = basename(fileURLToPath(import.meta.url));
const only = process.argv.slice(2).filter((a) => !a.startsWith('-'));
const quick = process.argv.includes('--quick');
/** Arguments of each CPU benchmark under --quick. */
const QUICK: Record<string, string[]> = { 'lint.ts': ['--files', '50', '--runs', '3'], 'compile.ts': ['--runs', '8', '--warmup', '2'], 'train-step.ts': ['--quick'] };
const scripts = readdirSync(dir)
  .filter((f) => f.endsWith('.ts') && f !== self && !f.endsWith('.d.ts'))
  .filter((f) => only.length === 0 || only.includes(f.replace(/\.ts$/, '')))
  .filter((f) => !quick || only.length > 0 || f in QUICK)
  .sort();

let failed = 0;
for (const script of scripts) {
  console.log(`== bench/${script}`);
  const res = spawnSync(process.execPath, ['--import', 'tsx', join(dir, script), ...(quick ? (QUICK[script] ?? []) : [])], { stdio: 'inherit' });
  if (res.status !== 0) {
    failed++;
    console.log(`bench/${script}: ${res.status === null ? `killed by ${res.signal}` : `exit ${res.status}`}`);
  }
}
console.log(`${scripts.length - failed} of ${scripts.length} benchmarks passed`);
process.exitCode = failed ? 1 : 0;
