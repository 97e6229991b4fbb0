/**
 * The kernel table of the WebGPU backend: the reference table (./reference.ts) with the ops that have a
 * WGSL kernel (src/runtime/webgpu/kernels/) replaced. Same `Kernel` signature and the same conventions;
 * every WGSL kernel has a custom gradient, so the executor's autodiff runs its backward kernels. A kernel
 * falls back to the reference for the cases it does not take (given logits, lm_head_xent inputs xentFits
 * refuses, terms that cannot be batched), and every op runs the reference when the current tfjs
 * backend is not webgpu.
 *
 *   rmsnorm  swiglu  rope  attention  lm_head_xent  topk_gate  ortho_penalty_batched   WGSL
 *   fused_elementwise   the plan's own WGSL (the compiler's modules in the plan's kernel table, ../webgpu/fused.ts):
 *                       forward in one dispatch, the generated backward in one (+ one column sum for a vec
 *                       input's gradient); needs the plan, so only in `webgpuKernelTable(plan)`
 *   concat_linear       ONE WGSL GEMM over the weights stacked in place (../webgpu/concat-linear.ts), each part's
 *                       columns stored to its output with its bias; a router part's softmax/sigmoid one more
 *                       dispatch in the same tfjs kernel; gradient: dx one GEMM (a K segment per weight), dW
 *                       only for the weights autodiff asks for (a frozen base costs nothing), db a column sum
 *   topk_gate           one kernel forward, one backward (../webgpu/topk-gate.ts; MCPC_GEMM_WGSL=0: mask kernel + tfjs ops)
 *   lora_merge          W + s·B·A one kernel; gradient dA, dB one kernel each, dW the incoming gradient (../webgpu/lora-merge.ts)
 *   linear  lora_down  lora_up   one McpcGemm (../webgpu/gemm.ts; scale and bias fused), gradient GEMMs per input asked
 *   moe_up_grouped      one WGSL GEMM forward (gates applied in A's loader, B_e [E, out, r] read in place); gradient:
 *                       un-gated U = s·dy·[B_sh | B_e] once, then dh and dgates one small kernel each, dB_e one GEMM
 *                       storing [E, out, r] in place, dB_sh one GEMM (../webgpu/moe-up.ts); reference as concat_linear
 *   moe_down_routed     ONE GEMM x·[A_0 ; …]ᵀ (A_e read in place), the top-k mask per expert block in its store;
 *                       gradient: dx, dA_e one GEMM each (the mask in A's loader), none to the gates (../webgpu/moe-down.ts)
 *   everything else (moe_down_batched, router, expert_*, add, ...)                 reference (tfjs ops;
 *                       (router: also with the training-step noise input the executor appends, attrs.noise)
 *
 * fused_elementwise falls back to the reference (the expression as tfjs ops) when the plan's kernel has no
 * WGSL or no generated backward, its attrs do not describe the modules (../webgpu/fused.ts `fusedWgslOf`
 * says why), an input is not float32 or not [rows, cols] / [cols] as declared, or the grid is past 2^31
 * elements (u32 indices); and everywhere when MCPC_FUSED_WGSL=0 (tests compare the two). concat_linear falls
 * back to the reference when its attrs do not describe the inputs, an input is not float32, a weight is not
 * [r, in] / [E, r, in] of x's width or a part is empty (a WGSL binding nobody reads breaks the pipeline layout),
 * or x has more than 65535·64 rows; and everywhere when MCPC_GEMM_WGSL=0.
 *
 * LoRA dropout: the executor masks a dropout adapter's A input before the (reference) lora_down /
 * expert_down / moe_down_batched / moe_down_routed run (../dropout.ts), the same semantics as the CPU tables.
 *
 * The executor's optimizer step on webgpu is ../webgpu/kernels/adamw.ts (every trainable tensor in one dispatch,
 * through optimizer.ts `applyAdamWAll`).
 */
import type { Plan, PlanOp } from '../../plan/types.js';
import { tf, type Tensor } from '../tfjs/index.js';
import { concatLinear, concatLinearFits, type ConcatLayout } from '../webgpu/concat-linear.js';
import { gemm, linear } from '../webgpu/gemm.js';
import { fusedWgsl, fusedWgslFits, fusedWgslOf, type FusedWgslProgram } from '../webgpu/fused.js';
import { attention, segmentTensor } from '../webgpu/kernels/attention.js';
import { orthoPenaltyBatched, type OrthoTermSpec } from '../webgpu/kernels/ortho.js';
import { rmsnorm } from '../webgpu/kernels/rmsnorm.js';
import { rope } from '../webgpu/kernels/rope.js';
import { onWebGpu } from '../webgpu/kernels/run.js';
import { swiglu } from '../webgpu/kernels/swiglu.js';
import { topkMask } from '../webgpu/kernels/topk.js';
import { loraMerge, loraMergeFits } from '../webgpu/lora-merge.js';
import { topkGate, topkGateFits } from '../webgpu/topk-gate.js';
import { moeUpGrouped, moeUpFits } from '../webgpu/moe-up.js';
import { moeDownFits, moeDownRouted } from '../webgpu/moe-down.js';
import { lmHeadXent, xentFits } from '../webgpu/kernels/xent.js';
import { f16MatmulOn } from '../webgpu/matmul-f16.js';
import { KernelError, reference, ropeTables, type Kernel, type KernelStep } from './reference.js';

