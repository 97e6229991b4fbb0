/**
 * The kernel table of the CPU backends (`wasm` by default; `cpu` on request): the reference table
 * (./reference.ts) with some ops replaced by fused implementations (./cpu-ops.ts: tfjs kernels over
 * Float32Array views, with gradients, or leaner tfjs compositions). Same `Kernel` signature and conventions
 * as the reference; every kernel falls back to the reference for a case it does not take.
 *
 *   fused_elementwise   the expression compiled at run time (./fused-js.ts): to WebAssembly SIMD (./fused-wasm.ts),
 *                       or to JavaScript where that is missing or MCPC_FUSED_WASM=0; forward, and the compiler's
 *                       generated backward (from the plan's kernel table) once per gradient slot
 *   attention           each query against only the keys it can see (./cpu-attention.ts, ../tfjs/attention.wat:
 *                       flash-attention style in WebAssembly SIMD along the keys, queries in pairs, forward saving
 *                       the logsumexp and P, which the backward reads; packed rows skip their masked blocks, ~3/4 of S×S with two
 *                       examples per row); where a row's segment ids are not contiguous runs, or with
 *                       MCPC_ATTENTION_WASM=0, grouped-query GEMMs without repeating K/V (no Tile), the 1/√d
 *                       scale on q, and the mask built once per micro-batch in that layout (no broadcast)
 *   rope                one pass (its gradient is the inverse rotation), no slices or concat
 *   topk_gate           one kernel each way (./cpu-topk.ts; the backward recomputes the mask from the saved p)
 *   embedding           row copies (./cpu-embedding.ts), dW a scatter-add only when asked
 *   lora_up             h·(s·B)ᵀ: the scale multiplies B [out, r], not the output [T, out] (nor dy in the backward)
 *   lm_head_xent        the head GEMM and the softmax cross-entropy over chunks of rows (./cpu-xent.ts): no [T, V]
 *                       logits tensor, the gradient from the saved logsumexp (dx, dW each only when asked)
 *   concat_linear       the one GEMM as McpcConcatLinear, one output per part (dW per part, only for the weights
 *                       autodiff asks for: a frozen base weight in the stack costs no dYᵀ·x; dX one GEMM over
 *                       the parts' gradients where they lie)
 *   moe_up_grouped      each token's top-k experts only (./cpu-moe.ts, ../tfjs/moe.wat): per expert, the routed
 *                       tokens' gate-scaled h_e rows gathered (WebAssembly SIMD), one GEMM, the rows added into
 *                       y; the backward likewise (dgates zero off the top-k, where it never reaches the router)
 *   moe_down_routed     each token's top-k experts only (./cpu-moe.ts, ../tfjs/moe-down.ts, moe.wat's gathers): per
 *                       expert, the routed tokens' x rows gathered, one GEMM [n_e, in]·[in, r], scattered into h;
 *                       dx and dA_e over the same rows, each only when autodiff asks; no gradient to the gates
 *   everything else     reference (tfjs ops; router also with the training-step noise input, attrs.noise)
 *
 * Matrix products inside these kernels and tfjs's BatchMatMul run on mcpc's WebAssembly SIMD GEMM
 * (../tfjs/gemm.ts; MCPC_THREADS=N splits large products over N threads). Lesson recorded in BENCHMARKS.md
 * ("CPU kernel table"): gathers, scatters and elementwise passes in scalar JavaScript lost to tfjs-wasm's SIMD
 * ops; each of the kernels above paid off only once its inner loops were WebAssembly SIMD.
 *
 * LoRA dropout is not a kernel's concern: the executor masks the A input of a dropout adapter before calling
 * lora_down / expert_down / moe_down_batched / moe_down_routed (../dropout.ts), so every table has the same semantics.
 *
 * `cpuKernelTable(plan, backend)` decides: the fused table on `wasm`, the reference on `cpu` (the ground truth
 * the tests compare against); `MCPC_KERNELS=fused` or `=reference` forces either on both.
 */
