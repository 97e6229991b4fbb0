/**
 * Merged exports of byte-tokenizer models carry Hugging Face tokenizer files (tokenizer/bytes-hf.ts), and the
 * exported folder works as a model source again: `hf("dir")` then finds a tokenizer.json and the plan's
 * tokenizer becomes `kind: 'hf'`, which must encode the training data to the same ids as the byte tokenizer.
 */
import { existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { BYTE_CHAT_TEMPLATE, defaultChatTemplate, loadDataSource } from '../../../src/runtime/data/index.js';
import { byteTokenizerFiles } from '../../../src/runtime/tokenizer/bytes-hf.js';
import { ByteTokenizer, createTokenizer, HfTokenizer } from '../../../src/runtime/tokenizer/index.js';
import { runExports } from '../../../src/runtime/weights/export.js';
import { checkpointParameters, generationConfig, hfConfig, loadBaseParameters, saveHfCheckpoint } from '../../../src/runtime/weights/hf.js';
import { compileInline, microConfig, pipeline, randomParameters, tempDir } from './helpers.js';

const ADAPTER = 'adapter a = lora(r: 4, alpha: 8) at layers[*].attn.{q, v}';
const TOKENIZER_FILES = ['special_tokens_map.json', 'tokenizer.json', 'tokenizer_config.json'];

const chat = (...turns: [string, string][]) => JSON.stringify({ messages: turns.map(([role, content]) => ({ role, content })) });
/** Chat records of every kind the byte template renders: system turns, several turns, non-ASCII, control bytes. */
const RECORDS = [
  chat(['user', 'What is 2+2?'], ['assistant', '4']),
  chat(['system', 'You are a careful clinician.'], ['user', 'Fièvre à 39 °C 🤒, que faire ?'], ['assistant', 'Hydratez-vous.\nConsultez si elle persiste.']),
  chat(['user', 'tabs\tand\r\nbells\u0007 ă Ā <0x41> <|assistant|>'], ['assistant', '日本語 👩‍⚕️'], ['user', 'again'], ['assistant', 'ok']),
  // Rejected by both tokenizers (content holding the EOS byte), so skipped under skipBadRecords.
  chat(['user', 'q'], ['assistant', 'bad \u0003 eos']),
].join('\n');

const readJson = (f: string) => JSON.parse(readFileSync(f, 'utf8')) as Record<string, unknown>;

describe('saveHfCheckpoint of a byte-tokenizer model', () => {
  it('writes tokenizer.json, tokenizer_config.json and special_tokens_map.json, before config.json', () => {
    const root = tempDir();
    const { plan } = compileInline(pipeline('hf("m")', [ADAPTER]), { root, files: { 'm/config.json': JSON.stringify(hfConfig(microConfig({ maxPositions: 2048 }))) } });
    expect(plan.model.tokenizer).toEqual({ kind: 'bytes' });
    const out = join(root, 'out');
    const res = saveHfCheckpoint(plan, randomParameters(plan), out);
    expect(readdirSync(out).sort()).toEqual(['config.json', 'generation_config.json', 'model.safetensors', ...TOKENIZER_FILES]);
    expect(res.files.map((f) => f.slice(out.length + 1))).toEqual(['model.safetensors', 'tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'generation_config.json', 'config.json']);
    const want = byteTokenizerFiles(plan.model.config);
    for (const name of TOKENIZER_FILES) expect(readJson(join(out, name))).toEqual(want[name as keyof typeof want]);
    expect(readJson(join(out, 'tokenizer_config.json')).model_max_length).toBe(2048);
    expect(readJson(join(out, 'generation_config.json'))).toEqual({ eos_token_id: 3, pad_token_id: 0 });
  });

  it('removes tokenizer files of an earlier save that the byte tokenizer does not have', () => {
    const root = tempDir();
    const { plan } = compileInline(pipeline('builtin("qwen2-micro")', [ADAPTER]), { root });
    const out = join(root, 'out');
    saveHfCheckpoint(plan, randomParameters(plan), out);
    for (const f of ['vocab.json', 'merges.txt', 'chat_template.jinja', 'added_tokens.json']) writeFileSync(join(out, f), 'stale');
    writeFileSync(join(out, 'README.md'), 'mine');
    const res = saveHfCheckpoint(plan, randomParameters(plan), out);
    expect(res.removed.map((f) => f.slice(out.length + 1)).sort()).toEqual(['added_tokens.json', 'chat_template.jinja', 'merges.txt', 'vocab.json']);
    expect(readdirSync(out).sort()).toEqual(['README.md', 'config.json', 'generation_config.json', 'model.safetensors', ...TOKENIZER_FILES]);
  });
});

describe('export merged of a byte-tokenizer model, loaded back as hf("dir")', () => {
  const root = tempDir();
  const exportPipeline = pipeline('hf("m")', [ADAPTER], ['export merged "out/merged"']);
  const { plan: first } = compileInline(exportPipeline, { root, files: { 'm/config.json': JSON.stringify(hfConfig(microConfig())), 'd.jsonl': RECORDS } });
  const params = randomParameters(first);
  const [result] = runExports(first, params, root);
  // A pipeline on the exported folder (compiled in the same project, on the same data).
  const { plan: second } = compileInline(pipeline('hf("out/merged")', [ADAPTER]), { root, name: 'u', files: { 'd.jsonl': RECORDS } });

  it('writes the tokenizer files with the merged checkpoint', () => {
    expect(result!.format).toBe('merged');
    for (const name of TOKENIZER_FILES) expect(existsSync(join(root, 'out/merged', name))).toBe(true);
  });

  it('compiles with the folder\'s tokenizer.json (kind hf) and the same model; the weights load', () => {
    expect(first.model.tokenizer).toEqual({ kind: 'bytes' });
    expect(second.model.tokenizer).toEqual({ kind: 'hf', path: 'out/merged/tokenizer.json' });
    expect(second.model.config).toEqual(first.model.config);
    const loaded = loadBaseParameters(second, root);
    expect(loaded.weights.size).toBe(checkpointParameters(second).length);
  });

  it('has the byte tokenizer\'s special tokens, vocabulary and chat template', () => {
    const tok = createTokenizer(second.model.tokenizer, root);
    expect(tok).toBeInstanceOf(HfTokenizer);
    expect({ eos: tok.eos, pad: tok.pad, bos: tok.bos, vocab: tok.vocabSize }).toEqual({ eos: 3, pad: 0, bos: null, vocab: 256 });
    expect([...tok.specialIds].sort()).toEqual([0, 3]);
    expect(defaultChatTemplate(tok)).toBe(BYTE_CHAT_TEMPLATE);
    expect(generationConfig(second, root)).toEqual(generationConfig(first, root));
  });

  it('encodes the chat records to the same examples as the byte tokenizer (ids, labels, loss mask)', async () => {
    const byTokenizer = async (plan: typeof first) => {
      const tokenizer = createTokenizer(plan.model.tokenizer, root);
      return loadDataSource(plan.data[0]!, { root, tokenizer, maxLen: 96, skipBadRecords: true });
    };
    const bytes = await byTokenizer(first);
    const hf = await byTokenizer(second);
    expect(createTokenizer(first.model.tokenizer, root)).toBeInstanceOf(ByteTokenizer);
    expect(bytes.examples).toHaveLength(3);
    expect(bytes.skipped).toBe(1);
    expect(hf.skipped).toBe(1);
    expect(hf.truncated).toBe(bytes.truncated);
    expect(hf.examples.map((e) => [Array.from(e.tokens), Array.from(e.labels), Array.from(e.mask)])).toEqual(bytes.examples.map((e) => [Array.from(e.tokens), Array.from(e.labels), Array.from(e.mask)]));
    // The first record, spelled out: `<|user|>\nWhat is 2+2?\n<|assistant|>\n4` then EOS.
    const e = hf.examples[0]!;
    expect([...Array.from(e.tokens), e.labels[e.labels.length - 1]]).toEqual([...new TextEncoder().encode('<|user|>\nWhat is 2+2?\n<|assistant|>\n4'), 3]);
  });
});
