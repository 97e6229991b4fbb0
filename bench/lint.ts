/**
 * `npx tsx bench/lint.ts [--files N] [--runs N] [--target MS] [--keep]` (also run by `npm run bench`): writes N (200)
 * distinct, valid pipelines (variations of pipelines/medcare.mcp and medcare-3stage.mcp: names, models,
 * adapter kinds, ranks, placements, stage counts, hyperparameters; a quarter of them extend medcare.mcp)
 * under scratch/ (inside the project, so their data and model paths resolve; scratch/ is git-ignored), then
 * times linting them all two ways:
 *   in-process  `main(['lint', dir])` after one warm-up, median of --runs;
 *   cold CLI    a fresh `node bin/mcpc.js lint dir` (end to end: node start, tsx, loading the compiler,
 *               linting, printing), median of 3.
 * The cold CLI is held to --target (2000 ms); exits 1 on FAIL, or when a generated file does not lint clean.
 * --keep leaves the files in place (to profile: `node --cpu-prof bin/mcpc.js lint scratch/bench-lint-PID`).
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { main } from '../src/cli/main.js';
import type { CliIO } from '../src/cli/io.js';

const ROOT = resolve(fileURLToPath(new URL('..', import.meta.url)));
const { values } = parseArgs({ options: { files: { type: 'string', default: '200' }, runs: { type: 'string', default: '5' }, target: { type: 'string', default: '2000' }, keep: { type: 'boolean', default: false } } });
const nFiles = Number(values.files);
const runs = Number(values.runs);
const target = Number(values.target);

// --- the pipelines -----------------------------------------------------------------------------------------------

/** A small seeded PRNG (mulberry32), so every run lints the same files. */
function rng(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return { pick: <T>(xs: readonly T[]): T => xs[Math.floor(next() * xs.length)]!, chance: (p: number) => next() < p };
}

const models = ['hf("models/tiny-med-base")', 'builtin("qwen2-tiny")', 'builtin("qwen2-small")', 'builtin("qwen2-0.5b")', 'builtin("qwen1.5-1.8b")', 'builtin("qwen2-tiny", layers: 6)'];
const attnSites = ['layers[*].attn.{q, k, v, o}', 'layers[*].attn.{q, v}', 'layers[0..1].attn.{q, k, v, o}', 'layers[*].attn except layers[0].attn.o', 'layers[-2..-1].attn.{q, k}'];
const mlpSites = 'layers[*].mlp.{gate, up, down}';
const lrs = ['1e-4', '2e-4', '3e-4', '5e-5'];

