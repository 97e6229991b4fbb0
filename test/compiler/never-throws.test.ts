/**
 * The linter never throws: every input ends in diagnostics (exit 0 or 1), never an exception, a stack trace,
 * an internal error (exit 2) or a hang.
 *
 * Inputs: random text (unicode, NUL, lone surrogates, every kind of line break) and random bytes; truncations
 * of every pipeline in pipelines/ and examples/; token-level mutations of them (delete, duplicate, swap,
 * insert or replace tokens, tokenized with the project's own lexer) and edits that keep the syntax (so the
 * checker, not only the parser, meets them); fuzzed base pipelines behind `extends`; fuzzed config.json
 * files behind `hf(...)`; and hand-made extremes (100 000 nested brackets, 100 000 selector segments, a 1 MB
 * line, 10 000 stages, endless `extends` chains, ...), each against a time budget. Most inputs go through
 * `checkFile` with an in-memory host (and `compileFile` when a memory budget makes `mcpc lint` compile); a
 * smaller sample goes through `mcpc lint FILE --format json` (and sarif, text) with files on disk.
 * NEVER_THROWS_RUNS=N multiplies the fuzzers' runs for a deeper search.
 *
 * Every diagnostic must have a code from the catalogue, a non-empty message and spans (its own and its
 * notes') that lie inside a file of the result, with line and column consistent with the offset.
 * Inputs that once crashed or hung the linter are kept in `regressions`.
 */
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve, sep } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { main } from '../../src/cli/main.js';
import { MAX_FILE_BYTES, MAX_NESTING } from '../../src/compiler/1-parse/index.js';
import { keywords, lexer } from '../../src/compiler/1-parse/tokens.js';
import { isCode } from '../../src/compiler/diagnostics/catalogue.js';
import type { Diagnostic } from '../../src/compiler/diagnostics/diagnostic.js';
import { checkFile, compileFile, type CheckFileResult, type CheckHost } from '../../src/compiler/index.js';
import type { SourceFile, Span } from '../../src/compiler/source.js';
import { memoryIO } from '../support/memory-io.js';

const repo = resolve(new URL('../..', import.meta.url).pathname);

/** A hand-made extreme must finish within this (a loaded 2-core CI machine; most take well under a second). */
const EXTREME_BUDGET_MS = 10_000;
const EXTREME_TIMEOUT_MS = 30_000;
/** NEVER_THROWS_RUNS=10 multiplies every fuzzer's runs (a deeper search than CI's, e.g. before a release). */
const RUNS = Math.max(1, Number(process.env.NEVER_THROWS_RUNS ?? 1) || 1);
const runs = (n: number) => ({ numRuns: n * RUNS });

// --- the repository's pipelines, configs and data files ------------------------------------------------------

function walk(dir: string): string[] {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return [];
  }
  return names.sort().flatMap((n) => {
    const abs = join(dir, n);
    return statSync(abs).isDirectory() ? walk(abs) : [abs];
  });
}
const rel = (abs: string) => relative(repo, abs).split(sep).join('/');

/** Every .mcp under pipelines/ and examples/, by repository-relative path. */
const corpus = new Map<string, string>();
/** Text files the checker may read (pipelines, config.json), by repository-relative path. */
const repoTexts = new Map<string, string>();
/** Every file under the folders pipelines reference, for `exists`. */
const repoFiles = new Set<string>();
for (const top of ['pipelines', 'examples', 'models', 'data']) {
  for (const abs of walk(join(repo, top))) {
    const r = rel(abs);
    repoFiles.add(r);
    if (r.endsWith('.mcp') || r.endsWith('.json')) repoTexts.set(r, readFileSync(abs, 'utf8'));
    if (r.endsWith('.mcp') && (top === 'pipelines' || top === 'examples')) corpus.set(r, readFileSync(abs, 'utf8'));
  }
}
const corpusPaths = [...corpus.keys()];
const medcarePath = 'pipelines/medcare.mcp';
const medcare = corpus.get(medcarePath)!;
const realConfig = JSON.parse(repoTexts.get('models/tiny-med-base/config.json')!) as Record<string, unknown>;

// --- an in-memory project --------------------------------------------------------------------------------------

const ROOT = '/proj';

interface MemProject {
  /** Files by root-relative path, over the repository's own. */
  files?: Record<string, string>;
  /** Text for any path not found otherwise (endless chains of distinct paths). */
  fallback?: (rel: string) => string | undefined;
  /** mcpc.yaml `memory:` in bytes: every clean pipeline is then compiled, as `mcpc lint` does. */
  memory?: number;
}

function memHost(p: MemProject): CheckHost {
  const relOf = (abs: string) => relative(ROOT, abs).split(sep).join('/');
  const text = (abs: string): string | undefined => {
    const r = relOf(abs);
    return (p.files && Object.hasOwn(p.files, r) ? p.files[r] : undefined) ?? repoTexts.get(r) ?? p.fallback?.(r);
  };
  return {
    root: ROOT,
    cwd: ROOT,
    allowOutsideRoot: false,
    readFile: (abs) => {
      const t = text(abs);
      return t === undefined ? { error: 'ENOENT' } : { text: t };
    },
    exists: (abs) => repoFiles.has(relOf(abs)) || text(abs) !== undefined,
  };
}

