import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { builtinModels, configFromHf, configToHf } from '../../../src/compiler/2-check/models.js';
import type { Plan } from '../../../src/plan/types.js';
import { SafetensorsReader, readSafetensorsFile, tensorFromFloat32, toFloat32, writeSafetensorsFile } from '../../../src/runtime/io/safetensors.js';
import { WeightsError } from '../../../src/runtime/weights/errors.js';
import { checkpointParameters, hfConfig, loadBaseParameters, loadHfCheckpoint, saveHfCheckpoint } from '../../../src/runtime/weights/hf.js';
import { initParameters } from '../../../src/runtime/weights/init.js';
import { smallTokenizerJson } from '../tokenizer/fixture.js';
import { compileInline, microConfig, pipeline, randomParameters, tempDir } from './helpers.js';

const ADAPTER = 'adapter a = lora(r: 4, alpha: 8) at layers[*].attn.{q, v}';

/** A project with `m/config.json` for `config`, and the plan of a pipeline on hf("m"). */
function hfProject(config: Record<string, unknown>, extra: Record<string, string> = {}): { plan: Plan; root: string; dir: string } {
  const root = tempDir();
  const { plan } = compileInline(pipeline('hf("m")', [ADAPTER]), { root, files: { 'm/config.json': JSON.stringify(config), ...extra } });
  return { plan, root, dir: join(root, 'm') };
}

/** Base values for every checkpoint parameter of the plan. */
function baseValues(plan: Plan): Map<string, Float32Array> {
  const all = randomParameters(plan, 7);
  return new Map(checkpointParameters(plan).map((p) => [p.id, all.get(p.id)!]));
}

/** Writes the plan's base values as safetensors files under their HF names (shards: tensor-name lists). */
function writeCheckpoint(plan: Plan, values: Map<string, Float32Array>, dir: string, edit: (t: Map<string, ReturnType<typeof tensorFromFloat32>>) => void = () => {}): void {
  const tensors = new Map(checkpointParameters(plan).map((p) => [p.hfName!, tensorFromFloat32(values.get(p.id)!, p.shape)]));
  edit(tensors);
  writeSafetensorsFile(join(dir, 'model.safetensors'), tensors, { format: 'pt' });
}

