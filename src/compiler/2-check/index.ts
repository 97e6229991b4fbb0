/**
 * Phase 2: the composed AST -> a CheckedPipeline, or diagnostics. Names resolve, constructors and settings
 * are typed against the schema, selectors resolve against the model's module tree, and the adapters'
 * statuses are walked through the stages so lint rules can see use-after-drop, training frozen adapters,
 * orthogonality without common sites and the rest. Never throws on user input.
 */
import { basename } from 'node:path';
import type * as A from '../1-parse/ast.js';
import type { Diagnostics } from '../diagnostics/diagnostic.js';
import type { SourceFile } from '../source.js';
import type { AdapterStatus, CheckedPipeline, CheckedStage } from './checked.js';
import { compose, type Composed } from './compose.js';
import { Ctx, type DeclInfo } from './context.js';
import { checkAdapter, checkData, checkModel, checkProbe, checkTokenizer } from './declarations.js';
import { checkExports } from './exports.js';
import type { CheckHost } from './host.js';
import { checkStage } from './stages.js';

export interface CheckResult {
  /** Present when the model resolved; complete only when there are no errors. */
  pipeline?: CheckedPipeline;
  sources: Map<string, SourceFile>;
  composed: Composed;
}

export function check(entryAbs: string, text: string, host: CheckHost, diags: Diagnostics): CheckResult {
  const composed = compose(entryAbs, text, host, diags);
  const sources = new Map(composed.files.map((f) => [f.source.path, f.source]));
  // A file that could not be parsed at all (too large, nested too deep) has nothing to check.
  if (composed.files.some((f) => !f.parsed)) return { sources, composed };
  // Checking a tree that error recovery patched up yields follow-on noise (empty names, half statements):
  // like esbuild, stop after syntax errors so the user fixes those first.
  if (diags.errorCount > 0 && composed.files.some((f) => f.syntaxErrors > 0)) return { sources, composed };
  // A variant whose base could not be read refers to names only the base declares: stop at that error.
  if (composed.baseMissing) return { sources, composed };

  const ctx = new Ctx(host, diags);
  collectDecls(ctx, composed);

  const all = [...ctx.decls.values()];
  const models = all.filter((d) => d.decl.declKind === 'model');
  if (!models.length) {
    const at = composed.header?.span ?? composed.files[0].file.span;
    diags.report('missing_model', { ...at, end: at.start }, 'this pipeline declares no model');
  }
  models.slice(1).forEach((m) =>
    diags.report('multiple_models', m.decl.name.span, `\`${m.decl.name.name}\` is a second model; a pipeline trains one`, { notes: [{ message: 'the model is declared here', span: models[0].decl.name.span }] }),
  );
  // Tokenizers first so the model can bind its tokenizer; data before probes; adapters need the model.
  if (models[0]) checkModel(ctx, models[0].decl);
  for (const d of all) if (d.decl.declKind === 'tokenizer') checkTokenizer(ctx, d.decl);
  for (const d of all) if (d.decl.declKind === 'data') checkData(ctx, d.decl);
  for (const d of all) if (d.decl.declKind === 'probe') checkProbe(ctx, d.decl);
  // Stage-local adapters exist from their stage on: they join the statuses (and the entry snapshots) there.
  const locals = new Map<number, string[]>();
  for (const d of all) {
    if (d.decl.declKind === 'adapter') {
      checkAdapter(ctx, d.decl, d.stage);
      if (d.stage === undefined) ctx.status.set(d.decl.name.name, { status: 'pending' });
      else {
        const l = locals.get(d.stageIndex) ?? [];
        l.push(d.decl.name.name);
        locals.set(d.stageIndex, l);
      }
    } else if (d.decl.placement) {
      diags.report('invalid_placement', d.decl.placement.span, `a ${d.decl.declKind} has no placement; only adapters are placed with \`at\``, { hint: 'remove the `at ...` part' });
    }
  }

  const stages: CheckedStage[] = [];
  composed.stages.forEach((s, i) => {
    ctx.stageIndex = i;
    for (const n of locals.get(i) ?? []) ctx.status.set(n, { status: 'pending' });
    stages.push(checkStage(ctx, s));
  });
  ctx.stageIndex = composed.stages.length;

  for (const d of all) {
    const name = d.decl.name.name;
    const kind = d.decl.declKind;
    if (ctx.suggested.has(name)) continue; // a misspelt use of it was reported
    if (kind === 'adapter' && !ctx.trained.has(name) && ctx.adapters.has(name)) {
      diags.report('adapter_never_trained', d.decl.name.span, `adapter \`${name}\` is never trained`);
    } else if (kind === 'data' && !ctx.used.has(name)) {
      diags.report('data_never_used', d.decl.name.span, `data \`${name}\` is never used`);
    } else if ((kind === 'probe' || kind === 'tokenizer') && !ctx.used.has(name)) {
      diags.report('unused_declaration', d.decl.name.span, `${kind} \`${name}\` is never used`, { hint: kind === 'probe' ? `run it with \`eval ${name}\` in a stage, or remove it` : `pass it to the model (\`tokenizer: ${name}\`), or remove it` });
    }
  }

  const exports = checkExports(ctx, composed.exports);
  if (!ctx.model?.config || !ctx.model.source || !ctx.model.tokenizer) return { sources, composed };
  const final: Record<string, AdapterStatus> = Object.create(null); // an adapter may be called `__proto__`
  for (const [n, st] of ctx.status) final[n] = st.status;
  const entry = composed.files[0].file;
  return {
    sources,
    composed,
    pipeline: {
      name: composed.header?.name.name || basename(entry.path).replace(/\.mcp$/, ''),
      files: composed.files.map((f) => f.source.path),
      model: { name: ctx.model.name, source: ctx.model.source, config: ctx.model.config, tokenizer: ctx.model.tokenizer },
      data: [...ctx.data.values()],
      probes: [...ctx.probes.values()],
      adapters: [...ctx.adapters.values()],
      stages,
      final,
      exports,
    },
  };
}

function collectDecls(ctx: Ctx, c: Composed): void {
  const add = (decl: A.Decl, stage?: string, stageIndex = -1) => {
    if (!decl.name.name) return;
    const prev = ctx.decls.get(decl.name.name);
    if (prev) {
      // In one file, `override` cannot help (it replaces a base pipeline's declaration): do not suggest it.
      const sameFile = prev.decl.name.span.file === decl.name.span.file;
      ctx.diags.report('duplicate_declaration', decl.name.span, `\`${decl.name.name}\` is already declared`, {
        notes: [{ message: 'first declared here', span: prev.decl.name.span }],
        ...(sameFile ? { hint: 'rename one of them, or delete one' } : {}),
      });
      return;
    }
    const info: DeclInfo = { decl, stageIndex, ...(stage !== undefined ? { stage } : {}) };
    ctx.decls.set(decl.name.name, info);
  };
  for (const d of c.decls) add(d);
  const stageNames = new Map<string, A.Stage>();
  c.stages.forEach((s, i) => {
    const prev = stageNames.get(s.name.name);
    if (prev && s.name.name) ctx.diags.report('duplicate_declaration', s.name.span, `stage \`${s.name.name}\` is already declared`, { notes: [{ message: 'first declared here', span: prev.name.span }] });
    else stageNames.set(s.name.name, s);
    for (const item of s.items) if (item.kind === 'decl' && item.declKind === 'adapter') add(item, s.name.name, i);
  });
}
