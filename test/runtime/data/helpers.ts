import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Writes `content` to a fresh temp folder and returns the file's path. */
export function tempFile(name: string, content: string | Uint8Array): string {
  const dir = mkdtempSync(join(tmpdir(), 'mcpc-data-'));
  const path = join(dir, name);
  writeFileSync(path, content);
  return path;
}

export const line = (user: string, assistant: string, extra: object = {}) =>
  JSON.stringify({ ...extra, messages: [{ role: 'user', content: user }, { role: 'assistant', content: assistant }] });

export const MEDCARE = ['stage1', 'stage2', 'stage3', 'eval_knowledge', 'eval_alignment'].map((f) => `data/medcare/${f}.jsonl`);
