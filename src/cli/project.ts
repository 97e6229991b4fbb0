/**
 * The project file `mcpc.yaml`: parsed strictly with `yaml` (no custom tags, no duplicate keys, no unknown
 * keys, no aliases to merge keys), every problem a diagnostic with a line and column.
 */
import { existsSync, readdirSync, readFileSync, realpathSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { isMap, isScalar, isSeq, LineCounter, parseDocument, type Node as YamlNode } from 'yaml';
import { catalogue, isCode, type Level } from '../compiler/diagnostics/catalogue.js';
import type { Diagnostics } from '../compiler/diagnostics/diagnostic.js';
import { parseSize } from '../compiler/1-parse/to-ast.js';
import { describeReadError } from '../compiler/2-check/host.js';
import { SourceFile } from '../compiler/source.js';
import { closest } from '../compiler/util/suggest.js';

export const PROJECT_FILE = 'mcpc.yaml';

export interface ProjectConfig {
  /** Absolute directory holding mcpc.yaml (or the cwd when there is none). */
  root: string;
  /** Path of mcpc.yaml relative to the cwd, or undefined when running without one. */
  file?: string;
  /** Default pipeline for `compile` and `run`, relative to root. */
  pipeline: string;
  /** Globs (relative to root) of the pipelines `lint` and `fmt` check when given no files. */
  pipelines: string[];
  /** Globs excluded from `pipelines`. */
  exclude: string[];
  out: string;
  backend: 'auto' | 'webgpu' | 'cpu' | 'wasm' | 'tensorflow';
  allowOutsideRoot: boolean;
  /** Memory budget in bytes for stages that set no `memory` (the memory planner picks micro-batch and recompute). */
  memory?: number;
  lint: { maxWarnings?: number; rules: Record<string, Level> };
  sources: Map<string, SourceFile>;
}

export function defaultConfig(root: string): ProjectConfig {
  return {
    root,
    pipeline: 'pipelines/medcare.mcp',
    pipelines: ['pipelines/**/*.mcp'],
    exclude: [],
    out: 'out',
    backend: 'auto',
    allowOutsideRoot: false,
    lint: { rules: {} },
    sources: new Map(),
  };
}

/** Find mcpc.yaml in `cwd` or the nearest parent. */
export function findProjectFile(cwd: string): string | undefined {
  let dir = resolve(cwd);
  for (;;) {
    const f = join(dir, PROJECT_FILE);
    if (existsSync(f)) return f;
    const up = dirname(dir);
    if (up === dir) return undefined;
    dir = up;
  }
}

const backends = ['auto', 'webgpu', 'cpu', 'wasm', 'tensorflow'] as const;
const topKeys = ['pipeline', 'pipelines', 'exclude', 'out', 'backend', 'allow_outside_root', 'memory', 'lint'];
const lintKeys = ['max_warnings', 'rules'];

export function loadProject(cwd: string, diags: Diagnostics, explicit?: string): ProjectConfig {
  const path = explicit ? resolve(cwd, explicit) : findProjectFile(cwd);
  if (!path) return defaultConfig(resolve(cwd));
  const cfg = defaultConfig(dirname(path));
  const shown = relative(cwd, path) || PROJECT_FILE;
  cfg.file = shown;
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    const src = new SourceFile(shown, '');
    const code = (err as NodeJS.ErrnoException).code;
    const hint =
      code === 'ENOENT' ? (explicit ? 'check the --project path (relative to the current folder); without --project, mcpc.yaml is looked for here and in the folders above' : 'check that the file exists')
      : code === 'EISDIR' ? 'give --project the mcpc.yaml file inside that folder'
      : code === 'EACCES' || code === 'EPERM' ? 'make the file readable'
      : 'check the path and that the file is readable';
    diags.report('unreadable_file', src.span(0, 0), `cannot read ${shown}: ${code ? describeReadError(code) : String(err)}`, { hint });
    return cfg;
  }
  const src = new SourceFile(shown, text);
  cfg.sources.set(shown, src);
  const bad = (node: YamlNode | undefined | null, message: string, hint?: string) => {
    const [a, b] = node?.range ?? [0, 0];
    diags.report('project_file_invalid', src.span(a, b), message, hint ? { hint } : {});
  };

  const lc = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lc, uniqueKeys: true, strict: true, prettyErrors: false, customTags: [], merge: false, schema: 'core' });
  for (const err of [...doc.errors, ...doc.warnings]) {
    const [a, b] = err.pos;
    diags.report('project_file_invalid', src.span(a, b), err.message.split('\n')[0], { hint: yamlHint(err.code) });
  }
  if (doc.errors.length || doc.warnings.length) return cfg;
  const root = doc.contents;
  if (root === null || root === undefined) return cfg;
  if (!isMap(root)) {
    bad(root as YamlNode, 'mcpc.yaml must be a mapping of settings', `write one \`key: value\` per line, e.g. \`pipeline: pipelines/medcare.mcp\` (keys: ${topKeys.join(', ')})`);
    return cfg;
  }

  const str = (n: unknown): string | undefined => (isScalar(n) && typeof n.value === 'string' ? n.value : undefined);
  const strList = (n: unknown, key: string): string[] | undefined => {
    if (str(n) !== undefined) return [str(n)!];
    const example = key === 'exclude' ? 'examples/broken' : 'pipelines/**/*.mcp';
    if (!isSeq(n)) return bad(n as YamlNode, `\`${key}\` must be a string or a list of strings`, `e.g. \`${key}: [${example}]\`, paths and globs relative to the folder of mcpc.yaml`), undefined;
    const out: string[] = [];
    for (const it of n.items) {
      const s = str(it);
      if (s === undefined) bad(it as YamlNode, `\`${key}\` entries must be strings`, `write each entry as a path or glob, e.g. \`- ${example}\` (quote one that YAML reads as a number or true/false)`);
      else out.push(s);
    }
    return out;
  };

  for (const item of root.items) {
    if (!isScalar(item.key)) {
      bad(item.key as YamlNode, 'a key of mcpc.yaml must be a plain name, not a list or a mapping', `known keys: ${topKeys.join(', ')}`);
      continue;
    }
    const key = String(item.key.value);
    const v = item.value;
    switch (key) {
      case 'pipeline': {
        const s = str(v);
        if (s === undefined) bad(v as YamlNode, '`pipeline` must be a path string', 'e.g. `pipeline: pipelines/medcare.mcp`, relative to the folder of mcpc.yaml');
        else cfg.pipeline = s;
        break;
      }
      case 'pipelines':
      case 'exclude': {
        const l = strList(v, key);
        if (l) cfg[key] = l;
        break;
      }
      case 'out': {
        const s = str(v);
        if (s === undefined) bad(v as YamlNode, '`out` must be a path string', 'e.g. `out: out`, the folder (relative to mcpc.yaml\'s) that plans and runs are written to');
        else cfg.out = s;
        break;
      }
      case 'backend': {
        const s = str(v);
        if (!s || !(backends as readonly string[]).includes(s)) {
          const near = s === undefined ? undefined : /gpu|cuda/i.test(s) ? 'webgpu' : closest(s, [...backends]);
          bad(v as YamlNode, `\`backend\` must be one of ${backends.join(', ')}`, near ? `did you mean \`${near}\`?` : '`auto` takes a hardware WebGPU adapter when there is one, else the fastest CPU path');
        }
        else cfg.backend = s as ProjectConfig['backend'];
        break;
      }
      case 'allow_outside_root':
        if (!isScalar(v) || typeof v.value !== 'boolean') bad(v as YamlNode, '`allow_outside_root` must be true or false', 'write `true` or `false`: yes, no, on and off are strings in mcpc.yaml');
        else cfg.allowOutsideRoot = v.value;
        break;
      case 'memory': {
        // Written like the language's sizes: 8GB, 80GB, 512MiB (YAML reads them as strings).
        const s = str(v);
        const bytes = s === undefined ? NaN : parseSize(s.trim());
        if (!Number.isFinite(bytes) || bytes <= 0) bad(v as YamlNode, '`memory` must be a size such as 8GB or 512MiB', isScalar(v) && typeof v.value === 'number' ? 'give the unit: `memory: 8GB`' : bytes === 0 ? 'give a size above zero, e.g. `memory: 8GB`' : 'a number and a unit, KB, MB, GB or TB (or KiB, MiB, GiB, TiB), e.g. `memory: 8GB`');
        else cfg.memory = bytes;
        break;
      }
      case 'lint':
        if (!isMap(v)) {
          bad(v as YamlNode, '`lint` must be a mapping with `max_warnings` and `rules`', 'e.g. `lint: {max_warnings: 0, rules: {data_never_used: off}}`, or the two keys on indented lines below `lint:`');
          break;
        }
        for (const li of v.items) {
          if (!isScalar(li.key)) {
            bad(li.key as YamlNode, 'a key of `lint` must be a plain name, not a list or a mapping', `known keys: ${lintKeys.join(', ')}`);
            continue;
          }
          const lk = String(li.key.value);
          const lv = li.value;
          if (lk === 'max_warnings') {
            if (!isScalar(lv) || typeof lv.value !== 'number' || !Number.isInteger(lv.value) || lv.value < 0) bad(lv as YamlNode, '`max_warnings` must be a whole number, 0 or more', 'e.g. `max_warnings: 0` to fail on any warning; leave it out for no limit');
            else cfg.lint.maxWarnings = lv.value;
          } else if (lk === 'rules') {
            if (!isMap(lv)) {
              bad(lv as YamlNode, '`rules` must map rule codes to error, warning or off', 'e.g. `rules: {data_never_used: off}`; docs/reference.md lists the lint rules');
              continue;
            }
            for (const ri of lv.items) {
              const code = isScalar(ri.key) ? String(ri.key.value) : '';
              const level = str(ri.value);
              const lintRules = Object.keys(catalogue).filter((c) => isCode(c) && catalogue[c].kind === 'lint');
              if (!isCode(code)) bad(ri.key as YamlNode, `unknown rule \`${code}\``, closest(code, lintRules) ? `did you mean \`${closest(code, lintRules)}\`?` : 'docs/reference.md lists the lint rules');
              else if (catalogue[code].kind !== 'lint') bad(ri.key as YamlNode, `\`${code}\` is an error, not a lint rule; its level cannot be changed`, 'remove the line: only lint rules take a level; docs/reference.md lists them');
              else if (level !== 'error' && level !== 'warning' && level !== 'off') {
                const near = level !== undefined ? closest(level, ['error', 'warning', 'off']) : undefined;
                bad(ri.value as YamlNode, 'a rule level is `error`, `warning` or `off`', near ? `did you mean \`${near}\`?` : `e.g. \`${code}: off\``);
              }
              else cfg.lint.rules[code] = level;
            }
          } else bad(li.key as YamlNode, `unknown key \`lint.${lk}\``, suggest(lk, lintKeys));
        }
        break;
      default:
        bad(item.key as YamlNode, `unknown key \`${key}\``, suggest(key, topKeys));
    }
  }
  return cfg;
}