// --- what every result must satisfy ----------------------------------------------------------------------------

let checked = 0;
/** Inputs that were also compiled (a memory budget makes `mcpc lint` run the memory planner). */
let compiled = 0;
/** Inputs whose files all parsed without errors, so the checker (not only the parser) saw them. */
let reachedChecker = 0;
let throughCli = 0;

function checkSpan(span: Span | undefined, sources: Map<string, SourceFile>, what: string): void {
  if (!span) throw new Error(`${what}: no span`);
  const src = sources.get(span.file);
  if (!src) throw new Error(`${what}: span in \`${span.file}\`, which is not among the sources (${[...sources.keys()].join(', ')})`);
  for (const [end, p] of [['start', span.start], ['end', span.end]] as const) {
    const ok = Number.isInteger(p.offset) && p.offset >= 0 && p.offset <= src.text.length && p.line >= 1 && p.line <= src.lineStarts.length && p.column >= 1;
    if (!ok) throw new Error(`${what}: ${end} ${JSON.stringify(p)} is outside ${span.file} (${src.text.length} characters, ${src.lineStarts.length} lines)`);
    const at = src.position(p.offset);
    if (at.line !== p.line || at.column !== p.column) throw new Error(`${what}: ${end} ${JSON.stringify(p)} disagrees with its offset (${at.line}:${at.column})`);
  }
  if (span.end.offset < span.start.offset) throw new Error(`${what}: the span ends before it starts`);
}

function checkDiagnostics(diags: Diagnostic[], sources: Map<string, SourceFile>, label: string): void {
  for (const d of diags) {
    const what = `${label}: ${d.code} "${String(d.message).slice(0, 120)}"`;
    if (!isCode(d.code)) throw new Error(`${what}: the code is not in the catalogue`);
    if (d.severity !== 'error' && d.severity !== 'warning') throw new Error(`${what}: severity ${d.severity}`);
    if (typeof d.message !== 'string' || !d.message.trim()) throw new Error(`${what}: empty message`);
    if (d.hint !== undefined && (typeof d.hint !== 'string' || !d.hint.trim())) throw new Error(`${what}: empty hint`);
    checkSpan(d.span, sources, what);
    for (const n of d.notes) {
      if (!n.message.trim()) throw new Error(`${what}: a note without a message`);
      if (n.span) checkSpan(n.span, sources, `${what}, note "${n.message}"`);
    }
  }
}

/** Lint `text` as `path` (root-relative) in memory; throws on any broken promise. */
function lint(text: string, path = 'fuzz.mcp', project: MemProject = {}): Diagnostic[] {
  checked++;
  const label = `${path} (${text.length} characters: ${JSON.stringify(text.slice(0, 80))}${text.length > 80 ? '…' : ''})`;
  const host = memHost({ ...project, files: { ...project.files, [path]: text } });
  let res: CheckFileResult = checkFile(path, host);
  // As `mcpc lint` does: a clean pipeline with a memory budget is compiled, so the memory planner checks it.
  const budgeted = project.memory !== undefined || res.pipeline?.stages.some((s) => s.settings.memoryBytes !== undefined);
  if (budgeted && res.pipeline && !res.diagnostics.some((d) => d.severity === 'error')) {
    compiled++;
    res = compileFile(path, host, {}, { optLevel: 1, ...(project.memory !== undefined ? { memoryBudget: project.memory } : {}) });
  }
  checkDiagnostics(res.diagnostics, res.sources, label);
  if (res.composed?.files.every((f) => f.parsed && f.syntaxErrors === 0)) reachedChecker++;
  return res.diagnostics;
}

/** Lint and time an extreme. */
function extreme(text: string, path = 'fuzz.mcp', project: MemProject = {}): Diagnostic[] {
  const t0 = performance.now();
  const diags = lint(text, path, project);
  const ms = performance.now() - t0;
  expect(ms, `took ${Math.round(ms)} ms`).toBeLessThan(EXTREME_BUDGET_MS);
  return diags;
}

const codes = (ds: Diagnostic[]) => [...new Set(ds.map((d) => d.code))];

// --- generators ------------------------------------------------------------------------------------------------

