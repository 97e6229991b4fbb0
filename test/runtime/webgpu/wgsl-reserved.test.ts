/**
 * WGSL that CI cannot compile (llvmpipe has no shader-f16 or subgroup matrices) is still checked for one
 * class of error: an identifier that WGSL reserves. On the H100, Tint rejected the f16 cast shader's
 * `fn get(...)` ("'get' is a reserved keyword") in the first GPU run; llvmpipe never saw that module.
 */
import { describe, expect, it } from 'vitest';
import { castWgsl, F16_CANDIDATES, matmulWgsl } from '../../../src/runtime/webgpu/gemm-f16.js';
import { gemmWgsl, tileSharedBytes, workgroupBytes, type GemmSpec } from '../../../src/runtime/webgpu/gemm-wgsl.js';

/** The WGSL specification's reserved words (section 15.3, "Reserved Words"). */
const RESERVED = new Set(
  `NULL Self abstract active alignas alignof as asm asm_fragment async attribute auto await become cast catch class co_await co_return co_yield coherent column_major common compile compile_fragment concept const_cast consteval constexpr constinit crate debugger decltype delete demote demote_to_helper do dynamic_cast enum explicit export extends extern external fallthrough filter final finally friend from fxgroup get goto groupshared highp impl implements import inline instanceof interface layout lowp macro macro_rules match mediump meta mod module move mut mutable namespace new nil noexcept noinline nointerpolation non_coherent noncoherent noperspective null nullptr of operator package packoffset partition pass patch pixelfragment precise precision premerge priv protected pub public readonly ref regardless register reinterpret_cast require resource restrict self set shared sizeof smooth snorm static static_assert static_cast std subroutine super target template this thread_local throw trait try type typedef typeid typename typeof union unless unorm unsafe unsized use using varying virtual volatile wgsl where with writeonly yield`.split(' '),
);

/** Identifiers a module declares: functions, let/var/const names, parameters and struct members. */
function declared(code: string): string[] {
  const names: string[] = [];
  for (const m of code.matchAll(/\b(?:fn|let|const|override)\s+([A-Za-z_]\w*)/g)) names.push(m[1]!);
  for (const m of code.matchAll(/\bvar(?:<[^>]*>)?\s+([A-Za-z_]\w*)/g)) names.push(m[1]!);
  for (const m of code.matchAll(/[(,]\s*(?:@builtin\([^)]*\)\s*)?([A-Za-z_]\w*)\s*:/g)) names.push(m[1]!);
  return names;
}

function offenders(code: string): string[] {
  return [...new Set(declared(code).filter((n) => RESERVED.has(n)))];
}

describe('WGSL identifiers are not reserved words', () => {
  it('the checker finds the word that broke the first GPU run', () => {
    expect(offenders('fn get(r: u32, c: u32) -> f32 { let x = 1u; return 0.0; }')).toEqual(['get']);
    expect(offenders('fn load_src(r: u32) -> f32 { var<private> shared: f32; return 0.0; }')).toEqual(['shared']);
  });

  it('every f16 module (cast and each tile candidate, both builtin spellings)', () => {
    for (const trans of [false, true]) expect(offenders(castWgsl(200, 328, 256, 352, trans))).toEqual([]);
    for (const t of F16_CANDIDATES) {
      for (const syntax of ['templated', 'bool'] as const) {
        const code = matmulWgsl(200, 136, 328, t, syntax, 32, true);
        expect(declared(code).length).toBeGreaterThan(5);
        expect(offenders(code), JSON.stringify(t)).toEqual([]);
      }
    }
  });

  it('the f32 GEMM module, with and without prefetch', () => {
    for (const pf of [false, true]) {
      const spec: GemmSpec = {
        m: 256,
        n: 256,
        segments: [{ k: 256, a: { kMajor: false, parts: [{ input: 0, count: 256, ld: 256, off: 0 }] }, b: { kMajor: true, parts: [{ input: 1, count: 256, ld: 256, off: 0 }] } }],
        tile: { bm: 128, bn: 128, bk: 8, tm: 8, tn: 8, pf },
        inputs: [{}, {}],
        outputs: ['vec4'],
      };
      expect(offenders(gemmWgsl(spec))).toEqual([]);
    }
  });
});

describe('workgroupBytes', () => {
  it('sums a module\'s workgroup arrays (what a device limit is checked against)', () => {
    expect(workgroupBytes('var<workgroup> As: array<vec4<f32>, 256>;\nvar<workgroup> red: array<f32, 64>;\nvar<workgroup> n: u32;')).toBe(256 * 16 + 64 * 4 + 4);
    expect(workgroupBytes('var<workgroup> As: array<f16, 10240>;\nvar<workgroup> Cs: array<f32, 1024>;')).toBe(10240 * 2 + 4096);
    for (const tile of [{ bm: 128, bn: 128, bk: 8, tm: 8, tn: 8 }, { bm: 128, bn: 256, bk: 8, tm: 8, tn: 16, pf: true, db: true }]) {
      const spec: GemmSpec = {
        m: 512,
        n: 512,
        segments: [{ k: 512, a: { kMajor: false, parts: [{ input: 0, count: 512, ld: 512, off: 0 }] }, b: { kMajor: false, parts: [{ input: 1, count: 512, ld: 512, off: 0 }] } }],
        tile,
        inputs: [{}, {}],
        outputs: ['vec4'],
      };
      expect(workgroupBytes(gemmWgsl(spec))).toBe(tileSharedBytes(tile));
    }
  });
});
