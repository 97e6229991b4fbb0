/**
 * Composition: a pipeline that `extends` another inherits its declarations, stages and exports.
 * - A declaration or stage with the name of a base one must say `override` (it then replaces the base
 *   version in place); `override` on a name the base lacks is an error.
 * - New stages go after the base stages, or after the stage named by `after X`.
 * - Exports: when the extending pipeline declares any export, the base exports are not inherited (they
 *   would write to the base pipeline's output folders).
 * The result is one flat view of the pipeline; every node keeps the span of the file it came from.
 */
import { dirname, relative, resolve, sep } from 'node:path';
import type * as A from '../1-parse/ast.js';
import { parse, type ParseResult } from '../1-parse/index.js';
import type { Diagnostics } from '../diagnostics/diagnostic.js';
import { didYouMean, nameList } from '../util/suggest.js';
import { describeReadError, displayPath, insideRoot, type CheckHost } from './host.js';

export interface Composed {
  /** The entry file's header (absent when it had none; that was reported by the parser). */
  header?: A.Header;
  decls: A.Decl[];
  stages: A.Stage[];
  exports: A.Export[];
  /** Every file read, entry first. */
  files: ParseResult[];
  /**
   * A base pipeline could not be read: what the variant relies on (model, data, adapters, stages) is
   * missing, so checking it would only repeat that one problem as unknown names.
   */
  baseMissing?: boolean;
}

/** Longest chain of `extends` followed (entry included). */
export const MAX_EXTENDS_DEPTH = 32;

export function compose(entryAbs: string, text: string, host: CheckHost, diags: Diagnostics): Composed {
  const files: ParseResult[] = [];
  const result = load(entryAbs, text, host, diags, files, [entryAbs]);
  return { ...result, files };
}

function load(abs: string, text: string, host: CheckHost, diags: Diagnostics, files: ParseResult[], chain: string[]): Omit<Composed, 'files'> {
  const parsed = parse(displayPath(host, abs), text, diags);
  files.push(parsed);
  const f = parsed.file;
  const own = {
    decls: f.items.filter((i): i is A.Decl => i.kind === 'decl'),
    stages: f.items.filter((i): i is A.Stage => i.kind === 'stage'),
    exports: f.items.filter((i): i is A.Export => i.kind === 'export'),
  };
  const ext = f.header?.extends;
  if (!ext) {
    for (const d of own.decls) {
      if (d.override) diags.report('override_nothing', d.name.span, `\`override\` on \`${d.name.name}\`, but this pipeline extends nothing`, { hint: 'remove `override`, or add `extends "base.mcp"` to the header' });
    }
    return { header: f.header, ...own, stages: placeStages([], own.stages, undefined, diags) };
  }

  const baseAbs = resolve(dirname(abs), ext.value);
  if (!host.allowOutsideRoot && !insideRoot(host, baseAbs)) {
    diags.report('path_escapes_root', ext.span, `\`${ext.value}\` resolves outside the project root (${host.root})`);
    return { header: f.header, ...own, baseMissing: true };
  }
  if (chain.includes(baseAbs)) {
    if (baseAbs === abs) diags.report('extends_cycle', ext.span, `\`${ext.value}\` is this file: a pipeline cannot extend itself`, { hint: 'extend the pipeline this one is a variant of' });
    else diags.report('extends_cycle', ext.span, `extending \`${ext.value}\` closes a cycle: ${[...chain, baseAbs].map((p) => displayPath(host, p)).join(' -> ')}`, { hint: 'a pipeline may not extend itself, directly or through others' });
    return { header: f.header, ...own };
  }
  if (chain.length >= MAX_EXTENDS_DEPTH) {
    diags.report('extends_cycle', ext.span, `extending \`${ext.value}\` makes a chain of more than ${MAX_EXTENDS_DEPTH} pipelines`, {
      hint: 'a chain this long is a cycle through different paths to the same file (a link, `..`): extend the base directly',
    });
    return { header: f.header, ...own, baseMissing: true };
  }
  const read = host.readFile(baseAbs);
  if ('error' in read) {
    // A path written from the project root (as data paths are) is the usual mistake: say so.
    const fromRoot = resolve(host.root, ext.value);
    const rel = relative(dirname(abs), fromRoot).split(sep).join('/');
    diags.report('extends_not_found', ext.span, `cannot read \`${ext.value}\`: ${describeReadError(read.error)} (looked for ${displayPath(host, baseAbs)})`, {
      hint: fromRoot !== baseAbs && host.exists(fromRoot) ? `the path is relative to this file's folder, unlike data paths: write \`extends "${rel}"\`` : 'the path is relative to this file\'s folder',
    });
    return { header: f.header, ...own, baseMissing: true };
  }
  const base = load(baseAbs, read.text, host, diags, files, [...chain, baseAbs]);
  const baseFile = displayPath(host, baseAbs);

  // Declarations: replace overridden ones in place, append new ones.
  const decls = [...base.decls];
  for (const d of own.decls) {
    const i = decls.findIndex((b) => b.name.name === d.name.name);
    if (i < 0) {
      if (d.override) diags.report('override_nothing', d.name.span, `\`${baseFile}\` declares no \`${d.name.name}\` to override`, { hint: 'remove `override` to add a new declaration' });
      decls.push(d);
    } else if (!d.override) {
      diags.report('redeclared_from_base', d.name.span, `\`${d.name.name}\` is already declared in \`${baseFile}\``, {
        hint: `write \`override ${d.declKind} ${d.name.name} = ...\` to replace it`,
        notes: [{ message: 'declared in the base here', span: decls[i].name.span }],
      });
    } else {
      decls[i] = d;
    }
  }

  const stages = placeStages(base.stages, own.stages, baseFile, diags);

  return { header: f.header, decls, stages, exports: own.exports.length ? own.exports : base.exports, ...(base.baseMissing ? { baseMissing: true } : {}) };
}

