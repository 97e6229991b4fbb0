import { describe, expect, it } from 'vitest';
import { deriveBackward, ExprBuilder, naryAddExpr, rmsnormExpr, swigluExpr, type Expr, type FusedExpr, type InputKind } from '../../../src/compiler/fusion/expr.js';
import { generateWgsl, literal, requiredLimits, type GeneratedModule } from '../../../src/compiler/fusion/wgsl.js';

function build(kinds: InputKind[], body: (E: ExprBuilder, x: Expr[]) => Expr[]) {
  const E = new ExprBuilder();
  const f: FusedExpr = { inputs: kinds, outputs: body(E, kinds.map((k, i) => E.input(i, k))) };
  const b = deriveBackward(f, E);
  return { f, b, k: generateWgsl(f, b, 'test') };
}

const addRmsnorm = () =>
  build(['elem', 'elem', 'vec'], (E, [x, o, w]) => {
    const s = naryAddExpr(E, [x, o]);
    return [s, rmsnormExpr(E, s, w, 1e-6)];
  });
const swiglu = () => build(['elem', 'elem', 'elem'], (E, [g0, g1, u]) => [swigluExpr(E, naryAddExpr(E, [g0, g1]), u)]);

/**
 * A structural lint of generated WGSL (Dawn compiles it in wgsl-dawn.test.ts when available): balanced
 * braces, every `t<N>` / `acc_*` / binding name declared before use in an enclosing scope, no two
 * declarations of one name in one scope, and every binding declared once with consecutive numbers.
 */
