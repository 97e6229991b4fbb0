import { describe, expect, it } from 'vitest';
import { passes } from '../../../src/compiler/4-optimize/index.js';
import { compileFile, nodeHost } from '../../../src/compiler/index.js';
import { verifyIR } from '../../../src/compiler/ir/verify.js';
import { base, compile, P, root } from './helpers.js';
import { validPipelines } from '../../support/pipelines.js';

const mine = ['fold-frozen-lora', 'fold-trainable-lora', 'batch-experts', 'route-expert-down', 'concat-base-adapter', 'concat-shared-input', 'batch-orthogonality'];

const pipelines = (): string[] => validPipelines(root);

describe('fold / batch / concat passes in the pass list', () => {
  it('come right after eliminate-dead-adapters, in this order', () => {
    const names = passes.map((p) => p.name);
    const i = names.indexOf('eliminate-dead-adapters');
    expect(names.slice(i + 1, i + 1 + mine.length)).toEqual(mine);
    for (const p of passes.filter((x) => mine.includes(x.name))) expect(p.required).toBeFalsy();
  });

  it('-O0 runs none of them', () => {
    const c = compile('pipelines/medcare.mcp', passes, { optLevel: 0 });
    const reports = c.plan.compiler.passes.filter((p) => mine.includes(p.name));
    expect(reports.map((p) => [p.name, p.ran, p.changes])).toEqual(mine.map((n) => [n, false, 0]));
    const ops = new Set(c.ir.stages.flatMap((s) => s.graph.nodes.map((n) => n.op)));
    for (const op of ['moe_down_batched', 'moe_down_routed', 'moe_up_grouped', 'concat_linear', 'ortho_penalty_batched'] as const) expect(ops.has(op)).toBe(false);
    expect(c.ir.stages.flatMap((s) => s.entry)).toEqual([]);
    expect(c.stage('align').plan.adapters.folded).toEqual([]);
  });

  const files = pipelines();
  it('finds the pipelines', () => expect(files.length).toBeGreaterThanOrEqual(10));

  it.each(files)('%s: the IR verifies after each of them', (file) => {
    const seen: string[] = [];
    const res = compileFile(file, nodeHost(root, root), {}, {
      optLevel: 1,
      verify: true,
      passes,
      onPass: (name, ir) => {
        seen.push(name);
        verifyIR(ir, name, { expanded: true });
      },
    });
    expect(res.plan, res.diagnostics.map((d) => d.message).join('\n')).toBeDefined();
    for (const n of mine) expect(seen).toContain(n);
  });

  it('the verifier lets only constraint terms read a folded tensor', () => {
    const c = compile('pipelines/medcare.mcp', [...base, P.foldFrozenLora]);
    expect(() => verifyIR(c.ir, 'fold-frozen-lora', { expanded: true })).not.toThrow();
    const st = c.stage('align').ir;
    const linear = st.graph.nodes.find((n) => n.op === 'linear' && n.site === 'layers[0].mlp.gate')!;
    linear.inputs.push('knowledge.layers[0].mlp.gate.B');
    st.graph.values.set('knowledge.layers[0].mlp.gate.B', { id: 'knowledge.layers[0].mlp.gate.B', shape: [352, 32], dtype: 'f32', kind: 'param' });
    expect(() => verifyIR(c.ir, 'some-pass', { expanded: true })).toThrow(/after some-pass \(stage align, node n\d+\): reads knowledge\.layers\[0\]\.mlp\.gate\.B, which is folded/);
  });
});
