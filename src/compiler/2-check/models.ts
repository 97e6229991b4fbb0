/**
 * Model configurations and the module tree selectors resolve against. Built-in configs ship with the
 * compiler; `hf("dir")` models are read from `dir/config.json` (Qwen2 and Llama layouts).
 */
import { hfConfigJson } from '../../plan/hf-config.js';
import type { PlanModelConfig } from '../../plan/types.js';


/** The model configuration, as the plan carries it. */
export type ModelConfig = PlanModelConfig;

const qwen2 = (c: Omit<ModelConfig, 'arch' | 'headDim' | 'qkvBias' | 'rmsEps'> & Partial<ModelConfig>): ModelConfig => ({
  arch: 'qwen2',
  qkvBias: true,
  rmsEps: 1e-6,
  headDim: c.hidden / c.heads,
  ...c,
});

/** Built-in configurations: tiny ones that train on a CPU, and the real shapes MedCare used (for linting and planning). */
export const builtinModels: Record<string, ModelConfig> = {
  // Byte-level (vocab 256) models for demos and tests.
  'qwen2-micro': qwen2({ vocab: 256, hidden: 64, layers: 2, heads: 4, kvHeads: 2, ffn: 176, tied: true, ropeTheta: 10000, maxPositions: 1024 }),
  'qwen2-tiny': qwen2({ vocab: 256, hidden: 128, layers: 4, heads: 4, kvHeads: 2, ffn: 352, tied: true, ropeTheta: 10000, maxPositions: 2048 }),
  'qwen2-small': qwen2({ vocab: 256, hidden: 256, layers: 4, heads: 4, kvHeads: 4, ffn: 688, tied: false, ropeTheta: 10000, maxPositions: 2048 }),
  // Published shapes (Hugging Face config.json of each model).
  'qwen2-0.5b': qwen2({ vocab: 151936, hidden: 896, layers: 24, heads: 14, kvHeads: 2, ffn: 4864, tied: true, ropeTheta: 1000000, maxPositions: 32768 }),
  'qwen2-1.5b': qwen2({ vocab: 151936, hidden: 1536, layers: 28, heads: 12, kvHeads: 2, ffn: 8960, tied: true, ropeTheta: 1000000, maxPositions: 32768 }),
  'qwen2-7b': qwen2({ vocab: 152064, hidden: 3584, layers: 28, heads: 28, kvHeads: 4, ffn: 18944, tied: false, ropeTheta: 1000000, maxPositions: 32768 }),
  'qwen1.5-1.8b': qwen2({ vocab: 151936, hidden: 2048, layers: 24, heads: 16, kvHeads: 16, ffn: 5504, tied: false, ropeTheta: 1000000, maxPositions: 32768 }),
  'qwen1.5-7b': qwen2({ vocab: 151936, hidden: 4096, layers: 32, heads: 32, kvHeads: 32, ffn: 11008, tied: false, ropeTheta: 1000000, maxPositions: 32768 }),
  'qwen1.5-14b': qwen2({ vocab: 152064, hidden: 5120, layers: 40, heads: 40, kvHeads: 40, ffn: 13696, tied: false, ropeTheta: 1000000, maxPositions: 32768 }),
};

const hfLimits: Record<string, number> = {
  num_hidden_layers: 1024,
  hidden_size: 65536,
  intermediate_size: 262144,
  num_attention_heads: 1024,
  num_key_value_heads: 1024,
  head_dim: 65536,
  vocab_size: 1 << 22,
};

