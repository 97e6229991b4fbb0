/**
 * WGSL generation for fused elementwise kernels: one compute shader module for the forward and one for the
 * backward of a {@link FusedExpr}, both f32, `@workgroup_size(256)`, deterministic text (the same expression
 * always gives the same bytes).
 *
 * Layouts (chosen per module):
 * - `elements`: one invocation per element, index = gid.x + gid.y · (num_workgroups.x · 256). Dispatch
 *   n = ceil(rows·cols / 256) workgroups as (min(n, 65535), ceil(n / 65535), 1); extra invocations return.
 * - `rows` (when the module has row reductions): one workgroup per row, row = wid.x + wid.y · num_workgroups.x,
 *   dispatched the same way with n = rows. Each reduction level is one strided pass over the row's columns
 *   followed by a tree reduction in workgroup memory, whose sum every invocation reads from a slot of its own
 *   (`wg_total`, see REDUCE); the outputs are written in a last pass.
 * - the backward's `reduce_cols` entry point (only when a `vec` input has a gradient): one workgroup per
 *   column (n = cols), summing that column's per-row partial gradients over the rows.
 *
 * Bindings, all in `@group(0)`, in this order:
 * - forward: 0 `params` (uniform `Params`), then `in0..` (every input, `read`), then `out0..` (every output,
 *   `read_write`). `elem` tensors are [rows, cols] row-major, `vec` tensors [cols].
 * - backward: 0 `params`, then (`read`) the inputs it reads `in<i>`, the saved forward outputs it reads `y<k>`,
 *   the upstream gradients it reads `dy<k>`, in ascending index; then one `read_write` buffer per gradient slot
 *   `g<s>` ([rows, cols]; for a `vec` input's slot these are per-row partials); then, per `vec` slot, the
 *   reduced gradient `gr<s>` ([cols], `read_write`). The exact list per entry point is in {@link GeneratedKernel}.
 * `Params` is { rows, cols, grad_mask, accum_mask } (u32 each, 16 bytes). In the backward, bit s of grad_mask
 * says slot s is wanted (unset: it is not written); bit s of accum_mask adds to the gradient buffer instead of
 * overwriting it (for `vec` slots this applies to `gr<s>`; the partials are always overwritten). The forward
 * ignores both masks.
 */
import { topo, type Backward, type Expr, type FusedExpr, backwardReads } from './expr.js';

export const WORKGROUP_SIZE = 256;

export interface Binding {
  binding: number;
  name: string;
  role: 'params' | 'input' | 'output' | 'saved_output' | 'dy' | 'grad' | 'grad_reduced';
  /** Input, output or slot index (0 for params). */
  index: number;
  access: 'uniform' | 'read' | 'read_write';
  /** Element count: `rows*cols`, `cols`, or `params`. */
  size: 'rows*cols' | 'cols' | 'params';
}

export interface EntryPoint {
  name: string;
  layout: 'elements' | 'rows' | 'cols';
  /** Workgroups to dispatch, before the 65535 split: `ceil(rows*cols/256)`, `rows` or `cols`. */
  workgroups: 'ceil(rows*cols/256)' | 'rows' | 'cols';
  /** Binding numbers this entry point uses (its `layout: 'auto'` bind group). */
  bindings: number[];
}

export interface GeneratedModule {
  code: string;
  bindings: Binding[];
  entryPoints: EntryPoint[];
}

export interface GeneratedKernel {
  forward: GeneratedModule;
  backward: GeneratedModule;
}

/**
 * Device limits the generated shaders need (compatibility mode defaults to 128 invocations per workgroup):
 * storage buffers counted over a whole module, enough for one explicit bind group layout per module.
 */
export const requiredLimits = (k: GeneratedKernel) => ({
  maxComputeInvocationsPerWorkgroup: WORKGROUP_SIZE,
  maxComputeWorkgroupSizeX: WORKGROUP_SIZE,
  maxStorageBuffersPerShaderStage: Math.max(...[k.forward, k.backward].map((m) => m.bindings.length - 1)),
});

/** An f32 literal WGSL accepts: `2.0`, `0.5`, `1e-7`; negatives parenthesised. */
export function literal(v: number): string {
  if (!Number.isFinite(v)) throw new Error(`cannot write ${v} as a WGSL literal`);
  const a = Math.abs(v);
  let s = String(a);
  if (/^\d+$/.test(s)) s += '.0';
  return v < 0 ? `(-${s})` : s;
}

const header = (title: string, lines: string[]) => [`// ${title}`, ...lines.map((l) => `// ${l}`), ''];

