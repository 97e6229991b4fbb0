/**
 * `npm run bench` (or `npx tsx bench/compile.ts [--runs N] [--target MS] [pipeline]`): compiles a pipeline
 * in process, as `mcpc compile` does up to writing the file (parse, check, lower, passes, plan, JSON text),
 * after a warm-up, N times at -O1 and at -O0, and prints the median of each against the target (issue 3:
 * medcare under 150 ms). Exits 1 when a median misses the target.
 */
import { parseArgs } from 'node:util';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { compileFile, nodeHost } from '../src/compiler/index.js';

const ROOT = resolve(fileURLToPath(new URL('..', import.meta.url)));
const { values, positionals } = parseArgs({ options: { runs: { type: 'string', default: '20' }, target: { type: 'string', default: '150' }, warmup: { type: 'string', default: '5' } }, allowPositionals: true });
const file = positionals[0] ?? 'pipelines/medcare.mcp';
const runs = Number(values.runs);
const target = Number(values.target);
const host = nodeHost(ROOT, ROOT);

function compileOnce(optLevel: 0 | 1): number {
  const t = performance.now();
  const res = compileFile(file, host, {}, { optLevel });
  if (!res.plan) throw new Error(`${file} does not compile: ${res.diagnostics.map((d) => d.message).join('; ')}`);
  JSON.stringify(res.plan, null, 1);
  return performance.now() - t;
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

for (let i = 0; i < Number(values.warmup); i++) for (const o of [1, 0] as const) compileOnce(o);
const times: Record<0 | 1, number[]> = { 0: [], 1: [] };
for (let i = 0; i < runs; i++) for (const o of [1, 0] as const) times[o].push(compileOnce(o));

let failed = false;
for (const o of [1, 0] as const) {
  const m = median(times[o]);
  const pass = m < target;
  failed ||= !pass;
  const spread = `min ${Math.min(...times[o]).toFixed(0)}, max ${Math.max(...times[o]).toFixed(0)}`;
  console.log(`compile ${file} in process -O${o}: median ${m.toFixed(0)} ms over ${runs} runs (target < ${target} ms): ${pass ? 'PASS' : 'FAIL'} (${spread})`);
}
process.exitCode = failed ? 1 : 0;
