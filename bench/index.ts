/**
 * `npm run bench`: runs every benchmark script in bench/ (each `bench/*.ts` but this one), one at a time,
 * each in its own process so timings do not share a warmed-up JIT or heap. `npm run bench -- compile lint`
 * runs only the named ones. Exits 1 when any benchmark fails (misses its target or crashes).
 */
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const dir = fileURLToPath(new URL('.', import.meta.url));
const self = basename(fileURLToPath(import.meta.url));
const only = process.argv.slice(2).filter((a) => !a.startsWith('-'));
const scripts = readdirSync(dir)
  .filter((f) => f.endsWith('.ts') && f !== self && !f.endsWith('.d.ts'))
  .filter((f) => only.length === 0 || only.includes(f.replace(/\.ts$/, '')))
  .sort();

let failed = 0;
for (const script of scripts) {
  console.log(`== bench/${script}`);
  const res = spawnSync(process.execPath, ['--import', 'tsx', join(dir, script)], { stdio: 'inherit' });
  if (res.status !== 0) {
    failed++;
    console.log(`bench/${script}: ${res.status === null ? `killed by ${res.signal}` : `exit ${res.status}`}`);
  }
}
console.log(`${scripts.length - failed} of ${scripts.length} benchmarks passed`);
process.exitCode = failed ? 1 : 0;