import { loraMergeCpu } from './cpu-lora-merge.js';
import type { FusedExprAttrs } from '../../plan/fused.js';
import type { Plan, PlanOp } from '../../plan/types.js';
import { tf, type Tensor } from '../tfjs/index.js';
import { concatLinearOp, fusedOp, ropeOp, type PartActivation } from './cpu-ops.js';
import { moeDownFits, moeDownRoutedOp, moeUpFits, moeUpGroupedOp } from './cpu-moe.js';
import { attentionOp, attentionRanges } from './cpu-attention.js';
import { lmHeadXentCpu, lmHeadXentFits } from './cpu-xent.js';
import { topkGateCpu, topkGateCpuFits } from './cpu-topk.js';
import { embeddingCpu, embeddingCpuFits } from './cpu-embedding.js';
import { dims } from './autodiff.js';
import { checkFusedExpr } from './fused.js';
import { compileFused, type CompiledFused } from './fused-js.js';
import { KernelError, loraMergeShapesFit, reference, ropeTables, type Kernel, type KernelContext, type KernelStep } from './reference.js';

function num(step: KernelStep, key: string, fallback?: number): number {
  const v = step.attrs[key];
  if (typeof v === 'number' && Number.isFinite(v)) return v;
  if (v === undefined && fallback !== undefined) return fallback;
  throw new KernelError(step, `attrs.${key} must be a finite number (got ${JSON.stringify(v)})`);
}
const flag = (step: KernelStep, key: string, fallback: boolean): boolean => (typeof step.attrs[key] === 'boolean' ? (step.attrs[key] as boolean) : fallback);
const f32 = (ts: Tensor[]) => ts.every((t) => t.dtype === 'float32');


/**
 * The additive attention mask in the GQA layout of `attention` below, [rows·KV, S·G, S]: 0 where query
 * position ⌊m/G⌋ may see key j (same segment; j ≤ i when causal), else −1e9 (the reference's mask, repeated
 * so the add needs no broadcast). Made once per micro-batch and shared by the layers.
 */
function gqaMask(ctx: KernelContext, KV: number, G: number, causal: boolean): Tensor {
  const key = `cpu:mask:${KV}:${G}:${causal}`;
  const hit = ctx.cache.get(key);
  if (hit && !hit.isDisposed) return hit;
  const { rows, seqLen: S, segments } = ctx;
  const m = new Float32Array(rows * KV * S * G * S);
  for (let r = 0; r < rows; r++)
    for (let i = 0; i < S; i++) {
      const si = segments[r * S + i];
      const base = (r * KV * S * G + i * G) * S;
      for (let j = 0; j < S; j++) m[base + j] = (!causal || j <= i) && segments[r * S + j] === si ? 0 : -1e9;
      for (let g = 1; g < G; g++) m.copyWithin(base + g * S, base, base + S);
      for (let h = 1; h < KV; h++) m.copyWithin(base + h * S * G * S, base, base + G * S);
    }
  const t = tf.tensor3d(m, [rows * KV, S * G, S]);
  ctx.cache.set(key, t);
  return t;
}