function expectWeightsError(f: () => unknown, code: string, ...parts: (string | RegExp)[]): WeightsError {
  let err: unknown;
  try {
    f();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(WeightsError);
  const w = err as WeightsError;
  expect(w.code).toBe(code);
  for (const p of parts) expect(w.message).toMatch(p);
  return w;
}

describe('hfConfig', () => {
  it('writes what the compiler\'s configToHf writes (a copy the runtime may use)', () => {
    for (const c of Object.values(builtinModels)) {
      expect(hfConfig(c)).toEqual(configToHf(c));
      const llama = { ...c, arch: 'llama' as const, qkvBias: false };
      expect(hfConfig(llama)).toEqual(configToHf(llama));
    }
    expect(hfConfig(microConfig(), 'BF16').torch_dtype).toBe('bfloat16');
  });
});

describe('saveHfCheckpoint -> loadHfCheckpoint', () => {
  it('round-trips a qwen2-micro model with tied embeddings (no lm_head.weight in the file)', () => {
    const { plan: built, root } = compileInline(pipeline('builtin("qwen2-micro")', [ADAPTER]));
    const params = initParameters(built, 5);
    const out = join(root, 'ckpt');
    const res = saveHfCheckpoint(built, params, out);
    expect(readdirSync(out).sort()).toEqual(['config.json', 'generation_config.json', 'model.safetensors', 'special_tokens_map.json', 'tokenizer.json', 'tokenizer_config.json']);
    expect(res.files[res.files.length - 1]).toBe(join(out, 'config.json')); // written last
    expect(JSON.parse(readFileSync(join(out, 'config.json'), 'utf8'))).toEqual(configToHf(built.model.config as never));
    expect(JSON.parse(readFileSync(join(out, 'generation_config.json'), 'utf8'))).toEqual({ eos_token_id: 3, pad_token_id: 0 });
    const file = SafetensorsReader.open(join(out, 'model.safetensors'));
    expect(file.metadata).toEqual(new Map([['format', 'pt']]));
    expect(file.has('lm_head.weight')).toBe(false);
    expect(file.names.length).toBe(checkpointParameters(built).length);
    expect(file.info('model.layers.1.self_attn.k_proj.bias').shape).toEqual([32]);
    file.close();

    // The saved folder is a model the compiler accepts: compile against it and load it back.
    const { plan } = compileInline(pipeline('hf("ckpt")', [ADAPTER]), { root });
    expect(plan.model.config).toEqual(built.model.config);
    const loaded = loadBaseParameters(plan, root);
    expect(loaded.ignored).toEqual([]);
    expect(loaded.dtypes).toEqual({ F32: checkpointParameters(plan).length });
    for (const p of checkpointParameters(plan)) expect(loaded.weights.get(p.id)).toEqual(params.get(p.id));
  });

  it('round-trips untied embeddings (lm_head.weight) and a Llama config (no attention biases)', () => {
    const { plan, dir } = hfProject(hfConfig(microConfig({ arch: 'llama', qkvBias: false, tied: false })));
    expect(plan.parameters.some((p) => p.role === 'bias')).toBe(false);
    const values = baseValues(plan);
    saveHfCheckpoint(plan, values, dir);
    const cfg = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
    expect(cfg).toMatchObject({ architectures: ['LlamaForCausalLM'], model_type: 'llama', attention_bias: false, tie_word_embeddings: false });
    const r = readSafetensorsFile(join(dir, 'model.safetensors'));
    expect(r.tensors.get('lm_head.weight')!.shape).toEqual([256, 64]);
    expect([...r.tensors.keys()].some((n) => n.endsWith('.bias'))).toBe(false);
    const loaded = loadHfCheckpoint(plan, dir);
    for (const p of checkpointParameters(plan)) expect(loaded.weights.get(p.id)).toEqual(values.get(p.id));
  });

  it('accepts a tied checkpoint that stores lm_head.weight anyway, warning when it differs', () => {
    const { plan, dir } = hfProject(hfConfig(microConfig()));
    const values = baseValues(plan);
    writeCheckpoint(plan, values, dir, (t) => t.set('lm_head.weight', tensorFromFloat32(values.get('base.embed.weight')!, [256, 64])));
    const same = loadHfCheckpoint(plan, dir);
    expect(same.ignored).toEqual(['lm_head.weight']);
    expect(same.warnings).toEqual([]);
    expect(same.weights.has('base.lm_head.weight')).toBe(false);
    writeCheckpoint(plan, values, dir, (t) => t.set('lm_head.weight', tensorFromFloat32(new Float32Array(256 * 64), [256, 64])));
    expect(loadHfCheckpoint(plan, dir).warnings).toEqual([expect.stringMatching(/lm_head\.weight differs from the embedding/)]);
  });

  it('loads a sharded checkpoint (two shards and an index written by hand)', () => {
    const { plan, dir } = hfProject(hfConfig(microConfig()));
    const values = baseValues(plan);
    const ps = checkpointParameters(plan);
    const half = Math.floor(ps.length / 2);
    const shards = [ps.slice(0, half), ps.slice(half)];
    const weightMap: Record<string, string> = {};
    shards.forEach((group, i) => {
      const name = `model-0000${i + 1}-of-00002.safetensors`;
      writeSafetensorsFile(join(dir, name), new Map(group.map((p) => [p.hfName!, tensorFromFloat32(values.get(p.id)!, p.shape)])), { format: 'pt' });
      for (const p of group) weightMap[p.hfName!] = name;
    });
    writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: 0 }, weight_map: weightMap }));
    const loaded = loadHfCheckpoint(plan, dir);
    expect(loaded.files.map((f) => f.slice(dir.length + 1))).toEqual(['model.safetensors.index.json', 'model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']);
    for (const p of ps) expect(loaded.weights.get(p.id)).toEqual(values.get(p.id));

    // A shape problem names the shard that holds the tensor.
    const bad = ps[ps.length - 1]!;
    writeSafetensorsFile(
      join(dir, 'model-00002-of-00002.safetensors'),
      new Map(shards[1]!.map((p) => [p.hfName!, p === bad ? tensorFromFloat32(new Float32Array(3), [3]) : tensorFromFloat32(values.get(p.id)!, p.shape)])),
    );
    expectWeightsError(() => loadHfCheckpoint(plan, dir), 'SHAPE_MISMATCH', 'model-00002-of-00002.safetensors', bad.hfName!, /has shape \[3\], the plan expects \[64\]/);
  });

  it('writes shards past maxShardBytes, and removes the files of an earlier save in the other layout', () => {
    const { plan, dir } = hfProject(hfConfig(microConfig()));
    const values = baseValues(plan);
    const sharded = saveHfCheckpoint(plan, values, dir, { maxShardBytes: 60_000 });
    const shards = readdirSync(dir).filter((f) => /^model-\d{5}-of-\d{5}\.safetensors$/.test(f));
    expect(shards.length).toBeGreaterThan(2);
    expect(existsSync(join(dir, 'model.safetensors'))).toBe(false);
    const index = JSON.parse(readFileSync(join(dir, 'model.safetensors.index.json'), 'utf8'));
    expect(Object.keys(index.weight_map).length).toBe(checkpointParameters(plan).length);
    expect(index.metadata.total_size).toBe(checkpointParameters(plan).reduce((s, p) => s + 4 * p.shape.reduce((a, b) => a * b, 1), 0));
    expect(sharded.removed).toEqual([]);
    for (const p of checkpointParameters(plan)) expect(loadHfCheckpoint(plan, dir).weights.get(p.id)).toEqual(values.get(p.id));

    const single = saveHfCheckpoint(plan, values, dir);
    expect(single.removed.length).toBe(shards.length + 1);
    expect(readdirSync(dir).sort()).toEqual(['config.json', 'generation_config.json', 'model.safetensors', 'special_tokens_map.json', 'tokenizer.json', 'tokenizer_config.json']);
  });

  it('converts BF16 and F16 checkpoints to float32', () => {
    const { plan, dir } = hfProject(hfConfig(microConfig()));
    const values = baseValues(plan);
    saveHfCheckpoint(plan, values, dir, { dtype: 'BF16' });
    expect(JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')).torch_dtype).toBe('bfloat16');
    const bf = loadHfCheckpoint(plan, dir, { checkConfig: false });
    expect(bf.dtypes).toEqual({ BF16: checkpointParameters(plan).length });
    for (const p of checkpointParameters(plan)) {
      const want = toFloat32(tensorFromFloat32(values.get(p.id)!, p.shape, 'BF16') as never);
      expect(bf.weights.get(p.id)).toEqual(want);
    }
    writeCheckpoint(plan, values, dir, (t) => {
      for (const [k, v] of t) t.set(k, tensorFromFloat32(new Float32Array(v.data.buffer, v.data.byteOffset, v.data.byteLength / 4), v.shape, 'F16'));
    });
    const f16 = loadHfCheckpoint(plan, dir, { checkConfig: false });
    const id = 'base.layers[0].mlp.up.weight';
    const max = Math.max(...values.get(id)!.map((v, i) => Math.abs(v - f16.weights.get(id)![i]!)));
    expect(max).toBeGreaterThan(0);
    expect(max).toBeLessThan(1e-3);
  });

  it('copies an hf tokenizer and writes its special tokens to generation_config.json', () => {
    const tok = smallTokenizerJson();
    const vocab = 256 + 8 + 3;
    const { plan, root, dir } = hfProject(hfConfig(microConfig({ vocab })), {
      'm/tokenizer.json': JSON.stringify(tok.json),
      'm/tokenizer_config.json': JSON.stringify({ eos_token: '<|im_end|>', pad_token: '<|endoftext|>' }),
    });
    expect(plan.model.tokenizer.kind).toBe('hf');
    const out = join(root, 'out', 'model');
    saveHfCheckpoint(plan, baseValues(plan), out, { root });
    expect(readdirSync(out).sort()).toEqual(['config.json', 'generation_config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']);
    expect(readFileSync(join(out, 'tokenizer.json'), 'utf8')).toBe(readFileSync(join(dir, 'tokenizer.json'), 'utf8'));
    expect(JSON.parse(readFileSync(join(out, 'generation_config.json'), 'utf8'))).toEqual({ eos_token_id: tok.ids['<|im_end|>'], pad_token_id: tok.ids['<|endoftext|>'] });
  });
});

