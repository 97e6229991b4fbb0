/**
 * The execution plan: the one interface between the compiler and the runtime. The compiler writes it, the
 * runtime reads it; neither imports the other, both import this module. JSON-serialisable, versioned, and
 * described by `schema.json` beside this file.
 */

export const PLAN_FORMAT = 'mcpc-plan';
export const PLAN_VERSION = 1;

export type ParamState = 'trainable' | 'frozen' | 'folded' | 'merged' | 'dropped' | 'absent';
/** A tensor dimension: a number, or 'T' for the tokens of one micro-batch (micro_batch * max_len). */
export type Dim = number | 'T';

/**
 * The op of a forward step; the compiler IR's `Op` is this type. After a change run `npm run schema` to
 * regenerate schema.json.
 */
export type PlanOp =
  | 'embedding'
  | 'rmsnorm'
  | 'rope'
  | 'attention'
  | 'swiglu'
  | 'add'
  | 'lm_head_xent'
  | 'adapted_linear'
  | 'linear'
  | 'lora_down'
  | 'lora_up'
  | 'lora_merge'
  | 'router'
  | 'topk_gate'
  | 'expert_down'
  | 'expert_up'
  | 'gate_combine'
  | 'load_balance'
  | 'moe_down_batched'
  | 'moe_down_routed'
  | 'moe_up_grouped'
  | 'concat_linear'
  | 'fused_elementwise'
  | 'ortho_penalty'
  | 'ortho_penalty_batched'
  | 'loss_sum';

/** What a parameter tensor is (the compiler IR's `ParamRole`). */
export type PlanParamRole = 'embedding' | 'weight' | 'bias' | 'norm' | 'lora_A' | 'lora_B' | 'expert_A' | 'expert_B' | 'router_W' | 'router_b';

export interface PlanModelConfig {
  arch: 'qwen2' | 'llama';
  vocab: number;
  hidden: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  ffn: number;
  tied: boolean;
  qkvBias: boolean;
  ropeTheta: number;
  rmsEps: number;
  maxPositions: number;
}

export interface PlanParam {
  id: string;
  shape: number[];
  /** `base` for model weights, else the adapter's name. */
  owner: string;
  role: PlanParamRole;
  site?: string;
  hfName?: string;
  init: { kind: 'pretrained' } | { kind: 'kaiming_uniform'; a: number } | { kind: 'normal'; std: number } | { kind: 'zeros' } | { kind: 'ones' };
  /** State in each stage, by stage name. */
  states: Record<string, ParamState>;
}

export interface PlanKernel {
  id: string;
  op: string;
  /** The reference implementation (a composition of tensor ops in the runtime) the kernel must match. */
  reference: string;
  /** Generated WGSL for kernels the compiler generates (fused elementwise chains); library kernels omit it. */
  wgsl?: { forward: string; backward: string };
  /** Kernel-level constants (for fused kernels: the expression). */
  attrs?: Record<string, unknown>;
}

export interface PlanValue {
  id: string;
  shape: Dim[];
  dtype: 'f32' | 'i32';
  kind: 'activation' | 'param' | 'input' | 'const';
}

export interface PlanStep {
  node: string;
  op: PlanOp;
  kernel: string;
  inputs: string[];
  outputs: string[];
  attrs: Record<string, unknown>;
  site?: string;
  adapter?: string;
  layer?: number;
  /** FLOPs for one micro-batch. */
  flops: number;
  bytes: number;
}

export interface PlanBackwardStep {
  /** The forward node whose gradient this computes. */
  node: string;
  kernel: string;
  /** Inputs of the forward node that receive a gradient. */
  gradInputs: string[];
  flops: number;
}

/** An orthogonality penalty of a stage: weight * sum over `sites` of |A_target A_other^T| (norm l1; l2/fro squared). */
export interface PlanConstraint {
  kind: 'orthogonal';
  target: string;
  others: string[];
  matrix: 'A' | 'B';
  weight: number;
  norm: 'l1' | 'l2' | 'fro';
  sites: string[];
}

export type PlanTransition =
  | { op: 'fold'; adapter: string; sites: string[]; note: string }
  | { op: 'merge'; adapter: string; part?: 'shared'; sites: string[] }
  | { op: 'drop'; adapter: string; part?: 'experts'; condition?: { metric: 'load'; op: string; value: number } }
  | { op: 'freeze' | 'unfreeze'; adapter: string };

export interface PlanBuffer {
  id: string;
  bytes: number;
  values: string[];
  live: [number, number];
  /** With memory planning: the step interval of each entry of `values`, same order; never overlapping. */
  spans?: [number, number][];
}

