/**
 * `kill -9` at any moment, then `mcpc run --resume`: the run continues from the newest complete checkpoint
 * and ends with weights bit-identical to an uninterrupted run (cpu backend). The run is a real child process
 * (`node bin/mcpc.js run`) killed with SIGKILL: once at a step boundary seen in metrics.jsonl, once after a
 * random delay (so possibly in the middle of a forward pass or of a checkpoint write), and once in stage two.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';
import { main } from '../../src/cli/main.js';
import { memoryIO } from '../support/memory-io.js';
import { stageParams } from '../support/run-folder.js';

const bin = fileURLToPath(new URL('../../bin/mcpc.js', import.meta.url));

const PIPELINE = `pipeline killme
model base = builtin("qwen2-micro", layers: 1, hidden: 32, ffn: 64, heads: 2, kv_heads: 1)
data d = jsonl("d.jsonl")
adapter attn  = lora(r: 4, alpha: 8) at layers[*].attn.{q, v}
adapter noise = moe_lora(experts: 4, top_k: 2, r: 4, alpha: 8) at layers[*].mlp.{gate, up}
stage one {
  train attn, noise on d
  steps 10
  lr 1e-2
  batch 4
  micro_batch 2
  max_len 32
  checkpoint_every 2
  then {
    merge attn into base
    drop noise
  }
}
stage two {
  adapter align = lora(r: 2, alpha: 4) at layers[*].mlp.{gate, up}
  train align on d
  steps 6
  lr 1e-2
  batch 4
  max_len 32
  checkpoint_every 1
}
export merged "exports/merged"
`;

const lines = Array.from({ length: 24 }, (_, i) => JSON.stringify({ messages: [{ role: 'user', content: `Question ${i}?` }, { role: 'assistant', content: `Answer ${i * 7}.` }] }));

function project(): string {
  const dir = mkdtempSync(join(tmpdir(), 'mcpc-kill-'));
  writeFileSync(join(dir, 'mcpc.yaml'), 'pipeline: p.mcp\nout: out\n');
  writeFileSync(join(dir, 'p.mcp'), PIPELINE);
  writeFileSync(join(dir, 'd.jsonl'), lines.join('\n') + '\n');
  return dir;
}

function steps(runDir: string): { stage: string; step: number }[] {
  const f = join(runDir, 'metrics.jsonl');
  if (!existsSync(f)) return [];
  return readFileSync(f, 'utf8')
    .split('\n')
    .filter((l) => l.trim())
    .flatMap((l) => {
      try {
        const m = JSON.parse(l) as { stage?: string; step?: number; loss?: number };
        return m.stage !== undefined && m.step !== undefined && m.loss !== undefined ? [{ stage: m.stage, step: m.step }] : [];
      } catch {
        return []; // a line cut by the kill
      }
    });
}

/**
 * Start `mcpc run` in a child process and SIGKILL it once `when` says so (polled every 10 ms), plus
 * `delayMs`. Resolves with how the child ended.
 */
function runAndKill(dir: string, args: string[], when: (runDir: string) => boolean, delayMs: number): Promise<{ signal: string | null; code: number | null; out: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [bin, 'run', 'p.mcp', ...args], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    const runDir = join(dir, args[args.indexOf('--out') + 1]!);
    const timer = setInterval(() => {
      if (!when(runDir)) return;
      clearInterval(timer);
      setTimeout(() => child.kill('SIGKILL'), delayMs);
    }, 10);
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      clearInterval(timer);
      resolve({ signal, code, out });
    });
  });
}

async function run(dir: string, ...args: string[]) {
  const io = memoryIO(dir);
  const code = await main(['run', 'p.mcp', ...args], io);
  return { code, out: io.out, err: io.err };
}


describe('SIGKILL mid-stage, then --resume', () => {
  let dir: string;
  beforeAll(async () => {
    dir = project();
    const r = await run(dir, '--out', 'clean', '--backend', 'cpu');
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
  });

  it('killed three times (step boundary, random moment, stage two) ends bit-identical to the uninterrupted run', async () => {
    const args = ['--out', 'killed', '--backend', 'cpu'];
    const k1 = await runAndKill(dir, args, (d) => steps(d).some((s) => s.stage === 'one' && s.step >= 3), 0);
    expect(k1.signal, k1.out).toBe('SIGKILL');
    const delay = Math.floor(Math.random() * 400);
    const k2 = await runAndKill(dir, [...args, '--resume'], (d) => steps(d).some((s) => s.stage === 'one' && s.step >= 5), delay);
    // With a long random delay the child may finish stage one (or everything) first: both are fine.
    expect(['SIGKILL', null], `delay ${delay} ms: ${k2.out}`).toContain(k2.signal);
    const k3 = await runAndKill(dir, [...args, '--resume'], (d) => steps(d).some((s) => s.stage === 'two' && s.step >= 2), 0);
    expect(['SIGKILL', null], k3.out).toContain(k3.signal);
    const done = await run(dir, ...args, '--resume');
    expect(done.err, `delay ${delay} ms`).toBe('');
    expect(done.code).toBe(0);
    for (const stage of ['one', 'two']) expect(stageParams(join(dir, 'killed'), stage).equals(stageParams(join(dir, 'clean'), stage)), `stage ${stage}, delay ${delay} ms`).toBe(true);
    expect(readFileSync(join(dir, 'exports/merged/model.safetensors')).length).toBeGreaterThan(0);
    // Every step was logged at least once, in order, across the restarts.
    const seen = steps(join(dir, 'killed')).map((s) => `${s.stage}${s.step}`);
    for (const want of [...Array(10).keys()].map((i) => `one${i}`).concat([...Array(6).keys()].map((i) => `two${i}`))) expect(seen).toContain(want);
  }, 180_000);
});
