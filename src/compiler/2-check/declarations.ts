/**
 * Checkers for declarations: model, tokenizer, data, probe, adapter. Each evaluates its constructor against
 * the schema and records the typed result in the context.
 */
import { join } from 'node:path';
import type * as A from '../1-parse/ast.js';
import { didYouMean } from '../util/suggest.js';
import type { CheckedAdapter, LoraOptions } from './checked.js';
import type { Ctx } from './context.js';
import { describeReadError } from './host.js';
import { builtinModels, configFromHf, moduleTree, type ModelConfig } from './models.js';
import { placementText, resolvePlacement } from './selectors.js';
import type { CtorValue, NameRef, PathValue } from './values.js';

function callOf(ctx: Ctx, d: A.Decl, family: 'model' | 'tokenizer' | 'data' | 'probe' | 'adapter'): CtorValue | undefined {
  if (!d.value) return undefined;
  if (d.value.kind !== 'call') {
    if (d.value.kind === 'ref' && d.value.path[0]?.name === '') return undefined;
    ctx.diags.report('invalid_value', d.value.span, `a ${family} declaration needs a constructor call`, {
      hint: family === 'adapter' ? 'e.g. `lora(r: 16, alpha: 32)`' : family === 'model' ? 'e.g. `hf("models/my-model")` or `builtin("qwen2-tiny")`' : family === 'data' ? 'e.g. `jsonl("data/train.jsonl")`' : undefined,
    });
    return undefined;
  }
  return ctx.ev.call(d.value, family, `${d.declKind} \`${d.name.name}\``);
}

export function checkModel(ctx: Ctx, d: A.Decl): void {
  ctx.model = { name: d.name.name, decl: d };
  const v = callOf(ctx, d, 'model');
  if (!v) return;
  let config: ModelConfig | undefined;
  let dir: string | undefined;
  if (v.ctor === 'builtin') {
    const name = v.args.name as string | undefined;
    if (name === undefined) return;
    const base = Object.hasOwn(builtinModels, name) ? builtinModels[name] : undefined;
    if (!base) {
      ctx.diags.report('unknown_builtin_model', v.spans.name ?? d.span, `there is no built-in model \`${name}\``, {
        hint: didYouMean(name, Object.keys(builtinModels)) ?? `built-in models: ${Object.keys(builtinModels).join(', ')}`,
      });
      return;
    }
    const o = v.args as Record<string, number | undefined>;
    config = { ...base, layers: o.layers ?? base.layers, hidden: o.hidden ?? base.hidden, ffn: o.ffn ?? base.ffn, heads: o.heads ?? base.heads, kvHeads: o.kv_heads ?? base.kvHeads, vocab: o.vocab ?? base.vocab };
    if (o.hidden !== undefined || o.heads !== undefined) {
      if (config.hidden % config.heads !== 0) {
        ctx.diags.report('invalid_value', v.span, `hidden ${config.hidden} is not divisible by heads ${config.heads}`, { hint: 'each head takes hidden / heads dimensions: pick heads that divide hidden' });
        return;
      }
      config.headDim = config.hidden / config.heads;
    }
    if (config.heads % config.kvHeads !== 0) {
      ctx.diags.report('invalid_value', v.span, `heads ${config.heads} is not divisible by kv_heads ${config.kvHeads}`, { hint: 'grouped-query attention shares each kv head among heads / kv_heads query heads: pick kv_heads that divides heads' });
      return;
    }
    ctx.model.source = { kind: 'builtin', name };
  } else {
    const pv = v.args.path as PathValue | undefined;
    if (!pv) return;
    dir = ctx.checkPath(pv, { mustExist: false, what: 'model directory' });
    if (!dir) return;
    const file = join(dir, 'config.json');
    const read = ctx.host.readFile(file);
    if ('error' in read) {
      ctx.diags.report('model_config_not_found', pv.span, `cannot read \`${pv.path}/config.json\`: ${describeReadError(read.error)}`, {
        hint: 'an hf() model is a directory with config.json and model.safetensors; selectors resolve against its config',
      });
      return;
    }
    let json: unknown;
    try {
      json = JSON.parse(read.text);
    } catch (err) {
      ctx.diags.report('model_config_invalid', pv.span, `\`${pv.path}/config.json\` is not valid JSON: ${(err as Error).message}`, {
        hint: 'config.json is the Hugging Face model config, a JSON object (`model_type`, `hidden_size`, ...); restore it from the model\'s release',
      });
      return;
    }
    const res = configFromHf(json);
    if (!res.config) {
      ctx.diags.report('model_config_invalid', pv.span, `\`${pv.path}/config.json\`: ${res.problems.join('; ')}`, {
        hint: 'mcpc trains Qwen2 and Llama decoders computed as transformers computes them; a config it cannot reproduce is refused rather than trained as another model (`mcpc models` lists built-in configurations)',
      });
      return;
    }
    config = res.config;
    ctx.model.source = { kind: 'hf', path: pv.path };
  }
  ctx.model.config = config;
  ctx.model.tree = moduleTree(config);

  const tok = v.args.tokenizer as NameRef | undefined;
  if (tok) {
    const info = ctx.lookup({ name: tok.ref, span: tok.span }, ['tokenizer'], 'tokenizer');
    if (info) ctx.used.add(tok.ref);
    // The tokenizer's own checker fills in its spec; resolved in checkTokenizers.
    ctx.model.tokenizer = info ? { kind: 'bytes' } : undefined;
    if (info) ctx.modelTokenizer = tok.ref;
  } else if (dir && ctx.host.exists(join(dir, 'tokenizer.json'))) {
    ctx.model.tokenizer = { kind: 'hf', path: join((v.args.path as PathValue).path, 'tokenizer.json') };
  } else if (config.vocab <= 256) {
    ctx.model.tokenizer = { kind: 'bytes' };
  } else if (v.ctor === 'builtin') {
    // A built-in shape of a real model: enough to plan and emit code; running it needs a tokenizer.
    ctx.model.tokenizer = { kind: 'unspecified' };
  } else {
    ctx.diags.report('file_not_found', d.span, `model \`${d.name.name}\` has a vocabulary of ${config.vocab} but no tokenizer`, {
      hint: 'put tokenizer.json in the model directory, or pass `tokenizer: NAME` naming a `tokenizer` declaration',
    });
  }
}