function num(step: KernelStep, key: string): number {
  const v = step.attrs[key];
  if (typeof v === 'number' && Number.isFinite(v)) return v;
  throw new KernelError(step, `attrs.${key} must be a finite number (got ${JSON.stringify(v)})`);
}
const flag = (step: KernelStep, key: string, fallback: boolean): boolean => (typeof step.attrs[key] === 'boolean' ? (step.attrs[key] as boolean) : fallback);

/** `k` on webgpu, else the reference kernel of the op. */
function gpu(op: PlanOp, k: Kernel): Kernel {
  return (inputs, step, ctx) => (onWebGpu() ? k(inputs, step, ctx) : reference[op](inputs, step, ctx));
}

/** Whether the plan's GEMM ops (concat_linear, ...) run our WGSL GEMMs: MCPC_GEMM_WGSL=0 forces the reference. */
export function gemmWgslEnabled(): boolean {
  const v = process.env.MCPC_GEMM_WGSL;
  if (v !== undefined && v !== '' && v !== '0' && v !== '1') throw new Error(`MCPC_GEMM_WGSL must be 0 or 1 (got '${v}')`);
  return v !== '0';
}

/**
 * Whether the plan's products (linear, lora_down, lora_up, concat_linear) run our f32 WGSL GEMMs: not when the
 * f16 training path is on (precision bf16/f16 on an adapter with subgroup matrices): then the reference ops'
 * tf.matMul reach the f16 tensor-core BatchMatMul (../webgpu/matmul-f16.ts).
 */
function productsWgsl(): boolean {
  return gemmWgslEnabled() && !f16MatmulOn();
}

/** concat_linear's parts as the WGSL kernel reads its inputs, or undefined when the attrs do not describe them (reference). */
const concatLayouts = new WeakMap<object, ConcatLayout | null>();
function concatLayoutOf(step: KernelStep, nInputs: number): ConcatLayout | undefined {
  const parts = step.attrs.parts as { kind?: string; out?: number; params?: unknown[]; bias?: string; activation?: string }[] | undefined;
  if (!Array.isArray(parts) || !parts.length) return undefined;
  const hit = concatLayouts.get(parts);
  if (hit !== undefined) return hit ?? undefined;
  let at = 1;
  const out: ConcatLayout = { parts: [] };
  let ok = true;
  for (const p of parts) {
    const act = p.kind === 'router' ? (p.activation ?? 'softmax') : 'none';
    if (!Array.isArray(p.params) || !p.params.length || typeof p.out !== 'number' || (act !== 'none' && act !== 'softmax' && act !== 'sigmoid')) {
      ok = false;
      break;
    }
    const weights = p.params.map((_, k) => at + k);
    at += p.params.length;
    out.parts.push({ out: p.out, weights, ...(p.bias ? { bias: at++ } : {}), act: act as 'none' | 'softmax' | 'sigmoid' });
  }
  const layout = ok && at === nInputs ? out : null;
  concatLayouts.set(parts, layout);
  return layout ?? undefined;
}

/**
 * x [T, in] and W [out, in] that McpcGemm takes: float32, 2-D, matching widths, no empty dimension (a GEMM
 * with K = 0 would not read its operands, and a binding nobody reads breaks the pipeline layout), a bias [out].
 */
function gemmFits(x: Tensor | undefined, w: Tensor | undefined, b?: Tensor): boolean {
  if (!x || !w || x.dtype !== 'float32' || w.dtype !== 'float32' || x.rank !== 2 || w.rank !== 2 || x.shape[1] !== w.shape[1] || x.size === 0 || w.size === 0) return false;
  return !b || (b.dtype === 'float32' && b.rank === 1 && b.shape[0] === w.shape[0]);
}

