/**
 * Ctrl-C during `mcpc run`: a real child process (`node bin/mcpc.js run`) gets SIGINT in the middle of a stage
 * that writes no periodic checkpoints; it finishes the step in flight, writes a checkpoint of it, says so and
 * exits 130; `--resume` then ends with weights bit-identical to an uninterrupted run (cpu backend). SIGTERM
 * (what a scheduler sends before killing) does the same.
 */
import { mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';
import { main } from '../../src/cli/main.js';
import { TWO_STAGES } from '../runtime/executor/helpers.js';
import { memoryIO } from '../support/memory-io.js';
import { lossLines, runAndSignal } from '../support/signal.js';
import { stageParams } from '../support/run-folder.js';

const bin = fileURLToPath(new URL('../../bin/mcpc.js', import.meta.url));

/** Stage one long enough to be interrupted in (80 steps, no checkpoint_every: only its end is saved). */
const PIPELINE = TWO_STAGES.replace('  steps 2\n', '  steps 80\n');

describe('Ctrl-C / SIGTERM during mcpc run', () => {
  let dir: string;
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'mcpc-interrupt-'));
    writeFileSync(join(dir, 'mcpc.yaml'), 'pipeline: p.mcp\nout: out\n');
    writeFileSync(join(dir, 'p.mcp'), PIPELINE);
    writeFileSync(join(dir, 'd.jsonl'), Array.from({ length: 16 }, (_, i) => JSON.stringify({ messages: [{ role: 'user', content: `Q${i}?` }, { role: 'assistant', content: `A${i * 3}.` }] })).join('\n') + '\n');
    const io = memoryIO(dir);
    expect(await main(['run', 'p.mcp', '--out', 'clean', '--backend', 'cpu'], io)).toBe(0);
  });

  // SIGINT twice, 50 ms apart: one Ctrl-C as `npx mcpc run` gets it (the terminal signals the process group and
  // npm forwards it to its child): still one interrupt, not the second that stops without a checkpoint.
  for (const [sig, times] of [['SIGINT', 1], ['SIGTERM', 1], ['SIGINT', 2]] as const) {
    it(`${sig}${times > 1 ? ' twice, 50 ms apart,' : ''} finishes the step in flight, checkpoints it, exits 130; --resume ends bit-identical`, async () => {
      const out = `cut-${sig}-${times}`;
      const r = await runAndSignal(process.execPath, [bin, 'run', 'p.mcp', '--out', out, '--backend', 'cpu'], dir, sig, () => lossLines(join(dir, out, 'metrics.jsonl')) >= 2, times);
      expect(r.signal, r.err).toBeNull();
      expect(r.code, r.err).toBe(130);
      expect(r.err).toMatch(new RegExp(`mcpc run: ${sig}: finishing the step in flight and writing a checkpoint of it`));
      const m = /mcpc run: interrupted in stage one after step (\d+)\/80: checkpoint (\S+) written; the same command with --resume continues/.exec(r.err);
      expect(m, JSON.stringify(r.err)).not.toBeNull();
      const step = Number(m![1]);
      expect(step).toBeGreaterThanOrEqual(2);
      expect(step).toBeLessThan(80);
      // The checkpoint holds that step: the metrics file has exactly its loss lines.
      expect(lossLines(join(dir, out, 'metrics.jsonl'))).toBe(step);
      expect(readdirSync(join(dir, out, 'checkpoints'))).toEqual(['step-000001']);
      const io = memoryIO(dir);
      expect(await main(['run', 'p.mcp', '--out', out, '--backend', 'cpu', '--resume'], io)).toBe(0);
      expect(io.out).toMatch(new RegExp(`stage one: resuming at step ${step}/80`));
      for (const stage of ['one', 'two']) expect(stageParams(join(dir, out), stage).equals(stageParams(join(dir, 'clean'), stage)), stage).toBe(true);
    }, 120_000);
  }
});
