/**
 * The WebAssembly binary emitter (src/runtime/tfjs/wasm-emit.ts): LEB128, and every opcode it names
 * encoded byte for byte as wabt's assembler encodes the same text; modules validate and run.
 */
import { createRequire } from 'node:module';
import { beforeAll, describe, expect, it } from 'vitest';
import { Code, encodeModule, F32, I32, Op, Simd, sleb, uleb, V128, wasmSimdSupported } from '../../../src/runtime/tfjs/wasm-emit.js';

interface WabtModule {
  validate(): void;
  toBinary(o: object): { buffer: Uint8Array };
  destroy(): void;
}
interface Wabt {
  parseWat(name: string, text: string, features?: Record<string, boolean>): WabtModule;
  readWasm(bytes: Uint8Array, opts: Record<string, boolean>): WabtModule;
}
let wabt: Wabt;
beforeAll(async () => {
  const init = createRequire(import.meta.url)('wabt') as () => Promise<Wabt>;
  wabt = await init();
});

const assemble = (wat: string): Uint8Array => {
  const m = wabt.parseWat('t.wat', wat, { simd: true });
  try {
    m.validate();
    return Uint8Array.from(m.toBinary({}).buffer);
  } finally {
    m.destroy();
  }
};

describe('LEB128', () => {
  it('unsigned and signed', () => {
    expect(uleb(0)).toEqual([0]);
    expect(uleb(127)).toEqual([0x7f]);
    expect(uleb(128)).toEqual([0x80, 0x01]);
    expect(uleb(624485)).toEqual([0xe5, 0x8e, 0x26]);
    expect(uleb(0xffffffff)).toEqual([0xff, 0xff, 0xff, 0xff, 0x0f]);
    expect(sleb(0)).toEqual([0]);
    expect(sleb(63)).toEqual([0x3f]);
    expect(sleb(64)).toEqual([0xc0, 0x00]);
    expect(sleb(-1)).toEqual([0x7f]);
    expect(sleb(-64)).toEqual([0x40]);
    expect(sleb(-65)).toEqual([0xbf, 0x7f]);
    expect(sleb(-123456)).toEqual([0xc0, 0xbb, 0x78]);
    expect(sleb(-0x80000000)).toEqual([0x80, 0x80, 0x80, 0x80, 0x78]);
    expect(() => uleb(-1)).toThrow();
  });
});