/** Parse a Hugging Face config.json object; returns the config or a list of problems. */
export function configFromHf(json: unknown): { config?: ModelConfig; problems: string[] } {
  const problems: string[] = [];
  if (typeof json !== 'object' || json === null || Array.isArray(json)) return { problems: ['config.json must hold a JSON object'] };
  const o = json as Record<string, unknown>;
  const type = o.model_type;
  // Another architecture's config names its sizes differently (GPT-2: n_embd, n_layer); listing each
  // missing Qwen2 key would only bury the one problem.
  if (type !== 'qwen2' && type !== 'llama') {
    return { problems: [type === undefined ? 'it has no `model_type`; mcpc reads Qwen2 and Llama decoders (`"model_type": "qwen2"` or `"llama"`)' : `model_type ${JSON.stringify(type)} is not supported; mcpc reads Qwen2 and Llama decoders ("qwen2" or "llama")`] };
  }
  const int = (k: string, required = true): number => {
    const v = o[k];
    if (v === undefined && !required) return NaN;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 1) {
      problems.push(v === undefined ? `\`${k}\` is missing (a positive integer)` : `\`${k}\` must be a positive integer, found ${JSON.stringify(v)}`);
      return NaN;
    }
    // The bounds of builtin()'s overrides: a corrupt or hostile config must not build a module tree of a
    // billion layers (the checker would run out of memory instead of reporting).
    const max = hfLimits[k];
    if (max !== undefined && v > max) {
      problems.push(`\`${k}\` is ${v}; mcpc reads models with at most ${max}`);
      return NaN;
    }
    return v;
  };
  const hidden = int('hidden_size');
  const heads = int('num_attention_heads');
  const kv = o.num_key_value_heads === undefined ? heads : int('num_key_value_heads');
  const cfg: ModelConfig = {
    arch: type === 'llama' ? 'llama' : 'qwen2',
    vocab: int('vocab_size'),
    hidden,
    layers: int('num_hidden_layers'),
    heads,
    kvHeads: kv,
    headDim: o.head_dim === undefined ? hidden / heads : int('head_dim'),
    ffn: int('intermediate_size'),
    tied: o.tie_word_embeddings === true,
    qkvBias: type === 'qwen2' ? true : o.attention_bias === true,
    ropeTheta: typeof o.rope_theta === 'number' ? o.rope_theta : 10000,
    rmsEps: typeof o.rms_norm_eps === 'number' ? o.rms_norm_eps : 1e-6,
    maxPositions: typeof o.max_position_embeddings === 'number' ? o.max_position_embeddings : 2048,
  };
  problems.push(...unsupportedSettings(o));
  if (Number.isFinite(hidden) && Number.isFinite(heads) && o.head_dim === undefined && hidden % heads !== 0) problems.push('hidden_size is not divisible by num_attention_heads');
  if (Number.isFinite(heads) && Number.isFinite(kv) && heads % kv !== 0) problems.push('num_attention_heads is not divisible by num_key_value_heads');
  return problems.length ? { problems } : { config: cfg, problems };
}

/**
 * Settings of a Qwen2 / Llama config.json that change what the model computes and that mcpc does not
 * implement. Training such a model with mcpc's plain decoder would fit another function than the one the
 * checkpoint was trained as (and `export merged` would hand it back under the original config), so each is a
 * problem, not a silent default: RoPE scaling (linear, dynamic, yarn, llama3, ...), an activation other than
 * SiLU, sliding-window attention, biases on the MLP projections.
 */
function unsupportedSettings(o: Record<string, unknown>): string[] {
  const out: string[] = [];
  const rs = o.rope_scaling;
  if (rs !== undefined && rs !== null) {
    const kind = typeof rs === 'object' && !Array.isArray(rs) ? ((rs as Record<string, unknown>).rope_type ?? (rs as Record<string, unknown>).type) : undefined;
    if (kind !== 'default') out.push(`\`rope_scaling\` is ${JSON.stringify(rs)}: mcpc implements plain rotary embeddings (\`rope_theta\`), not scaled ones`);
  }
  if (o.hidden_act !== undefined && o.hidden_act !== 'silu' && o.hidden_act !== 'swish') out.push(`\`hidden_act\` is ${JSON.stringify(o.hidden_act)}: mcpc's MLP is SwiGLU with SiLU ("silu")`);
  if (o.use_sliding_window === true) out.push('`use_sliding_window` is true: mcpc implements full causal attention, not sliding-window attention');
  if (o.mlp_bias === true) out.push('`mlp_bias` is true: mcpc\'s MLP projections have no bias');
  return out;
}