const PRELUDE = [
  'struct Params {',
  '  rows: u32,',
  '  cols: u32,',
  '  grad_mask: u32,',
  '  accum_mask: u32,',
  '}',
  '',
  `const WG: u32 = ${WORKGROUP_SIZE}u;`,
  '',
];

const HELPERS = ['fn sigmoid_f(x: f32) -> f32 {', '  return 1.0 / (1.0 + exp(-x));', '}', '', 'fn silu_f(x: f32) -> f32 {', '  return x / (1.0 + exp(-x));', '}', ''];

/**
 * The workgroup reduction. Each call site passes its own `slot`: invocation 0 writes the sum into
 * `wg_total[slot]`, which nothing writes again in that dispatch, and every invocation reads it from there,
 * never from `wg_scratch` (which the next reduction overwrites).
 *
 * Why: WGSL's workgroupBarrier() orders workgroup memory, but Dawn's GLES backend (Tint) writes it as a bare
 * GLSL `barrier()`, and Mesa 22.3's llvmpipe lets a shared-memory load move below a bare `barrier()`. When
 * every invocation read the sum from `wg_scratch[0]` and the caller combined it with a uniform (e.g.
 * `/ f32(params.cols)`, a mean), the load landed after the next reduction's `wg_scratch[lid] = v`: only the
 * first 8-wide chunk of invocations (lanes 0-7, llvmpipe's 256-bit SIMD width) got the sum, the others got
 * invocation 0's next input instead, so a row sum that reads another row sum (LayerNorm's variance) was wrong
 * at any width (up to 35% off; with a row sum of that, far more). Plain GLES reproduces it without Dawn (two tree reductions on one `shared` array, the first
 * result times a uniform: 248 of 256 invocations wrong; `memoryBarrierShared()` next to `barrier()`, or the
 * single-writer slot used here, makes it right): see test/compiler/fusion/wgsl-dawn.test.ts.
 */
const REDUCE = (slots: number) => [
  `var<workgroup> wg_scratch: array<f32, ${WORKGROUP_SIZE}>;`,
  `var<workgroup> wg_total: array<f32, ${Math.max(1, slots)}>;`,
  '',
  '// Sum of v over the workgroup (every invocation gets it). Call from workgroup-uniform control flow, each',
  '// call site with its own slot: wg_total[slot] is written once, so a late read of it still sees the sum.',
  'fn wg_reduce(v: f32, lid: u32, slot: u32) -> f32 {',
  '  wg_scratch[lid] = v;',
  '  workgroupBarrier();',
  '  for (var s: u32 = WG / 2u; s > 1u; s = s >> 1u) {',
  '    if (lid < s) {',
  '      wg_scratch[lid] = wg_scratch[lid] + wg_scratch[lid + s];',
  '    }',
  '    workgroupBarrier();',
  '  }',
  '  if (lid == 0u) {',
  '    wg_total[slot] = wg_scratch[0] + wg_scratch[1];',
  '  }',
  '  workgroupBarrier();',
  '  return wg_total[slot];',
  '}',
  '',
];

/** A value to compute per element and what to do with it. */
interface Target {
  expr: Expr;
  store: (value: string) => string[];
}

/** Writes the body of a kernel: let-bindings per node, reduction passes, then the stores. */
class BodyWriter {
  readonly lines: string[] = [];
  private readonly name = new Map<Expr, string>();
  private readonly rowScope = new Set<Expr>();
  private loopScope = new Set<Expr>();
  private indent = '  ';
  usesCols = false;
  /** Reductions written so far: the next one's `wg_total` slot. */
  reductions = 0;

  constructor(
    private readonly order: Expr[],
    private readonly leaf: (e: Expr) => string,
  ) {
    order.forEach((e, i) => this.name.set(e, `t${i}`));
  }

  line(s: string): void {
    this.lines.push(this.indent + s);
  }

  open(s: string): void {
    this.line(s);
    this.indent += '  ';
  }

  close(s = '}'): void {
    this.indent = this.indent.slice(2);
    this.line(s);
  }

  /** A node evaluated once per row (or uniform): reductions' results and what depends only on them. */
  private perRow(e: Expr): boolean {
    return e.cls === 'row' || (e.cls === 'const' && e.op !== 'const');
  }

  ref(e: Expr): string {
    if (e.op === 'const') return literal(e.value);
    if (e.op === 'cols') {
      this.usesCols = true;
      return 'ncols';
    }
    return this.name.get(e)!;
  }