const words = [
  ...keywords.map((k) => k.name.toLowerCase()),
  'lora', 'moe_lora', 'hf', 'builtin', 'jsonl', 'text', 'bytes', 'orthogonal', 'cosine', 'linear', 'adamw', 'sgd',
  'multiple_choice', 'json_format', 'perplexity', 'layers', 'attn', 'mlp', 'q', 'k', 'v', 'o', 'gate', 'up', 'down',
  'lm_head', 'embed', 'A', 'B', 'experts', 'shared', 'load', 'base', 'attn', 'knowledge', 'noise', 'align', 'mixed',
  'peft', 'merged', 'safetensors', 'lr', 'epochs', 'steps', 'batch', 'micro_batch', 'max_len', 'warmup', 'r', 'alpha',
  'top_k', 'l1', 'fro', 'x', '_', '__proto__', 'constructor', 'toString',
];
const literals = ['0', '1', '16', '-1', '2e-4', '1e999', '99999999999999999999', '3%', '150%', '-5%', '8GB', '512MiB', '1.5', '0.0', '"models/tiny-med-base"', '"data/medcare/stage1.jsonl"', '""', '"../../etc/passwd"', '"/abs"', '"out/x"', '"a\\"b"'];
const punctuation = ['{', '}', '(', ')', '[', ']', ',', ';', ':', '..', '.', '=', '<', '>', '<=', '>=', '-', '*', '%', '"', '/*', '*/', '//'];
const oddChars = ['\0', '\uD800', '\uDFFF', '\uDBFF\uDC00', '\r\n', '\r', '\n', '\n\n', '\u2028', '\u2029', '\uFEFF', '\u00A0', '\t', '\f', '\v', '\\', '#', "'", '\u201C', '\u2212', 'é', 'İ', '😀', '∑', '\u202E', '\u0301', '$', '@', '`'];

/** One piece of random text: odd characters, any code point, ASCII, words, literals, punctuation. */
const piece = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom(...oddChars) },
  { weight: 2, arbitrary: fc.string({ unit: 'binary', minLength: 1, maxLength: 2 }) },
  { weight: 3, arbitrary: fc.string({ unit: 'grapheme-ascii', minLength: 1, maxLength: 3 }) },
  { weight: 3, arbitrary: fc.constantFrom(...words) },
  { weight: 2, arbitrary: fc.constantFrom(...literals) },
  { weight: 3, arbitrary: fc.constantFrom(...punctuation) },
  { weight: 3, arbitrary: fc.constantFrom(' ', '  ', '\n', '\t') },
);
const randomText = fc.array(piece, { maxLength: 120 }).map((ps) => ps.join(''));

/** A token to insert or substitute: a word, a literal or punctuation. */
const anyToken = fc.oneof(fc.constantFrom(...words), fc.constantFrom(...literals), fc.constantFrom(...punctuation));

/** A file as tokens, each with the text that follows it (whitespace and comments kept). */
interface Tokens {
  lead: string;
  toks: { image: string; after: string }[];
}
function tokenize(text: string): Tokens {
  const { tokens } = lexer.tokenize(text);
  const toks = tokens.map((t, i) => {
    const end = t.endOffset! + 1;
    return { image: text.slice(t.startOffset, end), after: text.slice(end, i + 1 < tokens.length ? tokens[i + 1].startOffset : text.length) };
  });
  return { lead: tokens.length ? text.slice(0, tokens[0].startOffset) : text, toks };
}
const tokenized = new Map(corpusPaths.map((p) => [p, tokenize(corpus.get(p)!)]));
const untokenize = (t: Tokens) => t.lead + t.toks.map((x) => `${x.image}${x.after}`).join('');

type Mutation =
  | { op: 'delete' | 'duplicate'; at: number }
  | { op: 'swap'; at: number; with: number }
  | { op: 'insert' | 'replace'; at: number; token: string; sep: string }
  | { op: 'borrow'; at: number; from: number };

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ op: fc.constantFrom('delete' as const, 'duplicate' as const), at: fc.nat() }),
  fc.record({ op: fc.constant('swap' as const), at: fc.nat(), with: fc.nat() }),
  fc.record({ op: fc.constantFrom('insert' as const, 'replace' as const), at: fc.nat(), token: anyToken, sep: fc.constantFrom(' ', '', '\n') }),
  // Replace a token by another of the same file: mostly still parses, so the checker sees it.
  fc.record({ op: fc.constant('borrow' as const), at: fc.nat(), from: fc.nat() }),
);

function mutate(t: Tokens, ms: Mutation[]): string {
  const toks = t.toks.map((x) => ({ ...x }));
  for (const m of ms) {
    const n = toks.length;
    const i = n ? m.at % n : 0;
    switch (m.op) {
      case 'delete':
        if (n) toks.splice(i, 1);
        break;
      case 'duplicate':
        if (n) toks.splice(i, 0, { ...toks[i] });
        break;
      case 'swap':
        if (n) {
          const j = m.with % n;
          [toks[i].image, toks[j].image] = [toks[j].image, toks[i].image];
        }
        break;
      case 'insert':
        toks.splice(i, 0, { image: m.token, after: m.sep });
        break;
      case 'replace':
        if (n) toks[i].image = m.token;
        break;
      case 'borrow':
        if (n) toks[i].image = toks[m.from % n].image;
        break;
    }
  }
  return untokenize({ lead: t.lead, toks });
}

/**
 * Mutations that mostly keep the syntax, so the checker rather than the parser meets them: a token replaced by
 * another of its kind (a name by a name, a number by a number, a path by a path), and whole lines deleted,
 * duplicated or swapped.
 */
