/**
 * What each constructor and each stage setting accepts: names, types, ranges, defaults and one line of docs.
 * The checker validates against these tables; `docs/language.md` describes the same tables for people.
 */

export type ValueType =
  | { t: 'int'; min?: number; max?: number }
  | { t: 'number'; min?: number; max?: number; exclusiveMin?: boolean }
  | { t: 'bool' }
  | { t: 'string' }
  | { t: 'path' }
  | { t: 'enum'; values: string[] }
  /** A percentage (3%) or a whole number of steps. */
  | { t: 'warmup' }
  /** A percentage or a number in [0, 1]. */
  | { t: 'fraction' }
  | { t: 'size' }
  | { t: 'ref'; kind: 'model' | 'tokenizer' | 'data' }
  /** A constructor of a family, called (`cosine(warmup: 3%)`) or named bare (`cosine`). */
  | { t: 'ctor'; family: Family };

export interface ParamSpec {
  name: string;
  type: ValueType;
  required?: boolean;
  /** May be given without a name, in this position. */
  positional?: number;
  default?: unknown;
  doc: string;
}

export interface CtorSpec {
  name: string;
  doc: string;
  params: ParamSpec[];
}

export type Family = 'model' | 'tokenizer' | 'data' | 'adapter' | 'probe' | 'schedule' | 'optimizer' | 'constraint';

const p = (name: string, type: ValueType, doc: string, extra: Partial<ParamSpec> = {}): ParamSpec => ({ name, type, doc, ...extra });

const int = (min?: number, max?: number): ValueType => ({ t: 'int', min, max });
const num = (min?: number, max?: number, exclusiveMin = false): ValueType => ({ t: 'number', min, max, exclusiveMin });

const loraParams = (rDefault: number): ParamSpec[] => [
  p('r', int(1, 4096), 'rank of each expert', { default: rDefault }),
  p('alpha', num(0, undefined, true), 'scaling numerator: scale = alpha / r (alpha / sqrt(r) with rslora)', { default: undefined }),
  p('dropout', num(0, 0.999), 'dropout on the adapter input during training', { default: 0 }),
  p('rslora', { t: 'bool' }, 'rank-stabilised scaling alpha / sqrt(r)', { default: false }),
  p('init', { t: 'enum', values: ['kaiming', 'gaussian', 'zeros'] }, 'initialisation of A (B always starts at zero)', { default: 'kaiming' }),
];

export const constructors: Record<Family, CtorSpec[]> = {
  model: [
    { name: 'hf', doc: 'a Hugging Face checkpoint directory: config.json + model.safetensors (or a sharded index)', params: [p('path', { t: 'path' }, 'directory, relative to the project root', { required: true, positional: 0 }), p('tokenizer', { t: 'ref', kind: 'tokenizer' }, 'tokenizer to use instead of the directory\'s tokenizer.json')] },
    {
      name: 'builtin',
      doc: 'a configuration shipped with mcpc, randomly initialised (see `mcpc models`)',
      params: [
        p('name', { t: 'string' }, 'built-in configuration name', { required: true, positional: 0 }),
        p('tokenizer', { t: 'ref', kind: 'tokenizer' }, 'tokenizer (default: bytes)'),
        p('layers', int(1, 1024), 'override the number of layers'),
        p('hidden', int(1, 65536), 'override the hidden size'),
        p('ffn', int(1, 262144), 'override the MLP inner size'),
        p('heads', int(1, 1024), 'override the number of attention heads'),
        p('kv_heads', int(1, 1024), 'override the number of key/value heads'),
        p('vocab', int(1, 1 << 22), 'override the vocabulary size'),
      ],
    },
  ],
  tokenizer: [
    { name: 'bytes', doc: 'byte-level tokenizer: one token per UTF-8 byte (vocab 256)', params: [] },
    { name: 'hf', doc: 'a Hugging Face tokenizer.json (BPE)', params: [p('path', { t: 'path' }, 'tokenizer.json, or a directory holding it', { required: true, positional: 0 })] },
  ],
  data: [
    {
      name: 'jsonl',
      doc: 'JSON Lines of chat or instruction records; loss on response tokens',
      params: [
        p('path', { t: 'path' }, 'file, relative to the project root', { required: true, positional: 0 }),
        p('format', { t: 'enum', values: ['chat', 'instruction'] }, 'record layout', { default: 'chat' }),
        p('max_records', int(1), 'read at most this many records'),
      ],
    },
    { name: 'text', doc: 'plain text, loss on every token (pretraining)', params: [p('path', { t: 'path' }, 'file, relative to the project root', { required: true, positional: 0 })] },
  ],
  adapter: [
    {
      name: 'lora',
      doc: 'plain LoRA: y += s * (x A^T) B^T; `experts: N` makes N always-on (shared) experts of rank r each',
      params: [...loraParams(8), p('experts', int(1, 64), 'always-on experts, concatenated (effective rank r * experts)', { default: 1 })],
    },
    {
      name: 'moe_lora',
      doc: 'mixture of LoRA experts with a router: top-k routed experts, optionally shared always-on experts',
      params: [
        ...loraParams(8),
        p('experts', int(1, 256), 'routed experts', { required: true }),
        p('top_k', int(1, 256), 'experts each token is routed to', { default: 2 }),
        p('shared', int(0, 64), 'always-on shared experts inside the mixture', { default: 0 }),
        p('router', { t: 'enum', values: ['softmax', 'sigmoid'] }, 'router activation', { default: 'softmax' }),
        p('renormalize', { t: 'bool' }, 'renormalise the top-k gate weights to sum to 1', { default: true }),
        p('load_balance', num(0), 'weight of the auxiliary load-balancing loss', { default: 0 }),
        p('router_noise', num(0), 'std of noise added to router logits during training', { default: 0 }),
      ],
    },
  ],
  probe: [
    { name: 'multiple_choice', doc: 'accuracy on multiple-choice questions (answer letter)', params: [p('data', { t: 'ref', kind: 'data' }, 'questions', { required: true, positional: 0 }), p('max_examples', int(1), 'evaluate at most this many')] },
    { name: 'json_format', doc: 'share of answers that are valid JSON with the expected fields and values', params: [p('data', { t: 'ref', kind: 'data' }, 'requests with expected fields', { required: true, positional: 0 }), p('max_examples', int(1), 'evaluate at most this many (default 32: it generates)')] },
    { name: 'perplexity', doc: 'perplexity on response tokens', params: [p('data', { t: 'ref', kind: 'data' }, 'records', { required: true, positional: 0 }), p('max_examples', int(1), 'evaluate at most this many')] },
  ],
  schedule: [
    { name: 'constant', doc: 'constant learning rate after warmup', params: [p('warmup', { t: 'warmup' }, 'warmup: percentage of the stage or steps', { default: 0, positional: 0 })] },
    { name: 'linear', doc: 'linear decay to min_lr after warmup', params: [p('warmup', { t: 'warmup' }, 'warmup', { default: 0, positional: 0 }), p('min_lr', num(0), 'final learning rate', { default: 0 })] },
    { name: 'cosine', doc: 'cosine decay to min_lr after warmup', params: [p('warmup', { t: 'warmup' }, 'warmup', { default: 0, positional: 0 }), p('min_lr', num(0), 'final learning rate', { default: 0 })] },
  ],
  optimizer: [
    { name: 'adamw', doc: 'AdamW (decoupled weight decay)', params: [p('beta1', num(0, 0.99999), 'first-moment decay', { default: 0.9 }), p('beta2', num(0, 0.99999999), 'second-moment decay', { default: 0.999 }), p('eps', num(0, 1, true), 'denominator epsilon', { default: 1e-8 })] },
    { name: 'sgd', doc: 'SGD with momentum', params: [p('momentum', num(0, 0.99999), 'momentum', { default: 0 })] },
  ],
  constraint: [{ name: 'orthogonal', doc: 'penalise sum |A_first A_other^T| over common sites; first argument is the adapter being trained', params: [] }],
};