  /** Emit the per-row values that `targets` need (outside any column loop). */
  rowDeps(targets: Expr[]): void {
    const seen = new Set<Expr>();
    const visit = (e: Expr) => {
      if (seen.has(e)) return;
      seen.add(e);
      if (this.perRow(e)) return this.emit(e, this.rowScope);
      e.args.forEach(visit);
    };
    targets.forEach(visit);
  }

  /** Emit `e` (and what it needs) as `let` bindings in the given scope. */
  emit(e: Expr, scope: Set<Expr>): void {
    if (e.op === 'const' || e.op === 'cols') return void this.ref(e);
    if (this.rowScope.has(e) || scope.has(e)) return;
    if (e.op === 'rowsum') throw new Error('internal: a row sum is used before its reduction pass');
    const into = this.perRow(e) ? this.rowScope : scope;
    for (const a of e.args) this.emit(a, into);
    this.line(`let ${this.name.get(e)} = ${this.code(e)};`);
    into.add(e);
  }

  private code(e: Expr): string {
    const [a, b, c] = e.args.map((x) => this.ref(x));
    switch (e.op) {
      case 'in':
      case 'out':
      case 'dy':
        return this.leaf(e);
      case 'add':
        return `${a} + ${b}`;
      case 'sub':
        return `${a} - ${b}`;
      case 'mul':
        return `${a} * ${b}`;
      case 'div':
        return `${a} / ${b}`;
      case 'neg':
        return `-${a}`;
      case 'max':
      case 'min':
      case 'exp':
      case 'log':
      case 'sqrt':
      case 'tanh':
        return `${e.op}(${e.args.map((x) => this.ref(x)).join(', ')})`;
      case 'rsqrt':
        return `inverseSqrt(${a})`;
      case 'sigmoid':
        return `sigmoid_f(${a})`;
      case 'silu':
        return `silu_f(${a})`;
      case 'gt':
        return `select(0.0, 1.0, ${a} > ${b})`;
      case 'ge':
        return `select(0.0, 1.0, ${a} >= ${b})`;
      case 'lt':
        return `select(0.0, 1.0, ${a} < ${b})`;
      case 'le':
        return `select(0.0, 1.0, ${a} <= ${b})`;
      case 'eq':
        return `select(0.0, 1.0, ${a} == ${b})`;
      case 'select':
        return `select(${c}, ${b}, ${a} != 0.0)`;
    }
    throw new Error(`internal: no WGSL for ${e.op}`);
  }

  /** Row layout: one pass per reduction level, then the stores. */
  rows(targets: Target[]): void {
    const level = new Map<Expr, number>();
    for (const e of this.order) level.set(e, Math.max(0, ...e.args.map((a) => level.get(a)!)) + (e.op === 'rowsum' ? 1 : 0));
    const sums = this.order.filter((e) => e.op === 'rowsum');
    const depth = Math.max(0, ...sums.map((s) => level.get(s)!));
    for (let l = 1; l <= depth; l++) {
      const here = sums.filter((s) => level.get(s) === l);
      this.rowDeps(here.map((s) => s.args[0]));
      here.forEach((s) => this.line(`var acc_${this.name.get(s)}: f32 = 0.0;`));
      this.open('for (var col: u32 = lid; col < params.cols; col = col + WG) {');
      this.loopScope = new Set();
      for (const s of here) {
        this.emit(s.args[0], this.loopScope);
        this.line(`acc_${this.name.get(s)} = acc_${this.name.get(s)} + ${this.ref(s.args[0])};`);
      }
      this.close();
      for (const s of here) {
        this.line(`let ${this.name.get(s)} = wg_reduce(acc_${this.name.get(s)}, lid, ${this.reductions++}u);`);
        this.rowScope.add(s);
      }
    }
    this.rowDeps(targets.map((t) => t.expr));
    this.open('for (var col: u32 = lid; col < params.cols; col = col + WG) {');
    this.loopScope = new Set();
    this.stores(targets);
    this.close();
  }

  /** Elements layout: straight-line code for one element. */
  elements(targets: Target[]): void {
    this.rowDeps(targets.map((t) => t.expr));
    this.loopScope = new Set();
    this.stores(targets);
  }

  private stores(targets: Target[]): void {
    for (const t of targets) {
      this.emit(t.expr, this.loopScope);
      for (const l of t.store(this.ref(t.expr))) this.line(l);
    }
  }
}

const ROW_MAIN = (name: string) => [
  '@compute @workgroup_size(256)',
  `fn ${name}(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {`,
  '  let row = wid.x + wid.y * nwg.x;',
  '  if (row >= params.rows) {',
  '    return;',
  '  }',
  '  let row_off = row * params.cols;',
];