/** A stage's training settings, every default filled in (mirrors the checker's `StageSettings`). */
export interface PlanStageSettings {
  epochs: number;
  /** Optimizer steps; overrides `epochs` when set. */
  steps?: number;
  lr: number;
  schedule: { kind: 'constant' | 'linear' | 'cosine'; warmup: { percent: number } | { steps: number }; minLr: number };
  /** Sequences per optimizer step. */
  batch: number;
  microBatch: number;
  maxLen: number;
  weightDecay: number;
  optimizer: { kind: 'adamw'; beta1: number; beta2: number; eps: number } | { kind: 'sgd'; momentum: number };
  gradClip: number;
  seed: number;
  precision: 'f32' | 'bf16' | 'f16';
  memoryBytes?: number;
  checkpointEvery: number;
  packing: boolean;
  loss: 'response' | 'all';
  recompute: boolean;
  maxBadSteps: number;
  shuffle: boolean;
}

export interface PlanStage {
  name: string;
  index: number;
  settings: PlanStageSettings;
  trainBase: boolean;
  trainable: string[];
  data: string[];
  adapters: { trainable: string[]; frozen: string[]; folded: string[]; merged: string[]; dropped: string[]; inactive: string[] };
  entry: PlanTransition[];
  exit: PlanTransition[];
  constraints: PlanConstraint[];
  evals: { probes: string[]; every?: number }[];
  values: PlanValue[];
  loss: string;
  forward: PlanStep[];
  backward: PlanBackwardStep[];
  optimizer: {
    kind: 'adamw' | 'sgd';
    fused: boolean;
    dispatches: number;
    params: string[];
    /**
     * Fused only: the flat layout of the trainable tensors, their gradients and each optimizer moment, in
     * elements (f32). Each tensor is the slice [offset, offset + size) of a flat buffer of `size` elements;
     * offsets are multiples of `align`.
     */
    layout?: { param: string; offset: number; size: number }[];
    size?: number;
    align?: number;
  };
  memory: {
    microBatch: number;
    recompute: boolean;
    budget?: number;
    buffers: PlanBuffer[];
    bytes: { params: number; grads: number; optimizer: number; activations: number; peak: number };
    /** With recompute: forward nodes re-run inside the backward of one micro-batch, and their FLOPs. */
    recomputed?: { nodes: number; flops: number };
    notes: string[];
  };
  estimates: {
    tokensPerMicroBatch: number;
    microBatchesPerStep: number;
    /** For one optimizer step (all micro-batches). */
    flopsPerStep: number;
    forwardFlopsPerStep: number;
    backwardFlopsPerStep: number;
    /** Forward FLOPs re-run by activation recomputation (included in flopsPerStep); 0 without recompute. */
    recomputeFlopsPerStep: number;
    bytesPerStep: number;
    /** Kernel launches per optimizer step. */
    dispatchesPerStep: number;
    /** Kernel launches for one micro-batch's forward + backward, plus the optimizer. */
    kernels: number;
    peakBytes: number;
    trainableParams: number;
  };
}

export interface Plan {
  format: typeof PLAN_FORMAT;
  version: typeof PLAN_VERSION;
  pipeline: string;
  compiler: {
    version: string;
    optLevel: 0 | 1;
    passes: { name: string; description: string; required: boolean; ran: boolean; changes: number; notes: string[] }[];
  };
  sources: { path: string; sha256: string }[];
  model: {
    name: string;
    source: { kind: 'builtin'; name: string } | { kind: 'hf'; path: string };
    config: PlanModelConfig;
    tokenizer: { kind: 'bytes' } | { kind: 'hf'; path: string } | { kind: 'unspecified' };
  };
  data: { name: string; kind: 'jsonl' | 'text'; path: string; format: 'chat' | 'instruction' | 'text'; maxRecords?: number }[];
  probes: { name: string; kind: 'multiple_choice' | 'json_format' | 'perplexity'; data: string; maxExamples?: number }[];
  adapters: {
    name: string;
    type: 'lora' | 'moe_lora';
    r: number;
    alpha: number;
    scale: number;
    rslora: boolean;
    dropout: number;
    experts: number;
    topK: number;
    shared: number;
    router: 'softmax' | 'sigmoid';
    renormalize: boolean;
    loadBalance: number;
    routerNoise: number;
    sites: string[];
  }[];
  parameters: PlanParam[];
  kernels: PlanKernel[];
  stages: PlanStage[];
  exports: { format: 'peft' | 'merged' | 'safetensors'; adapters: string[]; path: string }[];
}
