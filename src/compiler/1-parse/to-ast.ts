/**
 * CST -> AST. Tolerates the holes error recovery leaves: a missing token becomes an empty name or an absent
 * optional field, never an exception.
 */
import type { CstElement, CstNode, IToken } from './chevrotain.js';
import type { SourceFile, Span } from '../source.js';
import type * as A from './ast.js';

const isToken = (e: CstElement): e is IToken => (e as IToken).image !== undefined;
const present = (t: IToken): boolean => !t.isInsertedInRecovery && Number.isFinite(t.startOffset);

export class AstBuilder {
  constructor(private readonly src: SourceFile) {}

  private toks(n: CstNode, key: string): IToken[] {
    return (n.children[key] ?? []).filter(isToken).filter(present);
  }
  private tok(n: CstNode, key: string): IToken | undefined {
    return this.toks(n, key)[0];
  }
  private nodes(n: CstNode, key: string): CstNode[] {
    return (n.children[key] ?? []).filter((e): e is CstNode => !isToken(e));
  }
  private node(n: CstNode, key: string): CstNode | undefined {
    return this.nodes(n, key)[0];
  }

  /** Span of a CST node; falls back to its first real token when recovery left no location. */
  span(n: CstNode): Span {
    const loc = n.location;
    if (loc && Number.isFinite(loc.startOffset) && Number.isFinite(loc.endOffset)) {
      return this.src.span(loc.startOffset, (loc.endOffset as number) + 1);
    }
    const first = this.firstToken(n);
    return first ? this.tokSpan(first) : this.src.span(0, 0);
  }
  private firstToken(n: CstNode): IToken | undefined {
    let best: IToken | undefined;
    for (const list of Object.values(n.children)) {
      for (const e of list) {
        const t = isToken(e) ? (present(e) ? e : undefined) : this.firstToken(e);
        if (t && (!best || t.startOffset < best.startOffset)) best = t;
      }
    }
    return best;
  }
  tokSpan(t: IToken): Span {
    return this.src.span(t.startOffset, (t.endOffset ?? t.startOffset) + 1);
  }
  private ident(t: IToken | undefined, fallback: Span): A.Ident {
    return t ? { name: t.image, span: this.tokSpan(t) } : { name: '', span: fallback };
  }
  /** All tokens of a key, in source order, across several keys (CONSUME2/3 store under the same name). */
  private idents(n: CstNode, key: string): A.Ident[] {
    return this.toks(n, key)
      .sort((a, b) => a.startOffset - b.startOffset)
      .map((t) => ({ name: t.image, span: this.tokSpan(t) }));
  }

  file(n: CstNode, comments: A.Comment[]): A.PipelineFile {
    const h = this.node(n, 'header');
    const items = this.nodes(n, 'topItem').flatMap((t) => this.topItem(t));
    return {
      path: this.src.path,
      header: h ? this.header(h) : undefined,
      items,
      comments,
      span: this.src.span(0, this.src.text.length),
    };
  }

  private header(n: CstNode): A.Header {
    const span = this.span(n);
    const ext = this.tok(n, 'String');
    return { name: this.ident(this.tok(n, 'Ident'), span), extends: ext ? this.string(ext) : undefined, span };
  }

  private topItem(n: CstNode): A.TopItem[] {
    const d = this.node(n, 'decl');
    if (d) return [this.decl(d)];
    const s = this.node(n, 'stage');
    if (s) return [this.stage(s)];
    const e = this.node(n, 'exportItem');
    if (e) return [this.exportItem(e)];
    return [];
  }

  decl(n: CstNode): A.Decl {
    const span = this.span(n);
    const kinds: A.DeclKind[] = ['model', 'tokenizer', 'data', 'adapter', 'probe'];
    const declKind = kinds.find((k) => this.tok(n, k[0].toUpperCase() + k.slice(1))) ?? 'adapter';
    const value = this.node(n, 'expr');
    const placement = this.node(n, 'placement');
    return {
      kind: 'decl',
      declKind,
      override: !!this.tok(n, 'Override'),
      name: this.ident(this.tok(n, 'Ident'), span),
      value: value ? this.expr(value) : undefined,
      placement: placement ? this.placement(placement) : undefined,
      span,
    };
  }

  private placement(n: CstNode): A.Placement {
    const sels = this.nodes(n, 'selector').map((s) => this.selector(s));
    const except = this.tok(n, 'Except');
    const include = except ? sels.filter((s) => s.span.start.offset < except.startOffset) : sels;
    const exclude = except ? sels.filter((s) => s.span.start.offset > except.startOffset) : [];
    return { include, exclude, span: this.span(n) };
  }

