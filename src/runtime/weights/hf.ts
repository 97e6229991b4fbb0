/**
 * Hugging Face checkpoints of Qwen2 and Llama decoders: loading one into the plan's base parameters and
 * saving base parameters as one that `transformers` loads.
 *
 * Names: the plan gives every base parameter its checkpoint name (`hfName`, e.g.
 * `model.layers.0.self_attn.q_proj.weight`), so loading and saving are driven by the plan, and the two
 * architectures differ only in what the plan lists: Qwen2 has q/k/v biases, Llama has none (unless its config
 * sets `attention_bias`). Tied embeddings (`tie_word_embeddings: true`) have no `lm_head.weight` in the plan;
 * a checkpoint that stores one anyway is accepted and the tensor ignored (transformers ties it to the
 * embedding on load), with a warning when it differs from the embedding.
 *
 * Loading (`loadHfCheckpoint`): `config.json` is checked against the plan's model config (a checkpoint
 * replaced after compiling is caught before any tensor is read); then `model.safetensors`, or the sharded
 * `model.safetensors.index.json` (the same preference as transformers). Every safetensors header is validated
 * before anything is allocated (see io/safetensors.ts). Each plan tensor must be present with the plan's shape
 * and a floating-point dtype (F32, F16, BF16, F64; converted to float32); anything else is a `WeightsError`
 * naming the file and the tensor. Tensors the plan does not know are an error too (silently dropping a weight
 * would change the model), except rotary `inv_freq` buffers and a tied `lm_head.weight`.
 *
 * Saving (`saveHfCheckpoint`): `model.safetensors` (or shards and an index past `maxShardBytes`) with the
 * metadata `{"format": "pt"}` transformers expects, then the tokenizer files (an hf tokenizer's copied, the
 * byte tokenizer's generated as tokenizer.json, tokenizer_config.json and special_tokens_map.json, see
 * tokenizer/bytes-hf.ts), `generation_config.json` and, last, `config.json`: a folder without `config.json` is
 * visibly incomplete. Every file is written atomically; shards or a single file left by an earlier save in
 * another layout are removed, so transformers never picks up a stale `model.safetensors`, and so are
 * tokenizer files of an earlier save that the plan's tokenizer does not have.
 */
import { hfConfigJson } from '../../plan/hf-config.js';
import { existsSync, mkdirSync, readFileSync, readdirSync, statSync, unlinkSync } from 'node:fs';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import type { Plan, PlanModelConfig, PlanParam } from '../../plan/types.js';
import { writeFileAtomicSync } from '../io/atomic.js';
import {
  ShardedSafetensorsReader,
  SafetensorsReader,
  layoutSafetensors,
  tensorFromFloat32,
  type TensorInput,
} from '../io/safetensors.js';
import { byteTokenizerFileTexts } from '../tokenizer/bytes-hf.js';
import { createTokenizer } from '../tokenizer/index.js';
import { WeightsError } from './errors.js';
import { readJsonObject, writeJsonAtomic, type Plain } from './json.js';

export type SaveDtype = 'F32' | 'BF16' | 'F16';

const TORCH_DTYPE: Record<SaveDtype, string> = { F32: 'float32', BF16: 'bfloat16', F16: 'float16' };
const FLOAT_DTYPES = new Set(['F32', 'F16', 'BF16', 'F64']);

export const SINGLE_FILE = 'model.safetensors';
export const INDEX_FILE = 'model.safetensors.index.json';
const SHARD_RE = /^model-\d{5}-of-\d{5}\.safetensors$/;
/** Tensors a checkpoint may hold that are no weights (older transformers saved rotary buffers). */
const IGNORABLE = /(^|\.)rotary_emb\.inv_freq$/;

/** The config.json transformers expects for a plan's model config, naming the dtype the weights are saved in. */
export function hfConfig(c: PlanModelConfig, dtype: SaveDtype = 'F32'): Record<string, unknown> {
  return hfConfigJson(c, TORCH_DTYPE[dtype]);
}

