/**
 * moe_up_grouped of the CPU kernel table (src/runtime/kernels/cpu-moe.ts: the top-k experts only, in
 * WebAssembly) against the reference kernel (one dense GEMM over every expert), forward and every gradient, on
 * the `cpu` and `wasm` backends: one token, T not a multiple of 4, out not a multiple of 8, top_k = experts,
 * top_k = 1, an expert nobody is routed to, sharedRank 0 and > 0, renormalised gates or not.
 *
 * dgates is compared on the routed entries (gate != 0) only: elsewhere the table gives 0 by design (see
 * cpu-moe.ts); through topk_gate and the router's softmax (the plan's chain), the gradient of the router
 * logits is compared everywhere.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { PlanStep } from '../../../src/plan/types.js';
import { cpuFusedOps, cpuKernels } from '../../../src/runtime/kernels/cpu.js';
import { reference, type Kernel, type KernelContext } from '../../../src/runtime/kernels/reference.js';
import { initBackend, tf, type Tensor } from '../../../src/runtime/tfjs/index.js';
import { moeHeapCalls } from '../../../src/runtime/tfjs/moe.js';
import { lcg, relErr } from '../executor/helpers.js';

const rnd = lcg(2468);
const randn = (n: number, scale = 1) => Float32Array.from({ length: n }, () => (rnd() * 2 - 1) * scale);
const stepOf = (op: string, attrs: Record<string, unknown>): PlanStep => ({ node: 'n', op, kernel: '', inputs: [], outputs: ['y'], attrs, flops: 0 }) as unknown as PlanStep;
const ctxOf = (T: number): KernelContext => ({ rows: 1, seqLen: T, positions: new Int32Array(T), segments: new Int32Array(T).fill(1), cache: new Map() });

interface Case {
  name: string;
  T: number;
  out: number;
  R: number;
  r: number;
  E: number;
  k: number;
  renormalize: boolean;
  /** An expert given a logit so low that no token picks it. */
  skip?: number;
}

const cases: Case[] = [
  { name: 'MedCare-like: 8 experts r16 top-2, shared 16', T: 37, out: 44, R: 16, r: 16, E: 8, k: 2, renormalize: true },
  { name: 'one token, no shared part', T: 1, out: 5, R: 0, r: 4, E: 3, k: 2, renormalize: true },
  { name: 'top_k = experts, odd rank and out, not renormalised', T: 6, out: 13, R: 3, r: 5, E: 4, k: 4, renormalize: false },
  // top_k = 1 not renormalised: renormalised, every gate is 1 and the logits' gradient is exactly 0 (rounding noise).
  { name: 'top_k = 1, an expert nobody is routed to', T: 23, out: 16, R: 0, r: 3, E: 5, k: 1, renormalize: false, skip: 2 },
  { name: 'one expert, rank 1, out 1', T: 9, out: 1, R: 2, r: 1, E: 1, k: 1, renormalize: false },
  // Widths that the in-place kernels take on the wasm backend (out, r, R multiples of 8; ../tfjs/moe.ts nn/tn).
  { name: 'in place: 8 experts r16 top-2, out 48, shared 16', T: 37, out: 48, R: 16, r: 16, E: 8, k: 2, renormalize: true },
  { name: 'in place: one token, no shared part', T: 1, out: 8, R: 0, r: 8, E: 3, k: 2, renormalize: true },
  { name: 'in place: top_k = experts, shared 8, not renormalised', T: 6, out: 16, R: 8, r: 8, E: 4, k: 4, renormalize: false },
  { name: 'in place: top_k = 1, an expert nobody is routed to', T: 23, out: 24, R: 0, r: 8, E: 5, k: 1, renormalize: false, skip: 2 },
  { name: 'in place forward, dh copied (shared 4)', T: 10, out: 16, R: 4, r: 8, E: 3, k: 2, renormalize: true },
  // ~100 tokens per expert: more than one chunk of moe.wat's CH (64) rows, the last one partial.
  { name: 'several row chunks per expert, shared 8', T: 150, out: 24, R: 8, r: 8, E: 3, k: 2, renormalize: true },
  { name: 'several row chunks per expert, odd widths (copied)', T: 150, out: 13, R: 0, r: 5, E: 3, k: 2, renormalize: true },
];

function inputs(c: Case): { logits: Tensor; h: Tensor; bs: Tensor[] } {
  const l = randn(c.T * c.E, 2);
  if (c.skip !== undefined) for (let t = 0; t < c.T; t++) l[t * c.E + c.skip] = -30;
  return {
    logits: tf.tensor2d(l, [c.T, c.E]),
    h: tf.tensor2d(randn(c.T * (c.R + c.E * c.r)), [c.T, c.R + c.E * c.r]),
    bs: [...(c.R > 0 ? [tf.tensor2d(randn(c.out * c.R), [c.out, c.R])] : []), tf.tensor3d(randn(c.E * c.out * c.r), [c.E, c.out, c.r])],
  };
}