const ELEMENT_MAIN = (name: string) => [
  '@compute @workgroup_size(256)',
  `fn ${name}(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {`,
  '  let idx = gid.x + gid.y * nwg.x * WG;',
  '  if (idx >= params.rows * params.cols) {',
  '    return;',
  '  }',
  '  let col = idx % params.cols;',
  '  let row_off = idx - col;',
];

function bindingDecl(b: Binding): string {
  if (b.role === 'params') return `@group(0) @binding(${b.binding}) var<uniform> params: Params;`;
  return `@group(0) @binding(${b.binding}) var<storage, ${b.access}> ${b.name}: array<f32>;`;
}

/** Assemble a module: header, prelude, bindings, helpers, the main entry point's body (and any extra entry points). */
function assemble(title: string, doc: string[], bindings: Binding[], body: BodyWriter, layout: 'rows' | 'elements', mainName: string, extra: string[], reduceSlots: number): string {
  const main = layout === 'rows' ? ROW_MAIN(mainName) : ELEMENT_MAIN(mainName);
  const pre = body.usesCols ? ['  let ncols = f32(params.cols);'] : [];
  return [
    ...header(title, doc),
    ...PRELUDE,
    ...bindings.map(bindingDecl),
    '',
    ...HELPERS,
    ...(reduceSlots > 0 ? REDUCE(reduceSlots) : []),
    ...main,
    ...pre,
    ...body.lines,
    '}',
    ...extra,
  ].join('\n') + '\n';
}

const hasRowsum = (roots: Expr[]) => topo(roots).some((e) => e.op === 'rowsum');

/** Generate the forward and backward WGSL of a fused kernel. `label` only goes into the header comment. */
export function generateWgsl(f: FusedExpr, bwd: Backward, label = 'fused elementwise kernel'): GeneratedKernel {
  return { forward: generateForward(f, label), backward: generateBackward(f, bwd, label) };
}

function generateForward(f: FusedExpr, label: string): GeneratedModule {
  const bindings: Binding[] = [{ binding: 0, name: 'params', role: 'params', index: 0, access: 'uniform', size: 'params' }];
  f.inputs.forEach((kind, i) => bindings.push({ binding: bindings.length, name: `in${i}`, role: 'input', index: i, access: 'read', size: kind === 'vec' ? 'cols' : 'rows*cols' }));
  f.outputs.forEach((_, k) => bindings.push({ binding: bindings.length, name: `out${k}`, role: 'output', index: k, access: 'read_write', size: 'rows*cols' }));
  const order = topo(f.outputs);
  const w = new BodyWriter(order, (e) => (e.kind === 'vec' ? `in${e.value}[col]` : `in${e.value}[row_off + col]`));
  const layout = hasRowsum(f.outputs) ? 'rows' : 'elements';
  const targets: Target[] = f.outputs.map((y, k) => ({ expr: y, store: (v) => [`out${k}[row_off + col] = ${v};`] }));
  if (layout === 'rows') w.rows(targets);
  else w.elements(targets);
  const doc = [
    `Forward of ${label}. Generated by mcpc (src/compiler/fusion/wgsl.ts); do not edit.`,
    `Layout: ${layout === 'rows' ? 'one workgroup per row' : 'one invocation per element'}. Bindings:`,
    ...bindings.map((b) => `  ${b.binding}: ${b.name} (${b.role}, ${b.size})`),
  ];
  const code = assemble(`mcpc fused kernel: forward`, doc, bindings, w, layout, 'main', [], w.reductions);
  return { code, bindings, entryPoints: [{ name: 'main', layout, workgroups: layout === 'rows' ? 'rows' : 'ceil(rows*cols/256)', bindings: bindings.map((b) => b.binding) }] };
}

