/**
 * The cost model: FLOPs and bytes moved per op, which values need gradients, and the backward work each
 * op implies. Used for the plan's estimates, for `mcpc explain`, and by passes that trade work for memory.
 */
import { concatParts, type ConcatPart } from './concat.js';
import type { Dim, Graph, IR, Node, StageIR } from './types.js';
import { dimValue, numel } from './types.js';

/** Tokens in one micro-batch. */
export const stageTokens = (st: StageIR): number => st.settings.microBatch * st.settings.maxLen;

const num = (x: unknown): number => (typeof x === 'number' ? x : 0);

/** Forward FLOPs of one node for T tokens. Multiply-adds count 2. */
export function forwardFlops(n: Node, g: Graph, T: number): number {
  const a = n.attrs;
  const sizeOf = (v: string) => numel(g.values.get(v)?.shape ?? [], T);
  switch (n.op) {
    case 'embedding':
      return 0;
    case 'rmsnorm':
      return 4 * sizeOf(n.outputs[0]);
    case 'linear':
      return 2 * T * num(a.in) * num(a.out) + (n.inputs.length > 2 ? T * num(a.out) : 0);
    case 'lora_down':
    case 'expert_down':
      return 2 * T * num(a.in) * num(a.rank);
    case 'lora_up':
    case 'expert_up':
      return 2 * T * num(a.rank) * num(a.out) + T * num(a.out);
    case 'lora_merge':
      // W + s·B·A: once per step, whatever the number of tokens.
      return 2 * num(a.out) * num(a.rank) * num(a.in) + num(a.out) * num(a.in);
    case 'router':
      return 2 * T * num(a.in) * num(a.experts) + 5 * T * num(a.experts);
    case 'topk_gate':
      return T * num(a.experts) * Math.max(1, num(a.k)) + 2 * T * num(a.experts);
    case 'gate_combine':
      return 2 * T * num(a.experts) * num(a.out);
    case 'moe_down_batched':
      return 2 * T * num(a.in) * num(a.rows);
    case 'moe_down_routed':
      // Each token's top-k experts only: k/E of moe_down_batched's dense x·[A_0 ; … ; A_{E−1}]ᵀ.
      return 2 * T * num(a.in) * Math.min(num(a.k), num(a.experts)) * num(a.rank);
    case 'moe_up_grouped':
      // Only the top-k experts of each token (plus the shared experts) run: scales with k, not experts.
      // Per token: shared GEMM + its scale-and-add, k expert GEMMs + their gate-scale-and-add.
      return 2 * T * (num(a.sharedRank) + num(a.k) * num(a.rank)) * num(a.out) + 2 * T * (num(a.k) + (num(a.sharedRank) > 0 ? 1 : 0)) * num(a.out);
    case 'concat_linear':
      // One GEMM over the concatenated weights, plus each part's epilogue (base bias, router bias + activation).
      return concatParts(n).reduce((s, p) => s + concatPartFlops(p, num(a.in), T), 0) || 2 * T * num(a.in) * num(a.totalOut);
    case 'rope':
      return 3 * (sizeOf(n.inputs[0]) + sizeOf(n.inputs[1]));
    case 'attention': {
      const S = Math.min(num(a.seqLen), T);
      // Causal: half of the S x S scores, QK^T and PV, plus softmax.
      return 2 * T * S * num(a.heads) * num(a.headDim) + 3 * T * S * num(a.heads);
    }
    case 'swiglu':
      return 5 * sizeOf(n.outputs[0]);
    case 'add':
      return sizeOf(n.outputs[0]) * Math.max(1, n.inputs.length - 1);
    case 'lm_head_xent': {
      const d = g.values.get(n.inputs[0])!.shape[1] as number;
      return (a.logitsGiven ? 0 : 2 * T * d * num(a.vocab)) + 5 * T * num(a.vocab);
    }
    case 'ortho_penalty':
    case 'ortho_penalty_batched':
      return num(a.flops);
    case 'load_balance':
      return 4 * T * num(a.experts);
    case 'fused_elementwise':
      // Per row when the fusion pass recorded it, so the estimate follows a micro-batch chosen later.
      return typeof a.flopsPerRow === 'number' ? a.flopsPerRow * dimValue(a.rows as Dim, T) : num(a.flops);
    case 'loss_sum':
      return 2 * n.inputs.length;
    case 'adapted_linear':
      return 2 * T * num(a.in) * num(a.out);
  }
}