/**
 * The config.json a save writes: the model source's own config.json when it has one, with the keys mcpc
 * computes (the shapes, which equal the source's, and the dtype of the saved tensors) over it, so what mcpc
 * does not read (bos/eos ids, use_cache, transformers_version, initializer_range, ...) is kept, not dropped;
 * else the computed keys alone. Newer transformers name the dtype `dtype`: a source that does gets it too.
 */
export function savedConfig(c: PlanModelConfig, dtype: SaveDtype, source?: { [k: string]: Plain }): Record<string, unknown> {
  const own = hfConfig(c, dtype);
  if (!source) return own;
  const out: Record<string, unknown> = { ...source, ...own };
  if ('dtype' in source) out.dtype = TORCH_DTYPE[dtype];
  return out;
}

/**
 * The model source's config.json (parsed) and generation_config.json (bytes), for an `hf("dir")` model whose
 * folder has them; nothing for a built-in model.
 */
export function sourceModelFiles(plan: Plan, root: string): { config?: { [k: string]: Plain }; generation?: Buffer } {
  const src = plan.model.source;
  if (src.kind !== 'hf') return {};
  const dir = isAbsolute(src.path) ? src.path : resolve(root, src.path);
  const cfg = join(dir, 'config.json');
  const gen = join(dir, 'generation_config.json');
  return {
    ...(existsSync(cfg) ? { config: readJsonObject(cfg) } : {}),
    ...(existsSync(gen) ? { generation: readFileSync(gen) } : {}),
  };
}

/**
 * Differences between a checkpoint's config.json and the plan's model config, as `key: file says X, the plan
 * Y` lines (empty when they agree). Defaults are those transformers and the compiler apply to absent keys.
 */
export function configDifferences(json: { [k: string]: Plain }, c: PlanModelConfig): string[] {
  const diffs: string[] = [];
  const cmp = (key: string, found: Plain | undefined, want: unknown) => {
    if (found !== want) diffs.push(`${key}: config.json has ${JSON.stringify(found ?? null)}, the plan was compiled with ${JSON.stringify(want)}`);
  };
  const type = json.model_type;
  cmp('model_type', type, c.arch);
  cmp('vocab_size', json.vocab_size, c.vocab);
  cmp('hidden_size', json.hidden_size, c.hidden);
  cmp('intermediate_size', json.intermediate_size, c.ffn);
  cmp('num_hidden_layers', json.num_hidden_layers, c.layers);
  cmp('num_attention_heads', json.num_attention_heads, c.heads);
  cmp('num_key_value_heads', json.num_key_value_heads ?? json.num_attention_heads, c.kvHeads);
  const hidden = json.hidden_size;
  const heads = json.num_attention_heads;
  cmp('head_dim', json.head_dim ?? (typeof hidden === 'number' && typeof heads === 'number' ? hidden / heads : undefined), c.headDim);
  cmp('tie_word_embeddings', json.tie_word_embeddings === true, c.tied);
  cmp('rope_theta', typeof json.rope_theta === 'number' ? json.rope_theta : 10000, c.ropeTheta);
  cmp('rms_norm_eps', typeof json.rms_norm_eps === 'number' ? json.rms_norm_eps : 1e-6, c.rmsEps);
  if (type === 'llama') cmp('attention_bias', json.attention_bias === true, c.qkvBias);
  return diffs;
}

/** The base parameters a checkpoint holds: every base parameter of the plan with an `hfName`. */
export function checkpointParameters(plan: Plan): PlanParam[] {
  return plan.parameters.filter((p) => p.owner === 'base' && p.hfName !== undefined);
}

function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/** An opened checkpoint: a single file or shards, with the file each tensor lives in (for messages). */
interface OpenCheckpoint {
  reader: SafetensorsReader | ShardedSafetensorsReader;
  /** The file to name for a tensor (its shard, or the single file). */
  fileOf(name: string): string;
  /** What to name when a tensor is missing: the single file or the index. */
  file: string;
  files: string[];
}