  private selector(n: CstNode): A.Selector {
    return { segments: this.nodes(n, 'segment').map((s) => this.segment(s)), span: this.span(n) };
  }

  private segment(n: CstNode): A.Segment {
    const span = this.span(n);
    if (this.tok(n, 'Star')) return { kind: 'any', span };
    if (this.tok(n, 'LBrace') || (n.children.LBrace ?? []).length) return { kind: 'set', names: this.idents(n, 'Name'), span };
    const idx = this.node(n, 'index');
    return { kind: 'name', name: this.ident(this.tok(n, 'Name'), span), index: idx ? this.index(idx) : undefined, span };
  }

  private index(n: CstNode): A.IndexSpec {
    const span = this.span(n);
    if (this.tok(n, 'Star')) return { kind: 'all', span };
    return { kind: 'items', items: this.nodes(n, 'indexItem').map((i) => this.indexItem(i)), span };
  }

  private indexItem(n: CstNode): A.IndexItem {
    const [a, b] = this.nodes(n, 'signedNumber').map((x) => this.signedNumber(x).value);
    return { from: a ?? 0, to: b, span: this.span(n) };
  }

  private signedNumber(n: CstNode): A.NumberLit {
    const num = this.tok(n, 'Number');
    const neg = !!this.tok(n, 'Minus');
    const text = (neg ? '-' : '') + (num?.image ?? '0');
    return { kind: 'number', value: Number(text), text, span: this.span(n) };
  }

  private stage(n: CstNode): A.Stage {
    const span = this.span(n);
    const names = this.idents(n, 'Ident');
    const after = this.tok(n, 'After');
    return {
      kind: 'stage',
      override: !!this.tok(n, 'Override'),
      name: names[0] ?? { name: '', span },
      after: after ? names.find((i) => i.span.start.offset > after.startOffset) ?? { name: '', span: this.tokSpan(after) } : undefined,
      items: this.nodes(n, 'stageItem').flatMap((i) => this.stageItem(i)),
      span,
    };
  }

  private stageItem(n: CstNode): A.StageItem[] {
    const [key, child] = Object.entries(n.children).find(([, v]) => v.length && !isToken(v[0])) ?? [];
    if (!key || !child) return [];
    const c = child[0] as CstNode;
    const span = this.span(c);
    switch (key) {
      case 'decl':
        return [this.decl(c)];
      case 'setting': {
        const v = this.node(c, 'expr');
        return [{ kind: 'setting', name: this.ident(this.tok(c, 'Ident'), span), value: v ? this.expr(v) : undefined, span }];
      }
      case 'train': {
        const on = this.tok(c, 'On');
        const ids = this.idents(c, 'Ident');
        const split = on ? on.startOffset : Infinity;
        return [{ kind: 'train', targets: ids.filter((i) => i.span.start.offset < split), data: ids.filter((i) => i.span.start.offset > split), span }];
      }
      case 'then':
        return [{ kind: 'then', transitions: this.transitions(c), span }];
      case 'constrain': {
        const call = this.node(c, 'refOrCall');
        const callExpr = call ? this.refOrCall(call) : undefined;
        const w = this.node(c, 'expr');
        const norm = this.tok(c, 'Norm') ? this.tok(c, 'Ident') : undefined;
        return [
          {
            kind: 'constrain',
            // A bare reference (`constrain a.b`) keeps its whole dotted name, as call callees do.
            call: callExpr?.kind === 'call' ? callExpr : callExpr ? { kind: 'call', callee: callExpr.path.length === 1 ? callExpr.path[0] : { name: callExpr.path.map((p) => p.name).join('.'), span: callExpr.span }, args: [], span: callExpr.span } : undefined,
            weight: w ? this.expr(w) : undefined,
            norm: norm ? this.ident(norm, span) : this.tok(c, 'Norm') ? { name: '', span } : undefined,
            span,
          },
        ];
      }
      case 'evalItem': {
        const every = this.node(c, 'expr');
        return [{ kind: 'eval', probes: this.idents(c, 'Ident'), every: every ? this.expr(every) : undefined, span }];
      }
      default:
        return [];
    }
  }