/** Bytes one node reads and writes (f32). */
export function nodeBytes(n: Node, g: Graph, T: number): number {
  return 4 * [...n.inputs, ...n.outputs].reduce((s, v) => s + numel(g.values.get(v)?.shape ?? [], T), 0);
}

/** Values whose gradient the backward pass computes: everything downstream of a trainable parameter. */
export function gradValues(ir: IR, st: StageIR): Set<string> {
  const need = new Set<string>();
  for (const v of st.graph.values.values()) if (v.kind === 'param' && ir.params.get(v.id)?.states[st.name] === 'trainable') need.add(v.id);
  for (const n of st.graph.nodes) if (n.inputs.some((i) => need.has(i))) for (const o of n.outputs) need.add(o);
  return need;
}

/** Matmul-like ops: backward costs one forward per input that needs a gradient. */
const matmulLike = new Set(['linear', 'lora_down', 'lora_up', 'lora_merge', 'expert_down', 'expert_up', 'router', 'moe_down_batched', 'moe_down_routed', 'moe_up_grouped', 'concat_linear', 'lm_head_xent', 'attention', 'gate_combine', 'ortho_penalty', 'ortho_penalty_batched']);

/** Forward FLOPs of one part of a concat_linear: what the node it replaced cost on its own. */
function concatPartFlops(p: ConcatPart, inF: number, T: number): number {
  const gemm = 2 * T * inF * p.out;
  if (p.kind === 'router') return gemm + 5 * T * p.out;
  return gemm + (p.bias ? T * p.out : 0);
}

/** Backward FLOPs of a node given which of its inputs need gradients (0 when none do). */
export function backwardFlops(n: Node, g: Graph, T: number, need: Set<string>): number {
  const gradInputs = n.inputs.filter((i) => need.has(i));
  if (!gradInputs.length) return 0;
  // Batched ops: the backward of each part or term is what the node it replaced would cost, so a batching
  // pass never changes the backward estimate (no dW for frozen base parts, no dA for constant terms).
  if (n.op === 'concat_linear' && concatParts(n).length) {
    const dx = need.has(n.inputs[0]) ? 1 : 0;
    return concatParts(n).reduce((s, p) => {
      const k = dx + [...p.params, ...(p.bias ? [p.bias] : [])].filter((i) => need.has(i)).length;
      return s + concatPartFlops(p, num(n.attrs.in), T) * Math.min(2, k);
    }, 0);
  }
  if (n.op === 'ortho_penalty_batched' && Array.isArray(n.attrs.terms)) {
    return (n.attrs.terms as { targetParams: string[]; otherParams: string[]; flops: number }[]).reduce(
      (s, t) => s + t.flops * Math.min(2, [...t.targetParams, ...t.otherParams].filter((i) => need.has(i)).length),
      0,
    );
  }
  // A fused kernel's backward is generated: its own count (all gradient slots, and the column sums).
  if (n.op === 'fused_elementwise' && typeof n.attrs.backwardFlopsPerRow === 'number') return n.attrs.backwardFlopsPerRow * dimValue(n.attrs.rows as Dim, T);
  const f = forwardFlops(n, g, T);
  if (n.op === 'moe_down_routed') {
    // dx and dA_e over the routed rows, one product each; the gates are a mask and get no gradient.
    return f * [n.inputs[0], n.inputs[2]].filter((i) => i !== undefined && need.has(i)).length;
  }
  if (n.op === 'moe_down_batched' || n.op === 'moe_up_grouped') {
    // The concatenated shared and routed tensors are one operand of the GEMM.
    const acts = gradInputs.filter((i) => g.values.get(i)?.kind !== 'param').length;
    const prm = gradInputs.some((i) => g.values.get(i)?.kind === 'param') ? 1 : 0;
    return f * Math.min(2, acts + prm);
  }
  if (matmulLike.has(n.op)) {
    // One GEMM per input needing a gradient, but never more than twice the forward for a two-operand GEMM.
    return f * Math.min(2, gradInputs.length);
  }
  return 2 * f;
}
