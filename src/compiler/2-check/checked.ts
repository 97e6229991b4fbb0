/**
 * The checked pipeline: the output of 2-check and the input of 3-lower. Every name is resolved, every
 * selector expanded to sites with shapes, every setting typed with its default filled in, and the state of
 * each adapter at the entry of each stage made explicit.
 */
import type { PlanConstraint, PlanStageSettings } from '../../plan/types.js';
import type { Span } from '../source.js';
import type { ModelConfig } from './models.js';
import type { CtorValue, Warmup } from './values.js';

export type AdapterStatus = 'pending' | 'trainable' | 'frozen' | 'merged' | 'dropped';

export interface Site {
  /** Selector-syntax path: `layers[3].mlp.gate`. */
  path: string;
  /** Module name in Hugging Face checkpoints: `model.layers.3.mlp.gate_proj`. */
  hfName: string;
  in: number;
  out: number;
}

export interface LoraOptions {
  r: number;
  alpha: number;
  /** alpha / r, or alpha / sqrt(r) with rsLoRA. */
  scale: number;
  dropout: number;
  rslora: boolean;
  init: 'kaiming' | 'gaussian' | 'zeros';
}

export interface CheckedAdapter {
  name: string;
  type: 'lora' | 'moe_lora';
  lora: LoraOptions;
  /** lora: always-on experts (concatenated); moe_lora: routed experts. */
  experts: number;
  /** moe_lora only. */
  topK: number;
  shared: number;
  router: 'softmax' | 'sigmoid';
  renormalize: boolean;
  loadBalance: number;
  routerNoise: number;
  /** Rows of the concatenated A at each site (what an orthogonality constraint spans). */
  rank: number;
  placement: string;
  sites: Site[];
  /** The stage that declares it, when declared inside a stage. */
  declaredIn?: string;
  span: Span;
}

export interface CheckedData {
  name: string;
  kind: 'jsonl' | 'text';
  path: string;
  format: 'chat' | 'instruction' | 'text';
  maxRecords?: number;
  span: Span;
}

export interface CheckedProbe {
  name: string;
  kind: 'multiple_choice' | 'json_format' | 'perplexity';
  data: string;
  maxExamples?: number;
  span: Span;
}

/** Typed stage settings with defaults filled in: exactly what the plan carries per stage. */
export type StageSettings = PlanStageSettings;

/** An orthogonality constraint as the plan carries it, plus where it was written. */
export interface CheckedConstraint extends PlanConstraint {
  span: Span;
}

export type CheckedTransition =
  | { kind: 'merge'; adapter: string; part?: 'shared'; into: string; span: Span }
  | { kind: 'drop'; adapter: string; part?: 'experts'; condition?: { metric: 'load'; op: '<' | '<=' | '>' | '>='; value: number }; span: Span }
  | { kind: 'freeze' | 'unfreeze'; adapter: string; span: Span };

export interface CheckedStage {
  name: string;
  /** Full-parameter training of the base model. */
  trainBase: boolean;
  /** Adapters trained in this stage. */
  train: string[];
  data: string[];
  settings: StageSettings;
  constraints: CheckedConstraint[];
  evals: { probes: string[]; every?: number; span: Span }[];
  transitions: CheckedTransition[];
  /** Status of every adapter declared so far, at the entry of this stage (before its training). */
  entry: Record<string, AdapterStatus>;
  span: Span;
}

export interface CheckedExport {
  format: 'peft' | 'merged' | 'safetensors';
  adapters: string[];
  path: string;
  span: Span;
}

export interface CheckedPipeline {
  name: string;
  /** The entry file and every file it extends, entry first. */
  files: string[];
  model: {
    name: string;
    source: { kind: 'builtin'; name: string } | { kind: 'hf'; path: string };
    config: ModelConfig;
    /** `unspecified`: a built-in real-model shape with no tokenizer named (compiles; cannot run). */
    tokenizer: { kind: 'bytes' } | { kind: 'hf'; path: string } | { kind: 'unspecified' };
  };
  data: CheckedData[];
  probes: CheckedProbe[];
  adapters: CheckedAdapter[];
  stages: CheckedStage[];
  /** Status of each adapter after the last stage. */
  final: Record<string, AdapterStatus>;
  exports: CheckedExport[];
}

export type { CtorValue };