function openCheckpoint(dir: string): OpenCheckpoint {
  const single = join(dir, SINGLE_FILE);
  const index = join(dir, INDEX_FILE);
  if (existsSync(single)) {
    const reader = SafetensorsReader.open(single);
    return { reader, fileOf: () => single, file: single, files: [single] };
  }
  if (existsSync(index)) {
    const reader = ShardedSafetensorsReader.open(index);
    return {
      reader,
      fileOf: (name) => {
        const shard = reader.index.weightMap.get(name);
        return shard === undefined ? index : join(dir, shard);
      },
      file: index,
      files: [index, ...reader.index.shards.map((s) => join(dir, s))],
    };
  }
  const other = existsSync(dir) && statSync(dir).isDirectory() ? readdirSync(dir).filter((f) => /\.(bin|pt|pth|ckpt|gguf)$/.test(f)) : [];
  throw new WeightsError(
    'NO_WEIGHTS',
    dir,
    `has neither ${SINGLE_FILE} nor ${INDEX_FILE}` +
      (other.length ? ` (found ${other.slice(0, 3).join(', ')}: convert the checkpoint to safetensors, e.g. save_pretrained(..., safe_serialization=True))` : ''),
  );
}

export interface HfLoadOptions {
  /** Compare config.json with the plan's model config (default true). */
  checkConfig?: boolean;
  /** Ignore tensors the plan does not know instead of failing (default false). */
  allowUnexpected?: boolean;
}

export interface HfLoadResult {
  /** Plan parameter id -> values (float32, row-major). */
  weights: Map<string, Float32Array>;
  /** Files read. */
  files: string[];
  /** Checkpoint tensors not loaded (rotary buffers, a tied lm_head, and with allowUnexpected any other). */
  ignored: string[];
  /** Things worth telling the user that are not errors. */
  warnings: string[];
  /** Source dtype -> number of tensors. */
  dtypes: Record<string, number>;
}

/**
 * Loads the plan's base parameters from the Hugging Face checkpoint folder `dir` (config.json plus
 * model.safetensors or model.safetensors.index.json). Throws WeightsError (or SafetensorsError for a corrupt
 * file) naming the file and the tensor.
 */
