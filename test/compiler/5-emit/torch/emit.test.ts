/**
 * The torch emitter and `mcpc compile --target torch` without Python: what the folder holds, that
 * model.py has one line per plan step split per layer, that every repository pipeline emits, and the
 * usage errors.
 */
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { main } from '../../../../src/cli/main.js';
import { compileFile, nodeHost } from '../../../../src/compiler/index.js';
import { emitTorch, py, TorchEmitError } from '../../../../src/compiler/5-emit/torch/index.js';
import { memoryIO } from '../../../support/memory-io.js';
import { repoRoot, validPipelines } from '../../../support/pipelines.js';

const compile = (file: string, optLevel: 0 | 1, root = repoRoot) => {
  const r = compileFile(file, nodeHost(root, root), {}, { optLevel });
  if (!r.plan) throw new Error(r.diagnostics.map((d) => d.message).join('\n'));
  return r.plan;
};

describe('emitTorch', () => {
  it('emits every repository pipeline, one line of model.py per plan step, a block per layer', () => {
    for (const file of validPipelines().filter((f) => f.startsWith('pipelines/'))) {
      const plan = compile(file, 0);
      const { files, stages } = emitTorch(plan, { projectRoot: '../..' });
      expect([...files.keys()].sort()).toEqual(['data.py', 'model.py', 'ops.py', 'pipeline.py', 'plan.json', 'train.py', 'weights.py']);
      const model = files.get('model.py')!;
      for (const s of plan.stages) {
        for (const step of s.forward) expect(model, `${file} ${s.name} ${step.node}`).toMatch(new RegExp(`= ${step.op}\\(.*# ${step.node}\\b`));
        expect(stages.find((x) => x.name === s.name)!.blocks).toBe(plan.model.config.layers + 2);
      }
      expect(files.get('pipeline.py')).toContain('PROJECT_ROOT = "../.."');
    }
  });

  it('takes the recompute decision from the memory plan', () => {
    const plan = compile('pipelines/medcare.mcp', 0);
    const planned = compile('pipelines/medcare.mcp', 1);
    planned.stages[0]!.memory.recompute = true;
    const r = emitTorch(plan, { projectRoot: '.', memoryPlan: planned });
    expect(r.stages.map((s) => s.recompute)).toEqual([true, false]);
    expect(r.files.get('pipeline.py')).toMatch(/"recompute": True/);
  });

  it('refuses an optimized plan (it reads the unfused step list)', () => {
    expect(() => emitTorch(compile('pipelines/medcare.mcp', 1), { projectRoot: '.' })).toThrow(TorchEmitError);
  });

  it('writes Python literals', () => {
    expect(py({ a: [1, 0.000001, true, null], 'b-c': 'x"y' })).toBe('{"a": [1, 0.000001, True, None], "b-c": "x\\"y"}');
  });
});

describe('mcpc compile --target torch', () => {
  it('writes the program into the -o folder', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'mcpc-torch-cli-'));
    writeFileSync(join(dir, 'd.jsonl'), '{"messages":[{"role":"user","content":"Q?"},{"role":"assistant","content":"A."}]}\n');
    writeFileSync(join(dir, 'p.mcp'), 'pipeline t\nmodel base = builtin("qwen2-micro", layers: 1)\ndata d = jsonl("d.jsonl")\nadapter a = lora(r: 2, alpha: 4) at layers[*].attn.{q, v}\nstage s {\n  train a on d\n  steps 1\n}\n');
    const io = memoryIO(dir);
    expect(await main(['compile', 'p.mcp', '--target', 'torch', '-o', 'gen'], io)).toBe(0);
    expect(io.out).toMatch(/compiled t -> gen\/train\.py \(PyTorch/);
    for (const f of ['train.py', 'model.py', 'pipeline.py', 'ops.py', 'data.py', 'weights.py', 'plan.json']) expect(existsSync(join(dir, 'gen', f)), f).toBe(true);
    expect(readFileSync(join(dir, 'gen', 'pipeline.py'), 'utf8')).toContain('PROJECT_ROOT = ".."');
  });

  it('says what is wrong with the options', async () => {
    const io = memoryIO(repoRoot);
    expect(await main(['compile', '--target', 'jax'], io)).toBe(2);
    expect(io.err).toMatch(/--target must be plan or torch, not 'jax'/);
    const io2 = memoryIO(repoRoot);
    expect(await main(['compile', '--target', 'torch', '--emit', 'ts'], io2)).toBe(2);
    expect(io2.err).toMatch(/--emit, --plan-module and --format go with the plan target/);
  });
});
