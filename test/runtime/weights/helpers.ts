/** Shared helpers of the weights tests: inline pipelines compiled in a temp project, random tensors. */
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { compileFile, nodeHost } from '../../../src/compiler/index.js';
import type { Plan } from '../../../src/plan/types.js';
import { initParameter } from '../../../src/runtime/weights/init.js';

/** A fresh temp folder. */
export function tempDir(prefix = 'mcpc-weights-'): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

const DATA = `${JSON.stringify({ messages: [{ role: 'user', content: 'hi' }, { role: 'assistant', content: 'hello' }] })}\n`;

/**
 * Compiles pipeline `source` as `root/<name>.mcp` in the project `root` (a fresh temp folder by default), with
 * `d.jsonl` and `files` written first. Throws with the diagnostics when it does not compile.
 */
export function compileInline(source: string, options: { root?: string; name?: string; files?: Record<string, string> } = {}): { plan: Plan; root: string } {
  const root = options.root ?? tempDir();
  writeFileSync(join(root, 'd.jsonl'), DATA);
  for (const [f, text] of Object.entries(options.files ?? {})) {
    mkdirSync(dirname(join(root, f)), { recursive: true });
    writeFileSync(join(root, f), text);
  }
  const file = join(root, `${options.name ?? 't'}.mcp`);
  writeFileSync(file, source);
  const res = compileFile(file, nodeHost(root, root), {}, { optLevel: 1 });
  if (!res.plan) throw new Error(`pipeline does not compile:\n${res.diagnostics.map((d) => `${d.code}: ${d.message}`).join('\n')}`);
  return { plan: res.plan, root };
}

/** A single-stage pipeline on `model` training `adapters` (declaration lines), exporting `exports`. */
export function pipeline(model: string, adapters: string[], exports: string[] = [], train?: string): string {
  const names = train ?? adapters.map((a) => /^adapter (\w+)/.exec(a)![1]).join(', ');
  return [`pipeline t`, `model base = ${model}`, `data d = jsonl("d.jsonl")`, ...adapters, `stage s {`, `  train ${names} on d`, `}`, ...exports, ''].join('\n');
}

/** Deterministic pseudo-random values (normal, std) for parameter-shaped tensors: the tests' "trained" weights. */
export function randomValues(id: string, n: number, std = 0.05, seed = 12345): Float32Array {
  return initParameter({ id: `test:${id}`, shape: [n], init: { kind: 'normal', std } }, seed)!;
}

/** Every parameter of the plan with values: random base weights (norms near 1) and random adapters (B nonzero). */
export function randomParameters(plan: Plan, seed = 1): Map<string, Float32Array> {
  const m = new Map<string, Float32Array>();
  for (const p of plan.parameters) {
    const n = p.shape.reduce((a, b) => a * b, 1);
    const v = randomValues(p.id, n, p.role === 'norm' ? 0.1 : 0.05, seed);
    if (p.role === 'norm') for (let i = 0; i < n; i++) v[i] = v[i]! + 1;
    m.set(p.id, v);
  }
  return m;
}

/** The qwen2-micro shape as a plan model config, with overrides. */
export function microConfig(over: Partial<import('../../../src/plan/types.js').PlanModelConfig> = {}): import('../../../src/plan/types.js').PlanModelConfig {
  return { arch: 'qwen2', vocab: 256, hidden: 64, layers: 2, heads: 4, kvHeads: 2, headDim: 16, ffn: 176, tied: true, qkvBias: true, ropeTheta: 10000, rmsEps: 1e-6, maxPositions: 1024, ...over };
}