describe('a merged save keeps what the model source says and mcpc does not compute', () => {
  it('config.json: the source\'s keys (eos ids, use_cache, transformers_version, dtype) with mcpc\'s over them', () => {
    const src = { ...hfConfig(microConfig()), bos_token_id: 1, eos_token_id: [2, 3], use_cache: true, initializer_range: 0.02, transformers_version: '4.57.1', dtype: 'bfloat16', torch_dtype: 'bfloat16' };
    const { plan, root } = hfProject(src, { 'm/generation_config.json': '{\n  "do_sample": true,\n  "eos_token_id": [2, 3],\n  "temperature": 0.7\n}\n' });
    const out = join(root, 'out', 'model');
    saveHfCheckpoint(plan, baseValues(plan), out, { root });
    const cfg = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8'));
    expect(cfg).toMatchObject({ bos_token_id: 1, eos_token_id: [2, 3], use_cache: true, initializer_range: 0.02, transformers_version: '4.57.1', model_type: 'qwen2' });
    // The tensors are saved as F32: both spellings of the dtype say so.
    expect(cfg.torch_dtype).toBe('float32');
    expect(cfg.dtype).toBe('float32');
    expect(Object.keys(cfg).slice(0, 3)).toEqual(Object.keys(src).slice(0, 3));
    // generation_config.json is the source's, byte for byte (sampling settings, every eos id).
    expect(readFileSync(join(out, 'generation_config.json'), 'utf8')).toBe('{\n  "do_sample": true,\n  "eos_token_id": [2, 3],\n  "temperature": 0.7\n}\n');
    // Saved into the source folder itself: the same keys (read before anything is written).
    saveHfCheckpoint(plan, baseValues(plan), join(root, 'm'), { root });
    expect(JSON.parse(readFileSync(join(root, 'm', 'config.json'), 'utf8'))).toEqual(cfg);
  });

  it('settings that change what the model computes and that mcpc does not implement are refused', () => {
    const base = hfConfig(microConfig());
    const problems = (extra: Record<string, unknown>) => configFromHf({ ...base, ...extra }).problems;
    expect(problems({ rope_scaling: { type: 'linear', factor: 4 } })).toEqual(['`rope_scaling` is {"type":"linear","factor":4}: mcpc implements plain rotary embeddings (`rope_theta`), not scaled ones']);
    expect(problems({ rope_scaling: { rope_type: 'llama3', factor: 8 } })).toHaveLength(1);
    expect(problems({ hidden_act: 'gelu' })).toEqual(['`hidden_act` is "gelu": mcpc\'s MLP is SwiGLU with SiLU ("silu")']);
    expect(problems({ use_sliding_window: true, sliding_window: 4096 })).toHaveLength(1);
    expect(problems({ mlp_bias: true })).toHaveLength(1);
    // What released Qwen2 configs say is fine.
    expect(problems({ rope_scaling: null, hidden_act: 'silu', use_sliding_window: false, sliding_window: 32768, max_window_layers: 21 })).toEqual([]);
    expect(problems({ rope_scaling: { rope_type: 'default' } })).toEqual([]);
    expect(configFromHf({ ...base, hidden_size: undefined }).problems).toEqual(['`hidden_size` is missing (a positive integer)']);
  });
});