function lint(code: string): string[] {
  const problems: string[] = [];
  const scopes: Set<string>[] = [new Set(['params', 'WG', 'wg_scratch'])];
  const bindingNums: number[] = [];
  for (const [lineNo, raw] of code.split('\n').entries()) {
    const line = raw.replace(/\/\/.*$/, '');
    const b = /@binding\((\d+)\) var<[^>]+> (\w+)/.exec(line);
    if (b) {
      bindingNums.push(Number(b[1]));
      scopes[0].add(b[2]);
    }
    const decl = /\b(?:let|var)\s+(\w+)/.exec(line);
    const declared = decl?.[1];
    const rhs = decl ? line.slice(line.indexOf('=') + 1) : line;
    const loopVar = /for \(var (\w+)/.exec(line)?.[1];
    for (const m of rhs.matchAll(/\b(t\d+|acc_\w+|sum_\w+|in\d+|out\d+|y\d+|dy\d+|g\d+|gr\d+|ncols|row_off|col|row|idx)\b/g)) {
      if (m[1] !== loopVar && !scopes.some((s) => s.has(m[1]))) problems.push(`line ${lineNo + 1}: ${m[1]} used before it is declared`);
    }
    for (const m of line.matchAll(/\b(\w+): (?:vec3<u32>|u32|f32)[,)]/g)) scopes[scopes.length - 1].add(m[1]);
    if (declared) {
      if (scopes[scopes.length - 1].has(declared) && !/^for \(var/.test(line.trim())) problems.push(`line ${lineNo + 1}: ${declared} declared twice`);
    }
    const opens = (line.match(/\{/g) ?? []).length;
    const closes = (line.match(/\}/g) ?? []).length;
    const forVar = /for \(var (\w+)/.exec(line)?.[1];
    for (let i = 0; i < closes; i++) {
      scopes.pop();
      if (!scopes.length) problems.push(`line ${lineNo + 1}: unbalanced }`);
    }
    if (declared && !forVar) scopes[scopes.length - 1]?.add(declared);
    for (let i = 0; i < opens; i++) scopes.push(new Set());
    if (forVar) scopes[scopes.length - 1].add(forVar);
    if (/fn \w+\(/.test(line)) for (const m of line.matchAll(/(\w+): /g)) scopes[scopes.length - 1].add(m[1]);
  }
  if (scopes.length !== 1) problems.push(`${scopes.length - 1} unclosed {`);
  if (bindingNums.join() !== bindingNums.map((_, i) => i).join()) problems.push(`bindings not 0..n-1 in order: ${bindingNums.join()}`);
  return problems;
}

function checkModule(m: GeneratedModule): void {
  expect(lint(m.code)).toEqual([]);
  expect(m.code).toContain('@group(0) @binding(0) var<uniform> params: Params;');
  expect(m.code).toContain('struct Params {\n  rows: u32,\n  cols: u32,\n  grad_mask: u32,\n  accum_mask: u32,\n}');
  expect(m.code).not.toMatch(/NaN|Infinity|undefined/);
  for (const b of m.bindings.slice(1)) expect(m.code).toContain(`@group(0) @binding(${b.binding}) var<storage, ${b.access}> ${b.name}: array<f32>;`);
  for (const ep of m.entryPoints) {
    expect(m.code).toContain(`@compute @workgroup_size(256)\nfn ${ep.name}(`);
    expect(ep.bindings[0]).toBe(0);
    for (const n of ep.bindings) expect(m.bindings.map((b) => b.binding)).toContain(n);
  }
}

describe('generated WGSL', () => {
  it('is deterministic: the same expression gives the same text, whatever builder built it', () => {
    const a = addRmsnorm().k;
    const b = addRmsnorm().k;
    expect(a.forward.code).toBe(b.forward.code);
    expect(a.backward.code).toBe(b.backward.code);
    expect(JSON.stringify(a)).toBe(JSON.stringify(b));
  });

  it('add + rmsnorm: one workgroup per row, workgroup reduction, inputs then outputs', () => {
    const { k } = addRmsnorm();
    checkModule(k.forward);
    checkModule(k.backward);
    expect(k.forward.bindings.map((b) => `${b.binding}:${b.name}:${b.access}:${b.size}`)).toEqual([
      '0:params:uniform:params',
      '1:in0:read:rows*cols',
      '2:in1:read:rows*cols',
      '3:in2:read:cols',
      '4:out0:read_write:rows*cols',
      '5:out1:read_write:rows*cols',
    ]);
    expect(k.forward.entryPoints).toEqual([{ name: 'main', layout: 'rows', workgroups: 'rows', bindings: [0, 1, 2, 3, 4, 5] }]);
    const f = k.forward.code;
    expect(f).toContain('var<workgroup> wg_scratch: array<f32, 256>;');
    expect(f).toContain('workgroupBarrier();');
    expect(f).toContain('var<workgroup> wg_total: array<f32, 1>;');
    expect(f).toMatch(/= wg_reduce\(acc_t\d+, lid, 0u\);/);
    expect(f).toContain('if (row >= params.rows) {\n    return;\n  }');
    expect(f).toContain('for (var col: u32 = lid; col < params.cols; col = col + WG) {');
    expect(f).toContain('inverseSqrt(');
    expect(f).toContain('out0[row_off + col] = ');
    expect(f).toContain('out1[row_off + col] = ');
  });

  it('add + rmsnorm backward: reads the saved sum, one gradient for both terms, the weight reduced over rows', () => {
    const { k } = addRmsnorm();
    expect(k.backward.bindings.map((b) => `${b.binding}:${b.name}:${b.role}`)).toEqual(['0:params:params', '1:in2:input', '2:y0:saved_output', '3:dy0:dy', '4:dy1:dy', '5:g0:grad', '6:g1:grad', '7:gr1:grad_reduced']);
    expect(k.backward.entryPoints.map((e) => [e.name, e.layout, e.bindings])).toEqual([
      ['main', 'rows', [0, 1, 2, 3, 4, 5, 6]],
      ['reduce_cols', 'cols', [0, 6, 7]],
    ]);
    const c = k.backward.code;
    expect(c).toContain('if ((params.grad_mask & (1u << 0u)) != 0u) {');
    expect(c).toContain('g0[row_off + col] = g0[row_off + col] + ');
    expect(c).toContain('fn reduce_cols(');
    expect(c).toContain('gr1[col] = gr1[col] + sum_g1;');
    expect(requiredLimits(k)).toEqual({ maxComputeInvocationsPerWorkgroup: 256, maxComputeWorkgroupSizeX: 256, maxStorageBuffersPerShaderStage: 7 });
    // 7: every storage binding of the module (an explicit layout); `layout: 'auto'` per entry point needs 6 and 2.
  });

  it('every reduction of an entry point reads its sum from a slot of its own (wg_total), never from wg_scratch', () => {
    // llvmpipe moved a read of wg_scratch[0] below the next reduction's writes (see wgsl-dawn.test.ts).
    const { k } = build(['elem', 'vec', 'vec'], (E, [x, w, b]) => {
      const d = E.sub(x, E.rowmean(x));
      return [E.add(E.mul(E.mul(d, E.rsqrt(E.add(E.rowmean(E.mul(d, d)), E.const(1e-5)))), w), b)];
    });
    for (const m of [k.forward, k.backward]) {
      checkModule(m);
      const main = m.code.slice(m.code.indexOf('fn main('), m.code.indexOf('fn reduce_cols(') >>> 0);
      const slots = [...main.matchAll(/wg_reduce\(\w+, lid, (\d+)u\)/g)].map((x) => Number(x[1]));
      expect(slots).toEqual(slots.map((_, i) => i));
      expect(slots.length).toBeGreaterThanOrEqual(2);
      expect(m.code).toContain(`var<workgroup> wg_total: array<f32, ${Math.max(slots.length, (m.code.match(/sum_g\d+ = wg_reduce/g) ?? []).length)}>;`);
      expect(m.code).toContain('  if (lid == 0u) {\n    wg_total[slot] = wg_scratch[0] + wg_scratch[1];\n  }\n  workgroupBarrier();\n  return wg_total[slot];');
    }
    const reduceCols = k.backward.code.slice(k.backward.code.indexOf('fn reduce_cols('));
    expect([...reduceCols.matchAll(/wg_reduce\(\w+, lid, (\d+)u\)/g)].map((x) => x[1])).toEqual(['0', '1']);
  });

  it('swiglu: one invocation per element with a bounds check, no workgroup memory', () => {
    const { k } = swiglu();
    checkModule(k.forward);
    checkModule(k.backward);
    expect(k.forward.entryPoints[0]).toMatchObject({ layout: 'elements', workgroups: 'ceil(rows*cols/256)' });
    expect(k.forward.code).toContain('let idx = gid.x + gid.y * nwg.x * WG;\n  if (idx >= params.rows * params.cols) {\n    return;\n  }');
    expect(k.forward.code).toContain('silu_f(');
    expect(k.forward.code).not.toContain('var<workgroup>');
    expect(k.backward.code).not.toContain('reduce_cols');
    expect(k.backward.bindings.filter((b) => b.role === 'grad')).toHaveLength(2);
  });

  it('writes every primitive', () => {
    const { k } = build(['elem', 'elem', 'vec'], (E, [a, b, w]) => [
      E.select(E.cmp('gt', a, b), E.max(E.log(E.sqrt(E.exp(a))), E.min(b, w)), E.tanh(E.sigmoid(E.div(a, E.neg(b))))),
      E.sub(E.rowmean(E.mul(a, E.const(-0.25))), E.rsqrt(E.add(E.mul(b, b), E.const(1e-7)))),
    ]);
    checkModule(k.forward);
    checkModule(k.backward);
    for (const s of ['select(', 'max(', 'min(', 'log(', 'sqrt(', 'exp(', 'tanh(', 'sigmoid_f(', 'inverseSqrt(', 'f32(params.cols)', '(-0.25)', '1e-7']) expect(k.forward.code).toContain(s);
  });

  it('writes f32 literals WGSL accepts', () => {
    expect(literal(2)).toBe('2.0');
    expect(literal(0.5)).toBe('0.5');
    expect(literal(-1)).toBe('(-1.0)');
    expect(literal(1e-7)).toBe('1e-7');
    expect(literal(1e21)).toBe('1e+21');
    expect(() => literal(Infinity)).toThrow();
  });
});
