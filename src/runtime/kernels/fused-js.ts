/**
 * A fused_elementwise expression (src/plan/fused.ts) compiled to JavaScript: the forward program and the
 * compiler's generated backward program (for any list of its gradient slots: one function writing them all, so
 * the subexpressions they share are computed once) each become one function of plain loops, so a fused chain
 * is one pass over memory per row reduction level instead of one tfjs op per node.
 *
 * Code shape (per row r; `o` = r·cols):
 *
 *     const k3 = 1e-6;                          // const-class nodes, once
 *     for (r) {
 *       let r7 = 0;                             // row sums accumulated by pass 0
 *       for (c) { const v1 = I0[o + c]; ...; r7 += v5; }
 *       const r8 = 1 / Math.sqrt(r7 / cols + k3);  // per-row values, between passes
 *       for (c) { ...; O0[o + c] = v9; }        // the last pass writes the roots
 *     }
 *
 * A node's stage is the number of row sums on its deepest path; pass p computes the row sums whose argument
 * has stage p, and the last pass the roots. Per-element values a later pass needs again are recomputed
 * there (cheaper than a buffer for the chains the compiler fuses). `vec` inputs are read at column c; a
 * backward slot that is a `vec` input's gradient (`reduce: 'cols'`) accumulates over the rows into [cols].
 * Arithmetic is in f64 and stored as f32.
 *
 * `compileFused` hands out functions that run the same program compiled to WebAssembly SIMD
 * (./fused-wasm.ts: ~10x faster, f32 arithmetic, in place on tfjs-backend-wasm's heap) where WebAssembly
 * SIMD is available, and this JavaScript otherwise or with MCPC_FUSED_WASM=0.
 */
import type { FusedExprAttrs, FusedInputKind, FusedSerialNode, FusedSerialProgram } from '../../plan/fused.js';
import { CONST, ELEM, ROW, isLeaf, programShape, type FusedRoot } from './fused-program.js';
import { emitFused, fusedWasmEnabled, instantiateFused } from './fused-wasm.js';

/** (rows, cols, inputs, saved outputs, upstream gradients, results) */
export type FusedFn = (rows: number, cols: number, ins: Float32Array[], ys: Float32Array[], dys: Float32Array[], outs: Float32Array[]) => void;

export interface CompiledFused {
  inputs: FusedInputKind[];
  /** One entry per forward root. */
  outputs: number[];
  forward: (rows: number, cols: number, ins: Float32Array[], outs: Float32Array[]) => void;
  /** The function computing gradient slot s (compiled on first use). */
  backward(slot: number): FusedFn;
  /**
   * The function computing several gradient slots in one pass (compiled on first use per list): result k is
   * slot `slots[k]`, [rows, cols] or, for a `cols` slot, [cols]. Subexpressions the slots share (a sigmoid,
   * a row's norm) are computed once per element, and the inputs read once.
   */
  backwardSlots(slots: readonly number[]): FusedFn;
  slots: { inputs: number[]; reduce: 'none' | 'cols'; identityOf?: number }[];
  grads: (number | null)[];
  /** The logistic the backward can take from the forward, where the expression has one (keepLogistic). */
  keep?: KeptLogistic;
}

/**
 * σ(x) of an elem input x that both programs compute (a SwiGLU's silu(gate) forward, σ(gate) backward), kept
 * by the forward for the backward: `forward` writes it as one more output (the last; silu(x) becomes x·σ(x)
 * there, as the WebAssembly backward already computes it), and `backwardSlots` takes it as one more elem input
 * (the last) in place of computing exp and a division again. The caller keeps the array between the two.
 */
export interface KeptLogistic {
  forward: (rows: number, cols: number, ins: Float32Array[], outs: Float32Array[]) => void;
  backwardSlots(slots: readonly number[]): FusedFn;
}

/**
 * The programs of KeptLogistic, or null where the forward and the backward share no sigmoid/silu of one elem
 * subexpression (matched by structure: the same ops over the same inputs). Nodes are rewritten in order (node i
 * refers only to nodes before it): that sigmoid becomes the kept value (forward: one sigmoid node, also an extra
 * root; backward: a new `in` leaf, first), that silu the argument times it.
 */