const wgsl: Partial<Record<PlanOp, Kernel>> = {
  // linear / lora_down / lora_up: one McpcGemm (../webgpu/gemm.ts) reading W [out, in] in place, the scale and
  // bias fused, its gradient GEMMs only for the inputs autodiff asks for; the reference when gemmFits says no.
  linear: gpu('linear', (inputs, step, ctx) => {
    const [x, w, b] = inputs;
    if (!productsWgsl() || inputs.length > 3 || !gemmFits(x, w, b)) return reference.linear(inputs, step, ctx);
    return [linear(x!, w!, b)];
  }),

  lora_down: gpu('lora_down', (inputs, step, ctx) => {
    const [x, a] = inputs;
    if (!productsWgsl() || inputs.length !== 2 || !gemmFits(x, a)) return reference.lora_down(inputs, step, ctx);
    return [linear(x!, a!)];
  }),

  lora_up: gpu('lora_up', (inputs, step, ctx) => {
    const [h, b] = inputs;
    if (!productsWgsl() || inputs.length !== 2 || !gemmFits(h, b)) return reference.lora_up(inputs, step, ctx);
    return [gemm(h!, b!, false, true, num(step, 'scale'))];
  }),

  concat_linear: gpu('concat_linear', (inputs, step, ctx) => {
    // The reference (and its errors) when switched off, when the attrs do not describe the inputs, or when an
    // input does not fit the kernel (not float32, a weight of another width, an empty part: concatLinearFits).
    const layout = productsWgsl() ? concatLayoutOf(step, inputs.length) : undefined;
    if (!layout || !concatLinearFits(inputs, layout)) return reference.concat_linear(inputs, step, ctx);
    return concatLinear(inputs, layout);
  }),

  moe_down_routed: gpu('moe_down_routed', (inputs, step, ctx) => {
    // x·[A_0 ; …]ᵀ with the top-k mask per expert block as ONE GEMM (A_e [E, r, in] read in place, the mask in
    // its store), its gradient one GEMM per input asked for (the mask in A's loader) and none to the gates
    // (../webgpu/moe-down.ts). The reference when switched off or when the inputs do not fit.
    const [x, gates, ae] = inputs;
    const s = { rank: num(step, 'rank'), experts: num(step, 'experts') };
    if (!productsWgsl() || inputs.length !== 3 || !moeDownFits(x, gates, ae, s)) return reference.moe_down_routed(inputs, step, ctx);
    return [moeDownRouted(x!, gates!, ae!, s)];
  }),

  moe_up_grouped: gpu('moe_up_grouped', (inputs, step, ctx) => {
    // One GEMM forward, 4 kernels backward (../webgpu/moe-up.ts). The reference (and its errors) when switched
    // off, with the f16 path on (its tf.matMul must reach the f16 BatchMatMul), or when the inputs do not fit
    // (moeUpFits: not float32, shapes that disagree with the attrs, a shared B with sharedRank 0, an empty side).
    const s = { sharedRank: (step.attrs.sharedRank as number | undefined) ?? 0, rank: step.attrs.rank as number, experts: step.attrs.experts as number, scale: step.attrs.scale as number };
    if (!productsWgsl() || !moeUpFits(inputs, s)) return reference.moe_up_grouped(inputs, step, ctx);
    return [moeUpGrouped(inputs, s)];
  }),

  rmsnorm: gpu('rmsnorm', (inputs, step) => [rmsnorm(inputs[0]!, inputs[1], num(step, 'eps'))]),

  swiglu: gpu('swiglu', (inputs, step, ctx) => (inputs.length === 2 ? [swiglu(inputs[0]!, inputs[1]!)] : reference.swiglu(inputs, step, ctx))),

  rope: gpu('rope', (inputs, step, ctx) => {
    const d = num(step, 'headDim');
    if (inputs.length !== 2 || d % 2 !== 0) return reference.rope(inputs, step, ctx);
    const [cos, sin] = ropeTables(ctx, d, num(step, 'theta'), 2);
    return [rope(inputs[0]!, cos, sin, num(step, 'heads'), d), rope(inputs[1]!, cos, sin, num(step, 'kvHeads'), d)];
  }),

  attention: gpu('attention', (inputs, step, ctx) => {
    const heads = num(step, 'heads');
    const kvHeads = num(step, 'kvHeads');
    const headDim = num(step, 'headDim');
    if (inputs.length !== 3 || heads % kvHeads !== 0 || headDim > 1024 || inputs[0]!.shape[0] !== ctx.rows * ctx.seqLen) return reference.attention(inputs, step, ctx);
    const shape = { rows: ctx.rows, seqLen: ctx.seqLen, heads, kvHeads, headDim, causal: flag(step, 'causal', true) };
    return [attention(inputs[0]!, inputs[1]!, inputs[2]!, segmentTensor(ctx.segments, ctx.cache), shape)];
  }),

  lm_head_xent: gpu('lm_head_xent', (inputs, step, ctx) => {
    const given = flag(step, 'logitsGiven', inputs.length === 3);
    if (given || inputs.length !== 4 || !xentFits(inputs[0]!, inputs[1]!, inputs[2]!, inputs[3]!)) return reference.lm_head_xent(inputs, step, ctx);
    return [lmHeadXent(inputs[0]!, inputs[1]!, inputs[2]!, inputs[3]!)];
  }),

  // W + s·B·A in one dispatch, dA and dB one each, dW = dW' (../webgpu/lora-merge.ts).
  lora_merge: gpu('lora_merge', (inputs, step, ctx) => {
    const [w, a, b] = inputs;
    if (!gemmWgslEnabled() || inputs.length !== 3 || !loraMergeFits(w!, a!, b!)) return reference.lora_merge(inputs, step, ctx);
    return [loraMerge(w!, a!, b!, num(step, 'scale'))];
  }),
  topk_gate: gpu('topk_gate', (inputs, step, ctx) => {
    if (inputs.length !== 1) return reference.topk_gate(inputs, step, ctx);
    const p = inputs[0]!;
    // One fused kernel forward and backward (../webgpu/topk-gate.ts); k < 1, more than 256 experts or not
    // float32 [T, E] (topkGateFits), or MCPC_GEMM_WGSL=0: the mask kernel and tfjs ops below.
    const k = num(step, 'k');
    if (gemmWgslEnabled() && topkGateFits(p, k)) return [topkGate(p, k, flag(step, 'renormalize', true))];
    const kept = tf.mul(p, topkMask(p, num(step, 'k')));
    return [flag(step, 'renormalize', true) ? tf.div(kept, tf.sum(kept, -1, true)) : kept];
  }),

  ortho_penalty_batched: gpu('ortho_penalty_batched', (inputs, step, ctx) => {
    const terms = step.attrs.terms as OrthoTermSpec[] | undefined;
    if (!Array.isArray(terms) || !terms.length) return reference.ortho_penalty_batched(inputs, step, ctx);
    const byId = new Map(step.inputs.map((id, i) => [id, inputs[i]!]));
    const get = (id: string): Tensor => {
      const t = byId.get(id);
      if (!t) throw new KernelError(step, `term reads ${id}, which is not an input`);
      return t;
    };
    const v = orthoPenaltyBatched(terms, get, flag(step, 'weighted', true));
    return v ? [v] : reference.ortho_penalty_batched(inputs, step, ctx);
  }),
};

