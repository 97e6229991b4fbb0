/**
 * Orthogonality constraints: which sites they cover and the rank arithmetic. qwen2-micro has hidden 64
 * and ffn 176, so the A matrices at attn.q and mlp.{gate, up} have 64 columns and at mlp.down 176.
 */
import { describe, expect, it } from 'vitest';
import { checkText, pipeline } from './helpers.js';

/** Stage 1 trains and freezes `decls`' adapters (except `align`), stage 2 trains `align` under `constraint`. */
function constrained(decls: string, constraint: string) {
  const names = [...decls.matchAll(/adapter (\w+)/g)].map((m) => m[1]).filter((n) => n !== 'align');
  const r = checkText(
    pipeline(`${decls}\nstage one {\n  train ${names.join(', ')} on d\n  then { freeze ${names.join(', ')} }\n}\nstage two {\n  train align on d\n  constrain ${constraint}\n}`),
  );
  return { r, constraint: r.pipeline?.stages[1].constraints[0], adapters: r.pipeline?.adapters };
}

describe('orthogonality constraints', () => {
  it('a moe_lora spans r * (experts + shared) rows; a lora r * experts', () => {
    const { r, adapters } = constrained(
      'adapter knowledge = lora(r: 8, experts: 2) at layers[*].mlp.gate\nadapter noise = moe_lora(experts: 4, shared: 2, top_k: 2, r: 8) at layers[*].mlp.gate\nadapter align = lora(r: 4) at layers[*].mlp.gate',
      'orthogonal(align.A, noise.A)',
    );
    expect(r.codes).toEqual([]);
    expect(Object.fromEntries(adapters!.map((a) => [a.name, a.rank]))).toEqual({ knowledge: 16, noise: 48, align: 4 });
  });

  it('ranks summing exactly to the input dimension are fine', () => {
    // align 16 + noise 8 * (4 + 2) = 64 = hidden
    const { r, constraint } = constrained(
      'adapter noise = moe_lora(experts: 4, shared: 2, r: 8) at layers[*].mlp.{gate, up}\nadapter align = lora(r: 16) at layers[*].mlp.{gate, up}',
      'orthogonal(align.A, noise.A)',
    );
    expect(r.codes).toEqual([]);
    expect(constraint).toMatchObject({ target: 'align', others: ['noise'], matrix: 'A', weight: 1, norm: 'l1' });
    expect(constraint!.sites).toHaveLength(4);
  });

  it('one more row than the dimension is reported, with the sum spelt out', () => {
    const { r } = constrained(
      'adapter noise = moe_lora(experts: 4, shared: 2, r: 8) at layers[*].mlp.{gate, up}\nadapter align = lora(r: 17) at layers[*].mlp.{gate, up}',
      'orthogonal(align.A, noise.A)',
    );
    expect(r.diagnostics.map((d) => [d.code, d.message])).toEqual([
      ['orthogonal_rank_exceeds_dim', 'at `layers[0].mlp.gate` the ranks add up to 65 (align 17 + noise 48) but the input dimension is 64'],
    ]);
  });

  it('sums every constrained adapter present at a site, and only those', () => {
    // At mlp.gate: align 32 + k1 16 + k2 16 = 64 fits. k2 is also on attn.q, where align is not.
    const ok = constrained(
      'adapter k1 = lora(r: 16) at layers[*].mlp.gate\nadapter k2 = lora(r: 16) at layers[*].mlp.gate, layers[*].attn.q\nadapter align = lora(r: 32) at layers[*].mlp.gate',
      'orthogonal(align.A, k1.A, k2.A) weight 0.5 norm fro',
    );
    expect(ok.r.codes).toEqual([]);
    expect(ok.constraint).toMatchObject({ others: ['k1', 'k2'], weight: 0.5, norm: 'fro', sites: ['layers[0].mlp.gate', 'layers[1].mlp.gate'] });
    const over = constrained(
      'adapter k1 = lora(r: 16) at layers[*].mlp.gate\nadapter k2 = lora(r: 16) at layers[*].mlp.gate\nadapter align = lora(r: 33) at layers[*].mlp.gate',
      'orthogonal(align.A, k1.A, k2.A)',
    );
    expect(over.r.codes).toEqual(['orthogonal_rank_exceeds_dim']);
  });

  it('the dimension is the input of A and the output of B', () => {
    // mlp.down: in 176, out 64. 40 + 40 = 80 fits 176 but not 64.
    const a = constrained('adapter k = lora(r: 40) at layers[*].mlp.down\nadapter align = lora(r: 40) at layers[*].mlp.down', 'orthogonal(align.A, k.A)');
    expect(a.r.codes).toEqual([]);
    const b = constrained('adapter k = lora(r: 40) at layers[*].mlp.down\nadapter align = lora(r: 40) at layers[*].mlp.down', 'orthogonal(align.B, k.B)');
    expect(b.r.diagnostics.map((d) => d.message)).toEqual(['at `layers[0].mlp.down` the ranks add up to 80 (align 40 + k 40) but the output dimension is 64']);
  });

  it('covers only the sites the adapters share', () => {
    const { r, constraint } = constrained('adapter k = lora(r: 8) at layers[*].mlp.{gate, up}\nadapter align = lora(r: 8) at layers[1].mlp', 'orthogonal(align.A, k.A)');
    expect(r.codes).toEqual([]);
    expect(constraint!.sites).toEqual(['layers[1].mlp.gate', 'layers[1].mlp.up']);
  });

  it('reports adapters with no common site', () => {
    const { r } = constrained('adapter k = lora(r: 8) at layers[*].mlp\nadapter align = lora(r: 8) at layers[*].attn', 'orthogonal(align.A, k.A)');
    expect(r.codes).toEqual(['orthogonal_no_common_site']);
  });

  it('rejects mixed matrices, bad parts and single arguments', () => {
    const decls = 'adapter k = lora(r: 8) at layers[*].mlp\nadapter align = lora(r: 8) at layers[*].mlp';
    expect(constrained(decls, 'orthogonal(align.A, k.B)').r.codes).toEqual(['invalid_value']);
    expect(constrained(decls, 'orthogonal(align.A, k.C)').r.codes).toEqual(['invalid_reference']);
    expect(constrained(decls, 'orthogonal(align.A)').r.codes).toEqual(['missing_argument']);
    expect(constrained(decls, 'orthgonal(align.A, k.A)').r.diagnostics[0].hint).toBe('did you mean `orthogonal`?');
  });

  it('warns when the first adapter is not trained in the stage, and says which one to put first', () => {
    const { r } = constrained('adapter k = lora(r: 8) at layers[*].mlp\nadapter align = lora(r: 8) at layers[*].mlp', 'orthogonal(k.A, align.A)');
    expect(r.diagnostics.map((d) => [d.code, d.hint])).toEqual([['constraint_on_frozen', 'the first argument is the adapter the penalty moves: put `align` first']]);
  });
});