const sameKind: Record<string, string[]> = {
  Ident: [...words.filter((w) => !keywords.some((k) => k.name.toLowerCase() === w)), 'base', 'mixed', 'alignment', 'exam', 'formats', 'knowledge_retention', 'format_following', 'zz'],
  Number: ['0', '1', '2', '3', '4', '7', '8', '16', '32', '64', '100', '128', '256', '1024', '4096', '65536', '1e-4', '2e-4', '0.5', '1.0', '1e999', '99999999999999999999', '1.5'],
  Percent: ['0%', '2%', '3%', '50%', '100%', '150%', '1e3%'],
  Size: ['1KB', '8GB', '512MiB', '0GB', '99999TB'],
  String: ['"__proto__"', '"constructor"', '"models/tiny-med-base"', '"data/medcare/stage1.jsonl"', '"data/medcare/stage3.jsonl"', '""', '"../x"', '"/etc/passwd"', '"out/a"', '"out/medcare/adapters"', '"models/nope"', '"examples/broken/models/gpt2-med"', '"qwen2-tiny"', '"qwen1.5-7b"', '"nope"', '"medcare.mcp"', '"bases/medcare.mcp"'],
};
const kindOf = new Map(corpusPaths.map((p) => [p, lexer.tokenize(corpus.get(p)!).tokens.map((t) => t.tokenType.name)]));

type Edit = { op: 'same-kind'; at: number; pick: number } | { op: 'line-delete' | 'line-duplicate'; at: number } | { op: 'line-swap'; at: number; with: number };
const edit: fc.Arbitrary<Edit> = fc.oneof(
  { weight: 3, arbitrary: fc.record({ op: fc.constant('same-kind' as const), at: fc.nat(), pick: fc.nat() }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constantFrom('line-delete' as const, 'line-duplicate' as const), at: fc.nat() }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('line-swap' as const), at: fc.nat(), with: fc.nat() }) },
);

function applyEdits(path: string, edits: Edit[]): string {
  const t = tokenized.get(path)!;
  const kinds = kindOf.get(path)!;
  const toks = t.toks.map((x) => ({ ...x }));
  for (const e of edits.filter((x): x is Extract<Edit, { op: 'same-kind' }> => x.op === 'same-kind')) {
    const candidates = toks.map((_, i) => i).filter((i) => sameKind[kinds[i]]);
    if (!candidates.length) continue;
    const i = candidates[e.at % candidates.length];
    const pool = sameKind[kinds[i]];
    toks[i].image = pool[e.pick % pool.length];
  }
  const lines = untokenize({ lead: t.lead, toks }).split('\n');
  for (const e of edits) {
    const n = lines.length;
    const i = e.at % n;
    if (e.op === 'line-delete') lines.splice(i, 1);
    else if (e.op === 'line-duplicate') lines.splice(i, 0, lines[i]);
    else if (e.op === 'line-swap') [lines[i], lines[e.with % n]] = [lines[e.with % n], lines[i]];
  }
  return lines.join('\n');
}

const corpusFile = fc.constantFrom(...corpusPaths);
const edited = fc.tuple(corpusFile, fc.array(edit, { minLength: 1, maxLength: 4 })).map(([path, es]) => ({ path, text: applyEdits(path, es) }));
const mutated = fc.tuple(corpusFile, fc.array(mutation, { minLength: 1, maxLength: 4 })).map(([path, ms]) => ({ path, text: mutate(tokenized.get(path)!, ms) }));

/** Odd JSON values for config.json fields. */
const oddJson = fc.oneof(
  fc.constantFrom<unknown>(0, -1, 1.5, 1e9, 2 ** 31, 2 ** 53 + 2, 1e308, -1e308, null, '', '128', true, [], {}, [128], { value: 128 }),
  fc.jsonValue({ maxDepth: 2 }),
);
const configKeys = Object.keys(realConfig);
const fuzzedConfig: fc.Arbitrary<string> = fc.oneof(
  // The real config with fields replaced, deleted or added.
  fc
    .tuple(
      fc.dictionary(fc.constantFrom(...configKeys, 'head_dim', 'attention_bias', '__proto__', 'constructor', 'model_type'), oddJson, { maxKeys: 4 }),
      fc.subarray(configKeys, { maxLength: 3 }),
      fc.constantFrom('qwen2', 'llama', 'gpt2', undefined),
    )
    .map(([changes, deleted, type]) => {
      const o: Record<string, unknown> = { ...realConfig, model_type: type };
      for (const k of deleted) delete o[k];
      // defineProperty, so that `__proto__` becomes a key of the JSON rather than the object's prototype.
      for (const [k, v] of Object.entries(changes)) Object.defineProperty(o, k, { value: v, enumerable: true, writable: true, configurable: true });
      return JSON.stringify(o);
    }),
  fc.json({ maxDepth: 3 }),
  // Broken JSON: truncated, or text.
  fc.nat().map((n) => JSON.stringify(realConfig, null, 2).slice(0, n % 400)),
  randomText,
);
const withModel = (dir: string, text: string) => text.replace(/hf\("models\/tiny-med-base"\)/g, `hf("${dir}")`);