const attrsOf = (c: Case) => ({ sharedRank: c.R, rank: c.r, experts: c.E, scale: 1.75 });

/** y and the gradients of Σ <D, y> w.r.t. h, gates, B_sh, B_e, with the gates given. */
function direct(table: Record<string, Kernel>, c: Case, h: Tensor, gates: Tensor, bs: Tensor[], D: Tensor): Float32Array[] {
  const st = stepOf('moe_up_grouped', attrsOf(c));
  const ctx = ctxOf(c.T);
  return tf.tidy(() => {
    const y = table.moe_up_grouped!([h, gates, ...bs], st, ctx)[0]!;
    const gs = tf.grads((...xs: Tensor[]) => tf.sum(tf.mul(table.moe_up_grouped!(xs, st, ctx)[0]!, D)) as tf.Scalar)([h, gates, ...bs]);
    return [y, ...gs].map((t) => Float32Array.from(t.dataSync()));
  });
}

/** The plan's chain softmax → topk_gate → moe_up_grouped: y and the gradients w.r.t. the logits, h, B_sh, B_e. */
function chain(table: Record<string, Kernel>, c: Case, logits: Tensor, h: Tensor, bs: Tensor[], D: Tensor): Float32Array[] {
  const st = stepOf('moe_up_grouped', attrsOf(c));
  const gate = stepOf('topk_gate', { k: c.k, renormalize: c.renormalize });
  const ctx = ctxOf(c.T);
  const f = (l: Tensor, hh: Tensor, ...b: Tensor[]) => {
    const g = table.topk_gate!([tf.softmax(l)], gate, ctx)[0]!;
    return table.moe_up_grouped!([hh, g, ...b], st, ctx)[0]!;
  };
  return tf.tidy(() => {
    const y = f(logits, h, ...bs);
    const gs = tf.grads((...xs: Tensor[]) => tf.sum(tf.mul(f(xs[0]!, xs[1]!, ...xs.slice(2)), D)) as tf.Scalar)([logits, h, ...bs]);
    return [y, ...gs].map((t) => Float32Array.from(t.dataSync()));
  });
}

function compare(c: Case, tol: number): void {
  const fused = cpuKernels({ kernels: [] }) as Record<string, Kernel>;
  const ref = reference as Record<string, Kernel>;
  const { logits, h, bs } = inputs(c);
  const D = tf.tensor2d(randn(c.T * c.out), [c.T, c.out]);
  const gates = tf.tidy(() => ref.topk_gate!([tf.softmax(logits)], stepOf('topk_gate', { k: c.k, renormalize: c.renormalize }), ctxOf(c.T))[0]!);
  const g = gates.dataSync();
  if (c.skip !== undefined) for (let t = 0; t < c.T; t++) expect(g[t * c.E + c.skip]).toBe(0);
  const want = direct(ref, c, h, gates, bs, D);
  const got = direct(fused, c, h, gates, bs, D);
  const names = ['y', 'dh', 'dgates', ...(c.R > 0 ? ['dB_sh'] : []), 'dB_e'];
  names.forEach((n, i) => {
    if (n === 'dgates') {
      // Routed entries: the reference's; the others: 0 (never reaches the router, see cpu-moe.ts).
      const routed = (a: Float32Array) => a.filter((_, j) => g[j] !== 0);
      expect(relErr(routed(got[i]!), routed(want[i]!)), `${c.name}: dgates (routed)`).toBeLessThan(tol);
      got[i]!.forEach((v, j) => {
        if (g[j] === 0) expect(v).toBe(0);
      });
    } else expect(relErr(got[i]!, want[i]!), `${c.name}: ${n}`).toBeLessThan(tol);
    expect(Math.max(...want[i]!.map(Math.abs)), `${c.name}: ${n} checks something`).toBeGreaterThan(0);
  });
  if (c.skip !== undefined) {
    const dbe = got[got.length - 1]!;
    expect(dbe.subarray(c.skip * c.out * c.r, (c.skip + 1) * c.out * c.r).every((v) => v === 0)).toBe(true);
  }
  const cw = chain(ref, c, logits, h, bs, D);
  const cg = chain(fused, c, logits, h, bs, D);
  cw.forEach((w, i) => expect(relErr(cg[i]!, w), `${c.name}: through topk_gate, output ${i} (1: d logits)`).toBeLessThan(tol));
  tf.dispose([logits, h, ...bs, D, gates]);
}