/** Stage settings (hyperparameters) with their defaults. */
export const settings: ParamSpec[] = [
  p('epochs', int(1, 100000), 'passes over the stage data', { default: 1 }),
  p('steps', int(1), 'optimizer steps (overrides epochs when set)'),
  p('lr', num(), 'peak learning rate', { default: 2e-4 }),
  p('schedule', { t: 'ctor', family: 'schedule' }, 'learning-rate schedule', { default: { ctor: 'cosine', args: { warmup: { percent: 3 }, min_lr: 0 } } }),
  p('warmup', { t: 'warmup' }, 'warmup (shorthand for the schedule\'s warmup)'),
  p('batch', int(1), 'effective batch in sequences per optimizer step', { default: 8 }),
  p('micro_batch', int(1), 'sequences per forward/backward; gradients accumulate over batch / micro_batch'),
  p('max_len', int(1), 'maximum tokens per sequence (longer records are truncated)', { default: 512 }),
  p('weight_decay', num(0, 1), 'decoupled weight decay', { default: 0 }),
  p('optimizer', { t: 'ctor', family: 'optimizer' }, 'optimizer', { default: { ctor: 'adamw', args: { beta1: 0.9, beta2: 0.999, eps: 1e-8 } } }),
  p('grad_clip', num(0), 'global gradient-norm clip (0 disables)', { default: 1 }),
  p('seed', int(0, 2 ** 31 - 1), 'seed for initialisation, shuffling and dropout', { default: 42 }),
  p('precision', { t: 'enum', values: ['f32', 'bf16', 'f16'] }, 'compute precision (master weights stay f32)', { default: 'f32' }),
  p('memory', { t: 'size' }, 'memory budget for the memory planner (e.g. 8GB)'),
  p('checkpoint_every', int(0), 'write a checkpoint every N steps (0: only at the stage end)', { default: 0 }),
  p('packing', { t: 'bool' }, 'pack several records into one sequence', { default: false }),
  p('loss', { t: 'enum', values: ['response', 'all'] }, 'tokens the cross-entropy covers', { default: 'response' }),
  p('recompute', { t: 'bool' }, 'recompute activations in the backward pass to save memory', { default: false }),
  p('max_bad_steps', int(1), 'consecutive NaN/Inf steps that stop the run', { default: 5 }),
  p('shuffle', { t: 'bool' }, 'shuffle records each epoch (a pure function of seed and epoch)', { default: true }),
];

export const settingNames = settings.map((s) => s.name);

export function findCtor(family: Family, name: string): CtorSpec | undefined {
  return constructors[family].find((c) => c.name === name);
}
