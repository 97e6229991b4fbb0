/**
 * The architecture as a test: reads the import graph of every .ts file under src/ with ts-morph (static
 * imports and re-exports, type-only ones too, dynamic `import()` and `require`) and checks the rules below.
 * A failure prints each offending import as `file:line imports 'specifier' (resolved path): rule`.
 *
 *  1. The plan is the one interface between compiler and runtime: src/compiler never imports src/runtime,
 *     src/runtime never imports src/compiler; both may import src/plan.
 *  2. src/plan imports neither (nor src/cli): both sides depend on it, it depends on neither.
 *  3. Compiler phases import only earlier or equal phases (1-parse < 2-check < 3-lower < 4-optimize <
 *     5-emit); the shared folders have a ceiling of their own (diagnostics, util, source.ts, fusion: no
 *     phase; format: 1-parse; ir: 2-check, its input).
 *  4. Passes are reached through the pass interface: only the ordered pass list (4-optimize/index.ts)
 *     imports a module under 4-optimize/passes/, and a pass imports nothing else of 4-optimize but
 *     pass.ts (the interface), so passes never depend on one another or on the list.
 *
 * Each rule is also run on a small in-memory tree that breaks it, so the test keeps checking even where a
 * folder (src/runtime) does not exist yet.
 */
import { existsSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Node, Project, SyntaxKind, type SourceFile } from 'ts-morph';
import { describe, expect, it } from 'vitest';

const ROOT = resolve(fileURLToPath(new URL('..', import.meta.url)));

interface Edge {
  /** Importing file, relative to the root, `/`-separated. */
  from: string;
  line: number;
  specifier: string;
  /** Imported file relative to the root (a .ts path), or undefined for packages and node: modules. */
  to: string | undefined;
}

/** Every import edge of the project's files under `root`/src. */
function importGraph(project: Project, root: string): Edge[] {
  const edges: Edge[] = [];
  for (const sf of project.getSourceFiles()) {
    const from = rel(root, sf.getFilePath());
    if (!from.startsWith('src/')) continue;
    for (const { specifier, line } of specifiers(sf)) edges.push({ from, line, specifier, to: resolveSpecifier(project, root, sf.getFilePath(), specifier) });
  }
  return edges;
}

function specifiers(sf: SourceFile): { specifier: string; line: number }[] {
  const out: { specifier: string; line: number }[] = [];
  for (const d of sf.getImportDeclarations()) out.push({ specifier: d.getModuleSpecifierValue(), line: d.getStartLineNumber() });
  for (const d of sf.getExportDeclarations()) {
    const s = d.getModuleSpecifierValue();
    if (s !== undefined) out.push({ specifier: s, line: d.getStartLineNumber() });
  }
  for (const d of sf.getDescendantsOfKind(SyntaxKind.ImportEqualsDeclaration)) {
    const ref = d.getModuleReference();
    if (Node.isExternalModuleReference(ref)) {
      const e = ref.getExpression();
      if (e && Node.isStringLiteral(e)) out.push({ specifier: e.getLiteralValue(), line: d.getStartLineNumber() });
    }
  }
  for (const call of sf.getDescendantsOfKind(SyntaxKind.CallExpression)) {
    const callee = call.getExpression();
    const isImport = callee.getKind() === SyntaxKind.ImportKeyword;
    const isRequire = Node.isIdentifier(callee) && callee.getText() === 'require';
    const arg = call.getArguments()[0];
    if ((isImport || isRequire) && arg && (Node.isStringLiteral(arg) || Node.isNoSubstitutionTemplateLiteral(arg))) out.push({ specifier: arg.getLiteralValue(), line: call.getStartLineNumber() });
  }
  return out;
}

/** A relative specifier as the file it names (`./x.js` -> x.ts, a folder -> its index.ts). */
function resolveSpecifier(project: Project, root: string, file: string, specifier: string): string | undefined {
  if (!specifier.startsWith('./') && !specifier.startsWith('../')) return undefined;
  const base = resolve(dirname(file), specifier);
  const stem = base.replace(/\.(js|ts|mjs|mts)$/, '');
  const exists = (p: string) => project.getSourceFile(p) !== undefined || project.getFileSystem().fileExistsSync(p);
  const found = [`${stem}.ts`, `${stem}.mts`, base, join(base, 'index.ts')].find(exists);
  return rel(root, found ?? `${stem}.ts`);
}

const rel = (root: string, p: string) => relative(root, p).split('\\').join('/');

// --- the rules -------------------------------------------------------------------------------------------------

