/**
 * `mcpc run` end to end on a tiny two-stage pipeline in a temporary project: metrics, exports that load
 * back, bit-identical resume, reuse of unchanged stages, bad data records.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { main } from '../../src/cli/main.js';
import { compileFile, nodeHost } from '../../src/compiler/index.js';
import type { Plan } from '../../src/plan/types.js';
import { SafetensorsReader } from '../../src/runtime/io/safetensors.js';
import { importPeftAdapter } from '../../src/runtime/weights/peft.js';
import { loadHfCheckpoint } from '../../src/runtime/weights/hf.js';
import { cliProject, mcpcIn, memoryIO } from '../support/memory-io.js';
import { stageParams } from '../support/run-folder.js';

const PIPELINE = `pipeline tiny
model base = builtin("qwen2-micro", layers: 1, hidden: 32, ffn: 64, heads: 2, kv_heads: 1)
data d = jsonl("d.jsonl")
adapter attn = lora(r: 4, alpha: 8) at layers[*].attn.{q, v}
adapter mlp = lora(r: 4, alpha: 8) at layers[*].mlp.{gate, up}
adapter scratch = lora(r: 2, alpha: 4) at layers[*].attn.o
stage one {
  train attn, mlp, scratch on d
  steps 3
  lr 1e-2
  batch 4
  micro_batch 2
  max_len 32
  checkpoint_every 1
  then {
    merge attn into base
    drop scratch
    freeze mlp
  }
}
stage two {
  adapter extra = lora(r: 2, alpha: 4) at layers[*].mlp.{gate, up}
  train extra on d
  constrain orthogonal(extra.A, mlp.A) weight 1.0 norm l1
  steps 3
  lr 1e-2
  batch 4
  micro_batch 2
  max_len 32
  checkpoint_every 1
}
export peft "exports/peft"
export merged "exports/merged"
`;

const lines = Array.from({ length: 16 }, (_, i) => JSON.stringify({ messages: [{ role: 'user', content: `Question ${i}?` }, { role: 'assistant', content: `Answer ${i * 7}.` }] }));

const project = (records: string[] = lines) => cliProject(PIPELINE, records, 'mcpc-run-');

const run = (dir: string, ...args: string[]) => mcpcIn(dir, ['run', ...args]);


describe('mcpc run', () => {
  let dir: string;
  let first: { code: number; out: string; err: string };
  beforeAll(async () => {
    dir = project();
    first = await run(dir, 'p.mcp');
  });

  it('trains both stages, writes metrics, checkpoints and the exports', () => {
    expect(first.err).toBe('');
    expect(first.code).toBe(0);
    expect(first.out).toMatch(/stage one exit: merged attn \(2 sites\); dropped 2 tensors; froze mlp/);
    expect(first.out).toMatch(/stage one merge check: .* ok/);
    expect(first.out).toMatch(/orthogonality extra vs mlp \(A\): sum \|A_extra A_mlp\^T\| = \d/);
    const metrics = readFileSync(join(dir, 'out/tiny/metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    expect(metrics.map((m) => `${m.stage}${m.step}`)).toEqual(['one0', 'one1', 'one2', 'two0', 'two1', 'two2']);
    for (const m of metrics) {
      expect(Object.keys(m).sort()).toEqual(['constraint', 'gradNorm', 'loss', 'lr', 'skipped', 'stage', 'step', 'tokensPerSec']);
      expect(Number.isFinite(m.loss)).toBe(true);
      expect(m.skipped).toBe(false);
    }
    expect(metrics[3].constraint).toBeGreaterThan(0);
  });

  it('the exports load back: the merged model as a Hugging Face checkpoint, the adapters as PEFT', () => {
    const res = compileFile(join(dir, 'p.mcp'), nodeHost(dir, dir), {}, { optLevel: 1 });
    const plan = res.plan as Plan;
    const final = SafetensorsReader.fromBytes(stageParams(join(dir, 'out/tiny'), 'two'));
    const hf = loadHfCheckpoint(plan, join(dir, 'exports/merged'));
    // attn was merged by the pipeline; mlp and extra are merged by the export, so q (attn only) is the trained base.
    expect(hf.weights.get('base.layers[0].attn.q.weight')).toEqual(final.readFloat32('base.layers[0].attn.q.weight'));
    for (const name of ['mlp', 'extra']) {
      const imp = importPeftAdapter(plan, name, join(dir, 'exports/peft', name));
      for (const [id, v] of imp.params) expect(v, id).toEqual(final.readFloat32(id));
    }
  });

  it('a second run reuses the unchanged stages', async () => {
    const again = await run(dir, 'p.mcp');
    expect(again.code).toBe(0);
    expect(again.out).toMatch(/stage one unchanged, reusing/);
    expect(again.out).toMatch(/stage two unchanged, reusing/);
    expect(readFileSync(join(dir, 'out/tiny/metrics.jsonl'), 'utf8').trim().split('\n')).toHaveLength(6);
  });

  it('an interrupted run resumed from its checkpoint ends with bit-identical weights', async () => {
    const stopped = await run(dir, 'p.mcp', '--out', 'resumed', '--stop-after', '2');
    expect(stopped.code).toBe(1);
    const resumed = await run(dir, 'p.mcp', '--out', 'resumed', '--resume');
    expect(resumed.err).toBe('');
    expect(resumed.code).toBe(0);
    expect(resumed.out).toMatch(/stage one: resuming at step 2\/3/);
    const a = stageParams(join(dir, 'out/tiny'), 'two');
    const b = stageParams(join(dir, 'resumed'), 'two');
    expect(b.equals(a)).toBe(true);
    const metrics = readFileSync(join(dir, 'resumed/metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    expect(metrics.map((m) => `${m.stage}${m.step}`)).toEqual(['one0', 'one1', 'one2', 'two0', 'two1', 'two2']);
  });

  it('a bad record stops with file:line and exit 1; --skip-bad-records counts it', async () => {
    const bad = project([...lines.slice(0, 4), '{"messages": [', ...lines.slice(4)]);
    const r = await run(bad, 'p.mcp', '--max-steps', '1');
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/d\.jsonl:5:/);
    // No argument: the plan `mcpc compile` wrote.
    expect(await main(['compile'], memoryIO(bad))).toBe(0);
    const skip = await run(bad, '--max-steps', '1', '--skip-bad-records');
    expect(skip.err).toBe('');
    expect(skip.code).toBe(0);
    expect(skip.out).toMatch(/d\.jsonl: skipped 1 bad record/);
  });

  it('refuses an invalid plan and unavailable backends', async () => {
    writeFileSync(join(dir, 'bad.plan.json'), '{"format": "mcpc-plan"}');
    const r = await run(dir, 'bad.plan.json');
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/is not a valid plan/);
    const g = await run(dir, '--backend', 'gpu');
    expect(g.code).toBe(2);
    expect(g.err).toMatch(/unknown backend 'gpu' \(auto, webgpu, wasm, cpu, tensorflow\)/);
    // tfjs-node-gpu is optional and not installed here: a clear error with the install hint, not a crash.
    const t = await run(dir, 'p.mcp', '--backend', 'tensorflow');
    expect(t.code).toBe(1);
    expect(t.err).toMatch(/cannot start the tensorflow backend: .*npm install @tensorflow\/tfjs-node-gpu/);
    // A path the user gave that cannot be written: exit 1 naming the file, not an internal error.
    const w = await run(dir, 'p.mcp', '--save-init', join(dir, 'no-such-folder', 'init.safetensors'));
    expect(w.code).toBe(1);
    expect(w.err).toMatch(/no-such-folder\/init\.safetensors: atomic write failed: ENOENT.*\(check that the folder exists and is writable; nothing was replaced\)/);
    expect(w.err).not.toMatch(/internal error/);
  });

  it('checks the MCPC_* switches before anything runs: a bad value stops it, an unknown name warns, the set ones are printed', async () => {
    const withEnv = async (env: Record<string, string>, ...args: string[]) => {
      const io = memoryIO(dir, { env });
      const code = await main(['run', ...args], io);
      return { code, out: io.out, err: io.err };
    };
    const bad = await withEnv({ MCPC_THREADS: 'two', MCPC_FUSED_WASM: 'off' }, 'p.mcp', '--out', 'sw-bad');
    expect(bad.code).toBe(2);
    expect(bad.err).toMatch(/MCPC_FUSED_WASM takes 0 or 1 \(got 'off'\); MCPC_THREADS takes a whole number from 1 to 256 \(got 'two'\) \(mcpc run --help lists the switches\)/);
    expect(bad.out).toBe('');
    const ok = await withEnv({ MCPC_FUSED_WASAM: '0', MCPC_ATTENTION_WASM: '0' }, 'p.mcp', '--out', 'sw-ok', '--max-steps', '1', '--backend', 'cpu');
    expect(ok.code).toBe(0);
    expect(ok.err).toMatch(/warning: MCPC_FUSED_WASAM is not an mcpc switch and does nothing; did you mean MCPC_FUSED_WASM\?/);
    expect(ok.out).toMatch(/\nswitches MCPC_ATTENTION_WASM=0\n/);
    const help = await withEnv({}, '--help');
    expect(help.out).toMatch(/MCPC_THREADS +threads for the CPU matrix products/);
  });
});
