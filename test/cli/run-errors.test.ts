/**
 * `mcpc run` on bad input: damaged safetensors files (the model's, a checkpoint's), flags out of range, a run
 * folder that cannot be one, and the --skip-bad-records hint only where skipping would help. Each is one
 * message naming the file and what to do, never an internal error.
 */
import { cpSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { join, relative } from 'node:path';
import { describe, expect, it } from 'vitest';
import { damagedSafetensors } from '../../src/cli/commands/run.js';
import { SafetensorsError } from '../../src/runtime/io/safetensors.js';
import { cliProject, mcpcIn } from '../support/memory-io.js';

const repo = new URL('../..', import.meta.url).pathname;

const stage = (name: string, extra = '') => `stage ${name} {
  train a on d
  steps 2
  lr 1e-2
  batch 2
  micro_batch 2
  max_len 16
  checkpoint_every 1${extra}
}
`;
const pipeline = (model: string) => `pipeline tiny
model base = ${model}
data d = jsonl("d.jsonl")
adapter a = lora(r: 2, alpha: 4) at layers[*].attn.q
${stage('one')}`;

const record = (i: number) => JSON.stringify({ messages: [{ role: 'user', content: `Q${i}?` }, { role: 'assistant', content: `A${i}.` }] });

const project = (p: string, records = [0, 1, 2, 3].map(record)) => cliProject(p, records, 'mcpc-run-errors-');

const run = (dir: string, ...args: string[]) => mcpcIn(dir, ['run', ...args]);

/** A safetensors file with its header rewritten (the data left as it is). */
function rewriteHeader(file: string, edit: (h: Record<string, { shape: number[] }>) => void): void {
  const b = readFileSync(file);
  const n = Number(b.readBigUInt64LE(0));
  const h = JSON.parse(b.subarray(8, 8 + n).toString('utf8'));
  edit(h);
  let s = Buffer.from(JSON.stringify(h));
  s = Buffer.concat([s, Buffer.alloc((8 - (s.length % 8)) % 8, 0x20)]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(s.length));
  writeFileSync(file, Buffer.concat([len, s, b.subarray(8 + n)]));
}

describe('mcpc run: bad input is a message, not a stack trace', () => {
  it('a damaged model.safetensors: truncated, a wrong shape, a header length of 2^62', async () => {
    const dir = project(pipeline('hf("m")'));
    const model = join(dir, 'm');
    cpSync(join(repo, 'models/tiny-med-base'), model, { recursive: true });
    const file = join(model, 'model.safetensors');
    const good = readFileSync(file);
    const damage: [string, () => void][] = [
      ['truncated', () => writeFileSync(file, good.subarray(0, good.length >> 1))],
      ['a wrong shape', () => rewriteHeader(file, (h) => {
        const k = Object.keys(h).find((x) => x !== '__metadata__')!;
        h[k]!.shape = [h[k]!.shape.reduce((a, b) => a * b, 1) * 2];
      })],
      ['a header length of 2^62', () => {
        const b = Buffer.from(good);
        b.writeBigUInt64LE(2n ** 62n, 0);
        writeFileSync(file, b);
      }],
    ];
    for (const [what, spoil] of damage) {
      writeFileSync(file, good);
      spoil();
      const r = await run(dir, 'p.mcp', '--backend', 'cpu', '--out', `r-${what.replace(/\W+/g, '-')}`);
      expect(r.err, what).not.toMatch(/internal error|    at /);
      expect(r.code, what).toBe(1);
      expect(r.err, what).toMatch(/^mcpc run: m\/model\.safetensors: .+\nThe file is damaged or not a safetensors file: download or export it again/);
      // --save-init reads the same weights.
      const s = await run(dir, 'p.mcp', '--backend', 'cpu', '--save-init', 'init.safetensors');
      expect(s.code, what).toBe(1);
      expect(s.err, what).toMatch(/^mcpc run: m\/model\.safetensors: /);
    }
  });

  it("a damaged checkpoint's optimizer.safetensors is passed over with a warning", async () => {
    const dir = project(pipeline('builtin("qwen2-micro", layers: 1, hidden: 32, ffn: 64, heads: 2, kv_heads: 1)').replace('steps 2', 'steps 3'));
    expect((await run(dir, 'p.mcp', '--backend', 'cpu', '--stop-after', '2')).code).toBe(1);
    const ckpt = join(dir, 'out/tiny/checkpoints/step-000002');
    rewriteHeader(join(ckpt, 'optimizer.safetensors'), (h) => {
      const k = Object.keys(h).find((x) => x !== '__metadata__')!;
      h[k]!.shape = [h[k]!.shape.reduce((a, b) => a * b, 1) * 2];
    });
    // The manifest made to match, as a writer with a bug would leave it: only the contents are wrong.
    const marker = JSON.parse(readFileSync(join(ckpt, 'COMPLETE'), 'utf8'));
    for (const f of marker.files) {
      const b = readFileSync(join(ckpt, f.name));
      f.bytes = b.length;
      f.sha256 = createHash('sha256').update(b).digest('hex');
    }
    writeFileSync(join(ckpt, 'COMPLETE'), JSON.stringify(marker));
    // The runtime passes over the damaged checkpoint itself: a warning, then the one before it.
    const r = await run(dir, 'p.mcp', '--backend', 'cpu', '--resume');
    expect(r.err).not.toMatch(/internal error|    at /);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/warning: skipping checkpoint .*step-000002: optimizer\.safetensors/);
    // What the command says about a damaged safetensors file the runtime does not read as a checkpoint's.
    const e = new SafetensorsError('SIZE_MISMATCH', join(dir, 'init.safetensors'), 'shape [128] of F32 needs 512 bytes but data_offsets [0, 256] hold 256', 'm.a');
    expect(damagedSafetensors(e, (f) => relative(dir, f))).toBe(
      'init.safetensors: tensor "m.a": shape [128] of F32 needs 512 bytes but data_offsets [0, 256] hold 256\n' +
        'The file is damaged or not a safetensors file: download or export it again (an interrupted copy leaves it short).',
    );
  });

  it('integer flags out of range are usage errors', async () => {
    const dir = project(pipeline('builtin("qwen2-micro", layers: 1)'));
    for (const [flag, value, range] of [
      ['--seed', '99999999999999999999', 'from 0 to 2147483647'],
      ['--seed', '2147483648', 'from 0 to 2147483647'],
      ['--seed', '-1', 'from 0 to 2147483647'],
      ['--max-steps', '0', '1 or more'],
      ['--max-steps', '9007199254740993', '1 or more'],
      ['--max-steps', 'many', '1 or more'],
    ]) {
      const r = await run(dir, 'p.mcp', `${flag}=${value}`);
      expect(r.code, `${flag} ${value}`).toBe(2);
      expect(r.err).toBe(`mcpc run: ${flag} takes a whole number ${range} (got '${value}')\n`);
    }
  });

  it('a run folder that is a file, or under one: one line, exit 1, nothing written', async () => {
    const dir = project(pipeline('builtin("qwen2-micro", layers: 1)'));
    const r = await run(dir, 'p.mcp', '--backend', 'cpu', '--out', 'mcpc.yaml');
    expect(r).toMatchObject({ code: 1, err: 'mcpc run: cannot use mcpc.yaml as the run folder: mcpc.yaml is a file, not a folder; give --out another folder, or move the file away\n' });
    const under = await run(dir, 'p.mcp', '--backend', 'cpu', '--out', 'mcpc.yaml/run');
    expect(under.code).toBe(1);
    expect(under.err).toBe('mcpc run: cannot use mcpc.yaml/run as the run folder: cannot make the folder mcpc.yaml/run: mcpc.yaml is a file, not a folder; give --out another folder, or move the file away\n');
    expect(readFileSync(join(dir, 'mcpc.yaml'), 'utf8')).toBe('pipeline: p.mcp\nout: out\n');
  });

  it('a file where the run makes a folder is a message naming it', async () => {
    const dir = project(pipeline('builtin("qwen2-micro", layers: 1)'));
    mkdirSync(join(dir, 'out/tiny'), { recursive: true });
    writeFileSync(join(dir, 'out/tiny/checkpoints'), 'mine');
    const r = await run(dir, 'p.mcp', '--backend', 'cpu');
    expect(r.err).not.toMatch(/internal error|    at /);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/^mcpc run: .*out\/tiny\/checkpoints.*\n$/);
    expect(readFileSync(join(dir, 'out/tiny/checkpoints'), 'utf8')).toBe('mine');
  });

  it('hints at --skip-bad-records only for a bad record with the flag off', async () => {
    const p = pipeline('builtin("qwen2-micro", layers: 1)');
    const hint = '(--skip-bad-records skips and counts bad records)';
    const bad = project(p, [record(0), '{"messages": [', record(1), record(2)]);
    const r = await run(bad, 'p.mcp', '--backend', 'cpu');
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/^mcpc run: d\.jsonl:2: invalid JSON/);
    expect(r.err).toContain(hint);
    // Every record bad, the flag on: no usable records; the flag would not help.
    const allBad = project(p, ['{"messages": [', '[]']);
    const s = await run(allBad, 'p.mcp', '--backend', 'cpu', '--skip-bad-records');
    expect(s.code).toBe(1);
    expect(s.err).toMatch(/^mcpc run: d\.jsonl: no usable records \(2 bad records skipped\)\n$/);
    // An empty data file: nothing to skip.
    const empty = project(p, []);
    const e = await run(empty, 'p.mcp', '--backend', 'cpu');
    expect(e.code).toBe(1);
    expect(e.err).toMatch(/^mcpc run: d\.jsonl: no usable records/);
    expect(e.err).not.toContain(hint);
  });
});