/** What to do about a YAML syntax error, by the parser's code. */
function yamlHint(code: string): string {
  switch (code) {
    case 'TAG_RESOLVE_FAILED':
    case 'MULTIPLE_TAGS':
      return 'custom YAML tags are not allowed in mcpc.yaml';
    case 'DUPLICATE_KEY':
      return 'each key may appear once: remove one of them, or merge the two';
    case 'TAB_AS_INDENT':
      return 'indent with spaces, not tabs';
    case 'BAD_INDENT':
    case 'BLOCK_AS_IMPLICIT_KEY':
    case 'MULTILINE_IMPLICIT_KEY':
      return 'check the indentation and brackets: the keys of one mapping line up, nested keys are indented further with spaces, each `key: value` is on one line, and every `[` or `{` is closed';
    case 'MULTIPLE_DOCS':
      return 'mcpc.yaml holds one document: remove the `---` and what follows it, or merge the two';
    case 'BAD_ALIAS':
    case 'ALIAS_PROPS':
    case 'MULTIPLE_ANCHORS':
      return 'write the values out instead of using anchors (&) and aliases (*)';
    default:
      return 'mcpc.yaml is YAML: one `key: value` per line, nested keys indented with spaces, lists as `[a, b]` or one `- item` per line; quote a value with `: ` or ` #` in it';
  }
}

