/**
 * The torch emitter and `mcpc compile --target torch` without Python: what the folder holds, that
 * model.py has one line per plan step split per layer, that every repository pipeline emits, and the
 * usage errors.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { main } from '../../../../src/cli/main.js';
import { compileFile, nodeHost } from '../../../../src/compiler/index.js';
import { emitTorch, py, pyString, TorchEmitError } from '../../../../src/compiler/5-emit/torch/index.js';
import { byteTokenizerFileTexts } from '../../../../src/plan/byte-tokenizer.js';
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
    expect(pyString('a"\\\n\u0000\u0003\u007f\u00e9\u2028\u{1f600}')).toBe('"a\\"\\\\\\n\\x00\\x03\\x7f\\xe9\\u2028\\U0001f600"');
  });

  it("carries a byte-tokenizer model's Hugging Face tokenizer files in pipeline.py, the TypeScript runtime's text", () => {
    const dir = mkdtempSync(join(tmpdir(), 'mcpc-torch-bytes-'));
    writeFileSync(join(dir, 'd.jsonl'), '{"messages":[{"role":"user","content":"Q?"},{"role":"assistant","content":"A."}]}\n');
    writeFileSync(join(dir, 'p.mcp'), 'pipeline t\nmodel base = builtin("qwen2-micro", layers: 1)\ndata d = jsonl("d.jsonl")\nadapter a = lora(r: 2, alpha: 4) at layers[*].attn.{q, v}\nstage s {\n  train a on d\n  steps 1\n}\n');
    const plan = compile(join(dir, 'p.mcp'), 0, dir);
    expect(plan.model.tokenizer.kind).toBe('bytes');
    const pipeline = emitTorch(plan, { projectRoot: '.' }).files.get('pipeline.py')!;
    const texts = byteTokenizerFileTexts(plan.model.config);
    expect(Object.keys(texts)).toEqual(['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json']);
    expect(pipeline).toMatch(/^TOKENIZER_FILES = \{\n {4}"tokenizer\.json": \(\n/m);
    expect(pipeline).toContain('"tokenizerFiles": TOKENIZER_FILES}');
    // pipeline.py is printable ASCII (control bytes and non-ASCII characters escaped).
    expect(pipeline).toMatch(/^[\x20-\x7e\n]*$/);
    // Each text, read back from its Python literal lines, is exactly the runtime's (JSON, 2 spaces, final newline).
    for (const [name, text] of Object.entries(texts)) {
      expect(text.endsWith('}\n') && text.startsWith('{\n  "'), name).toBe(true);
      const start = pipeline.indexOf(`    ${pyString(name)}: (\n`);
      expect(start, name).toBeGreaterThan(0);
      const body = pipeline.slice(pipeline.indexOf('\n', start) + 1, pipeline.indexOf('\n    ),', start));
      const lines = body.split('\n').map((l) => JSON.parse(l.trim().replace(/\\x([0-9a-f]{2})/g, '\\u00$1')) as string);
      expect(lines.join(''), name).toBe(text);
    }
    // The file names the text decodes to as Python does, where a Python is at hand.
    const r = spawnSync('python3', ['-c', 'import sys, json; ns = {}; exec(sys.stdin.read(), ns); print(json.dumps(ns["TOKENIZER_FILES"]))'], { input: pipeline, encoding: 'utf8' });
    if (!r.error) {
      expect(r.status, r.stderr).toBe(0);
      expect(JSON.parse(r.stdout)).toEqual(texts);
    }
  });

  it('carries no tokenizer files for other tokenizers (an hf tokenizer\'s are copied at export)', () => {
    const plan = compile('pipelines/medcare.mcp', 0);
    expect(plan.model.tokenizer.kind).toBe('hf');
    const pipeline = emitTorch(plan, { projectRoot: '.' }).files.get('pipeline.py')!;
    expect(pipeline).toMatch(/^TOKENIZER_FILES = \{\}$/m);
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