describe('encodings against wabt', () => {
  it('every SIMD opcode of the table', () => {
    // Each op with operands of the right types, then drop: (param v128 v128 v128 i32) (local v128 f32).
    // The text name: the first '_' is the '.' (f32x4_add: f32x4.add, i32x4_trunc_sat_f32x4_s: i32x4.trunc_sat_f32x4_s).
    const ops = Object.keys(Simd).filter((k) => k !== 'v128_const');
    const ours = new Code();
    const text: string[] = [];
    const unary = ['f32x4_splat', 'i32x4_splat', 'v128_not', 'f32x4_abs', 'f32x4_neg', 'f32x4_sqrt', 'f32x4_floor', 'f32x4_trunc', 'f32x4_nearest', 'i32x4_trunc_sat_f32x4_s', 'f32x4_convert_i32x4_s'];
    for (const k of ops) {
      const code = Simd[k as keyof typeof Simd];
      const wat = k.replace('_', '.');
      if (k === 'v128_load' || k === 'v128_load32_splat') {
        ours.get(3).mem(code, k === 'v128_load' ? 4 : 2, 0, true).op(Op.drop);
        text.push(`local.get 3 ${wat} drop`);
      } else if (k === 'v128_store') {
        ours.get(3).get(0).mem(code, 4, 0, true);
        text.push(`local.get 3 local.get 0 ${wat}`);
      } else if (k === 'f32x4_extract_lane') {
        ours.get(0).simd(code).u(2).op(Op.drop);
        text.push(`local.get 0 ${wat} 2 drop`);
      } else if (k === 'f32x4_splat') {
        ours.get(5).simd(code).op(Op.drop);
        text.push(`local.get 5 ${wat} drop`);
      } else if (k === 'i32x4_splat') {
        ours.get(3).simd(code).op(Op.drop);
        text.push(`local.get 3 ${wat} drop`);
      } else if (k.startsWith('i32x4_sh')) {
        ours.get(0).get(3).simd(code).op(Op.drop);
        text.push(`local.get 0 local.get 3 ${wat} drop`);
      } else if (k === 'v128_bitselect') {
        ours.get(0).get(1).get(2).simd(code).op(Op.drop);
        text.push(`local.get 0 local.get 1 local.get 2 ${wat} drop`);
      } else if (unary.includes(k)) {
        ours.get(0).simd(code).op(Op.drop);
        text.push(`local.get 0 ${wat} drop`);
      } else {
        ours.get(0).get(1).simd(code).op(Op.drop);
        text.push(`local.get 0 local.get 1 ${wat} drop`);
      }
    }
    ours.f32x4(1.5, -2, Infinity, NaN).op(Op.drop).i32x4(-1, 0, 0x7fffffff, 127).op(Op.drop);
    text.push('v128.const f32x4 1.5 -2 inf nan drop v128.const i32x4 -1 0 0x7fffffff 127 drop');
    const mine = encodeModule({
      memory: { module: 'e', name: 'm' },
      funcs: [{ params: [V128, V128, V128, I32], results: [], locals: [V128, F32], code: ours }],
      exports: [{ name: 'f', func: 0 }],
    });
    const theirs = assemble(`(module (import "e" "m" (memory 0)) (func (export "f") (param v128 v128 v128 i32) (local v128 f32) ${text.join('\n')}))`);
    expect(Buffer.from(mine).toString('hex')).toBe(Buffer.from(theirs).toString('hex'));
  });

  it('control flow, scalar and memory ops, locals in runs', () => {
    const c = new Code();
    c.i32(0).set(2).f32(0).set(4);
    c.block().loop();
    c.get(2).get(1).op(Op.i32_ge_s).brIf(1);
    c.get(0).get(2).i32(2).op(Op.i32_shl).op(Op.i32_add).mem(Op.f32_load, 2, 8).get(4).op(Op.f32_add).set(4);
    c.get(2).i32(1).op(Op.i32_add).tee(2).op(Op.drop);
    c.get(2).i32(-300).op(Op.i32_sub).i32(3).op(Op.i32_mul).i32(7).op(Op.i32_and).op(Op.i32_eqz).op(Op.drop);
    c.get(2).get(1).op(Op.i32_lt_s).op(Op.drop).get(2).get(1).op(Op.i32_lt_u).op(Op.drop);
    c.get(4).get(4).op(Op.f32_mul).get(4).op(Op.f32_div).op(Op.drop).get(2).op(Op.f32_convert_i32_s).op(Op.drop);
    c.br(0).end().end();
    c.get(0).get(4).mem(Op.f32_store, 2).get(4);
    const mine = encodeModule({ memory: { module: 'env', name: 'memory', minPages: 1 }, funcs: [{ params: [I32, I32], results: [F32], locals: [I32, I32, F32], code: c }], exports: [{ name: 'sum', func: 0 }] });
    const theirs = assemble(`(module (import "env" "memory" (memory 1)) (func (export "sum") (param i32 i32) (result f32) (local i32 i32 f32)
      i32.const 0 local.set 2 f32.const 0 local.set 4
      block loop
        local.get 2 local.get 1 i32.ge_s br_if 1
        local.get 0 local.get 2 i32.const 2 i32.shl i32.add f32.load offset=8 local.get 4 f32.add local.set 4
        local.get 2 i32.const 1 i32.add local.tee 2 drop
        local.get 2 i32.const -300 i32.sub i32.const 3 i32.mul i32.const 7 i32.and i32.eqz drop
        local.get 2 local.get 1 i32.lt_s drop local.get 2 local.get 1 i32.lt_u drop
        local.get 4 local.get 4 f32.mul local.get 4 f32.div drop local.get 2 f32.convert_i32_s drop
        br 0 end end
      local.get 0 local.get 4 f32.store local.get 4))`);
    expect(Buffer.from(mine).toString('hex')).toBe(Buffer.from(theirs).toString('hex'));
    // And it runs: the sum of 3 floats from byte 8 on (first stored back at 0).
    const memory = new WebAssembly.Memory({ initial: 1 });
    new Float32Array(memory.buffer).set([0, 0, 1.5, 2, 4.25], 0);
    const sum = new WebAssembly.Instance(new WebAssembly.Module(mine), { env: { memory } }).exports.sum as (p: number, n: number) => number;
    expect(sum(0, 3)).toBe(7.75);
    expect(new Float32Array(memory.buffer)[0]).toBe(7.75);
  });

  it('WebAssembly SIMD is available here (Node >= 16)', () => {
    expect(wasmSimdSupported()).toBe(true);
  });
});