describe('moe_up_grouped on the top-k only (CPU table)', () => {
  beforeAll(() => initBackend('cpu'));

  it('is in the table and in cpuFusedOps', () => {
    expect(cpuFusedOps).toContain('moe_up_grouped');
    expect(cpuKernels({ kernels: [] }).moe_up_grouped).not.toBe(reference.moe_up_grouped);
  });

  it('MCPC_MOE_TOPK=0 sends it to the reference', async () => {
    const c = cases[1]!;
    const { logits, h, bs } = inputs(c);
    const gates = tf.tidy(() => reference.topk_gate([tf.softmax(logits)], stepOf('topk_gate', { k: 2, renormalize: true }), ctxOf(c.T))[0]!);
    const run = async () => {
      const info = await tf.profile(() => cpuKernels({ kernels: [] }).moe_up_grouped([h, gates, ...bs], stepOf('moe_up_grouped', attrsOf(c)), ctxOf(c.T))[0]!);
      tf.dispose(info.result as Tensor);
      return info.kernels.map((k) => k.name);
    };
    expect(await run()).toContain('McpcMoeUp');
    process.env.MCPC_MOE_TOPK = '0';
    try {
      expect(await run()).not.toContain('McpcMoeUp');
    } finally {
      delete process.env.MCPC_MOE_TOPK;
    }
    tf.dispose([logits, h, ...bs, gates]);
  });

  for (const c of cases) it(`${c.name}: forward, every gradient, and through topk_gate (cpu)`, () => compare(c, 1e-5));

  it('runs one forward kernel and, backward, only what autodiff asks for (B_e alone: no dh/dgates kernel)', async () => {
    const c = cases[0]!;
    const { logits, h, bs } = inputs(c);
    const gates = tf.tidy(() => reference.topk_gate([tf.softmax(logits)], stepOf('topk_gate', { k: 2, renormalize: true }), ctxOf(c.T))[0]!);
    const st = stepOf('moe_up_grouped', attrsOf(c));
    const table = cpuKernels({ kernels: [] });
    const before = tf.memory().numTensors;
    const grad = (t: Record<string, Kernel>) => tf.grads((be: Tensor) => tf.sum(t.moe_up_grouped([h, gates, bs[0]!, be], st, ctxOf(c.T))[0]!) as tf.Scalar)([bs[1]!])[0]!;
    let got: Tensor | undefined;
    const prof = await tf.profile(() => {
      got = grad(table);
      return got;
    });
    const kernels = prof.kernels.map((k) => k.name);
    expect(kernels.filter((k) => k === 'McpcMoeUp')).toHaveLength(1);
    expect(kernels).toContain('McpcMoeUpDbe');
    expect(kernels).not.toContain('McpcMoeUpDh');
    expect(kernels).not.toContain('BatchMatMul');
    const want = grad(reference);
    expect(relErr(got!.dataSync(), want.dataSync())).toBeLessThan(1e-5);
    tf.dispose([got!, want]);
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose([logits, h, ...bs, gates]);
  });

  it('dh and dgates from one McpcMoeUpDh; what the first closure kept is freed once the backward pass is over', async () => {
    const c = cases[0]!;
    const { logits, h, bs } = inputs(c);
    const gates = tf.tidy(() => reference.topk_gate([tf.softmax(logits)], stepOf('topk_gate', { k: 2, renormalize: true }), ctxOf(c.T))[0]!);
    const st = stepOf('moe_up_grouped', attrsOf(c));
    const table = cpuKernels({ kernels: [] });
    const before = tf.memory().numTensors;
    let gs: Tensor[] = [];
    const prof = await tf.profile(() => {
      gs = tf.grads((hh: Tensor, g: Tensor) => tf.sum(table.moe_up_grouped([hh, g, ...bs], st, ctxOf(c.T))[0]!) as tf.Scalar)([h, gates]);
      return gs;
    });
    expect(prof.kernels.filter((k) => k.name === 'McpcMoeUpDh')).toHaveLength(1);
    await new Promise((r) => setTimeout(r, 0));
    expect(gs.every((g) => !g.isDisposed)).toBe(true);
    tf.dispose(gs);
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose([logits, h, ...bs, gates]);
  });

  describe('on the wasm backend', () => {
    beforeAll(() => initBackend('wasm'));
    afterAll(() => initBackend('cpu'));
    for (const c of cases) it(`${c.name} (wasm)`, () => compare(c, 1e-4));
    it('the in-place cases ran on the heap (nn, tn: no copies)', () => {
      for (const k of ['up', 'dh', 'dbe']) expect(moeHeapCalls[k], k).toBeGreaterThan(0);
    });
  });
});

