/**
 * The parts of a `concat_linear` node (one GEMM x·[W_1 ; … ; W_n]ᵀ, one output per part), shared by the passes
 * that write them (concat-base-adapter, concat-shared-input) and read by the cost model. attrs:
 *   in, totalOut = Σ part.out, parts: [{kind, out, params, node, site?, adapter?, bias?, activation?, attrs}]
 * Inputs: x, then per part in order its params and its bias; outputs: one per part, in order.
 */
import type { Graph, IR, Node } from './types.js';

export interface ConcatPart {
  kind: 'linear' | 'lora_down' | 'moe_down_batched' | 'router';
  out: number;
  /** Weight tensors of the part (biases excluded), in the node's input order. */
  params: string[];
  /** Id of the node the part replaced. */
  node: string;
  /** Linear site of the node the part replaced (a concat_linear may span several sites: concat-shared-input). */
  site?: string;
  adapter?: string;
  bias?: string;
  activation?: string;
  attrs: Record<string, unknown>;
}

/** The ops a concat_linear part can replace. */
export const concatPartOps = new Set<Node['op']>(['linear', 'lora_down', 'moe_down_batched', 'router']);

/** Output width of a part-able node. */
export function partOut(n: Node): number {
  switch (n.op) {
    case 'linear':
      return n.attrs.out as number;
    case 'lora_down':
      return n.attrs.rank as number;
    case 'moe_down_batched':
      return n.attrs.rows as number;
    default:
      return n.attrs.experts as number;
  }
}

/** Whether every input of `n` after x is a parameter or a constant (a GEMM against weights only). */
export function readsWeightsOnly(n: Node, g: Graph): boolean {
  return n.inputs.slice(1).every((i) => isWeight(i, g));
}

/**
 * A value that is a weight: a parameter, a stage constant (a folded copy), or what a `lora_merge` writes every
 * step (fold-trainable-lora: W + s·B·A, from weights only, at the graph's head).
 */
export function isWeight(v: string, g: Graph): boolean {
  const kind = g.values.get(v)?.kind;
  return kind === 'param' || kind === 'const' || g.nodes.some((m) => m.op === 'lora_merge' && m.outputs[0] === v);
}

/**
 * The part that replaces `n` (one of {@link concatPartOps}), and the inputs it adds after x: its weights, then
 * its bias (a linear's third input, a router's second param).
 */
export function concatPartOf(n: Node): { part: ConcatPart; inputs: string[] } {
  const { in: _in, ...attrs } = n.attrs;
  void _in;
  let params = n.inputs.slice(1);
  let bias: string | undefined;
  if (n.op === 'linear' && params.length > 1) bias = params[1];
  if (n.op === 'router') bias = params[1];
  if (bias) params = params.filter((p) => p !== bias);
  return {
    part: {
      kind: n.op as ConcatPart['kind'],
      out: partOut(n),
      params,
      node: n.id,
      ...(n.site ? { site: n.site } : {}),
      ...(n.adapter ? { adapter: n.adapter } : {}),
      ...(bias ? { bias } : {}),
      ...(n.op === 'router' ? { activation: n.attrs.activation as string } : {}),
      attrs,
    },
    inputs: [...params, ...(bias ? [bias] : [])],
  };
}

/** The parts of a concat_linear node ([] when its attrs hold none). */
export const concatParts = (n: Node): ConcatPart[] => (n.op === 'concat_linear' && Array.isArray(n.attrs.parts) ? (n.attrs.parts as ConcatPart[]) : []);

/**
 * Nodes that must keep their own node on x because training changes what they compute from it: the A projection
 * (`lora_down`, `moe_down_batched`) of an adapter with LoRA dropout > 0 (it reads dropout(x), one mask per
 * adapter and site, src/runtime/dropout.ts) and the `router` of a mixture with router_noise > 0 (its logits get
 * noise before the activation). The runtime refuses a concat_linear holding either. Takes a node, or a concat
 * part as `{op: part.kind, adapter: part.adapter}`.
 */
export function trainingAltersInput(ir: IR): (n: { op: string; adapter?: string }) => boolean {
  const dropout = new Map(ir.pipeline.adapters.map((a) => [a.name, a.lora.dropout]));
  const noise = new Map(ir.pipeline.adapters.map((a) => [a.name, a.routerNoise]));
  return (n) => {
    if (n.adapter === undefined) return false;
    if (n.op === 'router') return (noise.get(n.adapter) ?? 0) > 0;
    if (n.op === 'lora_down' || n.op === 'moe_down_batched' || n.op === 'moe_down_routed' || n.op === 'expert_down') return (dropout.get(n.adapter) ?? 0) > 0;
    return false;
  };
}
