/** Reading a `mcpc run` folder in tests (layout: README "Training", src/runtime/run.ts). */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

/** The parameters file of a stage's stage-end checkpoint. */
export function stageParams(runDir: string, stage: string): Buffer {
  const rec = JSON.parse(readFileSync(join(runDir, 'stages', `${stage}.json`), 'utf8')) as { checkpoint: number };
  return readFileSync(join(runDir, 'checkpoints', `step-${String(rec.checkpoint).padStart(6, '0')}`, 'params.safetensors'));
}