export function loadHfCheckpoint(plan: Plan, dir: string, options: HfLoadOptions = {}): HfLoadResult {
  const c = plan.model.config;
  if (options.checkConfig ?? true) {
    const cfgFile = join(dir, 'config.json');
    const json = readJsonObject(cfgFile);
    const diffs = configDifferences(json, c);
    if (diffs.length) {
      throw new WeightsError('CONFIG_MISMATCH', cfgFile, `does not describe the model the plan was compiled for (${diffs.join('; ')}): recompile the pipeline, or point it at the right checkpoint`);
    }
  }
  const ck = openCheckpoint(dir);
  try {
    const expected = checkpointParameters(plan);
    const byName = new Map(expected.map((p) => [p.hfName!, p]));
    const names = ck.reader.names;
    const present = new Set(names);

    const missing = expected.filter((p) => !present.has(p.hfName!));
    if (missing.length) {
      const first = missing[0]!;
      const more = missing.length > 1 ? ` (and ${missing.length - 1} more: ${missing.slice(1, 4).map((p) => p.hfName).join(', ')}${missing.length > 4 ? ', ...' : ''})` : '';
      const hint = first.hfName === 'lm_head.weight' ? '; the plan has untied embeddings (tie_word_embeddings false) but the checkpoint has no output projection' : '';
      throw new WeightsError('MISSING_TENSOR', ck.file, `the checkpoint has no such tensor, which the plan needs for ${first.id} [${first.shape.join(', ')}]${more}${hint}`, first.hfName);
    }

    const ignored: string[] = [];
    const warnings: string[] = [];
    const unexpected: string[] = [];
    for (const n of names) {
      if (byName.has(n)) continue;
      if (IGNORABLE.test(n) || (c.tied && n === 'lm_head.weight')) ignored.push(n);
      else unexpected.push(n);
    }
    if (unexpected.length && !options.allowUnexpected) {
      const n = unexpected[0]!;
      const more = unexpected.length > 1 ? ` (and ${unexpected.length - 1} more: ${unexpected.slice(1, 4).join(', ')}${unexpected.length > 4 ? ', ...' : ''})` : '';
      throw new WeightsError('UNEXPECTED_TENSOR', ck.fileOf(n), `the plan's ${c.arch} model has no such parameter${more}: the checkpoint is of another architecture or has layers the plan does not model`, n);
    }
    ignored.push(...unexpected);

    // Check every shape and dtype before reading any data.
    for (const p of expected) {
      const info = ck.reader.info(p.hfName!);
      if (!sameShape(info.shape, p.shape)) {
        throw new WeightsError('SHAPE_MISMATCH', ck.fileOf(p.hfName!), `has shape [${info.shape.join(', ')}], the plan expects [${p.shape.join(', ')}] for ${p.id}`, p.hfName);
      }
      if (!FLOAT_DTYPES.has(info.dtype)) {
        throw new WeightsError('BAD_DTYPE', ck.fileOf(p.hfName!), `has dtype ${info.dtype}; weights must be F32, F16, BF16 or F64 (quantized checkpoints are not supported)`, p.hfName);
      }
    }

    const weights = new Map<string, Float32Array>();
    const dtypes: Record<string, number> = {};
    for (const p of expected) {
      const name = p.hfName!;
      const dt = ck.reader.info(name).dtype;
      dtypes[dt] = (dtypes[dt] ?? 0) + 1;
      weights.set(p.id, ck.reader.readFloat32(name));
    }

    if (c.tied && present.has('lm_head.weight')) {
      const embed = expected.find((p) => p.role === 'embedding');
      const info = ck.reader.info('lm_head.weight');
      const same = embed && sameShape(info.shape, embed.shape) && FLOAT_DTYPES.has(info.dtype) && equalValues(ck.reader.readFloat32('lm_head.weight'), weights.get(embed.id)!);
      if (!same) warnings.push(`${ck.fileOf('lm_head.weight')}: lm_head.weight differs from the embedding, but the model ties them (tie_word_embeddings true): it is ignored, as transformers does`);
    }
    return { weights, files: ck.files, ignored, warnings, dtypes };
  } finally {
    ck.reader.close();
  }
}

function equalValues(a: Float32Array, b: Float32Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * The base parameters a plan starts from: loaded from the checkpoint when the model is `hf("dir")` (resolved
 * against `root`, the project root), none for a built-in model (its base parameters are initialised, see
 * init.ts). Throws when the plan marks parameters `pretrained` that no checkpoint provides.
 */
export function loadBaseParameters(plan: Plan, root = '.', options: HfLoadOptions = {}): HfLoadResult {
  const src = plan.model.source;
  if (src.kind === 'hf') return loadHfCheckpoint(plan, isAbsolute(src.path) ? src.path : resolve(root, src.path), options);
  const pretrained = plan.parameters.find((p) => p.init.kind === 'pretrained');
  if (pretrained) throw new WeightsError('PLAN', '(plan)', `parameter ${pretrained.id} is pretrained but the model is built-in (${src.name}): there is no checkpoint to load it from`);
  return { weights: new Map(), files: [], ignored: [], warnings: [], dtypes: {} };
}

// --- saving -------------------------------------------------------------------------------------------------------

export interface HfSaveOptions {
  /** Dtype of the saved weights (default F32). */
  dtype?: SaveDtype;
  /** Split into shards of at most this many bytes of tensor data (default: one file). */
  maxShardBytes?: number;
  /** Project root that the plan's tokenizer path resolves against (default '.'). */
  root?: string;
}

export interface HfSaveResult {
  /** Files written, in the order written. */
  files: string[];
  /** Stale files of an earlier save that were removed. */
  removed: string[];
}

/** Files copied from beside an hf tokenizer's tokenizer.json, when present (and removed when stale). */
const TOKENIZER_FILES = ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'vocab.json', 'merges.txt', 'added_tokens.json', 'chat_template.jinja'];