// --- the tests -------------------------------------------------------------------------------------------------

afterAll(() => {
  console.log(`never-throws: ${checked} inputs checked in memory (${reachedChecker} of them free of syntax errors, so checked beyond the parser; ${compiled} compiled for their memory budget), ${throughCli} through \`mcpc lint\``);
});

describe('the linter never throws (checkFile, in memory)', () => {
  it('on every pipeline of the repository as it is', () => {
    for (const [path, text] of corpus) lint(text, path);
  });

  it('on random text: unicode, NUL, lone surrogates, CRLF, words and punctuation', () => {
    fc.assert(fc.property(randomText, (t) => void lint(t)), runs(1200));
  });

  it('on random text after a valid header and model', () => {
    const head = 'pipeline p\nmodel base = hf("models/tiny-med-base")\ndata d = jsonl("data/medcare/stage1.jsonl")\n';
    fc.assert(fc.property(randomText, (t) => void lint(head + t)), runs(600));
  });

  it('on random bytes read as UTF-8 (invalid sequences become U+FFFD)', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 400 }), (b) => void lint(Buffer.from(b).toString('utf8'))), runs(500));
  });

  it('on truncations of every pipeline in pipelines/ and examples/ at every 29th offset', () => {
    for (const [path, text] of corpus) {
      for (let n = 0; n < text.length; n += 29) lint(text.slice(0, n), path);
    }
  });

  it('on token-level mutations of the real pipelines (delete, duplicate, swap, insert, replace)', () => {
    fc.assert(fc.property(mutated, ({ path, text }) => void lint(text, path)), runs(1500));
  });

  it('on syntax-keeping edits of the real pipelines (names, numbers, paths replaced; lines deleted, duplicated, swapped)', () => {
    // Now and then with a project-wide memory budget, which makes lint compile the clean ones.
    const memory = fc.oneof({ weight: 30, arbitrary: fc.constant(undefined) }, { weight: 1, arbitrary: fc.constantFrom(1, 64 * 2 ** 20, 8 * 2 ** 30) });
    fc.assert(fc.property(edited, memory, ({ path, text }, m) => void lint(text, path, m === undefined ? {} : { memory: m })), runs(1500));
  });

  it('on a fuzzed base pipeline behind `extends`, and fuzzed `extends` paths', () => {
    const base = tokenized.get(medcarePath)!;
    const baseText = fc.oneof(
      { weight: 3, arbitrary: fc.array(mutation, { maxLength: 4 }).map((ms) => mutate(base, ms)) },
      { weight: 1, arbitrary: randomText },
      // The base extends something in turn: itself, the variant, a missing file or a third fuzzed file.
      { weight: 1, arbitrary: fc.constantFrom('base.mcp', 'variant.mcp', 'third.mcp', 'nope.mcp', '../base.mcp').map((to) => medcare.replace('pipeline medcare', `pipeline medcare extends "${to}"`)) },
    );
    const target = fc.oneof(
      { weight: 4, arbitrary: fc.constant('base.mcp') },
      {
        weight: 2,
        arbitrary: fc.constantFrom('./base.mcp', 'sub/../base.mcp', 'variant.mcp', 'third.mcp', '', '.', '..', '/', '/etc/passwd', '../../x.mcp', 'base.mcp/', 'a\u0000b', 'x'.repeat(5000), 'pipelines/medcare.mcp', 'data/medcare/stage1.jsonl'),
      },
      { weight: 1, arbitrary: fc.string({ maxLength: 20 }).map((s) => s.replace(/["\\\r\n]/g, '_')) },
    );
    const variant = fc.oneof(
      fc.constantFrom('pipeline variant extends "TARGET"\n', corpus.get('pipelines/medcare-3stage.mcp')!.replace(/extends "[^"]*"/, 'extends "TARGET"')),
      fc.tuple(fc.constantFrom(...corpusPaths.filter((p) => /extends "/.test(corpus.get(p)!))), fc.array(mutation, { maxLength: 3 })).map(([p, ms]) => mutate(tokenized.get(p)!, ms).replace(/extends "[^"]*"/, 'extends "TARGET"')),
    );
    fc.assert(
      fc.property(variant, target, baseText, fc.option(randomText, { nil: undefined }), (v, to, b, third) => {
        lint(v.replace('TARGET', to), 'variant.mcp', { files: { 'base.mcp': b, ...(third !== undefined ? { 'third.mcp': third } : {}) } });
      }),
      runs(400),
    );
  });

  it('on a fuzzed model config.json read by hf(...)', () => {
    const pipeline = fc.oneof(fc.constant(withModel('models/fuzz', medcare)), mutated.map(({ text }) => withModel('models/fuzz', text)), edited.map(({ text }) => withModel('models/fuzz', text)));
    fc.assert(fc.property(pipeline, fuzzedConfig, (p, cfg) => void lint(p, 'fuzz.mcp', { files: { 'models/fuzz/config.json': cfg } })), runs(500));
  });
});

describe('the linter never throws (hand-made extremes, each within a time budget)', () => {
  const t = EXTREME_TIMEOUT_MS;
  const header = 'pipeline p\nmodel base = hf("models/tiny-med-base")\ndata mixed = jsonl("data/medcare/stage1.jsonl")\n';

  it('an empty file, only comments, only whitespace, a BOM', () => {
    expect(codes(extreme(''))).toEqual(['missing_pipeline_header']);
    extreme('// only a comment');
    extreme('/* a block */\n// and a line comment\r\n/* another\n * one */');
    extreme(' \t\r\n\f\v\u00A0\n'.repeat(1000));
    extreme('\uFEFF' + medcare);
  });

  it('an unterminated string and an unterminated comment', () => {
    expect(codes(extreme('pipeline p\nmodel base = hf("models/tiny-med-base\n'))).toContain('unterminated_string');
    expect(codes(extreme('pipeline p\n/* never closed\nmodel base = hf("x")'))).toContain('unterminated_comment');
    extreme(medcare + '\n/*' + medcare);
    extreme('"'.repeat(100_000));
    extreme('/*'.repeat(100_000));
  }, t);

  for (const [name, open, close] of [
    ['(', '(', ')'],
    ['[', '[', ']'],
    ['{', '{', '}'],
    ['mixed', '([{', '}])'],
  ] as const) {
    it(`100 000 nested brackets: ${name}`, () => {
      const n = 100_000 / open.length;
      expect(codes(extreme(header + 'model m = f' + open.repeat(n)))).toEqual(['nesting_too_deep']);
      expect(codes(extreme(header + 'adapter a = lora' + open.repeat(n) + close.repeat(n) + ' at layers[*].mlp'))).toEqual(['nesting_too_deep']);
      extreme(open.repeat(n));
      // Just under the limit is parsed, not refused.
      const under = Math.floor((MAX_NESTING - 1) / open.length);
      expect(codes(extreme(header + 'model m = f' + open.repeat(under) + close.repeat(under)))).not.toContain('nesting_too_deep');
    }, t);
  }

  it('100 000 `a.` segments in a selector, a reference and a call', () => {
    const segs = 'a.'.repeat(100_000);
    expect(codes(extreme(medcare + `\nadapter deep = lora() at layers[*].${segs}q\n`))).toContain('selector_matches_nothing');
    extreme(medcare + `\nadapter deep = lora() at ${segs}`);
    expect(codes(extreme(medcare.replace('drop noise', `drop ${segs}noise`)))).toContain('unknown_name');
    extreme(header + `model m = ${segs}f()`);
  }, t);

  it('a 1 MB line: repeated settings, a repeated pipeline, a name, a string, punctuation', () => {
    const oneLine = medcare.replace(/\/\/[^\n]*/g, '').replace(/\s+/g, ' ');
    const mb = 1 << 20;
    // (1 MB of repeated settings, 131 072 diagnostics, runs through `mcpc lint` below.)
    expect(extreme(oneLine.repeat(Math.ceil(mb / oneLine.length))).length).toBeLessThanOrEqual(100);
    extreme(header + 'stage s { train ' + 'x'.repeat(mb) + ' on mixed }');
    extreme(header + 'export peft "' + 'x'.repeat(mb) + '"');
    extreme(',.'.repeat(mb / 2));
    expect(codes(extreme('x'.repeat(MAX_FILE_BYTES + 1)))).toEqual(['file_too_large']);
  }, t);

  it('10 000 stages', () => {
    const stages = Array.from({ length: 10_000 }, (_, i) => `stage s${i} {\n  train extra on mixed\n  lr 1e-4\n  epochs 1\n}\n`).join('');
    const text = medcare + '\nadapter extra = lora(r: 4) at layers[*].attn.q\n' + stages;
    expect(extreme(text).filter((d) => d.severity === 'error')).toEqual([]);
    // Each placed after the previous one.
    extreme(medcare + Array.from({ length: 10_000 }, (_, i) => `stage s${i} after ${i ? `s${i - 1}` : 'align'} { train extra on mixed }\n`).join('') + 'adapter extra = lora() at layers[*].attn.q\n');
    // Each declaring its own adapter.
    extreme(medcare + Array.from({ length: 1_000 }, (_, i) => `stage s${i} {\n  adapter a${i} = lora(r: 2) at layers[0].mlp.up\n  train a${i} on mixed\n}\n`).join(''));
  }, t);

  it('deeply repeated `extends` of itself', () => {
    expect(codes(extreme('pipeline p extends "fuzz.mcp"\n'))).toContain('extends_cycle');
    expect(codes(extreme('pipeline p extends "./sub/../fuzz.mcp"\n'))).toContain('extends_cycle');
    // An endless chain of distinct paths to one text (as a symbolic link `sub -> .` makes on disk).
    const endless = (r: string) => (r.endsWith('p.mcp') ? 'pipeline p extends "sub/p.mcp"\n' + medcare.slice(medcare.indexOf('\nmodel')) : undefined);
    expect(codes(extreme(endless('p.mcp')!, 'p.mcp', { fallback: endless }))).toContain('extends_cycle');
    // A chain of 40 distinct files, and a cycle through 40.
    const chain = (n: number, last: string) => Object.fromEntries(Array.from({ length: n }, (_, i) => [`c${i}.mcp`, i === n - 1 ? last : `pipeline c${i} extends "c${i + 1}.mcp"\n`]));
    extreme('pipeline p extends "c0.mcp"\n', 'fuzz.mcp', { files: chain(40, medcare) });
    expect(codes(extreme('pipeline p extends "c0.mcp"\n', 'fuzz.mcp', { files: chain(20, 'pipeline c19 extends "c0.mcp"\n') }))).toContain('extends_cycle');
    // A base that is itself 100 000 nested brackets, or 1 MB.
    extreme('pipeline p extends "b.mcp"\n', 'fuzz.mcp', { files: { 'b.mcp': '('.repeat(100_000) } });
    extreme('pipeline p extends "b.mcp"\n', 'fuzz.mcp', { files: { 'b.mcp': 'x '.repeat(1 << 19) } });
  }, t);
});

describe('regressions: inputs that once crashed or hung the linter', () => {
  const t = EXTREME_TIMEOUT_MS;

  it('an endless extends chain through distinct paths overflowed the stack (checkFile threw RangeError)', () => {
    const endless = (r: string) => (r.endsWith('.mcp') ? 'pipeline p extends "sub/p.mcp"\n' : undefined);
    expect(codes(extreme('pipeline p extends "sub/p.mcp"\n', 'p.mcp', { fallback: endless }))).toEqual(['extends_cycle']);
  }, t);

  it('a config.json with num_hidden_layers 1e9 built the module tree until the heap ran out', () => {
    for (const layers of [1e9, 2 ** 31, 1e6]) {
      const cfg = JSON.stringify({ ...realConfig, num_hidden_layers: layers });
      const ds = extreme(withModel('models/big', medcare), 'fuzz.mcp', { files: { 'models/big/config.json': cfg } });
      expect(codes(ds)).toEqual(['model_config_invalid']);
    }
  }, t);

  it('two similar 20 000-character names hung the did-you-mean search', () => {
    const n = 20_000;
    const text = `pipeline p\nmodel base = builtin("qwen2-tiny")\ndata d = jsonl("data/medcare/stage1.jsonl")\nadapter ${'x'.repeat(n)} = lora() at layers[*].mlp\nstage s {\n  train ${'x'.repeat(n - 1)}y on d\n}\n`;
    expect(codes(extreme(text))).toContain('unknown_name');
  }, t);

  it('an unknown `after` among thousands of stages listed them all in its hint', () => {
    const text = medcare + Array.from({ length: 2_000 }, (_, i) => `stage s${i} after zz { train attn on mixed }\n`).join('');
    for (const d of extreme(text)) expect((d.hint ?? '').length).toBeLessThan(500);
  }, t);

  it('each syntax error past the 50 reported still cost a recovery (100 000 of them took 20 s)', () => {
    const header = 'pipeline p\nmodel base = hf("models/tiny-med-base")\ndata mixed = jsonl("data/medcare/stage1.jsonl")\n';
    expect(extreme(header + `stage s { train ${'a.'.repeat(100_000)}x on mixed }`).length).toBe(50);
    const oneLine = medcare.replace(/\/\/[^\n]*/g, '').replace(/\s+/g, ' ');
    expect(extreme(oneLine.repeat(450)).length).toBe(50);
  }, t);

  it('1 MB of numbers glued to names gave 350 000 diagnostics', () => {
    expect(extreme('pipeline p\n' + '1a '.repeat(350_000)).length).toBeLessThanOrEqual(101);
    expect(extreme('pipeline p\nstage s {\n' + 'lr\n1e-4\n'.repeat(50_000) + '}\n').length).toBeLessThanOrEqual(101);
  }, t);

  it('names that are Object.prototype keys: builtin("constructor") was a model, an adapter `__proto__` vanished', () => {
    for (const name of ['__proto__', 'constructor', 'toString']) {
      expect(codes(lint(medcare.replace('hf("models/tiny-med-base")', `builtin("${name}")`)))).toEqual(['unknown_builtin_model']);
      const res = checkFile('fuzz.mcp', memHost({ files: { 'fuzz.mcp': medcare.replace(/\bknowledge\b/g, name) } }));
      expect(res.diagnostics).toEqual([]);
      expect(res.pipeline!.stages.map((s) => Object.hasOwn(s.entry, name) && s.entry[name])).toEqual(['pending', 'frozen']);
      expect(res.pipeline!.final[name]).toBe('frozen');
    }
  });

  it('an orthogonality constraint on a 1024-layer model scanned every site list per site', () => {
    const text = [
      'pipeline p',
      'model base = builtin("qwen2-tiny", layers: 1024)',
      'data d = jsonl("data/medcare/stage1.jsonl")',
      ...Array.from({ length: 20 }, (_, i) => `adapter a${i} = lora(r: 1) at layers[*]`),
      `stage s {\n  train a0 on d\n  constrain orthogonal(${Array.from({ length: 20 }, (_, i) => `a${i}.A`).join(', ')})\n}`,
    ].join('\n');
    extreme(text);
  }, t);
});

// --- through the command line ----------------------------------------------------------------------------------

describe('`mcpc lint FILE --format json` exits 0 or 1 with JSON on stdout', () => {
  let dir: string;
  let n = 0;

  beforeAll(() => {
    // A throwaway project with the repository's pipelines and configs, and (empty) data files.
    dir = mkdtempSync(join(tmpdir(), 'mcpc-never-throws-'));
    writeFileSync(join(dir, 'mcpc.yaml'), 'pipelines: ["pipelines/**/*.mcp"]\n');
    for (const r of repoFiles) {
      mkdirSync(dirname(join(dir, r)), { recursive: true });
      writeFileSync(join(dir, r), repoTexts.get(r) ?? '');
    }
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  /** Lint bytes written next to `beside` (so its relative `extends` resolve); returns the diagnostics. */
  async function cli(content: string | Uint8Array, beside = 'fuzz.mcp', format: 'json' | 'sarif' | 'text' = 'json'): Promise<unknown> {
    throughCli++;
    const file = join(dirname(beside), `fuzz-${n++}.mcp`);
    writeFileSync(join(dir, file), content);
    const io = memoryIO(dir);
    const code = await main(['lint', file, '--format', format], io);
    rmSync(join(dir, file));
    const shown = typeof content === 'string' ? JSON.stringify(content.slice(0, 200)) : `${content.length} bytes`;
    expect(io.err, `stderr for ${shown}`).not.toMatch(/internal error|\n\s+at /);
    expect([0, 1], `exit code ${code} for ${shown}: ${io.err}`).toContain(code);
    if (format === 'text') return io.out;
    const out = JSON.parse(io.out) as unknown;
    if (format === 'json') {
      expect(Array.isArray(out)).toBe(true);
      const bad = (out as { code: string; line: number; column: number; message: string }[]).find((d) => !isCode(d.code) || !(d.line >= 1 && d.column >= 1 && d.message.length > 0));
      expect(bad, `for ${shown}`).toBeUndefined();
    }
    return out;
  }

  it('on random text, random bytes, truncations and mutations', async () => {
    const input = fc.oneof(
      randomText.map((text) => ({ content: text as string | Uint8Array, beside: 'fuzz.mcp' })),
      fc.uint8Array({ maxLength: 300 }).map((b) => ({ content: b as string | Uint8Array, beside: 'fuzz.mcp' })),
      fc.tuple(corpusFile, fc.nat()).map(([p, k]) => ({ content: corpus.get(p)!.slice(0, k % (corpus.get(p)!.length + 1)) as string | Uint8Array, beside: p })),
      mutated.map(({ path, text }) => ({ content: text as string | Uint8Array, beside: path })),
    );
    await fc.assert(fc.asyncProperty(input, async ({ content, beside }) => void (await cli(content, beside))), runs(250));
  });

  it('131 072 diagnostics overflowed the stack in `all.push(...diagnostics)` (exit 2, internal error)', async () => {
    const oneLine = medcare.replace(/\/\/[^\n]*/g, '').replace(/\s+/g, ' ');
    const out = (await cli(oneLine.replace('epochs 1', 'epochs 1 ' + 'lr 2e-4 '.repeat(131_072)), 'pipelines/x.mcp')) as unknown[];
    expect(out.length).toBe(131_072);
  }, EXTREME_TIMEOUT_MS);

  it('in every format, on the extremes (a 1 MB line was printed whole in every text frame and SARIF region)', async () => {
    await cli('('.repeat(100_000), 'pipelines/x.mcp');
    const inputs = [
      '',
      '\uD800\0\r\n"',
      medcare.replace(/\/\/[^\n]*/g, '').replace(/\s+/g, ' ').repeat(450),
      medcare.replace('data/medcare/stage1.jsonl', 'data/\u0000x').replace('models/tiny-med-base', 'models/\u0000'),
      'pipeline p extends "a\u0000b"\n',
      'pipeline p extends "../../../../../../etc/passwd"\n',
      medcare,
    ];
    for (const text of inputs) {
      for (const format of ['json', 'sarif', 'text'] as const) {
        const out = await cli(text, 'pipelines/x.mcp', format);
        // The 1 MB line has 50 diagnostics: each shows a window of the line, never the line.
        expect(JSON.stringify(out).length, `${format} output`).toBeLessThan(1_000_000);
      }
    }
  }, EXTREME_TIMEOUT_MS * 2);
});