const PHASES = ['1-parse', '2-check', '3-lower', '4-optimize', '5-emit'];
/** Highest phase a shared compiler module may import (0: none). */
const SHARED_CEILING: Record<string, number> = { diagnostics: 0, util: 0, 'source.ts': 0, fusion: 0, format: 1, ir: 2 };

/**
 * Imports that break rule 3 or 4 and were there when the rule was written; reported, not failed, until
 * their owners move them. Keep this list short; never add to it to make a new import pass.
 */
const KNOWN: Record<string, string> = {};

const area = (p: string) => p.split('/')[1];
const phaseOf = (p: string) => (p.startsWith('src/compiler/') ? PHASES.indexOf(p.split('/')[2]!) + 1 : 0);

/** Why `e` breaks a rule, or undefined. */
function violation(e: Edge): string | undefined {
  if (!e.to) return undefined;
  const [from, to] = [area(e.from), area(e.to)];
  if (from === 'compiler' && to === 'runtime') return 'the compiler must not import the runtime (share it through src/plan)';
  if (from === 'runtime' && to === 'compiler') return 'the runtime must not import the compiler (share it through src/plan)';
  if (from === 'plan' && (to === 'compiler' || to === 'runtime' || to === 'cli')) return `src/plan must not import src/${to}: both sides depend on the plan, it depends on neither`;
  if (from !== 'compiler' || to !== 'compiler') return undefined;
  const [pf, pt] = [phaseOf(e.from), phaseOf(e.to)];
  if (pf && pt > pf) return `phase ${PHASES[pf - 1]} must not import the later phase ${PHASES[pt - 1]}`;
  const shared = e.from.split('/')[2]!;
  if (!pf && pt && shared in SHARED_CEILING && pt > SHARED_CEILING[shared]!) return `src/compiler/${shared} must not import phase ${PHASES[pt - 1]}${SHARED_CEILING[shared] ? ` (it may import up to ${PHASES[SHARED_CEILING[shared]! - 1]})` : ' (it is shared by every phase)'}`;
  const passes = 'src/compiler/4-optimize/passes/';
  if (e.to.startsWith(passes) && e.from !== 'src/compiler/4-optimize/index.ts' && e.from !== e.to) {
    return e.from.startsWith(passes) ? 'a pass must not import another pass (share code through ir/ or a helper)' : 'a pass is reached through the pass list (4-optimize/index.ts) and the Pass interface, not imported directly';
  }
  if (e.from.startsWith(passes) && e.to.startsWith('src/compiler/4-optimize/') && !e.to.startsWith(passes) && e.to !== 'src/compiler/4-optimize/pass.ts') return 'a pass may import only the pass interface (4-optimize/pass.ts) from 4-optimize';
  return undefined;
}

function check(edges: Edge[]): { failures: string[]; known: string[] } {
  const failures: string[] = [];
  const known: string[] = [];
  const sorted = [...edges].sort((a, b) => (a.from < b.from ? -1 : a.from > b.from ? 1 : a.line - b.line));
  for (const e of sorted) {
    const why = violation(e);
    if (!why) continue;
    const line = `${e.from}:${e.line} imports '${e.specifier}' (${e.to}): ${why}`;
    const k = KNOWN[`${e.from} -> ${e.to}`];
    if (k) known.push(`${line} [known: ${k}]`);
    else failures.push(line);
  }
  return { failures, known };
}

function fixture(files: Record<string, string>): Edge[] {
  const project = new Project({ useInMemoryFileSystem: true });
  for (const [p, text] of Object.entries(files)) project.createSourceFile(`/repo/${p}`, text);
  return importGraph(project, '/repo');
}

// --- the tests -------------------------------------------------------------------------------------------------

describe('architecture: the import graph of src/', () => {
  const project = new Project({ skipAddingFilesFromTsConfig: true, skipFileDependencyResolution: true });
  project.addSourceFilesAtPaths(join(ROOT, 'src/**/*.ts'));
  const edges = importGraph(project, ROOT);
  const { failures, known } = check(edges);

  it('is read from every source file', () => {
    expect(project.getSourceFiles().length).toBeGreaterThan(40);
    expect(edges.some((e) => e.from === 'src/compiler/5-emit/plan.ts' && e.to === 'src/plan/types.ts')).toBe(true);
    // A runtime that does not exist yet has no edges, and every rule still runs on the fixtures below.
    if (existsSync(join(ROOT, 'src/runtime'))) expect(edges.some((e) => e.from.startsWith('src/runtime/'))).toBe(true);
  });

  it('keeps compiler and runtime apart (the plan is the one interface), and src/plan independent of both', () => {
    const boundary = failures.filter((f) => /the compiler must not|the runtime must not|src\/plan must not/.test(f));
    expect(boundary, `\n${boundary.join('\n')}\n`).toEqual([]);
  });

  it('imports only earlier or equal compiler phases, and reaches passes only through the pass interface', () => {
    if (known.length) console.warn(`known architecture exceptions:\n${known.join('\n')}`);
    expect(failures, `\n${failures.join('\n')}\n`).toEqual([]);
  });
});