/** The WebGPU kernel table without a plan: every plan op, WGSL where there is a kernel, else the reference (fused_elementwise too). */
export const webgpuKernels: Record<PlanOp, Kernel> = { ...reference, ...wgsl };

/** The ops that run a WGSL kernel on webgpu (fused_elementwise: through {@link webgpuKernelTable}). */
export const wgslOps: readonly PlanOp[] = [...(Object.keys(wgsl) as PlanOp[]), 'fused_elementwise'];

/** Whether fused_elementwise runs the plan's WGSL: MCPC_FUSED_WGSL=0 forces the reference. */
export function fusedWgslEnabled(): boolean {
  const v = process.env.MCPC_FUSED_WGSL;
  if (v !== undefined && v !== '' && v !== '0' && v !== '1') throw new Error(`MCPC_FUSED_WGSL must be 0 or 1 (got '${v}')`);
  return v !== '0';
}

/**
 * The WebGPU kernel table for `plan`: {@link webgpuKernels} with fused_elementwise running the WGSL the
 * compiler generated for each fused kernel (the plan's kernel table), unless `fused` is false.
 */
export function webgpuKernelTable(plan: Pick<Plan, 'kernels'>, fused = fusedWgslEnabled()): Record<PlanOp, Kernel> {
  if (!fused) return { ...webgpuKernels };
  const programs = new Map<string, FusedWgslProgram | string>();
  const program = (step: KernelStep): FusedWgslProgram | string => {
    const id = typeof step.attrs.kernel === 'string' ? step.attrs.kernel : ((step as { kernel?: string }).kernel ?? '');
    let p = programs.get(id);
    if (p === undefined) {
      p = fusedWgslOf(plan.kernels.find((k) => k.id === id));
      programs.set(id, p);
    }
    return p;
  };
  return {
    ...webgpuKernels,
    fused_elementwise: gpu('fused_elementwise', (inputs, step, ctx) => {
      const p = program(step);
      const grid = typeof p === 'string' || step.outputs.length !== p.outputs ? undefined : fusedWgslFits(p, inputs);
      if (typeof p === 'string' || !grid) return reference.fused_elementwise(inputs, step, ctx);
      return fusedWgsl(p, inputs, grid.rows, grid.cols);
    }),
  };
}