/**
 * moe_down_routed (cpu-moe.ts McpcMoeDown*, ../tfjs/moe-down.ts) against the reference (the dense product
 * times the gates ≠ 0 mask): h, dx, dA_e, and the gates' gradient (zero: a mask), through topk_gate too.
 */
interface DownCase {
  name: string;
  T: number;
  inF: number;
  r: number;
  E: number;
  k: number;
  skip?: number;
}

const downCases: DownCase[] = [
  { name: 'MedCare-like: 8 experts r16 top-2, in 64', T: 41, inF: 64, r: 16, E: 8, k: 2 },
  { name: 'one token', T: 1, inF: 12, r: 4, E: 3, k: 2 },
  { name: 'top_k = experts, odd rank, in 13', T: 7, inF: 13, r: 5, E: 4, k: 4 },
  { name: 'an expert nobody is routed to, in 10 (not a multiple of 4)', T: 23, inF: 10, r: 3, E: 5, k: 1, skip: 2 },
  { name: 'one expert, rank 1, in 1', T: 9, inF: 1, r: 1, E: 1, k: 1 },
  // In place on the wasm backend (../tfjs/moe-down.ts: r and in multiples of 8); the first case is too.
  { name: 'in place: one token', T: 1, inF: 8, r: 8, E: 3, k: 2 },
  { name: 'in place: top_k = experts, in 16', T: 7, inF: 16, r: 8, E: 4, k: 4 },
  { name: 'in place: an expert nobody is routed to, in 24', T: 23, inF: 24, r: 8, E: 5, k: 1, skip: 2 },
  { name: 'several row chunks per expert (64 rows each)', T: 150, inF: 16, r: 8, E: 3, k: 2 },
];

function downInputs(c: DownCase): { logits: Tensor; x: Tensor; ae: Tensor; D: Tensor } {
  const l = randn(c.T * c.E, 2);
  if (c.skip !== undefined) for (let t = 0; t < c.T; t++) l[t * c.E + c.skip] = -30;
  return {
    logits: tf.tensor2d(l, [c.T, c.E]),
    x: tf.tensor2d(randn(c.T * c.inF), [c.T, c.inF]),
    ae: tf.tensor3d(randn(c.E * c.r * c.inF), [c.E, c.r, c.inF]),
    D: tf.tensor2d(randn(c.T * c.E * c.r), [c.T, c.E * c.r]),
  };
}

/** h and the gradients of Σ <D, h> w.r.t. x, gates, A_e; then, through softmax → topk_gate, w.r.t. the logits. */
function downRun(table: Record<string, Kernel>, c: DownCase, t: ReturnType<typeof downInputs>): Float32Array[] {
  const st = stepOf('moe_down_routed', { in: c.inF, rank: c.r, experts: c.E, k: c.k });
  const gate = stepOf('topk_gate', { k: c.k, renormalize: true });
  const ctx = ctxOf(c.T);
  return tf.tidy(() => {
    const gates = table.topk_gate!([tf.softmax(t.logits)], gate, ctx)[0]!;
    const h = table.moe_down_routed!([t.x, gates, t.ae], st, ctx)[0]!;
    const gs = tf.grads((x: Tensor, g: Tensor, a: Tensor) => tf.sum(tf.mul(table.moe_down_routed!([x, g, a], st, ctx)[0]!, t.D)) as tf.Scalar)([t.x, gates, t.ae]);
    // Through the gates' producer: d logits must be exactly zero (the gates are only a mask here).
    const dl = tf.grads((l: Tensor) => tf.sum(tf.mul(table.moe_down_routed!([t.x, table.topk_gate!([tf.softmax(l)], gate, ctx)[0]!, t.ae], st, ctx)[0]!, t.D)) as tf.Scalar)([t.logits])[0]!;
    return [h, ...gs, dl, gates].map((x) => Float32Array.from(x.dataSync()));
  });
}