function suggest(word: string, options: string[]): string {
  const best = closest(word, options);
  return best ? `did you mean \`${best}\`?` : `known keys: ${options.join(', ')}`;
}

/**
 * Expand the project's pipeline globs into sorted root-relative paths. A folder reached again through a link
 * (a loop, or a second way in) is searched once; a broken link that matches is kept, to be reported as unreadable.
 */
export function projectPipelines(cfg: ProjectConfig): string[] {
  const inc = cfg.pipelines.map(globToRegExp);
  const exc = cfg.exclude.map(globToRegExp);
  const out: string[] = [];
  walkTree(cfg.root, {
    file: (abs, err) => {
      const rel = relative(cfg.root, abs).split(sep).join('/');
      if ((!err || abs.endsWith('.mcp')) && inc.some((r) => r.test(rel)) && !exc.some((r) => r.test(rel))) out.push(rel);
    },
  });
  return out;
}

/** Why a folder is passed over by walkTree: it cannot be read (`err`), or it is the folder `again` once more. */
export type WalkSkip = { err: unknown } | { again: string };

/**
 * The files below `dir` as a pipeline search sees them, depth first in name order: node_modules and
 * dot-entries are left out, and a folder reached again through a link (a loop, or a second way in) is searched
 * once. `file(abs, err)` for every entry that is not a folder, with the error when it cannot be stat'ed (a
 * broken link, a loop of links); `skipped(abs, why)` for a folder passed over. `seen` (real path -> the path
 * first searched) carries over between calls.
 */
