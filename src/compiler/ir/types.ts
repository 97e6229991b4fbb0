/**
 * The compiler's intermediate representation: per stage, the training step as a graph of ops over named
 * values, plus the parameter table with each tensor's state in every stage. 3-lower builds it from the
 * checked pipeline; the passes of 4-optimize rewrite it; 5-emit turns it into the plan.
 *
 * Shapes use the symbol 'T' for the tokens of one micro-batch (micro_batch * max_len) so estimates can be
 * made for any batch; every other dimension is a number.
 */
import type { ParamState as PlanParamState, PlanKernel, PlanOp, PlanParam, PlanParamRole } from '../../plan/types.js';
import type { CheckedPipeline, StageSettings } from '../2-check/checked.js';

export type Dim = number | 'T';

export type ParamRole = PlanParamRole;

/** A parameter's state in one stage. */
export type ParamState = PlanParamState;

export type Init = PlanParam['init'];

export interface Param {
  id: string;
  shape: number[];
  /** `base` for model weights, else the adapter's name. */
  owner: string;
  role: ParamRole;
  /** Site (selector path) the tensor belongs to, for adapter tensors and base linears. */
  site?: string;
  /** Tensor name in a Hugging Face / PEFT checkpoint. */
  hfName?: string;
  init: Init;
  /** State in each stage, by stage name. */
  states: Record<string, ParamState>;
}

export interface Value {
  id: string;
  shape: Dim[];
  dtype: 'f32' | 'i32';
  /** activation: produced by a node; param: a Param; input: token ids, labels, mask; const: e.g. a folded weight. */
  kind: 'activation' | 'param' | 'input' | 'const';
}

/** The ops of the IR are exactly the ops a plan step can name. */
export type Op = PlanOp;

export interface Node {
  id: string;
  op: Op;
  inputs: string[];
  outputs: string[];
  attrs: Record<string, unknown>;
  /** Layer index, for nodes inside a decoder layer. */
  layer?: number;
  /** Linear site (selector path) the node belongs to. */
  site?: string;
  /** Adapter the node computes, for adapter ops. */
  adapter?: string;
}

export interface Graph {
  nodes: Node[];
  values: Map<string, Value>;
  /** The scalar the backward pass starts from. */
  loss: string;
}

/** What the runtime does between stages, explicit per parameter. */
export type Transition =
  | { op: 'fold'; adapter: string; sites: string[]; note: string }
  | { op: 'merge'; adapter: string; part?: 'shared'; sites: string[] }
  | { op: 'drop'; adapter: string; part?: 'experts'; condition?: { metric: 'load'; op: string; value: number } }
  | { op: 'freeze' | 'unfreeze'; adapter: string };

export interface Constraint {
  kind: 'orthogonal';
  target: string;
  others: string[];
  matrix: 'A' | 'B';
  weight: number;
  norm: 'l1' | 'l2' | 'fro';
  sites: string[];
}

export interface KernelCall {
  /** Kernel table id. */
  kernel: string;
  node: string;
  inputs: string[];
  outputs: string[];
  flops: number;
  bytes: number;
}

export interface Buffer {
  id: string;
  bytes: number;
  /** Values that share this buffer, in order. */
  values: string[];
  /** First and last step index (in the forward+backward schedule) at which the buffer is live. */
  live: [number, number];
  /** Set by memory planning: the step interval of each entry of `values`, in the same order (disjoint). */
  spans?: [number, number][];
}

export interface MemoryPlan {
  microBatch: number;
  recompute: boolean;
  buffers: Buffer[];
  bytes: { params: number; grads: number; optimizer: number; activations: number; peak: number };
  budget?: number;
  /** With recompute: the forward nodes re-run inside the backward of one micro-batch, and their FLOPs. */
  recomputed?: { nodes: number; flops: number };
  notes: string[];
}

/** Flat layout of a stage's trainable tensors for the fused optimizer (elements, f32). */
export interface OptimizerLayout {
  /** Every offset is a multiple of this many elements. */
  align: number;
  /** Length of each flat buffer (parameters, gradients, each optimizer moment), padding included. */
  size: number;
  entries: { param: string; offset: number; size: number }[];
}

export interface StageIR {
  name: string;
  index: number;
  settings: StageSettings;
  trainBase: boolean;
  trainable: string[];
  data: string[];
  /** Adapters by status at stage entry. */
  adapters: { trainable: string[]; frozen: string[]; folded: string[]; merged: string[]; dropped: string[]; inactive: string[] };
  /** Applied at stage entry (e.g. fold frozen LoRA into a stage copy of the base weight). */
  entry: Transition[];
  /** Applied after training (the then-block). */
  exit: Transition[];
  constraints: Constraint[];
  evals: { probes: string[]; every?: number }[];
  graph: Graph;
  /** Set by the fused-optimizer pass: one dispatch for all trainable tensors when true. */
  fusedOptimizer: boolean;
  /** Set by the fused-optimizer pass with `fusedOptimizer`. */
  optimizerLayout?: OptimizerLayout;
  memory?: MemoryPlan;
}

export interface IR {
  pipeline: CheckedPipeline;
  params: Map<string, Param>;
  stages: StageIR[];
  /** Kernels generated by passes (fused elementwise chains), by id; the emitter adds them to the kernel table. */
  kernels: Map<string, PlanKernel>;
}

export const dimValue = (d: Dim, tokens: number): number => (d === 'T' ? tokens : d);
export const numel = (shape: Dim[], tokens: number): number => shape.reduce<number>((n, d) => n * dimValue(d, tokens), 1);
