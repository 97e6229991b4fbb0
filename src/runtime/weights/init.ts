/**
 * Deterministic initialisation of plan parameters.
 *
 * Every value is a pure function of (seed, parameter id, element index), so a parameter gets the same values
 * whether it is created first or last, alone or with the rest of the plan, at the start of the run or at the
 * entry of the stage that introduces it, and after a resume.
 *
 * The generator is Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011;
 * the counter-based generator of Random123, cuRAND, PyTorch and JAX), checked against the Random123
 * known-answer vectors in the tests:
 *
 *   key     = (seed mod 2^32, floor(seed / 2^32))                       (seed: an integer in [0, 2^53))
 *   counter = (j mod 2^32, floor(j / 2^32), h0, h1)                      (j: the block number)
 *   h0, h1  = the first 8 bytes of SHA-256(UTF-8 of the parameter id), as two little-endian uint32
 *
 * Block j yields four uint32 words w0..w3, which make elements 4j..4j+3 of the tensor (row-major):
 *   - uniform:  u = (w + 0.5) / 2^32, in (0, 1), never 0 or 1;
 *   - kaiming_uniform(a): x = (2u - 1) * bound, bound = sqrt(6 / ((1 + a^2) * fan_in)), fan_in = the last
 *     dimension, as torch.nn.init.kaiming_uniform_(w, a) computes for a 2-D [out, in] weight. For stacked
 *     experts ([E, r, in]) fan_in is still `in`: each expert is initialised as its own [r, in] matrix would be
 *     (torch would use r * in for a 3-D tensor, which is not what a per-expert LoRA means);
 *   - normal(std): Box-Muller on the pairs (u0, u1) and (u2, u3):
 *       rho = sqrt(-2 ln u_even), x_even = std * rho * cos(2 pi u_odd), x_odd = std * rho * sin(2 pi u_odd);
 *   - zeros, ones: exact.
 * Arithmetic is in float64, rounded once to float32.
 *
 * `pretrained` parameters are not initialised here: they come from the checkpoint (see hf.ts).
 */
import { createHash } from 'node:crypto';
import type { Plan, PlanParam } from '../../plan/types.js';

/** Random123's Philox4x32 constants. */
const PHILOX_M0 = 0xd2511f53;
const PHILOX_M1 = 0xcd9e8d57;
const PHILOX_W0 = 0x9e3779b9;
const PHILOX_W1 = 0xbb67ae85;
const TWO_32 = 4294967296;

/** High and low 32 bits of the 64-bit product of two uint32s, exactly (16-bit limbs keep every step < 2^53). */
function mulhilo(a: number, b: number, out: Uint32Array, hiAt: number, loAt: number): void {
  const ah = a >>> 16;
  const al = a & 0xffff;
  const bh = b >>> 16;
  const bl = b & 0xffff;
  const mid = ah * bl + al * bh; // < 2^33
  const low = mid * 65536 + al * bl; // < 2^50: exact
  out[hiAt] = ah * bh + Math.floor(low / TWO_32);
  out[loAt] = Math.imul(a, b);
}

const scratch = new Uint32Array(4);

/**
 * Philox4x32-10 of one counter block: writes the four output words into `out`.
 * `c` is the counter (4 words), `k0`, `k1` the key.
 */
export function philox4x32(c0: number, c1: number, c2: number, c3: number, k0: number, k1: number, out: Uint32Array = new Uint32Array(4)): Uint32Array {
  let x0 = c0 >>> 0;
  let x1 = c1 >>> 0;
  let x2 = c2 >>> 0;
  let x3 = c3 >>> 0;
  let key0 = k0 >>> 0;
  let key1 = k1 >>> 0;
  for (let round = 0; round < 10; round++) {
    mulhilo(PHILOX_M0, x0, scratch, 0, 1); // hi0, lo0
    mulhilo(PHILOX_M1, x2, scratch, 2, 3); // hi1, lo1
    const hi0 = scratch[0]!;
    const lo0 = scratch[1]!;
    const hi1 = scratch[2]!;
    const lo1 = scratch[3]!;
    x0 = (hi1 ^ x1 ^ key0) >>> 0;
    x1 = lo1;
    x2 = (hi0 ^ x3 ^ key1) >>> 0;
    x3 = lo0;
    key0 = (key0 + PHILOX_W0) >>> 0;
    key1 = (key1 + PHILOX_W1) >>> 0;
  }
  out[0] = x0;
  out[1] = x1;
  out[2] = x2;
  out[3] = x3;
  return out;
}

/** The two counter words a parameter id contributes: the first 8 bytes of SHA-256(id), little-endian. */
export function idHash(id: string): [number, number] {
  const d = createHash('sha256').update(id, 'utf8').digest();
  return [d.readUInt32LE(0), d.readUInt32LE(4)];
}

function checkSeed(seed: number): void {
  if (!Number.isSafeInteger(seed) || seed < 0) throw new RangeError(`seed must be an integer in [0, 2^53), got ${seed}`);
}

/**
 * The raw stream of a parameter: the words of blocks j = 0 .. ceil(n / 4) - 1, block j at [4j, 4j + 4).
 * The Philox rounds are inlined here (the per-element cost dominates initialising a model).
 */
