import { copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { Plan } from '../../../src/plan/types.js';
import { SafetensorsReader, tensorFromFloat32, writeSafetensorsFile } from '../../../src/runtime/io/safetensors.js';
import { exportAdapterFile, importAdapterFile } from '../../../src/runtime/weights/adapter-file.js';
import { WeightsError } from '../../../src/runtime/weights/errors.js';
import { exportMerged, exportPeft, exportSafetensors, runExports } from '../../../src/runtime/weights/export.js';
import { checkpointParameters, hfConfig, loadHfCheckpoint, saveHfCheckpoint } from '../../../src/runtime/weights/hf.js';
import { importAdapter, initialParameters } from '../../../src/runtime/weights/params.js';
import { loraViews, maxAbsDiff } from '../../../src/runtime/weights/merge.js';
import { exportPeftAdapter, importPeftAdapter, peftScale, peftTargets, PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE } from '../../../src/runtime/weights/peft.js';
import { compilePlan } from '../../plan/pipelines.js';
import { compileInline, microConfig, pipeline, randomParameters, tempDir } from './helpers.js';

const repoRoot = fileURLToPath(new URL('../../../', import.meta.url));

/** The keys of a LoraConfig as PEFT 0.18.0 saves it (adapter_config.json of a PEFT 0.18.0 LoRA), sorted. */
const PEFT_0_18_KEYS = [
  'alora_invocation_tokens', 'alpha_pattern', 'arrow_config', 'auto_mapping', 'base_model_name_or_path', 'bias', 'corda_config',
  'ensure_weight_tying', 'eva_config', 'exclude_modules', 'fan_in_fan_out', 'inference_mode', 'init_lora_weights', 'layer_replication',
  'layers_pattern', 'layers_to_transform', 'loftq_config', 'lora_alpha', 'lora_bias', 'lora_dropout', 'megatron_config', 'megatron_core',
  'modules_to_save', 'peft_type', 'peft_version', 'qalora_group_size', 'r', 'rank_pattern', 'revision', 'target_modules', 'target_parameters',
  'task_type', 'trainable_token_indices', 'use_dora', 'use_qalora', 'use_rslora',
];

const readJson = (f: string) => JSON.parse(readFileSync(f, 'utf8'));

function expectWeightsError(f: () => unknown, code: string, ...parts: (string | RegExp)[]): void {
  let err: unknown;
  try {
    f();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(WeightsError);
  expect((err as WeightsError).code).toBe(code);
  for (const p of parts) expect((err as WeightsError).message).toMatch(p);
}

/** The module names of every linear site of a model with `layers` layers. */
function allModules(layers: number): string[] {
  const out = ['lm_head'];
  for (let l = 0; l < layers; l++) for (const m of ['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj', 'self_attn.o_proj', 'mlp.gate_proj', 'mlp.up_proj', 'mlp.down_proj']) out.push(`model.layers.${l}.${m}`);
  return out;
}

/** The modules PEFT wraps for a config (its rules for list and string target_modules, layers_to_transform). */
function peftMatches(cfg: { target_modules: string[] | string; layers_to_transform: number[] | null }, modules: string[]): string[] {
  return modules.filter((key) => {
    if (typeof cfg.target_modules === 'string') return new RegExp(`^(?:${cfg.target_modules})$`).test(key);
    if (!cfg.target_modules.some((t) => key === t || key.endsWith(`.${t}`))) return false;
    if (!cfg.layers_to_transform) return true;
    const m = /\.layers\.(\d+)\./.exec(key);
    return !!m && cfg.layers_to_transform.includes(Number(m[1]));
  });
}

describe('export peft: MedCare stage-2 adapters', () => {
  const plan = compilePlan('pipelines/medcare.mcp');
  const params = randomParameters(plan);
  const peft = plan.exports.find((e) => e.format === 'peft')!;
  const dir = tempDir();
  const res = exportPeft(plan, params, dir, peft.adapters);

  it('writes one PEFT folder per adapter and a manifest', () => {
    // attn was merged into the base between the stages: the later adapters were trained on top of it, so the
    // model source plus the folders is the trained model only with it (test/runtime/weights/export-rebuild.test.ts).
    expect(peft.adapters).toEqual(['attn', 'knowledge', 'align']);
    expect(readdirSync(dir).sort()).toEqual(['align', 'attn', 'knowledge', 'mcpc_export.json']);
    for (const a of ['attn', 'knowledge', 'align']) expect(readdirSync(join(dir, a)).sort()).toEqual([PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE]);
    expect(res.adapters.map((r) => r.layout)).toEqual(['peft', 'peft', 'peft']);
    const manifest = readJson(join(dir, 'mcpc_export.json'));
    expect(manifest.merged_into_base).toEqual(['attn']);
    expect(manifest.apply_together).toEqual(['attn', 'knowledge', 'align']);
    expect(manifest.not_exported).toEqual([]);
    expect(manifest.adapters.find((a: { name: string }) => a.name === 'align').apply_with).toEqual(['attn', 'knowledge']);
    expect(manifest.adapters[0]).toMatchObject({ name: 'attn', merged_into_base: true, peft: { r: 16, lora_alpha: 32 } });
    expect(readJson(join(dir, 'attn', PEFT_CONFIG_FILE)).target_modules).toEqual(['q_proj', 'k_proj', 'v_proj', 'o_proj']);
    expect(manifest.adapters[1]).toMatchObject({ name: 'knowledge', peft: { r: 32, lora_alpha: 64, use_rslora: false }, plan: { r: 16, alpha: 32, scale: 2 } });
  });

  it('adapter_config.json: PEFT 0.18 fields; knowledge (2 experts of r 16) is r 32 with lora_alpha 64 so PEFT\'s scale stays 2', () => {
    const k = readJson(join(dir, 'knowledge', PEFT_CONFIG_FILE));
    expect(Object.keys(k)).toEqual(PEFT_0_18_KEYS);
    expect(k).toMatchObject({
      peft_type: 'LORA',
      task_type: 'CAUSAL_LM',
      r: 32,
      lora_alpha: 64,
      lora_dropout: 0,
      use_rslora: false,
      target_modules: ['gate_proj', 'up_proj', 'down_proj'],
      layers_to_transform: null,
      layers_pattern: null,
      bias: 'none',
      base_model_name_or_path: 'models/tiny-med-base',
      inference_mode: true,
      fan_in_fan_out: false,
      modules_to_save: null,
      init_lora_weights: true,
      use_dora: false,
      rank_pattern: {},
      alpha_pattern: {},
    });
    const knowledge = plan.adapters.find((a) => a.name === 'knowledge')!;
    expect(peftScale(k.lora_alpha, k.r, k.use_rslora)).toBe(knowledge.scale);
    const a = readJson(join(dir, 'align', PEFT_CONFIG_FILE));
    expect(a).toMatchObject({ r: 16, lora_alpha: 32, use_rslora: false, target_modules: ['gate_proj', 'up_proj', 'down_proj'] });
    expect(peftScale(a.lora_alpha, a.r, a.use_rslora)).toBe(2);
    expect(readFileSync(join(dir, 'align', PEFT_CONFIG_FILE), 'utf8')).toMatch(/^\{\n {2}"alora_invocation_tokens": null,\n/);
  });

  it('adapter_model.safetensors: PEFT tensor names, [r, in] and [out, r], the parameters\' values', () => {
    // The demo base: hidden 64, FFN 176; knowledge is 2 experts of r 16 (r 32 for PEFT), align r 16.
    for (const [name, r] of [['knowledge', 32], ['align', 16]] as const) {
      const f = SafetensorsReader.open(join(dir, name, PEFT_WEIGHTS_FILE));
      expect(f.metadata).toEqual(new Map([['format', 'pt']]));
      expect(f.names.length).toBe(4 * 3 * 2);
      expect(f.info('base_model.model.model.layers.0.mlp.gate_proj.lora_A.weight').shape).toEqual([r, 64]);
      expect(f.info('base_model.model.model.layers.0.mlp.gate_proj.lora_B.weight').shape).toEqual([176, r]);
      expect(f.info('base_model.model.model.layers.3.mlp.down_proj.lora_A.weight').shape).toEqual([r, 176]);
      expect(f.info('base_model.model.model.layers.3.mlp.down_proj.lora_B.weight').shape).toEqual([64, r]);
      // The compiler's hfName of each LoRA parameter is the key it is written under.
      for (const p of plan.parameters.filter((q) => q.owner === name)) {
        expect(f.has(p.hfName!)).toBe(true);
        expect(f.readFloat32(p.hfName!)).toEqual(params.get(p.id));
      }
      f.close();
    }
  });

  it('imports back into the same parameters (round trip)', () => {
    for (const name of ['knowledge', 'align']) {
      const back = importPeftAdapter(plan, name, join(dir, name));
      expect(back.rescaled).toBeUndefined();
      expect(back.warnings).toEqual([]);
      const ids = plan.parameters.filter((p) => p.owner === name).map((p) => p.id).sort();
      expect([...back.params.keys()].sort()).toEqual(ids);
      for (const id of ids) expect(back.params.get(id)).toEqual(params.get(id));
    }
  });

  it('export merged: base + the surviving LoRAs (knowledge, align); attn already merged, noise dropped', () => {
    const out = tempDir();
    const m = exportMerged(plan, params, out);
    expect(m.merged).toEqual(['knowledge', 'align']);
    expect(m.skipped).toEqual([
      { adapter: 'attn', reason: 'already merged into the base by the pipeline', kind: 'merged' },
      { adapter: 'noise', reason: 'dropped at the end of the pipeline', kind: 'gone' },
    ]);
    const loaded = loadHfCheckpoint(plan, out);
    const v = (id: string) => params.get(id)!;
    // Attention weights: as in the map (the pipeline merged attn into them already).
    expect(loaded.weights.get('base.layers[2].attn.q.weight')).toEqual(v('base.layers[2].attn.q.weight'));
    // MLP weights: W + 2 Bk Ak + 2 Ba Aa (knowledge 2 x r16 alpha 32; align r 16 alpha 32).
    for (const site of ['layers[0].mlp.gate', 'layers[3].mlp.down']) {
      const W = v(`base.${site}.weight`);
      const [out_, in_] = plan.parameters.find((p) => p.id === `base.${site}.weight`)!.shape as [number, number];
      const want = new Float64Array(W.length);
      for (let o = 0; o < out_; o++) for (let i = 0; i < in_; i++) {
        let acc = W[o * in_ + i]!;
        for (const [ad, s, r] of [['knowledge', 2, 32], ['align', 2, 16]] as const) {
          const A = v(`${ad}.${site}.A`);
          const B = v(`${ad}.${site}.B`);
          for (let k = 0; k < r; k++) acc += s * B[o * r + k]! * A[k * in_ + i]!;
        }
        want[o * in_ + i] = acc;
      }
      expect(maxAbsDiff(loaded.weights.get(`base.${site}.weight`)!, want)).toBeLessThan(1e-5);
    }
    // The parameter map itself is untouched.
    expect(params.get('base.layers[0].mlp.gate.weight')).toEqual(randomParameters(plan).get('base.layers[0].mlp.gate.weight'));
  });

  it('runExports writes every export of the plan under the project root', () => {
    const root = tempDir();
    // The plan's tokenizer is the base model's tokenizer.json, resolved against the project root.
    mkdirSync(join(root, 'models/tiny-med-base'), { recursive: true });
    for (const f of ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json']) copyFileSync(join(repoRoot, 'models/tiny-med-base', f), join(root, 'models/tiny-med-base', f));
    const results = runExports(plan, params, root);
    expect(results.map((r) => r.format)).toEqual(['peft', 'merged']);
    expect(existsSync(join(root, 'out/medcare/adapters/attn/adapter_config.json'))).toBe(true);
    expect(existsSync(join(root, 'out/medcare/adapters/knowledge/adapter_config.json'))).toBe(true);
    expect(existsSync(join(root, 'out/medcare/adapters/align/adapter_model.safetensors'))).toBe(true);
    expect(readdirSync(join(root, 'out/medcare/model')).sort()).toEqual(['config.json', 'generation_config.json', 'model.safetensors', 'special_tokens_map.json', 'tokenizer.json', 'tokenizer_config.json']);
  });
});

describe('PEFT target_modules', () => {
  it('a list for every layer; layers_to_transform for some layers; a regular expression otherwise', () => {
    const all = allModules(4);
    const pick = (f: (m: string) => boolean) => all.filter(f);
    const cases = [
      pick((m) => /attn\.(q|v)_proj$/.test(m)),
      pick((m) => /layers\.[13]\.mlp\.(gate|up)_proj$/.test(m)),
      pick((m) => /attn\.(q|v)_proj$/.test(m) && m !== 'model.layers.0.self_attn.v_proj'),
      pick((m) => m === 'lm_head' || /layers\.0\.self_attn\.q_proj$/.test(m)),
    ];
    const t = cases.map((c) => peftTargets(c, 4));
    expect(t[0]).toEqual({ target_modules: ['q_proj', 'v_proj'], layers_to_transform: null, layers_pattern: null });
    expect(t[1]).toEqual({ target_modules: ['gate_proj', 'up_proj'], layers_to_transform: [1, 3], layers_pattern: 'layers' });
    expect(typeof t[2]!.target_modules).toBe('string');
    expect(typeof t[3]!.target_modules).toBe('string');
    // Under PEFT's matching rules each config selects exactly its modules.
    cases.forEach((c, i) => expect(peftMatches(t[i]!, all)).toEqual(c));
  });

  it('an adapter on some layers exports layers_to_transform; rsLoRA keeps alpha and use_rslora', () => {
    const { plan } = compileInline(pipeline('builtin("qwen2-micro")', ['adapter a = lora(r: 4, alpha: 8, rslora: true) at layers[1].attn.{q, v}']));
    const params = randomParameters(plan);
    const dir = tempDir();
    const r = exportPeftAdapter(plan, params, 'a', dir, { baseModelNameOrPath: 'Qwen/Qwen2-0.5B' });
    const cfg = readJson(join(dir, PEFT_CONFIG_FILE));
    expect(cfg).toMatchObject({ r: 4, lora_alpha: 8, use_rslora: true, target_modules: ['q_proj', 'v_proj'], layers_to_transform: [1], layers_pattern: 'layers', base_model_name_or_path: 'Qwen/Qwen2-0.5B' });
    expect(peftScale(cfg.lora_alpha, cfg.r, cfg.use_rslora)).toBe(plan.adapters[0]!.scale);
    expect(r.rankNote).toBeUndefined();
    const back = importPeftAdapter(plan, 'a', dir);
    for (const [id, v] of back.params) expect(v).toEqual(params.get(id));
  });
});

describe('importPeftAdapter', () => {
  const { plan } = compileInline(pipeline('builtin("qwen2-micro")', ['adapter a = lora(r: 4, alpha: 8) at layers[*].attn.{q, v}']));
  const params = randomParameters(plan);
  const fresh = () => {
    const dir = tempDir();
    exportPeftAdapter(plan, params, 'a', dir);
    return dir;
  };
  const cfgPath = (dir: string) => join(dir, PEFT_CONFIG_FILE);
  const editConfig = (dir: string, f: (c: Record<string, unknown>) => void) => {
    const c = readJson(cfgPath(dir));
    f(c);
    writeFileSync(cfgPath(dir), JSON.stringify(c));
  };
  const rewrite = (dir: string, f: (t: Map<string, ReturnType<typeof tensorFromFloat32>>) => void) => {
    const r = SafetensorsReader.open(join(dir, PEFT_WEIGHTS_FILE));
    const t = new Map(r.names.map((n) => [n, tensorFromFloat32(r.readFloat32(n), r.info(n).shape)]));
    r.close();
    f(t);
    writeSafetensorsFile(join(dir, PEFT_WEIGHTS_FILE), t);
  };

  it('rescales B when the folder\'s scale differs from the plan\'s', () => {
    const dir = fresh();
    editConfig(dir, (c) => (c.lora_alpha = 16)); // PEFT scale 4, plan scale 2
    const back = importPeftAdapter(plan, 'a', dir);
    expect(back.rescaled).toBe(2);
    expect(back.warnings[0]).toMatch(/B was multiplied by 2/);
    const B = params.get('a.layers[0].attn.q.B')!;
    expect(back.params.get('a.layers[0].attn.q.B')).toEqual(B.map((x) => x * 2));
    expect(back.params.get('a.layers[0].attn.q.A')).toEqual(params.get('a.layers[0].attn.q.A'));
  });

  it('accepts keys that carry the adapter name (lora_A.default.weight)', () => {
    const dir = fresh();
    rewrite(dir, (t) => {
      for (const [k, v] of [...t]) {
        t.delete(k);
        t.set(k.replace(/\.lora_([AB])\.weight$/, '.lora_$1.default.weight'), v);
      }
    });
    const back = importPeftAdapter(plan, 'a', dir);
    for (const [id, v] of back.params) expect(v).toEqual(params.get(id));
  });

  it('names the file and tensor of every problem', () => {
    let dir = fresh();
    rewrite(dir, (t) => t.delete('base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight'));
    expectWeightsError(() => importPeftAdapter(plan, 'a', dir), 'MISSING_TENSOR', PEFT_WEIGHTS_FILE, '"base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"');

    dir = fresh();
    rewrite(dir, (t) => t.set('base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight', tensorFromFloat32(new Float32Array(4 * 32), [4, 32])));
    expectWeightsError(() => importPeftAdapter(plan, 'a', dir), 'SHAPE_MISMATCH', '"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"', 'has shape [4, 32], plan adapter a expects [4, 64]');

    dir = fresh();
    rewrite(dir, (t) => t.set('base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight', tensorFromFloat32(new Float32Array(4 * 64), [4, 64])));
    expectWeightsError(() => importPeftAdapter(plan, 'a', dir), 'UNEXPECTED_TENSOR', 'k_proj.lora_A.weight', /has no LoRA at this module/);

    dir = fresh();
    editConfig(dir, (c) => (c.use_dora = true));
    expectWeightsError(() => importPeftAdapter(plan, 'a', dir), 'BAD_ADAPTER', cfgPath(dir), /DoRA/);

    dir = fresh();
    editConfig(dir, (c) => (c.r = 8));
    expectWeightsError(() => importPeftAdapter(plan, 'a', dir), 'BAD_ADAPTER', /r is 8, but plan adapter a has rank 4/);

    dir = fresh();
    writeFileSync(cfgPath(dir), '{"peft_type": "LORA", "peft_type": "IA3"}');
    expectWeightsError(() => importPeftAdapter(plan, 'a', dir), 'BAD_ADAPTER', cfgPath(dir), /not valid JSON/);
  });
});

describe('mixtures', () => {
  const src = pipeline('builtin("qwen2-micro")', [
    'adapter a = lora(r: 4, alpha: 8) at layers[*].attn.{q, v}',
    'adapter m = moe_lora(experts: 4, top_k: 2, shared: 2, r: 4, alpha: 8) at layers[*].mlp.{gate, up}',
  ]);

  function planWithDrop(): Plan {
    const s = src.replace('  train a, m on d\n}', '  train a, m on d\n  then {\n    drop m.experts\n  }\n}\nstage s2 {\n  train a on d\n}');
    return compileInline(s).plan;
  }

  it('with live routed experts: export peft uses mcpc\'s layout, which round-trips', () => {
    const { plan } = compileInline(src);
    const params = randomParameters(plan);
    const dir = tempDir();
    const res = exportPeft(plan, params, dir, ['a', 'm']);
    expect(res.adapters.map((r) => r.layout)).toEqual(['peft', 'mcpc']);
    expect(res.adapters[1]!.reason).toMatch(/live routed experts/);
    expect(readdirSync(join(dir, 'm')).sort()).toEqual(['adapter.json', 'adapter.safetensors']);
    const side = readJson(join(dir, 'm', 'adapter.json'));
    expect(side).toMatchObject({ format: 'mcpc-adapter', version: 1, name: 'm', type: 'moe_lora', r: 4, alpha: 8, scale: 2, experts: 4, top_k: 2, shared: 2, router: 'softmax', renormalize: true, parts: { low_rank: true, routed: true }, omitted: [] });
    expect(side.sites[0]).toEqual({
      site: 'layers[0].mlp.gate',
      module: 'model.layers.0.mlp.gate_proj',
      in: 64,
      out: 176,
      tensors: { shared_A: 'm.layers[0].mlp.gate.shared_A', shared_B: 'm.layers[0].mlp.gate.shared_B', router_W: 'm.layers[0].mlp.gate.router_W', router_b: 'm.layers[0].mlp.gate.router_b', expert_A: 'm.layers[0].mlp.gate.expert_A', expert_B: 'm.layers[0].mlp.gate.expert_B' },
    });
    const f = SafetensorsReader.open(join(dir, 'm', 'adapter.safetensors'));
    expect(f.info('m.layers[1].mlp.up.expert_A').shape).toEqual([4, 4, 64]);
    expect(f.info('m.layers[1].mlp.up.expert_B').shape).toEqual([4, 176, 4]);
    expect(f.metadata?.get('mcpc_adapter')).toBe('m');
    f.close();
    const back = importAdapterFile(plan, 'm', join(dir, 'm'));
    expect(back.missing).toEqual([]);
    for (const [id, v] of back.params) expect(v).toEqual(params.get(id));
    expect(back.params.size).toBe(plan.parameters.filter((p) => p.owner === 'm').length);
  });

  it('with routed experts dropped: the shared experts are a PEFT LoRA of rank r·shared; merged export merges them', () => {
    const plan = planWithDrop();
    const params = randomParameters(plan);
    const dir = tempDir();
    const res = exportPeft(plan, params, dir, ['m']);
    expect(res.adapters[0]!.layout).toBe('peft');
    const cfg = readJson(join(dir, 'm', PEFT_CONFIG_FILE));
    expect(cfg).toMatchObject({ r: 8, lora_alpha: 16, use_rslora: false, target_modules: ['gate_proj', 'up_proj'] });
    expect(peftScale(cfg.lora_alpha, cfg.r, false)).toBe(2);
    const back = importPeftAdapter(plan, 'm', join(dir, 'm'));
    expect([...back.params.keys()].sort()).toEqual(loraViews(plan, 'm').flatMap((v) => [v.A, v.B]).sort());

    // export safetensors leaves the dropped routed experts out and says so.
    const st = exportSafetensors(plan, params, tempDir(), ['a', 'm']);
    expect(st[1]!.omitted).toEqual(['router_W (dropped)', 'router_b (dropped)', 'expert_A (dropped)', 'expert_B (dropped)']);
    const imported = importAdapterFile(plan, 'm', st[1]!.dir);
    expect(imported.missing.length).toBe(4 * 4);

    const merged = exportMerged(plan, params, tempDir());
    expect(merged.merged).toEqual(['a', 'm']);
  });

  it('a mixture with live routed experts is skipped by export merged, and refused when named', () => {
    const { plan } = compileInline(src);
    const params = randomParameters(plan);
    const m = exportMerged(plan, params, tempDir());
    expect(m.merged).toEqual(['a']);
    expect(m.skipped).toEqual([{ adapter: 'm', reason: expect.stringMatching(/live routed experts/), kind: 'kept' }]);
    expectWeightsError(() => exportMerged(plan, params, tempDir(), { adapters: ['m'] }), 'NOT_EXPORTABLE', /cannot merge adapter m/);
    expectWeightsError(() => exportPeftAdapter(plan, params, 'm', tempDir()), 'NOT_EXPORTABLE', /not a LoRA/);
  });

  it('a dropped adapter cannot be exported', () => {
    const s = src.replace('  train a, m on d\n}', '  train a, m on d\n  then {\n    drop m\n  }\n}\nstage s2 {\n  train a on d\n}');
    const { plan } = compileInline(s);
    const params = randomParameters(plan);
    expectWeightsError(() => exportAdapterFile(plan, params, 'm', tempDir()), 'NOT_EXPORTABLE', /dropped at the end of the pipeline/);
    // The base weights it would have changed are the map's, untouched.
    const merged = exportMerged(plan, params, tempDir());
    expect(merged.merged).toEqual(['a']);
    expect(checkpointParameters(plan).length).toBeGreaterThan(0);
  });
});

describe('initialParameters and importAdapter', () => {
  it('loads the base from the checkpoint and initialises the rest; imports either layout', () => {
    const root = tempDir();
    const { plan } = compileInline(pipeline('hf("m")', ['adapter a = lora(r: 4, alpha: 8) at layers[*].attn.{q, v}', 'adapter m = moe_lora(experts: 2, top_k: 1, r: 2, alpha: 2) at layers[0].mlp.up']), {
      root,
      files: { 'm/config.json': JSON.stringify(hfConfig(microConfig())) },
    });
    const values = randomParameters(plan);
    saveHfCheckpoint(plan, values, join(root, 'm'));
    const init = initialParameters(plan, 3, root);
    expect(init.params.size).toBe(plan.parameters.length);
    expect(init.params.get('base.norm.weight')).toEqual(values.get('base.norm.weight'));
    expect(init.params.get('a.layers[0].attn.q.B')!.every((x) => x === 0)).toBe(true);

    const dir = tempDir();
    exportPeft(plan, values, dir, ['a', 'm']);
    const a = importAdapter(plan, 'a', join(dir, 'a'));
    expect(a.missing).toEqual([]);
    expect(a.params.get('a.layers[1].attn.v.B')).toEqual(values.get('a.layers[1].attn.v.B'));
    const m = importAdapter(plan, 'm', join(dir, 'm'));
    expect(m.params.get('m.layers[0].mlp.up.expert_B')).toEqual(values.get('m.layers[0].mlp.up.expert_B'));
    expectWeightsError(() => importAdapter(plan, 'a', dir), 'BAD_ADAPTER', /neither adapter_config\.json/);
  });
});