export function keepLogistic(expr: FusedExprAttrs): { forward: FusedSerialProgram; backward: FusedSerialProgram } | null {
  const bw = expr.backward?.program;
  if (!bw) return null;
  // a node's structure as a string (memoised per program)
  const keys = (nodes: readonly FusedSerialNode[]) => {
    const k: string[] = [];
    nodes.forEach(([op, ...a], i) => (k[i] = isLeaf(op) ? `${op}:${a.join(',')}` : `${op}(${a.map((j) => k[j]).join(',')})`));
    return k;
  };
  const [fk, bk] = [keys(expr.forward.nodes), keys(bw.nodes)];
  const fcls = programShape(expr.forward.nodes, expr.inputs, expr.forward.roots.map((node) => ({ node, reduce: 'none' as const }))).cls;
  const logisticArgs = (nodes: readonly FusedSerialNode[], k: string[], elem: (i: number) => boolean) =>
    new Set(nodes.flatMap(([op, a]) => ((op === 'sigmoid' || op === 'silu') && elem(a!) ? [k[a!]!] : [])));
  const inBwd = logisticArgs(bw.nodes, bk, () => true);
  const arg = [...logisticArgs(expr.forward.nodes, fk, (i) => fcls[i] === ELEM)].find((x) => inBwd.has(x));
  if (arg === undefined) return null;
  const n = expr.inputs.length;
  const rewrite = (nodes: readonly FusedSerialNode[], k: string[], first: FusedSerialNode[]) => {
    const out: FusedSerialNode[] = [...first];
    const map: number[] = [];
    let sig = first.length ? 0 : -1;
    nodes.forEach((node, i) => {
      const [op, ...args] = node;
      if ((op === 'sigmoid' || op === 'silu') && k[args[0]!] === arg) {
        const x = map[args[0]!]!;
        if (sig < 0) sig = out.push(['sigmoid', x]) - 1;
        map[i] = op === 'sigmoid' ? sig : out.push(['mul', x, sig]) - 1;
      } else map[i] = out.push(isLeaf(op) ? node : ([op, ...args.map((a) => map[a]!)] as FusedSerialNode)) - 1;
    });
    return { out, map, sig };
  };
  const f = rewrite(expr.forward.nodes, fk, []);
  const b = rewrite(bw.nodes, bk, [['in', n]]);
  return { forward: { nodes: f.out, roots: [...expr.forward.roots.map((r) => f.map[r]!), f.sig] }, backward: { nodes: b.out, roots: bw.roots.map((r) => b.map[r]!) } };
}


const unary: Record<string, (a: string) => string> = {
  neg: (a) => `(-${a})`,
  exp: (a) => `Math.exp(${a})`,
  log: (a) => `Math.log(${a})`,
  sqrt: (a) => `Math.sqrt(${a})`,
  rsqrt: (a) => `(1 / Math.sqrt(${a}))`,
  sigmoid: (a) => `(1 / (1 + Math.exp(-${a})))`,
  silu: (a) => `(${a} / (1 + Math.exp(-${a})))`,
  tanh: (a) => `Math.tanh(${a})`,
};
const binary: Record<string, (a: string, b: string) => string> = {
  add: (a, b) => `(${a} + ${b})`,
  sub: (a, b) => `(${a} - ${b})`,
  mul: (a, b) => `(${a} * ${b})`,
  div: (a, b) => `(${a} / ${b})`,
  max: (a, b) => `(${a} >= ${b} ? ${a} : ${b})`,
  min: (a, b) => `(${a} <= ${b} ? ${a} : ${b})`,
  gt: (a, b) => `(${a} > ${b} ? 1 : 0)`,
  ge: (a, b) => `(${a} >= ${b} ? 1 : 0)`,
  lt: (a, b) => `(${a} < ${b} ? 1 : 0)`,
  le: (a, b) => `(${a} <= ${b} ? 1 : 0)`,
  eq: (a, b) => `(${a} === ${b} ? 1 : 0)`,
};

type Root = FusedRoot;