/** The config.json a Hugging Face loader expects for a ModelConfig (the inverse of configFromHf). */
export function configToHf(c: ModelConfig): Record<string, unknown> {
  return hfConfigJson(c);
}

// --- module tree -------------------------------------------------------------------------------------------

export type ModuleKind = 'container' | 'list' | 'linear' | 'embedding' | 'norm';

export interface ModuleNode {
  /** Segment name (`q`, `attn`, `layers`) or the index for list items (`3`). */
  name: string;
  /** Display path in selector syntax: `layers[3].attn.q`. */
  path: string;
  /** The module's name in Hugging Face checkpoints: `model.layers.3.self_attn.q_proj`. */
  hfName: string;
  kind: ModuleKind;
  children: ModuleNode[];
  /** For linear modules: input and output features. */
  in?: number;
  out?: number;
  /** Whether the linear has a bias (q/k/v in Qwen2). */
  bias?: boolean;
}

function node(name: string, path: string, hfName: string, kind: ModuleKind, children: ModuleNode[] = [], extra: Partial<ModuleNode> = {}): ModuleNode {
  return { name, path, hfName, kind, children, ...extra };
}

export function moduleTree(c: ModelConfig): ModuleNode {
  const q = c.heads * c.headDim;
  const kv = c.kvHeads * c.headDim;
  const layer = (i: number): ModuleNode => {
    const p = `layers[${i}]`;
    const h = `model.layers.${i}`;
    const lin = (name: string, parent: string, hfParent: string, hf: string, inF: number, outF: number, bias = false) =>
      node(name, `${p}.${parent}.${name}`, `${h}.${hfParent}.${hf}`, 'linear', [], { in: inF, out: outF, bias });
    return node(String(i), p, h, 'container', [
      node('input_norm', `${p}.input_norm`, `${h}.input_layernorm`, 'norm'),
      node('attn', `${p}.attn`, `${h}.self_attn`, 'container', [
        lin('q', 'attn', 'self_attn', 'q_proj', c.hidden, q, c.qkvBias),
        lin('k', 'attn', 'self_attn', 'k_proj', c.hidden, kv, c.qkvBias),
        lin('v', 'attn', 'self_attn', 'v_proj', c.hidden, kv, c.qkvBias),
        lin('o', 'attn', 'self_attn', 'o_proj', q, c.hidden),
      ]),
      node('post_norm', `${p}.post_norm`, `${h}.post_attention_layernorm`, 'norm'),
      node('mlp', `${p}.mlp`, `${h}.mlp`, 'container', [
        lin('gate', 'mlp', 'mlp', 'gate_proj', c.hidden, c.ffn),
        lin('up', 'mlp', 'mlp', 'up_proj', c.hidden, c.ffn),
        lin('down', 'mlp', 'mlp', 'down_proj', c.ffn, c.hidden),
      ]),
    ]);
  };
  return node('', '', '', 'container', [
    node('embed', 'embed', 'model.embed_tokens', 'embedding', [], { in: c.vocab, out: c.hidden }),
    node('layers', 'layers', 'model.layers', 'list', Array.from({ length: c.layers }, (_, i) => layer(i))),
    node('norm', 'norm', 'model.norm', 'norm'),
    node('lm_head', 'lm_head', 'lm_head', 'linear', [], { in: c.hidden, out: c.vocab }),
  ]);
}

/** Every linear module at or below `n`, in tree order. */
export function linearsUnder(n: ModuleNode): ModuleNode[] {
  if (n.kind === 'linear') return [n];
  return n.children.flatMap(linearsUnder);
}

export function parameterCount(c: ModelConfig): number {
  const q = c.heads * c.headDim;
  const kv = c.kvHeads * c.headDim;
  const attn = c.hidden * q + 2 * c.hidden * kv + q * c.hidden + (c.qkvBias ? q + 2 * kv : 0);
  const mlp = 3 * c.hidden * c.ffn;
  const perLayer = attn + mlp + 2 * c.hidden;
  return c.vocab * c.hidden * (c.tied ? 1 : 2) + c.layers * perLayer + c.hidden;
}
