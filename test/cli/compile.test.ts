/**
 * `mcpc compile` and `--target torch` where the output cannot go: a file named as the folder, a folder where a
 * file goes; and the torch folder's files that mcpc did not write. One line naming the path and what to do,
 * exit 1, nothing written and nothing left behind.
 */
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { main } from '../../src/cli/main.js';
import { mcpcIn } from '../support/memory-io.js';

const PIPELINE = 'pipeline t\nmodel base = builtin("qwen2-micro", layers: 1)\ndata d = jsonl("d.jsonl")\nadapter a = lora(r: 2, alpha: 4) at layers[*].attn.{q, v}\nstage s {\n  train a on d\n  steps 1\n}\n';

function project(): string {
  const dir = mkdtempSync(join(tmpdir(), 'mcpc-compile-'));
  writeFileSync(join(dir, 'mcpc.yaml'), 'pipeline: p.mcp\nout: out\n');
  writeFileSync(join(dir, 'p.mcp'), PIPELINE);
  writeFileSync(join(dir, 'd.jsonl'), '{"messages":[{"role":"user","content":"Q?"},{"role":"assistant","content":"A."}]}\n');
  writeFileSync(join(dir, 'notes.md'), 'mine\n');
  return dir;
}

const compile = (dir: string, ...args: string[]) => mcpcIn(dir, ['compile', ...args]);

