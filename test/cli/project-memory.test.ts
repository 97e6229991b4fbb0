/** mcpc.yaml `memory:`: a project-wide memory budget for stages that set none, validated strictly. */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { main } from '../../src/cli/main.js';
import { loadProject } from '../../src/cli/project.js';
import { Diagnostics } from '../../src/compiler/diagnostics/diagnostic.js';
import { memoryIO } from '../support/memory-io.js';

function project(yaml: string, files: Record<string, string> = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'mcpc-mem-proj-'));
  writeFileSync(join(dir, 'mcpc.yaml'), yaml);
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text);
  const diags = new Diagnostics();
  const cfg = loadProject(dir, diags);
  return { dir, cfg, diags: diags.items.map((d) => `${d.code} ${d.span.start.line}:${d.span.start.column} ${d.message}${d.hint ? ` (${d.hint})` : ''}`) };
}

const pipeline = `pipeline p
model base = builtin("qwen2-micro")
data d = jsonl("d.jsonl")
adapter a = lora(r: 4, alpha: 8) at layers[*].attn.{q, v}
stage s {
  train a on d
  batch 8
  micro_batch 8
  max_len 64
}
`;

describe('mcpc.yaml memory', () => {
  it('reads sizes written like the language', () => {
    expect(project('memory: 8GB\n').cfg.memory).toBe(8e9);
    expect(project('memory: 512MiB\n').cfg.memory).toBe(512 * 2 ** 20);
    expect(project('memory: 1.5GiB\n').cfg.memory).toBe(1.5 * 2 ** 30);
    expect(project('out: o\n').cfg.memory).toBeUndefined();
  });

  it('rejects what is not a positive size', () => {
    expect(project('memory: 8\n').diags).toEqual(['project_file_invalid 1:9 `memory` must be a size such as 8GB or 512MiB (give the unit: `memory: 8GB`)']);
    const units = ' (a number and a unit, KB, MB, GB or TB (or KiB, MiB, GiB, TiB), e.g. `memory: 8GB`)';
    expect(project('memory: lots\n').diags).toEqual([`project_file_invalid 1:9 \`memory\` must be a size such as 8GB or 512MiB${units}`]);
    expect(project('memory: 0GB\n').diags).toEqual(['project_file_invalid 1:9 `memory` must be a size such as 8GB or 512MiB (give a size above zero, e.g. `memory: 8GB`)']);
    expect(project('memory: [8GB]\n').diags).toEqual([`project_file_invalid 1:9 \`memory\` must be a size such as 8GB or 512MiB${units}`]);
    expect(project('memroy: 8GB\n').diags).toEqual(['project_file_invalid 1:1 unknown key `memroy` (did you mean `memory`?)']);
  });

  it('reaches the memory planner through mcpc explain', async () => {
    const files = { 'p.mcp': pipeline, 'd.jsonl': '{"prompt": "q", "response": "a"}\n' };
    const run = async (yaml: string) => {
      const { dir } = project(yaml, files);
      const io = memoryIO(dir);
      const code = await main(['explain', 'p.mcp', '--format', 'json'], io);
      expect(code).toBe(0);
      expect(io.err === '' || io.err.startsWith('warning[memory_budget_exceeded]')).toBe(true);
      return JSON.parse(io.out) as { passes: { name: string; notes: string[] }[] };
    };
    const notes = (x: Awaited<ReturnType<typeof run>>) => x.passes.find((p) => p.name === 'plan-memory')!.notes.join('\n');
    expect(notes(await run('out: o\n'))).not.toContain('budget');
    expect(notes(await run('memory: 100KB\n'))).toContain('s: does not fit the budget of 97.7 KiB');
    expect(notes(await run('memory: 1GB\n'))).toContain('s: budget 953.7 MiB: micro_batch 8 is the largest divisor of batch 8 that fits');
  });

  it('mcpc lint warns memory_budget_exceeded at the stage name when the project budget cannot be met', async () => {
    const files = { 'p.mcp': pipeline, 'd.jsonl': '{"prompt": "q", "response": "a"}\n' };
    const lint = async (yaml: string) => {
      const { dir } = project(yaml, files);
      const io = memoryIO(dir);
      const code = await main(['lint', 'p.mcp', '--format', 'json'], io);
      return { code, items: JSON.parse(io.out) as { code: string; severity: string; line: number; column: number; message: string }[] };
    };
    const over = await lint('memory: 100KB\n');
    expect(over.items).toMatchObject([{ code: 'memory_budget_exceeded', severity: 'warning', line: 5, column: 7 }]);
    expect(over.items[0].message).toMatch(/^stage `s` needs about .* more than the memory budget of 97.7 KiB set in mcpc.yaml, even with micro_batch 1 and activation recompute$/);
    expect(over.code).toBe(0);
    expect(await lint('memory: 1GB\n')).toEqual({ code: 0, items: [] });
    // The rule's level is configurable like every lint rule.
    expect((await lint('memory: 100KB\nlint:\n  rules:\n    memory_budget_exceeded: error\n')).code).toBe(1);
    expect((await lint('memory: 100KB\nlint:\n  rules:\n    memory_budget_exceeded: off\n')).items).toEqual([]);
  });
});
