import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { compileFile, nodeHost } from '../../../src/compiler/index.js';
import { liveAdapters, mergedIntoBase } from '../../../src/runtime/weights/export.js';
import { adapterEndState } from '../../../src/runtime/weights/peft.js';

/** The last stage's then-block decides what exists at the end: exports must see its drops and merges. */
describe('adapter end state', () => {
  it('applies the last stage\'s exit transitions', () => {
    const dir = mkdtempSync(join(tmpdir(), 'mcpc-end-'));
    writeFileSync(join(dir, 'mcpc.yaml'), '');
    writeFileSync(join(dir, 'd.txt'), 'some text\n');
    writeFileSync(
      join(dir, 'p.mcp'),
      [
        'pipeline p',
        'model base = builtin("qwen2-micro")',
        'data d = text("d.txt")',
        'adapter a = lora(r: 4) at layers[*].attn.q',
        'adapter b = lora(r: 4) at layers[*].attn.v',
        'adapter c = lora(r: 4) at layers[*].mlp.up',
        'stage s {',
        '  train a, b, c on d',
        '  then {',
        '    drop a',
        '    merge b into base',
        '    freeze c',
        '  }',
        '}',
        'export merged "out/m"',
      ].join('\n') + '\n',
    );
    const res = compileFile('p.mcp', nodeHost(dir, dir), {}, { optLevel: 1 });
    expect(res.diagnostics.filter((d) => d.severity === 'error')).toEqual([]);
    const plan = res.plan!;
    expect(adapterEndState(plan, 'a').lowRank).toBe('dropped');
    expect(adapterEndState(plan, 'b').lowRank).toBe('merged');
    expect(adapterEndState(plan, 'c').lowRank).toBe('frozen');
    expect(mergedIntoBase(plan)).toEqual(['b']);
    expect(liveAdapters(plan)).toEqual(['c']);
  });
});