/** The fused table for `plan` (its kernel table holds each fused expression's generated backward). */
export function cpuKernels(plan: Pick<Plan, 'kernels'>): Record<PlanOp, Kernel> {
  const compiled = new Map<string, CompiledFused | null>();
  const program = (step: KernelStep): CompiledFused | null => {
    const id = typeof step.attrs.kernel === 'string' ? step.attrs.kernel : ((step as { kernel?: string }).kernel ?? '');
    let c = compiled.get(id);
    if (c === undefined) {
      const k = plan.kernels.find((x) => x.id === id);
      const e = checkFusedExpr((k?.attrs as { expr?: unknown } | undefined)?.expr);
      c = typeof e === 'string' || !e.backward ? null : compileFused(e as FusedExprAttrs);
      compiled.set(id, c);
    }
    return c;
  };

  const fused: Partial<Record<PlanOp, Kernel>> = {
    fused_elementwise(inputs, step, ctx) {
      const p = program(step);
      const elem = inputs.find((_, i) => p?.inputs[i] === 'elem');
      if (!p || !elem || inputs.length !== p.inputs.length || step.outputs.length !== p.outputs.length || !f32(inputs)) return reference.fused_elementwise(inputs, step, ctx);
      const [rows, cols] = dims(elem) as [number, number];
      const fits = inputs.every((t, i) => (p.inputs[i] === 'vec' ? t.rank === 1 && dims(t)[0] === cols : t.rank === 2 && dims(t)[0] === rows && dims(t)[1] === cols));
      if (!fits) return reference.fused_elementwise(inputs, step, ctx);
      return fusedOp(p, inputs, rows, cols);
    },

    attention(inputs, step, ctx) {
      const [q, k, v] = inputs;
      const H = num(step, 'heads');
      const KV = num(step, 'kvHeads');
      const d = num(step, 'headDim');
      const { rows, seqLen: S } = ctx;
      if (!q || !k || !v || inputs.length !== 3 || H % KV !== 0 || dims(q)[0] !== rows * S || !f32(inputs)) return reference.attention(inputs, step, ctx);
      const causal = flag(step, 'causal', true);
      // Each query over its visible keys only (./cpu-attention.ts, WebAssembly SIMD); MCPC_ATTENTION_WASM=0 forces the composition below.
      const ranges = process.env.MCPC_ATTENTION_WASM !== '0' && q.rank === 2 && dims(q)[1] === H * d && dims(k)[1] === KV * d && dims(v)[1] === KV * d ? attentionRanges(ctx, causal) : null;
      if (ranges) return [attentionOp(q, k, v, ranges, { rows, S, H, KV, d })];
      const G = H / KV;
      // Queries [rows·KV, S·G, d] (query row m is position ⌊m/G⌋, head kv·G + m mod G); keys, values [rows·KV, S, d].
      const qh = tf.reshape(tf.transpose(tf.reshape(q, [rows, S, KV, G * d]), [0, 2, 1, 3]), [rows * KV, S * G, d]);
      const heads = (x: Tensor) => tf.reshape(tf.transpose(tf.reshape(x, [rows, S, KV, d]), [0, 2, 1, 3]), [rows * KV, S, d]);
      const scores = tf.matMul(tf.mul(qh, 1 / Math.sqrt(d)) as tf.Tensor3D, heads(k) as tf.Tensor3D, false, true);
      const p = tf.softmax(tf.add(scores, gqaMask(ctx, KV, G, causal)));
      const o = tf.matMul(p as tf.Tensor3D, heads(v) as tf.Tensor3D);
      return [tf.reshape(tf.transpose(tf.reshape(o, [rows, KV, S, G * d]), [0, 2, 1, 3]), [rows * S, H * d])];
    },

    concat_linear(inputs, step, ctx) {
      // The reference's one GEMM (./cpu-ops.ts McpcConcatLinear: its gradient computes dW only for the weights
      // autodiff asks for, not dYᵀ·x over the whole stack, frozen base included), written straight into one
      // output per part: no Slice per part (whose gradients were a PadV2 each and an Add), no SplitV / Concat.
      const parts = step.attrs.parts as { kind: string; out: number; params: string[]; bias?: string; activation?: string }[] | undefined;
      if (!Array.isArray(parts) || parts.length < 2 || !f32(inputs) || inputs[0]!.rank !== 2) return reference.concat_linear(inputs, step, ctx);
      const x = inputs[0]!;
      let at = 1;
      const weights: Tensor[] = [];
      const biases: (Tensor | undefined)[] = [];
      for (const p of parts) {
        if (!Array.isArray(p.params) || at + p.params.length > inputs.length) return reference.concat_linear(inputs, step, ctx);
        // A part's weights (an expert stack [E, r, in] as [E·r, in]) must add up to its width.
        let rows = 0;
        for (const w of inputs.slice(at, at + p.params.length)) {
          weights.push(w.rank === 3 ? tf.reshape(w, [dims(w)[0] * dims(w)[1], dims(w)[2]]) : w);
          rows += dims(weights[weights.length - 1]!)[0];
        }
        if (rows !== p.out) return reference.concat_linear(inputs, step, ctx);
        at += p.params.length;
        biases.push(p.bias ? inputs[at++] : undefined);
      }
      const K = dims(x)[1];
      if (at !== inputs.length || weights.some((w) => w.rank !== 2 || dims(w)[1] !== K) || parts.some((p) => p.kind === 'router' && (p.activation ?? 'softmax') !== 'softmax' && p.activation !== 'sigmoid'))
        return reference.concat_linear(inputs, step, ctx);
      // Biases and the routers' activations are applied in the kernel (and their gradients in its gradient).
      const acts = parts.map((p) => (p.kind === 'router' ? (p.activation === 'sigmoid' ? 'sigmoid' : 'softmax') : 'none') as PartActivation);
      return concatLinearOp(x, weights, parts.map((p) => p.params.length), biases, acts);
    },

    lm_head_xent(inputs, step, ctx) {
      // The LM head and the cross-entropy in one kernel over chunks of rows (./cpu-xent.ts): no [T, V] logits
      // tensor, no one-hot, the gradient from the saved logsumexp; the reference for given logits.
      const given = flag(step, 'logitsGiven', inputs.length === 3);
      const [x, W, labels, mask] = inputs;
      if (given || inputs.length !== 4 || !lmHeadXentFits(x!, W!, labels!, mask!)) return reference.lm_head_xent(inputs, step, ctx);
      return [lmHeadXentCpu(x!, W!, labels!, mask!)];
    },

    lora_up(inputs, step, ctx) {
      // y = h·(s·B)ᵀ: the scale on B [out, r] (and s·dB back) instead of on y [T, out] and dy.
      const [h, B] = inputs;
      const scale = num(step, 'scale');
      if (inputs.length !== 2 || !h || !B || h.rank !== 2 || B.rank !== 2 || !f32(inputs)) return reference.lora_up(inputs, step, ctx);
      return [tf.matMul(h as tf.Tensor2D, (scale === 1 ? B : tf.mul(B, scale)) as tf.Tensor2D, false, true)];
    },

    lora_merge(inputs, step, ctx) {
      // W + s·B·A one kernel, dA / dB one each only when asked, dW the incoming gradient (./cpu-lora-merge.ts).
      const [w, a, b] = inputs;
      if (inputs.length !== 3 || !loraMergeShapesFit(w!, a!, b!)) return reference.lora_merge(inputs, step, ctx);
      return [loraMergeCpu(w!, a!, b!, num(step, 'scale'))];
    },

    embedding(inputs, step, ctx) {
      // Row copies (./cpu-embedding.ts) instead of tfjs-wasm's GatherV2, which walks the output element by element.
      const [tokens, W] = inputs;
      if (inputs.length !== 2 || !tokens || !W || !embeddingCpuFits(tokens, W)) return reference.embedding(inputs, step, ctx);
      return [embeddingCpu(tokens, W)];
    },

    topk_gate(inputs, step, ctx) {
      // One kernel each way (./cpu-topk.ts) instead of TopK, a one-hot mask, Mul, Sum, RealDiv and their backward.
      const p = inputs[0];
      const k = num(step, 'k');
      if (inputs.length !== 1 || !p || !topkGateCpuFits(p, k)) return reference.topk_gate(inputs, step, ctx);
      return [topkGateCpu(p, k, flag(step, 'renormalize', true))];
    },

    rope(inputs, step, ctx) {
      const d = num(step, 'headDim');
      if (inputs.length !== 2 || d % 2 !== 0 || !f32(inputs) || inputs.some((t) => t.rank !== 2 || dims(t)[0] !== ctx.positions.length)) return reference.rope(inputs, step, ctx);
      const [cos, sin] = ropeTables(ctx, d, num(step, 'theta'), 2);
      return [ropeOp(inputs[0]!, cos, sin, num(step, 'heads'), d), ropeOp(inputs[1]!, cos, sin, num(step, 'kvHeads'), d)];
    },

    moe_up_grouped(inputs, step, ctx) {
      const a = { sharedRank: num(step, 'sharedRank', 0), rank: num(step, 'rank'), experts: num(step, 'experts'), scale: num(step, 'scale') };
      return moeUpFits(inputs, a) ? [moeUpGroupedOp(inputs, a)] : reference.moe_up_grouped(inputs, step, ctx);
    },

    moe_down_routed(inputs, step, ctx) {
      const a = { rank: num(step, 'rank'), experts: num(step, 'experts') };
      return moeDownFits(inputs, a) ? [moeDownRoutedOp(inputs, a)] : reference.moe_down_routed(inputs, step, ctx);
    },
  };
  return { ...reference, ...fused };
}

/** The ops the fused CPU table replaces. */
export const cpuFusedOps: readonly PlanOp[] = ['lm_head_xent', 'topk_gate', 'fused_elementwise', 'attention', 'rope', 'concat_linear', 'moe_up_grouped', 'moe_down_routed', 'lora_merge'];

/**
 * The kernel table for a plan on a CPU backend: the fused table on `wasm`, the reference on `cpu` (and any
 * other backend); the environment variable MCPC_KERNELS=fused|reference overrides the choice on wasm and cpu.
 */
export function cpuKernelTable(plan: Pick<Plan, 'kernels'>, backend: string = tf.getBackend()): Record<PlanOp, Kernel> {
  const want = process.env.MCPC_KERNELS;
  if (want !== undefined && want !== '' && want !== 'fused' && want !== 'reference') throw new Error(`MCPC_KERNELS must be 'fused' or 'reference' (got '${want}')`);
  const cpuLike = backend === 'wasm' || backend === 'cpu';
  const useFused = cpuLike && (want === 'fused' || (want !== 'reference' && backend === 'wasm'));
  return useFused ? cpuKernels(plan) : reference;
}