/**
 * Saves base parameters (`params`, by plan id; every base parameter with an hfName must be there) as a Hugging
 * Face checkpoint in `dir`: model weights, tokenizer files (copied for hf tokenizers, generated for the byte
 * tokenizer), generation_config.json (when the tokenizer is known) and config.json last.
 */
export function saveHfCheckpoint(plan: Plan, params: ReadonlyMap<string, Float32Array>, dir: string, options: HfSaveOptions = {}): HfSaveResult {
  const dtype = options.dtype ?? 'F32';
  // Read before anything is written: the destination may be the model source itself.
  const source = sourceModelFiles(plan, options.root ?? '.');
  mkdirSync(dir, { recursive: true });
  // config.json is written last: removing an old one first leaves an interrupted save visibly incomplete.
  const cfg = join(dir, 'config.json');
  if (existsSync(cfg)) unlinkSync(cfg);
  const tensors: [string, TensorInput][] = [];
  for (const p of checkpointParameters(plan)) {
    const v = params.get(p.id);
    if (!v) throw new WeightsError('MISSING_PARAMETER', '(parameters)', `base parameter ${p.id} (${p.hfName}) is not in the parameter map`);
    if (v.length !== numel(p.shape)) throw new WeightsError('SHAPE_MISMATCH', '(parameters)', `base parameter ${p.id} has ${v.length} elements, the plan's shape [${p.shape.join(', ')}] has ${numel(p.shape)}`);
    tensors.push([p.hfName!, tensorFromFloat32(v, p.shape, dtype)]);
  }

  const files: string[] = [];
  const written = new Set<string>();
  const metadata = { format: 'pt' };
  const total = tensors.reduce((s, [, t]) => s + t.data.byteLength, 0);
  const max = options.maxShardBytes;
  if (max === undefined || total <= max) {
    const f = join(dir, SINGLE_FILE);
    writeSafetensors(f, tensors, metadata);
    files.push(f);
    written.add(SINGLE_FILE);
  } else {
    if (!(max > 0)) throw new RangeError(`maxShardBytes must be positive, got ${max}`);
    // Greedy in plan order, as transformers' shard_checkpoint does: a tensor larger than the limit gets a shard alone.
    const shards: [string, TensorInput][][] = [];
    let cur: [string, TensorInput][] = [];
    let size = 0;
    for (const t of tensors) {
      const b = t[1].data.byteLength;
      if (cur.length && size + b > max) {
        shards.push(cur);
        cur = [];
        size = 0;
      }
      cur.push(t);
      size += b;
    }
    if (cur.length) shards.push(cur);
    const n = shards.length;
    const weightMap: Record<string, string> = {};
    shards.forEach((shard, i) => {
      const name = `model-${String(i + 1).padStart(5, '0')}-of-${String(n).padStart(5, '0')}.safetensors`;
      const f = join(dir, name);
      writeSafetensors(f, shard, metadata);
      files.push(f);
      written.add(name);
      for (const [t] of shard) weightMap[t] = name;
    });
    const sorted = Object.fromEntries(Object.keys(weightMap).sort().map((k) => [k, weightMap[k]!]));
    const idx = join(dir, INDEX_FILE);
    writeJsonAtomic(idx, { metadata: { total_size: total }, weight_map: sorted });
    files.push(idx);
    written.add(INDEX_FILE);
  }

  // An earlier save in the other layout must not shadow this one.
  const removed: string[] = [];
  for (const f of readdirSync(dir)) {
    if (written.has(f)) continue;
    if (f === SINGLE_FILE || f === INDEX_FILE || SHARD_RE.test(f)) {
      unlinkSync(join(dir, f));
      removed.push(join(dir, f));
    }
  }

  const tokenizerFiles = writeTokenizer(plan, dir, options.root ?? '.');
  files.push(...tokenizerFiles);
  // Tokenizer files of an earlier save that this tokenizer does not have would contradict it (transformers
  // reads vocab.json, merges.txt or chat_template.jinja when present).
  if (tokenizerFiles.length) {
    const kept = new Set(tokenizerFiles.map((f) => resolve(f)));
    for (const name of TOKENIZER_FILES) {
      const f = join(dir, name);
      if (!kept.has(resolve(f)) && existsSync(f)) {
        unlinkSync(f);
        removed.push(f);
      }
    }
  }
  const genFile = join(dir, 'generation_config.json');
  if (source.generation !== undefined) {
    writeFileAtomicSync(genFile, source.generation);
    files.push(genFile);
  } else {
    const gen = generationConfig(plan, options.root ?? '.');
    if (gen) {
      writeJsonAtomic(genFile, gen);
      files.push(genFile);
    }
  }
  writeJsonAtomic(cfg, savedConfig(plan.model.config, dtype, source.config));
  files.push(cfg);
  return { files, removed };
}