/** One standalone pipeline in the shape of medcare.mcp: two or three stages, each setting varied. */
function standalone(i: number, r: ReturnType<typeof rng>): string {
  const rAttn = r.pick([4, 8, 16]);
  const rKnow = r.pick([4, 8, 16]);
  const shared = r.pick([1, 2]);
  const experts = r.pick([4, 6, 8]);
  const topK = r.pick([1, 2]);
  const three = r.chance(0.4);
  // Orthogonal ranks must fit the smallest model's hidden 64: knowledge (up to 2 x 16) + align + safety (up to 16).
  const rAlign = three ? r.pick([8, 16]) : r.pick([8, 16, 32]);
  const batch = r.pick([16, 32]);
  const micro = r.pick([4, 8]);
  const lines = [
    `// Benchmark pipeline ${i}: a MedCare variant (${three ? 'three' : 'two'} stages).`,
    `pipeline bench_${i}`,
    '',
    `model base = ${r.pick(models)}`,
    '',
    'data mixed     = jsonl("data/medcare/stage1.jsonl")',
    'data alignment = jsonl("data/medcare/stage2.jsonl")',
    ...(three ? ['data safety_data = jsonl("data/medcare/stage3.jsonl")'] : []),
    'data exam      = jsonl("data/medcare/eval_knowledge.jsonl")',
    'data formats   = jsonl("data/medcare/eval_alignment.jsonl")',
    '',
    'probe knowledge_retention = multiple_choice(exam)',
    `probe format_following    = json_format(formats${r.chance(0.5) ? `, max_examples: ${r.pick([50, 100])}` : ''})`,
    '',
    `adapter attn      = lora(r: ${rAttn}, alpha: ${2 * rAttn}${r.chance(0.3) ? ', dropout: 0.05' : ''}) at ${r.pick(attnSites)}`,
    `adapter knowledge = lora(r: ${rKnow}, alpha: ${2 * rKnow}, experts: ${shared}) at ${mlpSites}`,
    `adapter noise     = moe_lora(experts: ${experts}, top_k: ${topK}, r: ${rKnow}, alpha: ${2 * rKnow}${r.chance(0.3) ? ', load_balance: 0.01' : ''}) at ${mlpSites}`,
    '',
    'stage aggregate {',
    '  train attn, knowledge, noise on mixed',
    `  epochs ${r.pick([1, 2])}`,
    `  lr ${r.pick(lrs)}`,
    `  schedule ${r.pick(['cosine', 'linear'])}(warmup: ${r.pick([1, 3, 5])}%)`,
    '  weight_decay 0',
    `  batch ${batch}`,
    `  micro_batch ${micro}`,
    `  max_len ${r.pick([256, 512])}`,
    '  eval knowledge_retention, format_following',
    '  then {',
    '    merge attn into base',
    '    drop noise',
    '    freeze knowledge',
    '  }',
    '}',
    '',
    'stage align {',
    `  adapter align = lora(r: ${rAlign}, alpha: ${rAlign}) at ${mlpSites}`,
    '  train align on alignment',
    `  epochs ${r.pick([2, 3])}`,
    `  lr ${r.pick(lrs)}`,
    `  batch ${batch}`,
    `  micro_batch ${micro}`,
    `  constrain orthogonal(align.A, knowledge.A) weight ${r.pick(['0.5', '1.0', '2.0'])} norm ${r.pick(['l1', 'l2', 'fro'])}`,
    '  eval knowledge_retention, format_following',
    ...(three ? ['  then { freeze align }'] : []),
    '}',
    ...(three
      ? [
          '',
          'stage safety {',
          `  adapter safety = lora(r: ${r.pick([8, 16])}, alpha: 16) at ${mlpSites}`,
          '  train safety on safety_data',
          '  epochs 2',
          '  lr 1e-4',
          `  constrain orthogonal(safety.A, knowledge.A, align.A) weight 1.0 norm l1`,
          '  eval knowledge_retention',
          '}',
        ]
      : []),
    '',
    `export peft "out/bench/${i}/adapters"`,
    `export merged "out/bench/${i}/model"`,
    '',
  ];
  return lines.join('\n');
}

/** A variant of pipelines/medcare.mcp, as medcare-3stage.mcp is: a new stage after `align`. */
function variant(i: number, r: ReturnType<typeof rng>, dirFromRoot: string): string {
  const base = relative(join(ROOT, dirFromRoot), join(ROOT, 'pipelines/medcare.mcp')).split('\\').join('/');
  const rank = r.pick([8, 16]); // + knowledge 32 + align 16 must fit tiny-med-base's hidden 64
  return [
    `// Benchmark pipeline ${i}: medcare.mcp plus a specialty stage.`,
    `pipeline bench_${i} extends "${base}"`,
    '',
    'data safety_data = jsonl("data/medcare/stage3.jsonl")',
    '',
    'stage specialty after align {',
    `  adapter spec_${i} = lora(r: ${rank}, alpha: ${rank}${r.chance(0.5) ? ', rslora: true' : ''}) at layers[*].mlp.{gate, up, down}`,
    `  train spec_${i} on safety_data`,
    `  epochs ${r.pick([1, 2, 3])}`,
    `  lr ${r.pick(lrs)}`,
    '  batch 16',
    '  micro_batch 8',
    `  constrain orthogonal(spec_${i}.A, knowledge.A, align.A) weight 1.0 norm l1`,
    '  eval knowledge_retention, format_following',
    '}',
    '',
    `export peft "out/bench/${i}/adapters"`,
    `export merged "out/bench/${i}/model"`,
    '',
  ].join('\n');
}

