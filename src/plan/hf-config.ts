/**
 * The Hugging Face `config.json` of a model config. Shared by the compiler (which writes the config of a
 * built-in model) and the runtime (which saves checkpoints), so both write the same keys.
 */
import type { PlanModelConfig } from './types.js';

export function hfConfigJson(c: PlanModelConfig, torchDtype = 'float32'): Record<string, unknown> {
  return {
    architectures: [c.arch === 'llama' ? 'LlamaForCausalLM' : 'Qwen2ForCausalLM'],
    model_type: c.arch,
    vocab_size: c.vocab,
    hidden_size: c.hidden,
    intermediate_size: c.ffn,
    num_hidden_layers: c.layers,
    num_attention_heads: c.heads,
    num_key_value_heads: c.kvHeads,
    head_dim: c.headDim,
    hidden_act: 'silu',
    max_position_embeddings: c.maxPositions,
    rms_norm_eps: c.rmsEps,
    rope_theta: c.ropeTheta,
    tie_word_embeddings: c.tied,
    ...(c.arch === 'llama' ? { attention_bias: c.qkvBias } : {}),
    torch_dtype: torchDtype,
  };
}