describe('loadHfCheckpoint errors name the file and the tensor', () => {
  const setup = () => {
    const { plan, root, dir } = hfProject(hfConfig(microConfig()));
    return { plan, root, dir, values: baseValues(plan) };
  };

  it('a tensor with the wrong shape', () => {
    const { plan, dir, values } = setup();
    writeCheckpoint(plan, values, dir, (t) => t.set('model.layers.1.mlp.down_proj.weight', tensorFromFloat32(new Float32Array(176 * 64), [176, 64])));
    const e = expectWeightsError(() => loadHfCheckpoint(plan, dir), 'SHAPE_MISMATCH', join(dir, 'model.safetensors'), 'model.layers.1.mlp.down_proj.weight', 'has shape [176, 64], the plan expects [64, 176]');
    expect(e.tensor).toBe('model.layers.1.mlp.down_proj.weight');
  });

  it('a missing tensor (and how many more are missing)', () => {
    const { plan, dir, values } = setup();
    writeCheckpoint(plan, values, dir, (t) => {
      t.delete('model.layers.0.self_attn.q_proj.bias');
      t.delete('model.norm.weight');
    });
    expectWeightsError(() => loadHfCheckpoint(plan, dir), 'MISSING_TENSOR', join(dir, 'model.safetensors'), '"model.layers.0.self_attn.q_proj.bias"', /and 1 more: model\.norm\.weight/);
  });

  it('a missing lm_head.weight in an untied model', () => {
    const { plan, dir } = hfProject(hfConfig(microConfig({ tied: false })));
    const values = baseValues(plan);
    writeCheckpoint(plan, values, dir, (t) => t.delete('lm_head.weight'));
    expectWeightsError(() => loadHfCheckpoint(plan, dir), 'MISSING_TENSOR', '"lm_head.weight"', /untied embeddings/);
  });

  it('a tensor the plan does not know; rotary buffers are ignored', () => {
    const { plan, dir, values } = setup();
    writeCheckpoint(plan, values, dir, (t) => t.set('model.layers.0.self_attn.rotary_emb.inv_freq', tensorFromFloat32(new Float32Array(8), [8])));
    expect(loadHfCheckpoint(plan, dir).ignored).toEqual(['model.layers.0.self_attn.rotary_emb.inv_freq']);
    writeCheckpoint(plan, values, dir, (t) => t.set('model.layers.0.self_attn.o_proj.bias', tensorFromFloat32(new Float32Array(64), [64])));
    expectWeightsError(() => loadHfCheckpoint(plan, dir), 'UNEXPECTED_TENSOR', '"model.layers.0.self_attn.o_proj.bias"', /no such parameter/);
    expect(loadHfCheckpoint(plan, dir, { allowUnexpected: true }).ignored).toEqual(['model.layers.0.self_attn.o_proj.bias']);
  });

  it('an integer tensor', () => {
    const { plan, dir, values } = setup();
    writeCheckpoint(plan, values, dir, (t) => t.set('model.norm.weight', { dtype: 'I32', shape: [64], data: new Int32Array(64) }));
    expectWeightsError(() => loadHfCheckpoint(plan, dir), 'BAD_DTYPE', '"model.norm.weight"', /dtype I32/);
  });

  it('a config.json that changed since compiling', () => {
    const { plan, dir, values } = setup();
    writeCheckpoint(plan, values, dir);
    writeFileSync(join(dir, 'config.json'), JSON.stringify(hfConfig(microConfig({ ffn: 128 }))));
    expectWeightsError(() => loadHfCheckpoint(plan, dir), 'CONFIG_MISMATCH', join(dir, 'config.json'), /intermediate_size: config.json has 128, the plan was compiled with 176/, /recompile/);
  });

  it('a folder without weights', () => {
    const { plan, dir } = setup();
    writeFileSync(join(dir, 'pytorch_model.bin'), '');
    expectWeightsError(() => loadHfCheckpoint(plan, dir), 'NO_WEIGHTS', dir, /neither model\.safetensors nor model\.safetensors\.index\.json/, /pytorch_model\.bin: convert/);
  });

  it('a built-in model has nothing to load', () => {
    const { plan } = compileInline(pipeline('builtin("qwen2-micro")', [ADAPTER]));
    expect(loadBaseParameters(plan).weights.size).toBe(0);
  });

  it('saving names a missing base parameter', () => {
    const { plan, dir, values } = setup();
    values.delete('base.norm.weight');
    mkdirSync(dir, { recursive: true });
    expectWeightsError(() => saveHfCheckpoint(plan, values, dir), 'MISSING_PARAMETER', 'base.norm.weight');
  });
});