export function checkTokenizer(ctx: Ctx, d: A.Decl): void {
  const v = callOf(ctx, d, 'tokenizer');
  if (!v) return;
  let spec: { kind: 'bytes' } | { kind: 'hf'; path: string } = { kind: 'bytes' };
  if (v.ctor === 'hf') {
    const pv = v.args.path as PathValue | undefined;
    if (!pv || !ctx.checkPath(pv, { mustExist: true, what: 'tokenizer' })) return;
    spec = { kind: 'hf', path: pv.path };
  }
  if (ctx.model && ctx.modelTokenizer === d.name.name) ctx.model.tokenizer = spec;
}

export function checkData(ctx: Ctx, d: A.Decl): void {
  const v = callOf(ctx, d, 'data');
  if (!v) return;
  const pv = v.args.path as PathValue | undefined;
  if (!pv || !ctx.checkPath(pv, { mustExist: true, what: 'data file' })) return;
  ctx.data.set(d.name.name, {
    name: d.name.name,
    kind: v.ctor === 'text' ? 'text' : 'jsonl',
    path: pv.path,
    format: v.ctor === 'text' ? 'text' : (v.args.format as 'chat' | 'instruction'),
    maxRecords: v.args.max_records as number | undefined,
    span: d.span,
  });
}

export function checkProbe(ctx: Ctx, d: A.Decl): void {
  const v = callOf(ctx, d, 'probe');
  if (!v) return;
  const ref = v.args.data as NameRef | undefined;
  if (!ref) return;
  const info = ctx.lookup({ name: ref.ref, span: ref.span }, ['data'], 'data source');
  if (!info) return;
  ctx.used.add(ref.ref);
  ctx.probes.set(d.name.name, { name: d.name.name, kind: v.ctor as 'multiple_choice', data: ref.ref, maxExamples: v.args.max_examples as number | undefined, span: d.span });
}

export function checkAdapter(ctx: Ctx, d: A.Decl, stage?: string): void {
  const v = callOf(ctx, d, 'adapter');
  if (!d.placement) {
    ctx.diags.report('invalid_placement', d.span, `adapter \`${d.name.name}\` has no placement`, { hint: 'add `at layers[*].attn.{q, k, v, o}` (or another selector) after the constructor' });
  }
  if (!v) return;
  const a = v.args as Record<string, unknown>;
  const r = a.r as number | undefined;
  if (r === undefined) return;
  const alpha = (a.alpha as number | undefined) ?? r;
  const rslora = a.rslora as boolean;
  const lora: LoraOptions = { r, alpha, scale: rslora ? alpha / Math.sqrt(r) : alpha / r, dropout: a.dropout as number, rslora, init: a.init as LoraOptions['init'] };
  const isMoe = v.ctor === 'moe_lora';
  const experts = (a.experts as number | undefined) ?? 1;
  const topK = isMoe ? ((a.top_k as number | undefined) ?? 2) : 0;
  const shared = isMoe ? ((a.shared as number | undefined) ?? 0) : 0;
  // Without `experts` (reported as missing) there is no count to compare top_k with.
  if (isMoe && a.experts !== undefined && topK > experts) {
    ctx.diags.report('top_k_exceeds_experts', v.spans.top_k ?? v.span, `top_k ${topK} is larger than experts ${experts}: each token cannot be routed to more experts than exist`);
  }
  const checked: CheckedAdapter = {
    name: d.name.name,
    type: isMoe ? 'moe_lora' : 'lora',
    lora,
    experts,
    topK,
    shared,
    router: (a.router as 'softmax' | 'sigmoid' | undefined) ?? 'softmax',
    renormalize: (a.renormalize as boolean | undefined) ?? true,
    loadBalance: (a.load_balance as number | undefined) ?? 0,
    routerNoise: (a.router_noise as number | undefined) ?? 0,
    rank: r * (experts + shared),
    placement: d.placement ? placementText(d.placement) : '',
    sites: [],
    ...(stage !== undefined ? { declaredIn: stage } : {}),
    span: d.span,
  };
  if (d.placement && ctx.model?.tree) {
    const res = resolvePlacement(ctx.model.tree, d.placement, ctx.diags);
    checked.sites = res.sites.map((n) => ({ path: n.path, hfName: n.hfName, in: n.in!, out: n.out! }));
  }
  ctx.adapters.set(d.name.name, checked);
}