/** Stages: an override replaces the base stage in place; a new stage goes after `after X`, else at the end. */
function placeStages(baseStages: A.Stage[], own: A.Stage[], baseFile: string | undefined, diags: Diagnostics): A.Stage[] {
  const stages = [...baseStages];
  const fromBase = new Set(baseStages);
  const baseNames = new Set(baseStages.map((b) => b.name.name));
  for (const s of own) {
    // Only a base stage can be overridden: skip the search for other names (10 000 stages stay linear).
    const i = baseNames.has(s.name.name) ? stages.findIndex((b) => b.name.name === s.name.name) : -1;
    if (i >= 0 && fromBase.has(stages[i])) {
      if (!s.override) {
        diags.report('redeclared_from_base', s.name.span, `stage \`${s.name.name}\` already exists in \`${baseFile}\``, {
          hint: `write \`override stage ${s.name.name} { ... }\` to replace it, or pick another name`,
          notes: [{ message: 'base stage here', span: stages[i].name.span }],
        });
        continue;
      }
      fromBase.delete(stages[i]);
      stages[i] = s;
      continue;
    }
    if (s.override) {
      diags.report('override_nothing', s.name.span, baseFile ? `\`${baseFile}\` has no stage \`${s.name.name}\` to override` : `\`override\` on stage \`${s.name.name}\`, but this pipeline extends nothing`, {
        hint: 'remove `override` to add a new stage',
      });
    }
    // Duplicate stage names within one file are reported by the checker; keep both here.
    if (s.after && s.after.name) {
      const j = stages.findIndex((b) => b.name.name === s.after!.name);
      if (j < 0) {
        const names = stages.map((x) => x.name.name);
        diags.report('unknown_stage', s.after.span, `no stage \`${s.after.name}\` before this one to place \`${s.name.name}\` after`, {
          hint: didYouMean(s.after.name, names) ?? `stages so far: ${nameList(names) || '(none)'}`,
        });
        stages.push(s);
      } else stages.splice(j + 1, 0, s);
    } else stages.push(s);
  }
  return stages;
}