/** JavaScript source of one function over `nodes` (a serial program) writing `roots` to O0, O1, ... */
export function generate(nodes: readonly FusedSerialNode[], kinds: readonly FusedInputKind[], roots: readonly Root[]): string {
  const { cls, stage, needed, last } = programShape(nodes, kinds, roots);

  const leaf = (i: number): string => {
    const [op, v] = nodes[i]! as [string, number];
    if (op === 'in') return kinds[v] === 'vec' ? `I${v}[c]` : `I${v}[o + c]`;
    if (op === 'out') return `Y${v}[o + c]`;
    if (op === 'dy') return `D${v}[o + c]`;
    if (op === 'const') return Number.isFinite(v) ? `(${String(v)})` : v > 0 ? 'Infinity' : v < 0 ? '(-Infinity)' : 'NaN';
    return 'cols';
  };
  const exprOf = (i: number, ref: (j: number) => string): string => {
    const [op, ...a] = nodes[i]!;
    if (op === 'in' || op === 'out' || op === 'dy' || op === 'const' || op === 'cols') return leaf(i);
    if (op === 'select') return `(${ref(a[0]!)} !== 0 ? ${ref(a[1]!)} : ${ref(a[2]!)})`;
    if (op in unary) return unary[op]!(ref(a[0]!));
    if (op in binary) return binary[op]!(ref(a[0]!), ref(a[1]!));
    throw new Error(`fused expression: no code for '${op}'`);
  };

  const lines: string[] = [];
  const hoisted = new Set<number>();
  // Const-class nodes once, at the top.
  for (let i = 0; i < nodes.length; i++) {
    if (!needed.has(i) || cls[i] !== CONST) continue;
    lines.push(`  const k${i} = ${exprOf(i, (j) => `k${j}`)};`);
    hoisted.add(i);
  }
  const ins = [...new Set(nodes.filter((n) => n[0] === 'in').map((n) => n[1]))];
  const outs = [...new Set(nodes.filter((n) => n[0] === 'out').map((n) => n[1]))];
  const dys = [...new Set(nodes.filter((n) => n[0] === 'dy').map((n) => n[1]))];
  const decl = [...ins.map((k) => `I${k} = I[${k}]`), ...outs.map((k) => `Y${k} = Y[${k}]`), ...dys.map((k) => `D${k} = D[${k}]`), ...roots.map((_, k) => `O${k} = O[${k}]`)];
  if (decl.length) lines.unshift(`  const ${decl.join(', ')};`);
  roots.forEach((r, k) => {
    if (r.reduce === 'cols') lines.push(`  O${k}.fill(0);`);
  });
  lines.push('  for (let r = 0; r < rows; r++) {', '    const o = r * cols;');
  const rowRef = (j: number) => (cls[j] === CONST ? `k${j}` : `r${j}`);
  for (let p = 0; p <= last; p++) {
    // Per-row values of this stage (rowsums finished in the passes before).
    for (let i = 0; i < nodes.length; i++) {
      if (!needed.has(i) || cls[i] !== ROW || nodes[i]![0] === 'rowsum' || stage[i] !== p) continue;
      lines.push(`    const r${i} = ${exprOf(i, rowRef)};`);
    }
    const sums = [...needed].filter((i) => nodes[i]![0] === 'rowsum' && stage[nodes[i]![1]!] === p).sort((a, b) => a - b);
    const writes = p === last ? roots : [];
    if (!sums.length && !writes.length) continue;
    for (const s of sums) lines.push(`    let r${s} = 0;`);
    lines.push('    for (let c = 0; c < cols; c++) {');
    const done = new Set<number>();
    const ref = (j: number): string => {
      if (cls[j] === CONST) return `k${j}`;
      if (cls[j] === ROW) return `r${j}`;
      const [op] = nodes[j]!;
      if (op === 'in' || op === 'out' || op === 'dy') {
        if (!done.has(j)) {
          done.add(j);
          lines.push(`      const v${j} = ${leaf(j)};`);
        }
        return `v${j}`;
      }
      if (!done.has(j)) {
        const e = exprOf(j, ref);
        done.add(j);
        lines.push(`      const v${j} = ${e};`);
      }
      return `v${j}`;
    };
    for (const s of sums) lines.push(`      r${s} += ${ref(nodes[s]![1]!)};`);
    writes.forEach((rt, k) => {
      const v = ref(rt.node);
      lines.push(rt.reduce === 'cols' ? `      O${k}[c] += ${v};` : `      O${k}[o + c] = ${v};`);
    });
    lines.push('    }');
  }
  lines.push('  }');
  return `"use strict";\nreturn function fused(rows, cols, I, Y, D, O) {\n${lines.join('\n')}\n};`;
}