export function walkTree(dir: string, on: { file: (abs: string, err?: unknown) => void; skipped?: (abs: string, why: WalkSkip) => void }, seen = new Map<string, string>()): void {
  let real: string;
  let names: string[];
  try {
    real = realpathSync(dir);
    names = readdirSync(dir).sort();
  } catch (err) {
    on.skipped?.(dir, { err });
    return;
  }
  const first = seen.get(real);
  if (first !== undefined) {
    on.skipped?.(dir, { again: first });
    return;
  }
  seen.set(real, dir);
  for (const name of names) {
    if (name === 'node_modules' || name.startsWith('.')) continue;
    const abs = join(dir, name);
    let st;
    try {
      st = statSync(abs);
    } catch (err) {
      on.file(abs, err);
      continue;
    }
    if (st.isDirectory()) walkTree(abs, on, seen);
    else on.file(abs);
  }
}

/** `*` within a segment, `**` across segments, `?` one character. A pattern naming a folder matches all below it. */
export function globToRegExp(glob: string): RegExp {
  let re = '';
  const g = glob.replace(/^\.\//, '').replace(/\/+$/, '');
  for (let i = 0; i < g.length; i++) {
    const c = g[i];
    if (c === '*' && g[i + 1] === '*') {
      re += g[i + 2] === '/' ? '(?:.*/)?' : '.*';
      i += g[i + 2] === '/' ? 2 : 1;
    } else if (c === '*') re += '[^/]*';
    else if (c === '?') re += '[^/]';
    else re += c.replace(/[.+^${}()|[\]\\]/g, '\\$&');
  }
  return new RegExp(`^${re}(?:/.*)?$`);
}