  private transitions(n: CstNode): A.Transition[] {
    const out: A.Transition[] = [];
    for (const key of ['merge', 'drop', 'freeze', 'unfreeze'] as const) {
      for (const c of this.nodes(n, key)) {
        const span = this.span(c);
        const refs = this.node(c, 'refList');
        const targets = refs ? this.nodes(refs, 'ref').map((r) => this.ref(r)) : [];
        if (key === 'merge') {
          const into = this.tok(c, 'Ident');
          out.push({ kind: 'merge', targets, into: this.tok(c, 'Into') ? this.ident(into, span) : undefined, span });
        } else if (key === 'drop') {
          const cond = this.node(c, 'condition');
          out.push({ kind: 'drop', targets, condition: cond ? this.condition(cond) : undefined, span });
        } else out.push({ kind: key, targets, span });
      }
    }
    return out.sort((a, b) => a.span.start.offset - b.span.start.offset);
  }

  private condition(n: CstNode): A.Condition {
    const span = this.span(n);
    const op = (['Le', 'Ge', 'Lt', 'Gt'] as const).find((k) => this.tok(n, k));
    const ops = { Le: '<=', Ge: '>=', Lt: '<', Gt: '>' } as const;
    const v = this.node(n, 'expr');
    return { metric: this.ident(this.tok(n, 'Name'), span), op: op ? ops[op] : '<', value: v ? this.expr(v) : undefined, span };
  }

  private exportItem(n: CstNode): A.Export {
    const span = this.span(n);
    const ids = this.idents(n, 'Ident');
    const path = this.tok(n, 'String');
    return { kind: 'export', format: ids[0] ?? { name: '', span }, adapters: ids.slice(1), path: path ? this.string(path) : undefined, span };
  }

  private ref(n: CstNode): A.RefExpr {
    const span = this.span(n);
    const first = this.tok(n, 'Ident');
    const rest = this.idents(n, 'Name');
    return { kind: 'ref', path: [this.ident(first, span), ...rest], span };
  }

  private refOrCall(n: CstNode): A.RefExpr | A.CallExpr {
    const r = this.node(n, 'ref');
    const ref = r ? this.ref(r) : { kind: 'ref' as const, path: [{ name: '', span: this.span(n) }], span: this.span(n) };
    if (!this.tok(n, 'LParen') && !(n.children.LParen ?? []).length) return ref;
    const callee: A.Ident =
      ref.path.length === 1 ? ref.path[0] : { name: ref.path.map((p) => p.name).join('.'), span: ref.span };
    return { kind: 'call', callee, args: this.nodes(n, 'arg').map((a) => this.arg(a)), span: this.span(n) };
  }

  private arg(n: CstNode): A.Arg {
    const span = this.span(n);
    const name = this.tok(n, 'Name');
    const v = this.node(n, 'expr');
    return {
      ...(name && this.tok(n, 'Colon') ? { name: this.ident(name, span) } : {}),
      value: v ? this.expr(v) : { kind: 'ref', path: [{ name: '', span }], span },
      span,
    };
  }

  private string(t: IToken): A.StringLit {
    let raw = t.image;
    raw = raw.endsWith('"') && raw.length >= 2 ? raw.slice(1, -1) : raw.slice(1);
    const value = raw.replace(/\\(.)/g, (_, c: string) => ({ n: '\n', t: '\t', r: '\r' })[c] ?? c);
    return { kind: 'string', value, span: this.tokSpan(t) };
  }

  expr(n: CstNode): A.Expr {
    const span = this.span(n);
    const num = this.node(n, 'signedNumber');
    if (num) return this.signedNumber(num);
    const pct = this.tok(n, 'Percent');
    if (pct) {
      const text = pct.image;
      return { kind: 'percent', value: Number(text.slice(0, -1)), text, span };
    }
    const size = this.tok(n, 'Size');
    if (size) return { kind: 'size', bytes: parseSize(size.image), text: size.image, span };
    const str = this.tok(n, 'String');
    if (str) return this.string(str);
    if (this.tok(n, 'True')) return { kind: 'bool', value: true, span };
    if (this.tok(n, 'False')) return { kind: 'bool', value: false, span };
    const list = this.node(n, 'list');
    if (list) return { kind: 'list', items: this.nodes(list, 'expr').map((e) => this.expr(e)), span };
    const rc = this.node(n, 'refOrCall');
    if (rc) return this.refOrCall(rc);
    return { kind: 'ref', path: [{ name: '', span }], span };
  }
}

const units: Record<string, number> = { KB: 1e3, MB: 1e6, GB: 1e9, TB: 1e12, KiB: 2 ** 10, MiB: 2 ** 20, GiB: 2 ** 30, TiB: 2 ** 40 };

export function parseSize(text: string): number {
  const m = /^(\d+(?:\.\d+)?)([KMGTkmgt])(i?)[Bb]$/.exec(text);
  return m ? Math.round(Number(m[1]) * (units[`${m[2].toUpperCase()}${m[3]}B`] ?? NaN)) : NaN;
}