function words(seed: number, id: string, n: number): Uint32Array {
  checkSeed(seed);
  const k0 = seed % TWO_32;
  const k1 = Math.floor(seed / TWO_32);
  const [h0, h1] = idHash(id);
  const count = Math.ceil(n / 4);
  const out = new Uint32Array(4 * count);
  const m0h = PHILOX_M0 >>> 16;
  const m0l = PHILOX_M0 & 0xffff;
  const m1h = PHILOX_M1 >>> 16;
  const m1l = PHILOX_M1 & 0xffff;
  for (let j = 0; j < count; j++) {
    let x0 = j % TWO_32;
    let x1 = Math.floor(j / TWO_32);
    let x2 = h0;
    let x3 = h1;
    let key0 = k0;
    let key1 = k1;
    for (let round = 0; round < 10; round++) {
      // hi/lo of M0 * x0 and M1 * x2 with 16-bit limbs (every partial sum stays below 2^53).
      const a0h = x0 >>> 16;
      const a0l = x0 & 0xffff;
      const hi0 = (m0h * a0h + Math.floor(((m0h * a0l + m0l * a0h) * 65536 + m0l * a0l) / TWO_32)) >>> 0;
      const lo0 = Math.imul(PHILOX_M0, x0) >>> 0;
      const a2h = x2 >>> 16;
      const a2l = x2 & 0xffff;
      const hi1 = (m1h * a2h + Math.floor(((m1h * a2l + m1l * a2h) * 65536 + m1l * a2l) / TWO_32)) >>> 0;
      const lo1 = Math.imul(PHILOX_M1, x2) >>> 0;
      x0 = (hi1 ^ x1 ^ key0) >>> 0;
      x1 = lo1;
      x2 = (hi0 ^ x3 ^ key1) >>> 0;
      x3 = lo0;
      key0 = (key0 + PHILOX_W0) >>> 0;
      key1 = (key1 + PHILOX_W1) >>> 0;
    }
    out[4 * j] = x0;
    out[4 * j + 1] = x1;
    out[4 * j + 2] = x2;
    out[4 * j + 3] = x3;
  }
  return out;
}

/** n uniforms in (0, 1) for (seed, id), in float64. Exposed for tests and for other seeded draws. */
export function uniforms(seed: number, id: string, n: number): Float64Array {
  const w = words(seed, id, n);
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = (w[i]! + 0.5) / TWO_32;
  return out;
}

/** The bound of torch.nn.init.kaiming_uniform_(a) for a given fan_in: sqrt(6 / ((1 + a^2) * fan_in)). */
export function kaimingBound(a: number, fanIn: number): number {
  return Math.sqrt(6 / ((1 + a * a) * fanIn));
}

function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) {
    if (!Number.isSafeInteger(d) || d < 0) throw new RangeError(`invalid shape [${shape.join(', ')}]`);
    n *= d;
  }
  return n;
}

/**
 * The initial values of one parameter, or `undefined` for a `pretrained` one (those come from the checkpoint).
 * Depends only on (seed, param.id, param.shape, param.init).
 */
export function initParameter(param: Pick<PlanParam, 'id' | 'shape' | 'init'>, seed: number): Float32Array | undefined {
  const n = numel(param.shape);
  const init = param.init;
  switch (init.kind) {
    case 'pretrained':
      return undefined;
    case 'zeros':
      checkSeed(seed);
      return new Float32Array(n);
    case 'ones':
      checkSeed(seed);
      return new Float32Array(n).fill(1);
    case 'kaiming_uniform': {
      const fanIn = param.shape.length ? param.shape[param.shape.length - 1]! : 1;
      const out = new Float32Array(n);
      if (fanIn === 0) return out;
      const bound = kaimingBound(init.a, fanIn);
      const w = words(seed, param.id, n);
      for (let i = 0; i < n; i++) out[i] = (2 * ((w[i]! + 0.5) / TWO_32) - 1) * bound;
      return out;
    }
    case 'normal': {
      const out = new Float32Array(n);
      const std = init.std;
      const w = words(seed, param.id, n);
      for (let i = 0; i < n; i += 2) {
        const rho = Math.sqrt(-2 * Math.log((w[i]! + 0.5) / TWO_32));
        const theta = 2 * Math.PI * ((w[i + 1]! + 0.5) / TWO_32);
        out[i] = std * rho * Math.cos(theta);
        if (i + 1 < n) out[i + 1] = std * rho * Math.sin(theta);
      }
      return out;
    }
    default: {
      const never: never = init;
      throw new Error(`unknown init ${JSON.stringify(never)}`);
    }
  }
}

export interface InitOptions {
  /** Initialise only the parameters this accepts (e.g. the adapters a stage introduces). */
  filter?: (param: PlanParam) => boolean;
}

/**
 * Initial values of every non-`pretrained` plan parameter, by plan parameter id. `pretrained` parameters are
 * absent from the map (load them with `loadBaseParameters` from hf.ts). The values of a parameter do not
 * depend on which other parameters are initialised, nor in what order.
 */
export function initParameters(plan: Plan, seed: number, options: InitOptions = {}): Map<string, Float32Array> {
  checkSeed(seed);
  const out = new Map<string, Float32Array>();
  for (const p of plan.parameters) {
    if (options.filter && !options.filter(p)) continue;
    const v = initParameter(p, seed);
    if (v) out.set(p.id, v);
  }
  return out;
}
