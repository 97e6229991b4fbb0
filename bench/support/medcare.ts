/**
 * What the training-step benchmarks share: the MedCare pipeline compiled on the demo base's shape with random
 * weights (speed does not depend on them), in a scratch project that sees the repository's data, and
 * synthetic micro-batches the size of a MedCare stage-1 micro-batch.
 */
import { existsSync, mkdirSync, mkdtempSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { compileFile, nodeHost } from '../../src/compiler/index.js';
import type { Pass } from '../../src/compiler/4-optimize/pass.js';
import type { Plan } from '../../src/plan/types.js';
import type { MicroBatch } from '../../src/runtime/data/batch.js';

/**
 * The repository: the working directory when it holds the pipelines (as when `.gpu/run.sh` runs the bundle
 * of bench/gpu.ts, where import.meta.url is the bundle's), else the folder above bench/.
 */
export const ROOT = existsSync(join(process.cwd(), 'pipelines/medcare.mcp')) ? process.cwd() : resolve(fileURLToPath(new URL('../..', import.meta.url)));

/** pipelines/medcare.mcp with the model of pipelines/pretrain.mcp (random init), compiled at `optLevel`. */
export function medcarePlan(optLevel: 0 | 1 = 1, root = ROOT, passes?: Pass[]): { plan: Plan; dir: string } {
  const dir = mkdtempSync(join(tmpdir(), 'mcpc-bench-'));
  mkdirSync(join(dir, 'pipelines'));
  symlinkSync(join(root, 'data'), join(dir, 'data'));
  const model = /model base = (builtin\([^)]*\))/.exec(readFileSync(join(root, 'pipelines/pretrain.mcp'), 'utf8'))![1]!;
  writeFileSync(join(dir, 'pipelines/medcare.mcp'), readFileSync(join(root, 'pipelines/medcare.mcp'), 'utf8').replace(/model base = hf\("[^"]*"\)/, `model base = ${model}`));
  const res = compileFile('pipelines/medcare.mcp', nodeHost(dir, dir), {}, { optLevel, ...(passes ? { passes } : {}) });
  if (!res.plan) throw new Error(res.diagnostics.map((d) => d.message).join('; '));
  return { plan: res.plan, dir };
}

/** A micro-batch of `rows` byte sequences of `seqLen` (printable bytes; loss on the second half of each row). */
export function syntheticBatch(rows: number, seqLen: number, seed: number): MicroBatch {
  let x = seed;
  const rnd = () => (x = (Math.imul(x, 1103515245) + 12345) >>> 0) / 2 ** 32;
  const T = rows * seqLen;
  const tokens = Int32Array.from({ length: T }, () => 32 + Math.floor(rnd() * 90));
  const labels = Int32Array.from({ length: T }, () => 32 + Math.floor(rnd() * 90));
  const mask = Float32Array.from({ length: T }, (_, i) => (i % seqLen > seqLen / 2 ? 1 : 0));
  const positions = Int32Array.from({ length: T }, (_, i) => i % seqLen);
  const segments = new Int32Array(T).fill(1);
  return { rows, seqLen, tokens, labels, mask, positions, segments, packed: false, examples: [], lossTokens: mask.reduce((a, b) => a + b, 0) };
}