describe('mcpc compile: where the output cannot go', () => {
  it('-o naming a file, or a folder under a file', async () => {
    const dir = project();
    for (const target of [[], ['--target', 'torch']]) {
      expect(await compile(dir, ...target, '-o', 'notes.md')).toEqual({ code: 1, out: '', err: 'mcpc compile: notes.md is a file, not a folder: move it away, or give -o another folder\n' });
      const under = await compile(dir, ...target, '-o', 'notes.md/plans');
      expect(under).toEqual({ code: 1, out: '', err: 'mcpc compile: cannot make the folder notes.md/plans: notes.md is a file, not a folder: move it away, or give -o another folder\n' });
    }
    expect(readFileSync(join(dir, 'notes.md'), 'utf8')).toBe('mine\n');
  });

  it('a folder where the plan goes: nothing written, no temporary file left', async () => {
    const dir = project();
    mkdirSync(join(dir, 'out/t.plan.json'), { recursive: true });
    const r = await compile(dir);
    expect(r).toEqual({ code: 1, out: '', err: 'mcpc compile: out/t.plan.json is a folder, where a file is to be written: move it away, or give -o another folder (or change `out` in mcpc.yaml)\n' });
    expect(readdirSync(join(dir, 'out'))).toEqual(['t.plan.json']);
    // The --emit ts module is checked before the plan is written.
    mkdirSync(join(dir, 'gen/t.plan.ts'), { recursive: true });
    const ts = await compile(dir, '-o', 'gen', '--emit', 'ts');
    expect(ts.code).toBe(1);
    expect(ts.err).toBe('mcpc compile: gen/t.plan.ts is a folder, where a file is to be written: move it away, or give -o another folder\n');
    expect(readdirSync(join(dir, 'gen'))).toEqual(['t.plan.ts']);
  });

  it('a temporary file in the way is named, and the plan is left as it was', async () => {
    const dir = project();
    expect((await compile(dir)).code).toBe(0);
    const plan = readFileSync(join(dir, 'out/t.plan.json'), 'utf8');
    mkdirSync(join(dir, `out/t.plan.json.${process.pid}.tmp`));
    const r = await compile(dir);
    expect(r.code).toBe(1);
    expect(r.err).toBe(`mcpc compile: cannot open out/t.plan.json.${process.pid}.tmp: EEXIST (a file of that name is in the way: move it away)\n`);
    expect(readFileSync(join(dir, 'out/t.plan.json'), 'utf8')).toBe(plan);
  });

  it('--target torch: a folder where a file goes', async () => {
    const dir = project();
    mkdirSync(join(dir, 'gen/model.py'), { recursive: true });
    const r = await compile(dir, '--target', 'torch', '-o', 'gen');
    expect(r).toEqual({ code: 1, out: '', err: 'mcpc compile: gen/model.py is a folder, where a file is to be written: move it away, or give -o another folder\n' });
    expect(readdirSync(join(dir, 'gen'))).toEqual(['model.py']);
  });

  it('--target torch replaces the files it wrote, and refuses others unless --force', async () => {
    const dir = project();
    expect((await compile(dir, '--target', 'torch', '-o', 'gen')).code).toBe(0);
    expect(existsSync(join(dir, 'gen/.mcpc-generated.json'))).toBe(true);
    // Its own files, changed by a different pipeline: replaced.
    writeFileSync(join(dir, 'p.mcp'), PIPELINE.replace('steps 1', 'steps 2'));
    expect((await compile(dir, '--target', 'torch', '-o', 'gen')).code).toBe(0);
    expect(readFileSync(join(dir, 'gen/plan.json'), 'utf8')).toMatch(/"steps": 2/);
    // A file edited since, and one mcpc never wrote: refused, nothing written.
    const edited = readFileSync(join(dir, 'gen/train.py'), 'utf8') + '# my change\n';
    writeFileSync(join(dir, 'gen/train.py'), edited);
    const other = mkdtempSync(join(tmpdir(), 'mcpc-compile-'));
    writeFileSync(join(other, 'ops.py'), 'def mine(): pass\n');
    const before = readFileSync(join(dir, 'gen/plan.json'), 'utf8');
    writeFileSync(join(dir, 'p.mcp'), PIPELINE.replace('steps 1', 'steps 3'));
    const r = await compile(dir, '--target', 'torch', '-o', 'gen');
    expect(r).toEqual({ code: 1, out: '', err: 'mcpc compile: gen already holds train.py, which mcpc did not write (or which was edited since); nothing was written: give -o another folder, or add --force to replace it\n' });
    expect(readFileSync(join(dir, 'gen/plan.json'), 'utf8')).toBe(before);
    expect(readFileSync(join(dir, 'gen/train.py'), 'utf8')).toBe(edited);
    const o = await compile(dir, 'p.mcp', '--target', 'torch', '-o', other);
    expect(o.code).toBe(1);
    expect(o.err).toMatch(/already holds ops\.py, which mcpc did not write/);
    expect(readFileSync(join(other, 'ops.py'), 'utf8')).toBe('def mine(): pass\n');
    // --force replaces them.
    expect((await compile(dir, '--target', 'torch', '-o', 'gen', '--force')).code).toBe(0);
    expect(readFileSync(join(dir, 'gen/train.py'), 'utf8')).not.toContain('# my change');
    expect(readdirSync(join(dir, 'gen')).filter((f) => f.startsWith('.staging'))).toEqual([]);
    // --force is only for the torch target.
    expect((await compile(dir, '--force')).code).toBe(2);
  });
});

describe('mcpc compile --target torch', () => {
  it('warns of LoRA dropout and router noise, which the PyTorch program does not apply; the program says so too', async () => {
    const dir = project();
    writeFileSync(join(dir, 'p.mcp'), PIPELINE.replace('lora(r: 2, alpha: 4)', 'lora(r: 2, alpha: 4, dropout: 0.1)').replace('stage s', 'adapter m = moe_lora(experts: 2, top_k: 1, r: 2, router_noise: 0.5) at layers[*].mlp.up\nstage s').replace('train a on d', 'train a, m on d'));
    const r = await compile(dir, '--target', 'torch', '-o', 'torch');
    expect(r.code).toBe(0);
    expect(r.err).toBe(
      'warning: adapter a has dropout 0.1, which the PyTorch program does not apply (mcpc run does): the two engines train it differently\n' +
        'warning: adapter m has router_noise 0.5, which the PyTorch program does not apply (mcpc run does): the two engines train it differently\n',
    );
    expect(readFileSync(join(dir, 'torch', 'train.py'), 'utf8')).toMatch(/def unapplied_randomness\(\):/);
    // Without either, nothing is said.
    writeFileSync(join(dir, 'p.mcp'), PIPELINE);
    expect((await compile(dir, '--target', 'torch', '-o', 'torch2')).err).toBe('');
  });
});