function writeSafetensors(file: string, tensors: [string, TensorInput][], metadata: Record<string, string>): void {
  const { head, chunks } = layoutSafetensors(new Map(tensors), metadata, file);
  writeFileAtomicSync(file, [head, ...chunks]);
}

/** The folder of an hf tokenizer path (a folder, or a tokenizer.json file), resolved against root. */
function tokenizerDir(path: string, root: string): { dir: string; file: string } {
  const abs = isAbsolute(path) ? path : resolve(root, path);
  const file = abs.endsWith('.json') ? abs : join(abs, 'tokenizer.json');
  return { dir: dirname(file), file };
}

/**
 * The plan's tokenizer files in `dir`: an hf tokenizer's files copied from beside its tokenizer.json; the byte
 * tokenizer written out as Hugging Face files (tokenizer/bytes-hf.ts); none for an unspecified one.
 */
function writeTokenizer(plan: Plan, dir: string, root: string): string[] {
  const tok = plan.model.tokenizer;
  if (tok.kind === 'bytes') {
    const out: string[] = [];
    // The same text writeJsonAtomic would write; the PyTorch program (--target torch) writes these bytes too.
    for (const [name, text] of Object.entries(byteTokenizerFileTexts(plan.model.config))) {
      const f = join(dir, name);
      writeFileAtomicSync(f, text);
      out.push(f);
    }
    return out;
  }
  if (tok.kind !== 'hf') return [];
  const src = tokenizerDir(tok.path, root);
  if (!existsSync(src.file)) throw new WeightsError('IO', src.file, 'the plan\'s tokenizer file does not exist');
  const out: string[] = [];
  for (const name of TOKENIZER_FILES) {
    const from = name === 'tokenizer.json' ? src.file : join(src.dir, name);
    if (!existsSync(from)) continue;
    const to = join(dir, name);
    if (resolve(from) === resolve(to)) {
      out.push(to);
      continue;
    }
    writeFileAtomicSync(to, readFileSync(from));
    out.push(to);
  }
  return out;
}

/** generation_config.json for the plan's tokenizer (eos, pad, bos ids), or undefined when it has none. */
export function generationConfig(plan: Plan, root = '.'): Record<string, number> | undefined {
  const tok = plan.model.tokenizer;
  if (tok.kind === 'unspecified') return undefined;
  const t = createTokenizer(tok, root);
  return { ...(t.bos !== null ? { bos_token_id: t.bos } : {}), eos_token_id: t.eos, pad_token_id: t.pad };
}
