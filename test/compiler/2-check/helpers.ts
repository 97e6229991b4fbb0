/** Checking pipelines held in memory: an in-memory CheckHost and a one-call `checkText`. */
import { posix } from 'node:path';
import { check, type CheckResult } from '../../../src/compiler/2-check/index.js';
import type { CheckHost } from '../../../src/compiler/2-check/host.js';
import { Diagnostics, sortDiagnostics, type Diagnostic } from '../../../src/compiler/diagnostics/diagnostic.js';

export const ROOT = '/project';

/**
 * A host over `files` (project-relative path -> text). Every path under `data/` exists, so pipelines can
 * name data files without creating them; other paths exist only when they are in `files`.
 */
export function memoryHost(files: Record<string, string> = {}): CheckHost {
  const rel = (abs: string) => posix.relative(ROOT, abs);
  return {
    root: ROOT,
    cwd: ROOT,
    allowOutsideRoot: false,
    readFile: (abs) => (rel(abs) in files ? { text: files[rel(abs)] } : { error: 'ENOENT' }),
    exists: (abs) => rel(abs) in files || rel(abs).startsWith('data/'),
  };
}

export interface Checked extends CheckResult {
  diagnostics: Diagnostic[];
  codes: string[];
}

/** Check `text` as `/project/<name>`; `files` are other files the pipeline may extend or read. */
export function checkText(text: string, files: Record<string, string> = {}, name = 'p.mcp'): Checked {
  const diags = new Diagnostics();
  const res = check(posix.join(ROOT, name), text, memoryHost({ ...files, [name]: text }), diags);
  const diagnostics = sortDiagnostics(diags.items);
  return { ...res, diagnostics, codes: diagnostics.map((d) => d.code) };
}

/** A pipeline around `body`, with model `base` (qwen2-micro unless `model` says otherwise) and data `d`. */
export function pipeline(body: string, model = 'builtin("qwen2-micro")'): string {
  return `pipeline t\nmodel base = ${model}\ndata d = jsonl("data/a.jsonl")\n${body}\n`;
}