function generateBackward(f: FusedExpr, b: Backward, label: string): GeneratedModule {
  const reads = backwardReads(b);
  const bindings: Binding[] = [{ binding: 0, name: 'params', role: 'params', index: 0, access: 'uniform', size: 'params' }];
  const add = (x: Omit<Binding, 'binding'>) => {
    bindings.push({ binding: bindings.length, ...x });
    return bindings.length - 1;
  };
  for (const i of reads.inputs) add({ name: `in${i}`, role: 'input', index: i, access: 'read', size: f.inputs[i] === 'vec' ? 'cols' : 'rows*cols' });
  for (const k of reads.outputs) add({ name: `y${k}`, role: 'saved_output', index: k, access: 'read', size: 'rows*cols' });
  for (const k of reads.dys) add({ name: `dy${k}`, role: 'dy', index: k, access: 'read', size: 'rows*cols' });
  const slotBinding = b.slots.map((_, s) => add({ name: `g${s}`, role: 'grad', index: s, access: 'read_write', size: 'rows*cols' }));
  const reduced = new Map<number, number>();
  b.slots.forEach((slot, s) => {
    if (slot.reduce === 'cols') reduced.set(s, add({ name: `gr${s}`, role: 'grad_reduced', index: s, access: 'read_write', size: 'cols' }));
  });

  const roots = b.slots.map((s) => s.expr);
  const order = topo(roots);
  const w = new BodyWriter(order, (e) => {
    if (e.op === 'in') return e.kind === 'vec' ? `in${e.value}[col]` : `in${e.value}[row_off + col]`;
    return e.op === 'out' ? `y${e.value}[row_off + col]` : `dy${e.value}[row_off + col]`;
  });
  const bit = (s: number) => `(1u << ${s}u)`;
  const targets: Target[] = b.slots.map((slot, s) => ({
    expr: slot.expr,
    store: (v) =>
      slot.reduce === 'cols'
        ? [`if ((params.grad_mask & ${bit(s)}) != 0u) {`, `  g${s}[row_off + col] = ${v};`, '}']
        : [
            `if ((params.grad_mask & ${bit(s)}) != 0u) {`,
            `  if ((params.accum_mask & ${bit(s)}) != 0u) {`,
            `    g${s}[row_off + col] = g${s}[row_off + col] + ${v};`,
            '  } else {',
            `    g${s}[row_off + col] = ${v};`,
            '  }',
            '}',
          ],
  }));
  const layout = hasRowsum(roots) ? 'rows' : 'elements';
  if (layout === 'rows') w.rows(targets);
  else w.elements(targets);

  const entryPoints: EntryPoint[] = [
    {
      name: 'main',
      layout,
      workgroups: layout === 'rows' ? 'rows' : 'ceil(rows*cols/256)',
      bindings: bindings.filter((x) => x.role !== 'grad_reduced').map((x) => x.binding),
    },
  ];
  const extra: string[] = [];
  if (reduced.size) {
    extra.push(
      '',
      '// Column sums of the per-row partial gradients of broadcast (vec) inputs: one workgroup per column.',
      '@compute @workgroup_size(256)',
      'fn reduce_cols(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {',
      '  let col = wid.x + wid.y * nwg.x;',
      '  if (col >= params.cols) {',
      '    return;',
      '  }',
    );
    [...reduced.keys()].forEach((s, slot) =>
      extra.push(
        `  if ((params.grad_mask & ${bit(s)}) != 0u) {`,
        `    var acc_g${s}: f32 = 0.0;`,
        `    for (var row: u32 = lid; row < params.rows; row = row + WG) {`,
        `      acc_g${s} = acc_g${s} + g${s}[row * params.cols + col];`,
        '    }',
        `    let sum_g${s} = wg_reduce(acc_g${s}, lid, ${slot}u);`,
        '    if (lid == 0u) {',
        `      if ((params.accum_mask & ${bit(s)}) != 0u) {`,
        `        gr${s}[col] = gr${s}[col] + sum_g${s};`,
        '      } else {',
        `        gr${s}[col] = sum_g${s};`,
        '      }',
        '    }',
        '  }',
      ),
    );
    extra.push('}');
    entryPoints.push({ name: 'reduce_cols', layout: 'cols', workgroups: 'cols', bindings: [0, ...[...reduced.entries()].flatMap(([s, r]) => [slotBinding[s], r])] });
  }
  const doc = [
    `Backward of ${label}. Generated by mcpc (src/compiler/fusion/wgsl.ts); do not edit.`,
    `main: ${layout === 'rows' ? 'one workgroup per row' : 'one invocation per element'}${reduced.size ? '; reduce_cols: one workgroup per column' : ''}. Bindings:`,
    ...bindings.map((x) => `  ${x.binding}: ${x.name} (${x.role}, ${x.size})${x.role === 'grad' ? ` <- inputs ${b.slots[x.index].inputs.join(', ')}${b.slots[x.index].reduce === 'cols' ? ', per-row partials' : ''}` : ''}`),
  ];
  const code = assemble(`mcpc fused kernel: backward`, doc, bindings, w, layout, 'main', extra, Math.max(w.reductions, reduced.size));
  return { code, bindings, entryPoints };
}