const cache = new Map<string, CompiledFused>();

/** The JavaScript function of a program. */
export function compileFusedJs(nodes: readonly FusedSerialNode[], kinds: readonly FusedInputKind[], roots: readonly Root[]): FusedFn {
  return new Function(generate(nodes, kinds, roots))() as FusedFn;
}

/**
 * The program as a FusedFn that runs its WebAssembly SIMD version (./fused-wasm.ts, built on first use)
 * while that path is on (WebAssembly SIMD available, MCPC_FUSED_WASM not 0), its JavaScript one otherwise.
 */
function compileProgram(nodes: readonly FusedSerialNode[], kinds: readonly FusedInputKind[], roots: readonly Root[]): FusedFn {
  const js = compileFusedJs(nodes, kinds, roots);
  let wasm: FusedFn | undefined;
  return (rows, cols, ins, ys, dys, outs) => {
    if (!fusedWasmEnabled()) return js(rows, cols, ins, ys, dys, outs);
    wasm ??= instantiateFused(emitFused(nodes, kinds, roots));
    return wasm(rows, cols, ins, ys, dys, outs);
  };
}

/** A program whose roots are all elementwise outputs (a forward). */
const elementwise = (program: FusedSerialProgram, kinds: readonly FusedInputKind[]): FusedFn =>
  compileProgram(program.nodes, kinds, program.roots.map((node) => ({ node, reduce: 'none' as const })));

/**
 * A backward program's gradient slots (`slots[i]`: root i's reduction) as one FusedFn per set of slots asked
 * for together, compiled on first use.
 */
function slotsCompiler(program: FusedSerialProgram, kinds: readonly FusedInputKind[], slots: readonly { reduce: Root['reduce'] }[]): (asked: readonly number[]) => FusedFn {
  const memo = new Map<string, FusedFn>();
  return (asked) => {
    const key = asked.join(',');
    let f = memo.get(key);
    if (!f) {
      if (!asked.length) throw new Error('fused backward: no slots');
      const roots = asked.map((slot): Root => {
        const s = slots[slot];
        if (!s) throw new Error(`fused backward: no slot ${slot}`);
        return { node: program.roots[slot]!, reduce: s.reduce };
      });
      f = compileProgram(program.nodes, kinds, roots);
      memo.set(key, f);
    }
    return f;
  };
}

/**
 * Compile a fused expression that carries its generated backward (the plan's kernel table copy:
 * `plan.kernels[].attrs.expr`). Compiled programs are cached by the expression's text.
 */
export function compileFused(expr: FusedExprAttrs): CompiledFused {
  if (!expr.backward) throw new Error('the fused expression has no generated backward');
  const key = JSON.stringify(expr);
  const hit = cache.get(key);
  if (hit) return hit;
  const bw = expr.backward;
  const fwd = elementwise(expr.forward, expr.inputs);
  const compiled: CompiledFused = {
    inputs: [...expr.inputs],
    outputs: [...expr.forward.roots],
    forward: (rows, cols, ins, outs) => fwd(rows, cols, ins, [], [], outs),
    backward: (slot) => compiled.backwardSlots([slot]),
    backwardSlots: slotsCompiler(bw.program, expr.inputs, bw.slots),
    slots: bw.slots.map((s) => ({ ...s })),
    grads: [...bw.grads],
  };
  const kept = keepLogistic(expr);
  if (kept) {
    let kf: FusedFn | undefined;
    compiled.keep = {
      forward: (rows, cols, ins, outs) => (kf ??= elementwise(kept.forward, expr.inputs))(rows, cols, ins, [], [], outs),
      backwardSlots: slotsCompiler(kept.backward, [...expr.inputs, 'elem'], bw.slots),
    };
  }
  cache.set(key, compiled);
  return compiled;
}
