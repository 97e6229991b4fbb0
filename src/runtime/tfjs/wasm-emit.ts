/**
 * A small WebAssembly binary emitter: enough of the format to build, at run time, a module of a few
 * functions over an imported memory, with the core control/integer/f32 opcodes and the 128-bit SIMD ones
 * (prefix 0xFD) that generated elementwise code uses. src/runtime/kernels/fused-wasm.ts builds its modules
 * with it. Opcode values follow the WebAssembly core spec (2.0, incl. fixed-width SIMD); the tests check
 * the encodings against wabt's assembler.
 *
 *   const f = new Code();
 *   f.get(0).get(1).op(Op.i32_add);          // instructions append to f.bytes
 *   encodeModule({ memory: { module: 'e', name: 'm' }, funcs: [{ params: [I32, I32], results: [I32], locals: [], code: f }], exports: [...] })
 */

export const I32 = 0x7f;
export const F32 = 0x7d;
export const V128 = 0x7b;
export type ValType = typeof I32 | typeof F32 | typeof V128;

/** Single-byte core opcodes. */
export const Op = {
  block: 0x02,
  loop: 0x03,
  br: 0x0c,
  br_if: 0x0d,
  end: 0x0b,
  drop: 0x1a,
  local_get: 0x20,
  local_set: 0x21,
  local_tee: 0x22,
  f32_load: 0x2a,
  f32_store: 0x38,
  i32_const: 0x41,
  f32_const: 0x43,
  i32_eqz: 0x45,
  i32_lt_s: 0x48,
  i32_lt_u: 0x49,
  i32_ge_s: 0x4e,
  i32_add: 0x6a,
  i32_sub: 0x6b,
  i32_mul: 0x6c,
  i32_and: 0x71,
  i32_shl: 0x74,
  f32_add: 0x92,
  f32_mul: 0x94,
  f32_div: 0x95,
  f32_convert_i32_s: 0xb2,
} as const;

/** SIMD opcodes: the number after the 0xFD prefix (encoded as LEB128 u32). */
export const Simd = {
  v128_load: 0x00,
  v128_load32_splat: 0x09,
  v128_store: 0x0b,
  v128_const: 0x0c,
  i32x4_splat: 0x11,
  f32x4_splat: 0x13,
  f32x4_extract_lane: 0x1f,
  f32x4_eq: 0x41,
  f32x4_ne: 0x42,
  f32x4_lt: 0x43,
  f32x4_gt: 0x44,
  f32x4_le: 0x45,
  f32x4_ge: 0x46,
  v128_not: 0x4d,
  v128_and: 0x4e,
  v128_andnot: 0x4f,
  v128_or: 0x50,
  v128_xor: 0x51,
  v128_bitselect: 0x52,
  f32x4_floor: 0x68,
  f32x4_trunc: 0x69,
  f32x4_nearest: 0x6a,
  i32x4_shl: 0xab,
  i32x4_shr_s: 0xac,
  i32x4_shr_u: 0xad,
  i32x4_add: 0xae,
  i32x4_sub: 0xb1,
  f32x4_abs: 0xe0,
  f32x4_neg: 0xe1,
  f32x4_sqrt: 0xe3,
  f32x4_add: 0xe4,
  f32x4_sub: 0xe5,
  f32x4_mul: 0xe6,
  f32x4_div: 0xe7,
  f32x4_min: 0xe8,
  f32x4_max: 0xe9,
  f32x4_pmin: 0xea,
  f32x4_pmax: 0xeb,
  i32x4_trunc_sat_f32x4_s: 0xf8,
  f32x4_convert_i32x4_s: 0xfa,
} as const;

/** Block type: no result. */
export const EMPTY = 0x40;

export function uleb(n: number, out: number[] = []): number[] {
  if (!Number.isInteger(n) || n < 0) throw new Error(`uleb: ${n}`);
  do {
    let b = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) b |= 0x80;
    out.push(b);
  } while (n > 0);
  return out;
}

export function sleb(n: number, out: number[] = []): number[] {
  if (!Number.isInteger(n)) throw new Error(`sleb: ${n}`);
  for (;;) {
    const b = n & 0x7f;
    n = Math.floor(n / 128);
    const done = (n === 0 && (b & 0x40) === 0) || (n === -1 && (b & 0x40) !== 0);
    out.push(done ? b : b | 0x80);
    if (done) return out;
  }
}

const f32Bytes = new Uint8Array(4);
const f32View = new DataView(f32Bytes.buffer);

