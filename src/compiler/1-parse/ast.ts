/**
 * The AST of a `.mcp` file. Produced by 1-parse from the CST; every node has a span. After error recovery a
 * node may lack parts (an empty name, a missing value): later phases must treat those as already reported.
 */
import type { Span } from '../source.js';

export interface Ident {
  name: string;
  span: Span;
}

export type Expr = NumberLit | PercentLit | SizeLit | StringLit | BoolLit | ListExpr | RefExpr | CallExpr;

export interface NumberLit {
  kind: 'number';
  value: number;
  /** Source text, kept so the formatter prints numbers as written (2e-4 stays 2e-4). */
  text: string;
  span: Span;
}
export interface PercentLit {
  kind: 'percent';
  /** The number before `%`: 3% has value 3. */
  value: number;
  text: string;
  span: Span;
}
export interface SizeLit {
  kind: 'size';
  bytes: number;
  text: string;
  span: Span;
}
export interface StringLit {
  kind: 'string';
  value: string;
  span: Span;
}
export interface BoolLit {
  kind: 'bool';
  value: boolean;
  span: Span;
}
export interface ListExpr {
  kind: 'list';
  items: Expr[];
  span: Span;
}
/** A dotted name: `knowledge`, `align.A`, `noise.experts`. */
export interface RefExpr {
  kind: 'ref';
  path: Ident[];
  span: Span;
}
export interface CallExpr {
  kind: 'call';
  callee: Ident;
  args: Arg[];
  span: Span;
}
export interface Arg {
  name?: Ident;
  value: Expr;
  span: Span;
}

// --- selectors -----------------------------------------------------------------------------------------------

export interface IndexItem {
  from: number;
  /** Inclusive upper bound of a range `a..b`. */
  to?: number;
  span: Span;
}
export type IndexSpec = { kind: 'all'; span: Span } | { kind: 'items'; items: IndexItem[]; span: Span };

export type Segment =
  | { kind: 'name'; name: Ident; index?: IndexSpec; span: Span }
  | { kind: 'set'; names: Ident[]; span: Span }
  | { kind: 'any'; span: Span };

export interface Selector {
  segments: Segment[];
  span: Span;
}

export interface Placement {
  include: Selector[];
  exclude: Selector[];
  span: Span;
}

// --- declarations and statements -----------------------------------------------------------------------------

export type DeclKind = 'model' | 'tokenizer' | 'data' | 'adapter' | 'probe';

export interface Decl {
  kind: 'decl';
  declKind: DeclKind;
  override: boolean;
  name: Ident;
  value?: Expr;
  placement?: Placement;
  span: Span;
}

export interface Setting {
  kind: 'setting';
  name: Ident;
  value?: Expr;
  span: Span;
}

export interface Train {
  kind: 'train';
  targets: Ident[];
  data: Ident[];
  span: Span;
}

export interface Merge {
  kind: 'merge';
  targets: RefExpr[];
  into?: Ident;
  span: Span;
}
export interface Condition {
  metric: Ident;
  op: '<' | '<=' | '>' | '>=';
  value?: Expr;
  span: Span;
}
export interface Drop {
  kind: 'drop';
  targets: RefExpr[];
  condition?: Condition;
  span: Span;
}
export interface Freeze {
  kind: 'freeze' | 'unfreeze';
  targets: RefExpr[];
  span: Span;
}
export type Transition = Merge | Drop | Freeze;

export interface Then {
  kind: 'then';
  transitions: Transition[];
  span: Span;
}

export interface Constrain {
  kind: 'constrain';
  call?: CallExpr;
  weight?: Expr;
  norm?: Ident;
  span: Span;
}

export interface Eval {
  kind: 'eval';
  probes: Ident[];
  every?: Expr;
  span: Span;
}

export type StageItem = Decl | Setting | Train | Then | Constrain | Eval;

export interface Stage {
  kind: 'stage';
  override: boolean;
  name: Ident;
  after?: Ident;
  items: StageItem[];
  span: Span;
}

export interface Export {
  kind: 'export';
  format: Ident;
  adapters: Ident[];
  path?: StringLit;
  span: Span;
}

export type TopItem = Decl | Stage | Export;

export interface Header {
  name: Ident;
  extends?: StringLit;
  span: Span;
}

export interface Comment {
  text: string;
  span: Span;
}

export interface PipelineFile {
  path: string;
  header?: Header;
  items: TopItem[];
  comments: Comment[];
  span: Span;
}
