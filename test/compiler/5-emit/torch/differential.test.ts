/**
 * The PyTorch program of `mcpc compile --target torch` against the TypeScript runtime (CPU backend), on a
 * tiny two-stage pipeline that has everything MedCare has: a mixture-of-LoRA stage (routed and shared
 * experts, router, top-k, load balancing), merge / drop / freeze between the stages, and a packed stage with
 * an orthogonality constraint. Both engines start from the same tensors (`mcpc run --save-init`, read with
 * `train.py --init-from`) and read the same data in the same order:
 *   - per-step losses agree within 1e-4 relative;
 *   - the adapters each engine exports load into the other and give the same outputs;
 *   - the JSON files of the exports are byte-identical (the byte tokenizer's Hugging Face files of the merged
 *     export too, and both merged folders hold the same files), the merged checkpoints equal within 1e-4;
 *   - `train.py --nproc 2` (two processes, gloo, DDP on this torch) gives the losses of one process.
 *
 * Needs a Python with torch: $MCPC_TORCH_PYTHON, else /usr/bin/python3 (Debian's python3-torch), else
 * python3. Without one the test says so and is skipped, except in CI (process.env.CI), where it fails.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, renameSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { compileFile, nodeHost } from '../../../../src/compiler/index.js';
import { emitTorch } from '../../../../src/compiler/5-emit/torch/index.js';
import { saveInitialWeights } from '../../../../src/cli/save-init.js';
import { byteTokenizerFileTexts } from '../../../../src/plan/byte-tokenizer.js';
import type { Plan } from '../../../../src/plan/types.js';
import { concatDatasets, DataLoader, loadDataSource } from '../../../../src/runtime/data/index.js';
import { createStageRunner } from '../../../../src/runtime/executor.js';
import { SafetensorsReader, tensorFromFloat32, writeSafetensorsFile } from '../../../../src/runtime/io/safetensors.js';
import { runPlan } from '../../../../src/runtime/run.js';
import { createTokenizer } from '../../../../src/runtime/tokenizer/index.js';
import { loadHfCheckpoint } from '../../../../src/runtime/weights/hf.js';
import { importPeftAdapter } from '../../../../src/runtime/weights/peft.js';
import { repoRoot } from '../../../support/pipelines.js';
import { lossLines, runAndSignal } from '../../../support/signal.js';

const PIPELINE = `pipeline diff
model base = builtin("qwen2-micro", layers: 2, hidden: 32, ffn: 64, heads: 2, kv_heads: 1)
data mixed     = jsonl("s1.jsonl")
data alignment = jsonl("s2.jsonl")
adapter attn      = lora(r: 4, alpha: 8)                                                             at layers[*].attn.{q, k, v, o}
adapter knowledge = lora(r: 4, alpha: 8, experts: 2)                                                 at layers[*].mlp.{gate, up, down}
adapter noise     = moe_lora(experts: 4, top_k: 2, r: 4, alpha: 8, shared: 1, load_balance: 0.01) at layers[*].mlp.{gate, up, down}
stage aggregate {
  train attn, knowledge, noise on mixed
  lr 1e-2
  schedule cosine(warmup: 3%)
  batch 4
  micro_batch 2
  max_len 96
  then {
    merge attn into base
    drop noise.experts
    freeze knowledge, noise
  }
}
stage align {
  adapter align = lora(r: 4, alpha: 8) at layers[*].mlp.{gate, up, down}
  train align on alignment
  lr 1e-2
  batch 4
  micro_batch 2
  max_len 128
  packing true
  constrain orthogonal(align.A, knowledge.A) weight 0.5 norm l1
}
export peft "out/adapters"
export merged "out/model"
`;
const STEPS = 3;
const TOL = 1e-4;

function findPython(): { python?: string; why: string } {
  const candidates = [process.env.MCPC_TORCH_PYTHON, '/usr/bin/python3', 'python3'].filter((x): x is string => !!x);
  const tried: string[] = [];
  for (const py of candidates) {
    const r = spawnSync(py, ['-c', 'import torch; print(torch.__version__)'], { encoding: 'utf8', timeout: 60_000 });
    if (r.status === 0) return { python: py, why: `${py}: torch ${r.stdout.trim()}` };
    tried.push(`${py}: ${r.error ? r.error.message : (r.stderr.trim().split('\n').pop() ?? `exit ${r.status}`)}`);
  }
  return { why: `no Python with torch (${tried.join('; ')}); install it with \`apt-get install python3-torch libopenblas0-pthread\` or set MCPC_TORCH_PYTHON` };
}

const found = findPython();

interface Metric {
  stage: string;
  step: number;
  loss: number;
  constraint: number;
  skipped: boolean;
}
const metrics = (file: string): Metric[] => readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Metric);

function readAll(file: string): Map<string, Float32Array> {
  const r = SafetensorsReader.open(file);
  try {
    return new Map(r.names.map((n) => [n, r.readFloat32(n)]));
  } finally {
    r.close();
  }
}

function writeParams(file: string, plan: Plan, params: Map<string, Float32Array>): void {
  const shape = new Map(plan.parameters.map((p) => [p.id, p.shape]));
  writeSafetensorsFile(file, new Map([...params].map(([id, v]) => [id, tensorFromFloat32(v, shape.get(id) ?? [v.length])])));
}

/** max |a - b| / max(max |a|, 1e-6). */
function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) return Infinity;
  let d = 0;
  let s = 1e-6;
  for (let i = 0; i < a.length; i++) {
    d = Math.max(d, Math.abs(a[i]! - b[i]!));
    s = Math.max(s, Math.abs(a[i]!));
  }
  return d / s;
}