/** A function body under construction; every method appends and returns `this`. */
export class Code {
  readonly bytes: number[] = [];
  op(...ops: number[]): this {
    this.bytes.push(...ops);
    return this;
  }
  simd(op: number): this {
    this.bytes.push(0xfd);
    uleb(op, this.bytes);
    return this;
  }
  get(i: number): this {
    return this.op(Op.local_get).u(i);
  }
  set(i: number): this {
    return this.op(Op.local_set).u(i);
  }
  tee(i: number): this {
    return this.op(Op.local_tee).u(i);
  }
  u(n: number): this {
    uleb(n, this.bytes);
    return this;
  }
  i32(v: number): this {
    this.bytes.push(Op.i32_const);
    sleb(v | 0, this.bytes);
    return this;
  }
  f32(v: number): this {
    this.bytes.push(Op.f32_const);
    f32View.setFloat32(0, v, true);
    this.bytes.push(...f32Bytes);
    return this;
  }
  /** A memory access: `align` is log2 of the alignment hint. */
  mem(op: number, align: number, offset = 0, simd = false): this {
    if (simd) this.simd(op);
    else this.op(op);
    return this.u(align).u(offset);
  }
  /** v128.const of four f32 lanes. */
  f32x4(a: number, b = a, c = a, d = a): this {
    this.simd(Simd.v128_const);
    for (const v of [a, b, c, d]) {
      f32View.setFloat32(0, v, true);
      this.bytes.push(...f32Bytes);
    }
    return this;
  }
  /** v128.const of four i32 lanes. */
  i32x4(a: number, b = a, c = a, d = a): this {
    this.simd(Simd.v128_const);
    for (const v of [a, b, c, d]) {
      f32View.setInt32(0, v | 0, true);
      this.bytes.push(...f32Bytes);
    }
    return this;
  }
  block(): this {
    return this.op(Op.block, EMPTY);
  }
  loop(): this {
    return this.op(Op.loop, EMPTY);
  }
  end(): this {
    return this.op(Op.end);
  }
  br(depth: number): this {
    return this.op(Op.br).u(depth);
  }
  brIf(depth: number): this {
    return this.op(Op.br_if).u(depth);
  }
}

export interface Func {
  params: ValType[];
  results: ValType[];
  /** Locals after the parameters, in order. */
  locals: ValType[];
  code: Code;
}

export interface ModuleSpec {
  /** An imported memory (index 0), with its minimum size in 64 KiB pages. */
  memory?: { module: string; name: string; minPages?: number };
  funcs: Func[];
  exports: { name: string; func: number }[];
}

const str = (s: string, out: number[]) => {
  const b = new TextEncoder().encode(s);
  uleb(b.length, out);
  out.push(...b);
};

function section(id: number, body: number[], out: number[]): void {
  out.push(id);
  uleb(body.length, out);
  for (const b of body) out.push(b);
}

const vec = <T>(xs: readonly T[], each: (x: T, out: number[]) => void): number[] => {
  const out = uleb(xs.length);
  for (const x of xs) each(x, out);
  return out;
};

/** The module's binary. Every function gets its own type entry (modules here have very few functions). */
export function encodeModule(m: ModuleSpec): Uint8Array<ArrayBuffer> {
  const out = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
  section(
    1,
    vec(m.funcs, (f, o) => {
      o.push(0x60);
      uleb(f.params.length, o).push(...f.params);
      uleb(f.results.length, o).push(...f.results);
    }),
    out,
  );
  if (m.memory) {
    const mem = m.memory;
    section(
      2,
      vec([mem], (x, o) => {
        str(x.module, o);
        str(x.name, o);
        o.push(0x02, 0x00);
        uleb(x.minPages ?? 0, o);
      }),
      out,
    );
  }
  section(
    3,
    vec(m.funcs, (_f, o) => {
      uleb(m.funcs.indexOf(_f), o);
    }),
    out,
  );
  section(
    7,
    vec(m.exports, (e, o) => {
      str(e.name, o);
      o.push(0x00);
      uleb(e.func, o);
    }),
    out,
  );
  section(
    10,
    vec(m.funcs, (f, o) => {
      // Locals as runs of one type.
      const runs: [number, ValType][] = [];
      for (const t of f.locals) {
        const last = runs[runs.length - 1];
        if (last && last[1] === t) last[0]++;
        else runs.push([1, t]);
      }
      const body = vec(runs, ([n, t], b) => {
        uleb(n, b).push(t);
      });
      for (const b of f.code.bytes) body.push(b);
      body.push(Op.end);
      uleb(body.length, o);
      for (const b of body) o.push(b);
    }),
    out,
  );
  return new Uint8Array(out);
}

let simdOk: boolean | undefined;

/** Whether this engine runs WebAssembly with 128-bit SIMD. */
export function wasmSimdSupported(): boolean {
  if (simdOk === undefined) {
    try {
      const c = new Code().f32x4(1).f32x4(2).simd(Simd.f32x4_add).simd(Simd.f32x4_extract_lane).u(0);
      simdOk = typeof WebAssembly === 'object' && WebAssembly.validate(encodeModule({ funcs: [{ params: [], results: [F32], locals: [], code: c }], exports: [] }));
    } catch {
      simdOk = false;
    }
  }
  return simdOk;
}