const dirRel = `scratch/bench-lint-${process.pid}`;
const dir = join(ROOT, dirRel);
rmSync(dir, { recursive: true, force: true });
mkdirSync(dir, { recursive: true });
const texts = new Set<string>();
for (let i = 0; i < nFiles; i++) {
  const r = rng(1000 + i);
  const text = i % 4 === 3 ? variant(i, r, dirRel) : standalone(i, r);
  texts.add(text);
  writeFileSync(join(dir, `bench_${String(i).padStart(3, '0')}.mcp`), text);
}

// --- timing ------------------------------------------------------------------------------------------------------

/** A CliIO that keeps only what a run printed, so printing costs the same as a real run minus the terminal. */
function quietIO(): CliIO & { out: string; err: string } {
  const io = { out: '', err: '', cwd: ROOT, isTTY: false, env: {}, stdout: (t: string) => void (io.out += t), stderr: (t: string) => void (io.err += t) };
  return io;
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

let failed = false;
try {
  // The warm-up run also checks that the files are what the benchmark claims: distinct and clean.
  const warm = quietIO();
  const code = await main(['lint', dirRel, '--format', 'json'], warm);
  const diags = JSON.parse(warm.out) as { file: string; line: number; code: string; message: string }[];
  if (texts.size !== nFiles || code !== 0 || diags.length) {
    console.log(`the generated pipelines are not ${nFiles} distinct clean files (${texts.size} distinct, exit ${code}, ${diags.length} diagnostics):`);
    for (const d of diags.slice(0, 10)) console.log(`  ${d.file}:${d.line}: ${d.code}: ${d.message}`);
    failed = true;
  }

  const inProcess: number[] = [];
  for (let i = 0; i < runs; i++) {
    const io = quietIO();
    const t = performance.now();
    await main(['lint', dirRel], io);
    inProcess.push(performance.now() - t);
  }

  const cold: number[] = [];
  for (let i = 0; i < 3; i++) {
    const t = performance.now();
    const res = spawnSync(process.execPath, ['bin/mcpc.js', 'lint', dirRel], { cwd: ROOT, encoding: 'utf8' });
    cold.push(performance.now() - t);
    if (res.status !== 0) {
      console.log(`cold CLI exited ${res.status}: ${(res.stderr || res.stdout).slice(0, 500)}`);
      failed = true;
    }
  }

  const ip = median(inProcess);
  const cc = median(cold);
  const pass = cc < target;
  failed ||= !pass;
  const cpu = cpus();
  console.log(`machine: ${cpu.length} cores (${cpu[0]?.model.trim() ?? 'unknown'}), node ${process.version}, ${new Date().toISOString().slice(0, 10)}`);
  console.log(`lint ${nFiles} files: in-process ${ip.toFixed(0)} ms (${(ip / nFiles).toFixed(1)} ms/file), cold CLI ${cc.toFixed(0)} ms`);
  console.log(`  in-process: median of ${runs} after a warm-up (${inProcess.map((x) => x.toFixed(0)).join(', ')} ms); cold CLI: median of 3 fresh \`node bin/mcpc.js lint\` (${cold.map((x) => x.toFixed(0)).join(', ')} ms)`);
  console.log(`target < ${target} ms: ${pass ? 'PASS' : 'FAIL'}`);
} finally {
  if (values.keep) console.log(`kept the files in ${dirRel} (--keep)`);
  else rmSync(dir, { recursive: true, force: true });
}
process.exitCode = failed ? 1 : 0;
