/**
 * State shared by the checkers of each node kind: the declarations in scope, the model, and the status of
 * every adapter as the stages are walked in order.
 */
import { resolve } from 'node:path';
import type * as A from '../1-parse/ast.js';
import type { Diagnostics, Note } from '../diagnostics/diagnostic.js';
import type { Span } from '../source.js';
import { closest, didYouMean, nameList } from '../util/suggest.js';
import type { AdapterStatus, CheckedAdapter, CheckedData, CheckedPipeline, CheckedProbe } from './checked.js';
import { insideRoot, type CheckHost } from './host.js';
import type { ModelConfig, ModuleNode } from './models.js';
import { Evaluator, type PathValue } from './values.js';

export interface DeclInfo {
  decl: A.Decl;
  /** Stage that declares it, for stage-local adapters. */
  stage?: string;
  /** Index of that stage in the final order. */
  stageIndex: number;
}

export interface StatusInfo {
  status: AdapterStatus;
  /** Where the adapter got this status (the transition), for "dropped here" notes. */
  span?: Span;
}

export class Ctx {
  readonly ev: Evaluator;
  readonly decls = new Map<string, DeclInfo>();
  model?: { name: string; decl: A.Decl; config?: ModelConfig; tree?: ModuleNode; source?: CheckedPipeline['model']['source']; tokenizer?: CheckedPipeline['model']['tokenizer'] };
  /** Name of the tokenizer declaration the model names, if any. */
  modelTokenizer?: string;
  readonly adapters = new Map<string, CheckedAdapter>();
  readonly data = new Map<string, CheckedData>();
  readonly probes = new Map<string, CheckedProbe>();
  readonly status = new Map<string, StatusInfo>();
  /** moe_lora adapters whose routed experts were all dropped (the shared part lives on). */
  readonly routedDropped = new Set<string>();
  readonly used = new Set<string>();
  readonly trained = new Set<string>();
  /**
   * Names an unknown name was suggested for (`atn` -> `attn`): the typo was reported, so "never trained" or
   * "never used" on the intended declaration would only repeat it.
   */
  readonly suggested = new Set<string>();
  /** Index of the stage being checked (-1 before the first). */
  stageIndex = -1;

  constructor(
    readonly host: CheckHost,
    readonly diags: Diagnostics,
  ) {
    this.ev = new Evaluator(diags);
  }

  /** Resolve a path written in the pipeline (relative to the project root) and check it. */
  checkPath(pv: PathValue, opts: { mustExist: boolean; what: string }): string | undefined {
    const abs = resolve(this.host.root, pv.path);
    if (!this.host.allowOutsideRoot && !insideRoot(this.host, abs)) {
      this.diags.report('path_escapes_root', pv.span, `${opts.what} \`${pv.path}\` resolves outside the project root`);
      return undefined;
    }
    if (opts.mustExist && !this.host.exists(abs)) {
      this.diags.report('file_not_found', pv.span, `${opts.what} \`${pv.path}\` does not exist`);
      return undefined;
    }
    return abs;
  }

  /**
   * Look a name up as one of `kinds`; reports unknown names (with a suggestion), names of the wrong kind,
   * and stage-local adapters used before the stage that declares them.
   */
  lookup(id: A.Ident, kinds: A.DeclKind[], what: string): DeclInfo | undefined {
    if (id.name === '') return undefined;
    const info = this.decls.get(id.name);
    if (!info) {
      const candidates = [...this.decls.values()].filter((d) => kinds.includes(d.decl.declKind)).map((d) => d.decl.name.name);
      const near = closest(id.name, candidates);
      if (near !== undefined) this.suggested.add(near);
      this.diags.report('unknown_name', id.span, `no ${what} named \`${id.name}\``, {
        hint: didYouMean(id.name, candidates) ?? (candidates.length ? `declared: ${nameList(candidates)}` : `declare it first: \`${kinds[0]} ${id.name} = ...\``),
      });
      return undefined;
    }
    if (!kinds.includes(info.decl.declKind)) {
      const is = kindNames[info.decl.declKind];
      // `eval exam` where `exam` is the data a probe reads: name that probe.
      const reader = info.decl.declKind === 'data' && kinds.includes('probe') ? [...this.probes.values()].find((p) => p.data === id.name) : undefined;
      const wanted = [...this.decls.values()].filter((d) => kinds.includes(d.decl.declKind)).map((d) => d.decl.name.name);
      this.diags.report('wrong_kind', id.span, `\`${id.name}\` is ${article(is)} ${is}, not ${article(what)} ${what}`, {
        notes: [{ message: 'declared here', span: info.decl.name.span }],
        ...(reader ? { hint: `the probe that reads \`${id.name}\` is \`${reader.name}\`` } : wanted.length ? { hint: `${what}s declared: ${wanted.join(', ')}` } : {}),
      });
      return undefined;
    }
    if (info.stage !== undefined && info.stageIndex > this.stageIndex) {
      this.diags.report('unknown_name', id.span, `\`${id.name}\` is declared in the later stage \`${info.stage}\``, {
        hint: 'declare the adapter at the top level, or in this or an earlier stage',
        notes: [{ message: 'declared here', span: info.decl.name.span }],
      });
      return undefined;
    }
    return info;
  }

  /**
   * Report a use of an adapter that no longer exists (dropped or merged). Returns false when the use is
   * invalid. `verb` completes "adapter `x` is ... after it was dropped".
   */
  checkAlive(id: A.Ident | A.RefExpr, name: string, verb: string): boolean {
    const st = this.status.get(name);
    if (!st) return true;
    const span = id.span;
    const notes = (m: string): Note[] => (st.span ? [{ message: m, span: st.span }] : []);
    if (st.status === 'dropped') {
      this.diags.report('use_after_drop', span, `adapter \`${name}\` is ${verb} after it was dropped`, { notes: notes('dropped here') });
      return false;
    }
    if (st.status === 'merged') {
      this.diags.report('use_after_merge', span, `adapter \`${name}\` is ${verb} after it was merged into the base`, { notes: notes('merged here') });
      return false;
    }
    return true;
  }
}

/** How a declaration kind reads in a sentence ("`exam` is a data source"). */
export const kindNames: Record<A.DeclKind, string> = { model: 'model', tokenizer: 'tokenizer', data: 'data source', adapter: 'adapter', probe: 'probe' };

export function article(word: string): string {
  return /^[aeiou]/.test(word) ? 'an' : 'a';
}