function downCompare(c: DownCase, tol: number): void {
  const fused = cpuKernels({ kernels: [] }) as Record<string, Kernel>;
  const t = downInputs(c);
  const want = downRun(reference as Record<string, Kernel>, c, t);
  const got = downRun(fused, c, t);
  const g = want[5]!;
  ['h', 'dx', 'dgates', 'dA_e', 'dlogits'].forEach((n, i) => {
    if (n === 'dgates' || n === 'dlogits') {
      expect(got[i]!.every((v) => v === 0), `${c.name}: ${n} is zero`).toBe(true);
      expect(want[i]!.every((v) => v === 0), `${c.name}: reference ${n} is zero`).toBe(true);
      return;
    }
    expect(relErr(got[i]!, want[i]!), `${c.name}: ${n}`).toBeLessThan(tol);
    expect(Math.max(...want[i]!.map(Math.abs)), `${c.name}: ${n} checks something`).toBeGreaterThan(0);
  });
  // h is exactly 0 off the routed (t, e), and the reference's h is the dense product there.
  const h = got[0]!;
  for (let tk = 0; tk < c.T; tk++) for (let e = 0; e < c.E; e++) if (g[tk * c.E + e] === 0) for (let j = 0; j < c.r; j++) expect(h[(tk * c.E + e) * c.r + j]).toBe(0);
  if (c.skip !== undefined) {
    const da = got[3]!;
    expect(da.subarray(c.skip * c.r * c.inF, (c.skip + 1) * c.r * c.inF).every((v) => v === 0)).toBe(true);
  }
  tf.dispose([t.logits, t.x, t.ae, t.D]);
}

describe('moe_down_routed on the top-k only (CPU table)', () => {
  beforeAll(() => initBackend('cpu'));

  it('is in the table and in cpuFusedOps; the reference is the dense product times the mask', () => {
    expect(cpuFusedOps).toContain('moe_down_routed');
    expect(cpuKernels({ kernels: [] }).moe_down_routed).not.toBe(reference.moe_down_routed);
    const x = tf.tensor2d([1, 2, 3, 4], [2, 2]);
    const gates = tf.tensor2d([0.5, 0, 0, 1], [2, 2]);
    const ae = tf.tensor3d([1, 0, 0, 1], [2, 1, 2]); // A_0 = [1, 0], A_1 = [0, 1]
    const h = reference.moe_down_routed([x, gates, ae], stepOf('moe_down_routed', { rank: 1, experts: 2 }), ctxOf(2))[0]!;
    expect(Array.from(h.dataSync())).toEqual([1, 0, 0, 4]);
    tf.dispose([x, gates, ae, h]);
  });

  it('MCPC_MOE_DOWN_TOPK=0 sends it to the reference; only the asked gradients run', async () => {
    const c = downCases[0]!;
    const t = downInputs(c);
    const st = stepOf('moe_down_routed', { rank: c.r, experts: c.E });
    const gates = tf.tidy(() => reference.topk_gate([tf.softmax(t.logits)], stepOf('topk_gate', { k: c.k, renormalize: true }), ctxOf(c.T))[0]!);
    const table = cpuKernels({ kernels: [] });
    const before = tf.memory().numTensors;
    const kernelsOf = async (wrt: 'x' | 'A') => {
      const prof = await tf.profile(() =>
        wrt === 'x'
          ? tf.grads((x: Tensor) => tf.sum(table.moe_down_routed([x, gates, t.ae], st, ctxOf(c.T))[0]!) as tf.Scalar)([t.x])
          : tf.grads((a: Tensor) => tf.sum(table.moe_down_routed([t.x, gates, a], st, ctxOf(c.T))[0]!) as tf.Scalar)([t.ae]),
      );
      tf.dispose(prof.result as Tensor[]);
      return prof.kernels.map((k) => k.name);
    };
    const dx = await kernelsOf('x');
    expect(dx).toContain('McpcMoeDown');
    expect(dx).toContain('McpcMoeDownDx');
    expect(dx).not.toContain('McpcMoeDownDa');
    const da = await kernelsOf('A');
    expect(da).toContain('McpcMoeDownDa');
    expect(da).not.toContain('McpcMoeDownDx');
    expect(da).not.toContain('BatchMatMul');
    expect(tf.memory().numTensors).toBe(before);
    process.env.MCPC_MOE_DOWN_TOPK = '0';
    try {
      expect(await kernelsOf('x')).not.toContain('McpcMoeDown');
    } finally {
      delete process.env.MCPC_MOE_DOWN_TOPK;
    }
    tf.dispose([t.logits, t.x, t.ae, t.D, gates]);
  });

  for (const c of downCases) it(`${c.name}: h, dx, dA_e, none to the gates (cpu)`, () => downCompare(c, 1e-5));

  describe('on the wasm backend', () => {
    beforeAll(() => initBackend('wasm'));
    afterAll(() => initBackend('cpu'));
    for (const c of downCases) it(`${c.name} (wasm)`, () => downCompare(c, 1e-4));
    it('the in-place cases ran on the heap', () => {
      for (const k of ['down', 'dx', 'da']) expect(moeHeapCalls[k], k).toBeGreaterThan(0);
    });
  });
});