/** The newest checkpoint folder's params.safetensors of a run folder. */
function finalParams(runDir: string): string {
  const dirs = readdirSync(join(runDir, 'checkpoints')).filter((d) => /^step-\d+$/.test(d)).sort();
  return join(runDir, 'checkpoints', dirs[dirs.length - 1]!, 'params.safetensors');
}

describe.runIf(found.python || process.env.CI)('--target torch against the TypeScript runtime', () => {
  const py = found.python!;
  let dir: string;
  let o0: Plan;
  let o1: Plan;
  /** The adapters of the `export peft` (knowledge and align: those alive at the end that the export names). */
  let lastAdapters: string[] = [];

  const python = (args: string[], timeout = 180_000) => {
    const r = spawnSync(py, [join(dir, 'torch', 'train.py'), ...args], { encoding: 'utf8', timeout, cwd: dir });
    if (r.status !== 0) throw new Error(`train.py ${args.join(' ')} exited ${r.status}:\n${r.stdout}\n${r.stderr}`);
    return r.stdout;
  };

  /** The TypeScript runtime's last-stage outputs (x.final, loss) on the stage's first micro-batch. */
  const tsForward = async (params: Map<string, Float32Array>) => {
    const stage = o1.stages[o1.stages.length - 1]!;
    const tok = createTokenizer(o1.model.tokenizer, dir);
    const sets = await Promise.all(stage.data.map((n) => loadDataSource(o1.data.find((d) => d.name === n)!, { root: dir, tokenizer: tok, maxLen: stage.settings.maxLen, lossOn: stage.settings.loss })));
    const s = stage.settings;
    const loader = new DataLoader(concatDatasets(sets), { microBatch: s.microBatch, accumulation: Math.round(s.batch / s.microBatch), maxLen: s.maxLen, layout: s.packing ? 'pack' : 'pad-longest', seed: s.seed, shuffle: s.shuffle, padId: tok.pad });
    const mb = loader.steps().next().value!.microBatches[0]!;
    const runner = await createStageRunner(o1, stage.name, { backend: 'cpu', root: dir, parameters: params, totalSteps: 1 });
    try {
      return await runner.forward(mb, ['x.final', 'loss']);
    } finally {
      runner.dispose();
    }
  };

  /** Parameters with the exported adapters' tensors zeroed: outputs match only if the adapters are loaded back. */
  const withoutAdapters = (params: Map<string, Float32Array>) => {
    const out = new Map(params);
    for (const p of o0.parameters) if (lastAdapters.includes(p.owner) && out.has(p.id) && (p.role === 'lora_A' || p.role === 'lora_B')) out.set(p.id, new Float32Array(out.get(p.id)!.length));
    return out;
  };

  beforeAll(async () => {
    if (!found.python) return;
    dir = mkdtempSync(join(tmpdir(), 'mcpc-torch-'));
    const lines = (f: string, n: number) => readFileSync(join(repoRoot, 'data/medcare', f), 'utf8').split('\n').slice(0, n).join('\n') + '\n';
    writeFileSync(join(dir, 's1.jsonl'), lines('stage1.jsonl', 48));
    writeFileSync(join(dir, 's2.jsonl'), lines('stage2.jsonl', 40));
    writeFileSync(join(dir, 'p.mcp'), PIPELINE);
    const compile = (optLevel: 0 | 1) => {
      const r = compileFile(join(dir, 'p.mcp'), nodeHost(dir, dir), {}, { optLevel });
      if (!r.plan) throw new Error(r.diagnostics.map((d) => d.message).join('\n'));
      return r.plan;
    };
    o0 = compile(0);
    o1 = compile(1);
    lastAdapters = o0.exports.find((e) => e.format === 'peft')!.adapters;
    const out = join(dir, 'torch');
    mkdirSync(out);
    for (const [name, text] of emitTorch(o0, { projectRoot: relative(out, dir), memoryPlan: o1 }).files) writeFileSync(join(out, name), text);

    // The TypeScript runtime (the -O1 plan, as `mcpc run` trains it), from the initial weights it writes.
    saveInitialWeights(o1, dir, join(dir, 'init.safetensors'));
    const r = await runPlan(o1, { root: dir, runDir: join(dir, 'ts'), backend: 'cpu', maxSteps: STEPS, write: () => {} });
    if (r.code !== 0) throw new Error(`TypeScript run failed: ${r.message}`);
    renameSync(join(dir, 'out'), join(dir, 'ts-out'));

    python(['--max-steps', String(STEPS), '--init-from', 'init.safetensors', '--out', join(dir, 'py'), '--export-root', join(dir, 'py-exports')]);
  }, 300_000);

  it('finds a Python with torch', () => {
    if (!found.python) throw new Error(`CI is set but the differential test cannot run: ${found.why}`);
    console.log(`differential test: ${found.why}`);
  });

  it('has the same per-step losses as the TypeScript runtime (1e-4 relative)', () => {
    const ts = metrics(join(dir, 'ts', 'metrics.jsonl'));
    const pt = metrics(join(dir, 'py', 'metrics.jsonl'));
    expect(pt.map((m) => `${m.stage}/${m.step}`)).toEqual(ts.map((m) => `${m.stage}/${m.step}`));
    expect(new Set(ts.map((m) => m.stage))).toEqual(new Set(['aggregate', 'align']));
    expect(ts.length).toBe(2 * STEPS);
    const worst = Math.max(...ts.map((m, i) => Math.abs(m.loss - pt[i]!.loss) / Math.abs(m.loss)));
    console.log(`per-step loss, max relative difference torch vs TypeScript: ${worst.toExponential(2)} over ${ts.length} steps`);
    ts.forEach((m, i) => {
      expect(pt[i]!.skipped).toBe(false);
      expect(Math.abs(m.loss - pt[i]!.loss) / Math.abs(m.loss)).toBeLessThan(TOL);
      expect(Math.abs(m.constraint - pt[i]!.constraint)).toBeLessThan(TOL * Math.max(1, Math.abs(m.constraint)));
    });
    // The align stage's constraint is live (the penalty is part of the loss being compared).
    expect(ts.filter((m) => m.stage === 'align').every((m) => m.constraint > 0)).toBe(true);
  });

  it('writes the same export files (JSON byte-identical, merged weights within 1e-4)', () => {
    expect(lastAdapters.length).toBeGreaterThan(0);
    for (const f of ['adapters/mcpc_export.json', ...lastAdapters.map((a) => `adapters/${a}/adapter_config.json`), 'model/config.json', 'model/generation_config.json']) {
      expect(readFileSync(join(dir, 'py-exports/out', f), 'utf8'), f).toBe(readFileSync(join(dir, 'ts-out', f), 'utf8'));
    }
    // The merged export folders hold the same files, and the byte tokenizer's Hugging Face files are byte-identical.
    expect(o0.model.tokenizer.kind).toBe('bytes');
    expect(readdirSync(join(dir, 'py-exports/out/model')).sort()).toEqual(readdirSync(join(dir, 'ts-out/model')).sort());
    for (const f of ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json'] as const) {
      const want = readFileSync(join(dir, 'ts-out/model', f));
      expect(want.equals(Buffer.from(byteTokenizerFileTexts(o1.model.config)[f], 'utf8')), f).toBe(true);
      expect(readFileSync(join(dir, 'py-exports/out/model', f)).equals(want), `model/${f}`).toBe(true);
    }
    const ts = loadHfCheckpoint(o1, join(dir, 'ts-out/model')).weights;
    const pt = loadHfCheckpoint(o1, join(dir, 'py-exports/out/model')).weights;
    for (const [id, v] of ts) expect(relErr(v, pt.get(id)!), id).toBeLessThan(TOL);
  });

  it("loads the TypeScript runtime's adapters into the PyTorch program with the same outputs", async () => {
    const params = readAll(finalParams(join(dir, 'ts')));
    const own = await tsForward(params);
    writeParams(join(dir, 'ts-base.safetensors'), o0, withoutAdapters(params));
    python(['--eval-params', 'ts-base.safetensors', '--eval-adapters', join(dir, 'ts-out/adapters'), '--eval-out', join(dir, 'eval-ts.safetensors')]);
    const got = readAll(join(dir, 'eval-ts.safetensors'));
    expect(relErr(own.get('x.final')!, got.get('x.final')!)).toBeLessThan(TOL);
    expect(relErr(own.get('loss')!, got.get('loss')!)).toBeLessThan(TOL);
    // Without the adapters the outputs differ: the comparison above is not vacuous.
    const bare = await tsForward(withoutAdapters(params));
    expect(relErr(own.get('x.final')!, bare.get('x.final')!)).toBeGreaterThan(1e-3);
  });

  it("loads the PyTorch program's adapters into the TypeScript runtime with the same outputs", async () => {
    const params = readAll(finalParams(join(dir, 'py')));
    python(['--eval-params', finalParams(join(dir, 'py')), '--eval-out', join(dir, 'eval-py.safetensors')]);
    const own = readAll(join(dir, 'eval-py.safetensors'));
    const loaded = withoutAdapters(params);
    for (const name of lastAdapters) for (const [id, v] of importPeftAdapter(o1, name, join(dir, 'py-exports/out/adapters', name)).params) loaded.set(id, v);
    const got = await tsForward(loaded);
    expect(relErr(own.get('x.final')!, got.get('x.final')!)).toBeLessThan(TOL);
    expect(relErr(own.get('loss')!, got.get('loss')!)).toBeLessThan(TOL);
  });

  it('SIGTERM (preemption) ends the step in flight with a checkpoint of it, exit 130; --resume ends bit-identical', async () => {
    const args = ['--max-steps', '12', '--init-from', 'init.safetensors'];
    python([...args, '--out', join(dir, 'py12'), '--export-root', join(dir, 'py12-exports')]);
    const cut = join(dir, 'py12-cut');
    const r = await runAndSignal(py, [join(dir, 'torch', 'train.py'), ...args, '--out', cut, '--export-root', join(dir, 'py12-cut-exports')], dir, 'SIGTERM', () => lossLines(join(cut, 'metrics.jsonl')) >= 1);
    expect(r.signal, r.err).toBeNull();
    expect(r.code, `${r.out}\n${r.err}`).toBe(130);
    expect(r.err).toMatch(/SIGTERM: finishing the step in flight and writing a checkpoint of it/);
    const m = /interrupted in stage aggregate after step (\d+)\/12: checkpoint \S+step-000001 written; the same command with --resume continues/.exec(r.out);
    expect(m, r.out).not.toBeNull();
    expect(lossLines(join(cut, 'metrics.jsonl'))).toBe(Number(m![1]));
    python([...args, '--out', cut, '--export-root', join(dir, 'py12-cut-exports'), '--resume']);
    expect(readFileSync(finalParams(cut)).equals(readFileSync(finalParams(join(dir, 'py12'))))).toBe(true);
    expect(metrics(join(cut, 'metrics.jsonl')).map((x) => x.loss)).toEqual(metrics(join(dir, 'py12', 'metrics.jsonl')).map((x) => x.loss));
  });

  it('an out-of-memory error is told as such (where, the last good checkpoint, what to change), not as a traceback', () => {
    const code = [
      'import sys',
      'sys.path.insert(0, sys.argv[1])',
      'import torch, train',
      'oom = getattr(torch.cuda, "OutOfMemoryError", RuntimeError)',
      'e = oom("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.11 GiB total capacity)\\nmore detail")',
      'print(train.is_oom(e), train.is_oom(RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 9 GB")), train.is_oom(RuntimeError("shape mismatch")), train.is_oom(ValueError("out of memory")))',
      'print(train.oom_message(e, "stage aggregate, step 7", "/r/checkpoints/step-000003"))',
      'print(train.oom_message(e, "start-up", None, "host"))',
      // The wiring: a Trainer whose run() runs out of memory mid-step; run() prints the message and returns 1.
      'class Boom(train.Trainer):',
      '    def run(self):',
      '        self.where = "stage aggregate, step 3"',
      '        raise e',
      'train.Trainer = Boom',
      'sys.argv = ["train.py", "--out", sys.argv[2]]',
      'sys.stderr = sys.stdout',
      'print("code", train.run(train.parse_args()))',
    ].join('\n');
    const r = spawnSync(py, ['-c', code, join(dir, 'torch'), join(dir, 'py-oom')], { encoding: 'utf8', timeout: 120_000, cwd: dir });
    expect(r.status, r.stderr).toBe(0);
    const lines = r.stdout.trim().split('\n');
    const [kinds, withCkpt, without] = lines;
    // (The trainer prints its set-up lines before the message.)
    expect(lines.filter((l) => l.startsWith('error: out of host memory during stage aggregate, step 3 (CUDA out of memory. '))).toHaveLength(1);
    expect(lines.filter((l) => l.startsWith('Traceback'))).toHaveLength(0);
    expect(lines[lines.length - 1]).toBe('code 1');
    expect(kinds).toBe('True True False False');
    expect(withCkpt).toBe(
      'error: out of GPU memory during stage aggregate, step 7 (CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.11 GiB total capacity)); nothing computed after it was saved; ' +
        "the last good checkpoint is /r/checkpoints/step-000003. Lower the stage's micro_batch (batch stays: more micro-batches a step) or max_len, or state the GPU's memory " +
        '(`memory 80GB` in the stage, or `memory:` in mcpc.yaml) and compile again: the planner then picks micro_batch and recomputes activations if it must; then rerun with --resume.',
    );
    expect(without).toMatch(/^error: out of host memory during start-up \(.*\); nothing computed after it was saved; no checkpoint was written yet\. .*; then rerun\.$/);
  });

  it('gives the same losses with --nproc 2 (two processes, gloo) as with one', () => {
    const outText = python(['--max-steps', String(STEPS), '--init-from', 'init.safetensors', '--nproc', '2', '--out', join(dir, 'py2'), '--export-root', join(dir, 'py2-exports')]);
    expect(outText).toMatch(/data parallel: (DDP|FSDP)/);
    const one = metrics(join(dir, 'py', 'metrics.jsonl'));
    const two = metrics(join(dir, 'py2', 'metrics.jsonl'));
    expect(two.map((m) => `${m.stage}/${m.step}`)).toEqual(one.map((m) => `${m.stage}/${m.step}`));
    one.forEach((m, i) => expect(Math.abs(m.loss - two[i]!.loss) / Math.abs(m.loss)).toBeLessThan(1e-5));
    expect(existsSync(join(dir, 'py2-exports/out/adapters/align/adapter_model.safetensors'))).toBe(true);
  });
});

describe.runIf(!found.python && !process.env.CI)('--target torch against the TypeScript runtime (no Python with torch)', () => {
  it.skip(`skipped: ${found.why}`, () => {});
});