describe('architecture rules catch what they should (fixtures)', () => {
  it('compiler <-> runtime, both ways, static, type-only, re-export and dynamic', () => {
    const edges = fixture({
      'src/plan/types.ts': 'export type Plan = {};',
      'src/runtime/run.ts': "import type { Plan } from '../plan/types.js';\nimport { x } from '../compiler/index.js';\nexport const y = x;",
      'src/compiler/index.ts': "export const x = 1;\nexport * from '../runtime/run.js';\nexport const later = () => import('../runtime/run.js');",
      'src/compiler/5-emit/plan.ts': "import type { Plan } from '../../plan/types.js';\nimport type { Kernel } from '../../runtime/kernels/index.js';",
      'src/runtime/kernels/index.ts': 'export type Kernel = {};',
    });
    expect(check(edges).failures).toEqual([
      "src/compiler/5-emit/plan.ts:2 imports '../../runtime/kernels/index.js' (src/runtime/kernels/index.ts): the compiler must not import the runtime (share it through src/plan)",
      "src/compiler/index.ts:2 imports '../runtime/run.js' (src/runtime/run.ts): the compiler must not import the runtime (share it through src/plan)",
      "src/compiler/index.ts:3 imports '../runtime/run.js' (src/runtime/run.ts): the compiler must not import the runtime (share it through src/plan)",
      "src/runtime/run.ts:2 imports '../compiler/index.js' (src/compiler/index.ts): the runtime must not import the compiler (share it through src/plan)",
    ]);
  });

  it('src/plan importing either side', () => {
    const edges = fixture({ 'src/plan/types.ts': "import { Op } from '../compiler/ir/types.js';", 'src/compiler/ir/types.ts': 'export type Op = 1;' });
    expect(check(edges).failures).toEqual(["src/plan/types.ts:1 imports '../compiler/ir/types.js' (src/compiler/ir/types.ts): src/plan must not import src/compiler: both sides depend on the plan, it depends on neither"]);
  });

  it('later phases, shared folders above their ceiling, and passes outside the pass interface', () => {
    const edges = fixture({
      'src/compiler/1-parse/parser.ts': "import { check } from '../2-check/index.js';",
      'src/compiler/2-check/index.ts': "import { parse } from '../1-parse/parser.js';\nexport const check = 1;",
      'src/compiler/diagnostics/catalogue.ts': "import { check } from '../2-check/index.js';",
      'src/compiler/4-optimize/index.ts': "import { a } from './passes/a.js';",
      'src/compiler/4-optimize/pass.ts': 'export interface Pass {}',
      'src/compiler/4-optimize/passes/a.ts': "import type { Pass } from '../pass.js';\nimport { b } from './b.js';\nimport { passes } from '../index.js';",
      'src/compiler/4-optimize/passes/b.ts': 'export const b = 1;',
      'src/compiler/5-emit/plan.ts': "import { b } from '../4-optimize/passes/b.js';",
    });
    expect(check(edges).failures).toEqual([
      "src/compiler/1-parse/parser.ts:1 imports '../2-check/index.js' (src/compiler/2-check/index.ts): phase 1-parse must not import the later phase 2-check",
      "src/compiler/4-optimize/passes/a.ts:2 imports './b.js' (src/compiler/4-optimize/passes/b.ts): a pass must not import another pass (share code through ir/ or a helper)",
      "src/compiler/4-optimize/passes/a.ts:3 imports '../index.js' (src/compiler/4-optimize/index.ts): a pass may import only the pass interface (4-optimize/pass.ts) from 4-optimize",
      "src/compiler/5-emit/plan.ts:1 imports '../4-optimize/passes/b.js' (src/compiler/4-optimize/passes/b.ts): a pass is reached through the pass list (4-optimize/index.ts) and the Pass interface, not imported directly",
      "src/compiler/diagnostics/catalogue.ts:1 imports '../2-check/index.js' (src/compiler/2-check/index.ts): src/compiler/diagnostics must not import phase 2-check (it is shared by every phase)",
    ]);
  });
});
