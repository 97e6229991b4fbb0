/**
 * fuse-elementwise: chains of elementwise ops become one `fused_elementwise` node each, whose kernel is
 * generated WGSL (forward and backward) derived from one expression (src/compiler/fusion).
 *
 * Fusible ops: `add` (any arity), `rmsnorm`, `swiglu`, over [rows, cols] activations (a [cols] operand, such
 * as a norm weight, is broadcast over the rows). Groups grow greedily in graph order: a node joins the group
 * of a producer of one of its inputs when both have the same [rows, cols] shape, when the contracted graph
 * stays acyclic, and when the generated forward and backward each bind at most MAX_STORAGE_BUFFERS storage
 * buffers (WebGPU's default limit, so the kernels run on every adapter). On the expanded MedCare graph this
 * gives: each site's sum of base and adapter outputs as one n-ary add; the attention output's sum, the
 * residual add and the following RMSNorm as one kernel with two outputs (the residual stream and the norm);
 * the gate site's sum with SwiGLU (the up site's too where the buffers allow: stage 2, not stage 1); the down
 * site's sum with the residual add and the next layer's RMSNorm; the first RMSNorm alone (and in stage 1 the
 * final one: with the last down sum its backward would bind 9 buffers).
 *
 * The LoRA scale stays in `lora_up` (a free GEMM epilogue, both ways): folding it into the sum would make
 * the scaled term's gradient a second buffer (s·g) instead of the one gradient every term of a sum shares.
 *
 * Contract: the graph computes the same values (up to f32 rounding); every value consumed outside a group
 * (or the loss) is still produced, by the fused node; each fused node has attrs { kernel, expr, flops,
 * flopsPerRow, backwardFlopsPerRow, rows, cols, fusedOps, fusedNodes (the original ops: the reference),
 * inputs, outputs } and its kernel (id `fused.<ops>.<hash of the expression>`, shared by equal
 * expressions) is in `ir.kernels` with its WGSL and reference `ref.fused:<ops>`. Not run at -O0.
 */
import { createHash } from 'node:crypto';
import { stageTokens } from '../../ir/cost.js';
import { GraphEditor } from '../../ir/edit.js';
import type { Dim, Graph, IR, Node, StageIR } from '../../ir/types.js';
import { dimValue } from '../../ir/types.js';
import {
  backwardBindings,
  countFlops,
  deriveBackward,
  ExprBuilder,
  format,
  forwardBindings,
  naryAddExpr,
  rmsnormExpr,
  serialise,
  swigluExpr,
  type Backward,
  type Expr,
  type FusedExpr,
  type InputKind,
  type SerialProgram,
} from '../../fusion/expr.js';
import { generateWgsl, requiredLimits, WORKGROUP_SIZE } from '../../fusion/wgsl.js';
import type { Pass } from '../pass.js';

/** Storage buffers one generated module (forward or backward) may declare: WebGPU's default `maxStorageBuffersPerShaderStage`. */
export const MAX_STORAGE_BUFFERS = 8;

const FUSIBLE = new Set<Node['op']>(['add', 'rmsnorm', 'swiglu']);

interface Shape {
  rows: Dim;
  cols: number;
}

/** A fused group's expression, with the values it reads and writes. */
export interface BuiltGroup {
  members: Node[];
  inputs: string[];
  kinds: InputKind[];
  outputs: string[];
  fused: FusedExpr;
  backward: Backward;
  /** The shared expression record (the same for every group of this structure). */
  ge: GroupExpr;
}

export const fuseElementwise: Pass = {
  name: 'fuse-elementwise',
  description: 'fuse elementwise chains (adapter sums, residual adds, RMSNorm, SwiGLU) into generated WGSL kernels with a generated backward',
  run(ir) {
    let changes = 0;
    const notes: string[] = [];
    const byHash = new Map<string, string>();
    const cache = new Map<string, GroupExpr>();
    for (const st of ir.stages) {
      const res = fuseStage(ir, st, byHash, cache);
      changes += res.fusedOps;
      if (res.fusedOps) notes.push(`${st.name}: ${res.fusedOps} elementwise ops -> ${res.kernels} fused kernels (${res.patterns})`);
    }
    notes.push(`${byHash.size} distinct fused kernels generated`);
    return { changes, notes };
  },
};

function shapeOf(g: Graph, v: string): Dim[] | undefined {
  const val = g.values.get(v);
  return val && val.dtype === 'f32' ? val.shape : undefined;
}

/** The [rows, cols] a fusible node works on, or undefined when it cannot be fused. */
function fusibleShape(n: Node, g: Graph): Shape | undefined {
  if (!FUSIBLE.has(n.op) || n.outputs.length !== 1 || n.inputs.length === 0) return undefined;
  const out = shapeOf(g, n.outputs[0]);
  if (!out || out.length !== 2 || typeof out[1] !== 'number') return undefined;
  const [rows, cols] = out as [Dim, number];
  const full = (v: string) => {
    const s = shapeOf(g, v);
    return !!s && s.length === 2 && s[0] === rows && s[1] === cols;
  };
  const vec = (v: string) => {
    const s = shapeOf(g, v);
    return !!s && s.length === 1 && s[0] === cols;
  };
  const ok =
    n.op === 'add'
      ? n.inputs.every((v) => full(v) || vec(v)) && n.inputs.some(full)
      : n.op === 'rmsnorm'
        ? full(n.inputs[0]) && n.inputs.length <= 2 && (n.inputs.length === 1 || vec(n.inputs[1])) && typeof n.attrs.eps === 'number'
        : n.inputs.length === 2 && full(n.inputs[0]) && full(n.inputs[1]);
  return ok ? { rows, cols } : undefined;
}

/** The expression and backward of a group, shared by every group of the same structure. */
interface GroupExpr {
  kinds: InputKind[];
  fused: FusedExpr;
  backward: Backward;
  fits: boolean;
  /** Filled when the first group of this structure becomes a fused node. */
  meta?: { expr: { inputs: InputKind[]; forward: SerialProgram }; hash: string; forward: { perElement: number; perRow: number }; backward: { perElement: number; perRow: number } };
}

/**
 * The structure of a group (members in graph order) with its values numbered locally, and the graph values
 * it reads and writes. Groups with the same signature have the same expression (e.g. the same sublayer of
 * every decoder layer), so it is built once.
 */
function signature(members: Node[], g: Graph, outside: (v: string) => boolean): { sig: string; inputs: string[]; kinds: InputKind[]; outputs: string[] } {
  const local = new Map<string, string>();
  const inputs: string[] = [];
  const kinds: InputKind[] = [];
  const parts: string[] = [];
  members.forEach((m, mi) => {
    const args = m.inputs.map((v) => {
      let l = local.get(v);
      if (l === undefined) {
        const kind: InputKind = shapeOf(g, v)!.length === 1 ? 'vec' : 'elem';
        l = `in${inputs.length}:${kind}`;
        inputs.push(v);
        kinds.push(kind);
        local.set(v, l);
      }
      return l;
    });
    parts.push(`${m.op}(${args.join(',')})${m.op === 'rmsnorm' ? `eps=${m.attrs.eps}` : ''}`);
    m.outputs.forEach((o, oi) => local.set(o, `v${mi}.${oi}`));
  });
  const outputs = members.flatMap((m) => m.outputs).filter(outside);
  parts.push(`->${outputs.map((o) => local.get(o)).join(',')}`);
  return { sig: parts.join(';'), inputs, kinds, outputs };
}

/** Build a group's expression and backward (members in graph order). */
export function buildGroup(members: Node[], g: Graph, outside: (v: string) => boolean, cache = new Map<string, GroupExpr>()): BuiltGroup & { fits: boolean } {
  const { sig, inputs, kinds, outputs } = signature(members, g, outside);
  let ge = cache.get(sig);
  if (!ge) {
    const E = new ExprBuilder();
    const env = new Map<string, Expr>(inputs.map((v, i) => [v, E.input(i, kinds[i])]));
    for (const m of members) {
      const get = (v: string) => env.get(v)!;
      let y: Expr;
      if (m.op === 'add') y = naryAddExpr(E, m.inputs.map(get));
      else if (m.op === 'rmsnorm') y = rmsnormExpr(E, get(m.inputs[0]), m.inputs[1] !== undefined ? get(m.inputs[1]) : undefined, m.attrs.eps as number);
      else y = swigluExpr(E, get(m.inputs[0]), get(m.inputs[1]));
      env.set(m.outputs[0], y);
    }
    const fused: FusedExpr = { inputs: kinds, outputs: outputs.map((v) => env.get(v)!) };
    const backward = deriveBackward(fused, E);
    const fits = forwardBindings(fused) <= MAX_STORAGE_BUFFERS && backwardBindings(fused, backward) <= MAX_STORAGE_BUFFERS;
    ge = { kinds, fused, backward, fits };
    cache.set(sig, ge);
  }
  return { members, inputs, kinds, outputs, fused: ge.fused, backward: ge.backward, ge, fits: ge.fits };
}

/** `add, add, rmsnorm` -> `add2_rmsnorm`. */
function label(ops: string[]): string {
  const counts = new Map<string, number>();
  for (const o of ops) counts.set(o, (counts.get(o) ?? 0) + 1);
  return [...counts].map(([o, c]) => (c > 1 ? `${o}${c}` : o)).join('_');
}

function fuseStage(ir: IR, st: StageIR, byHash: Map<string, string>, cache: Map<string, GroupExpr>): { fusedOps: number; kernels: number; patterns: string } {
  const g = st.graph;
  const nodes = g.nodes;
  const pos = new Map(nodes.map((n, i) => [n, i]));
  const producer = new Map<string, Node>();
  const consumers = new Map<string, Node[]>();
  for (const n of nodes) {
    for (const o of n.outputs) producer.set(o, n);
    for (const i of new Set(n.inputs)) {
      const list = consumers.get(i);
      if (list) list.push(n);
      else consumers.set(i, [n]);
    }
  }
  const shape = new Map<Node, Shape>();
  for (const n of nodes) {
    const s = fusibleShape(n, g);
    if (s) shape.set(n, s);
  }

  // Groups: each fusible node starts alone; groupOf maps a member to its group's member set.
  const groupOf = new Map<Node, Set<Node>>();
  const sorted = (s: Set<Node>) => [...s].sort((a, b) => pos.get(a)! - pos.get(b)!);
  const outsideOf = (s: Set<Node>) => (v: string) => v === g.loss || !(consumers.get(v) ?? []).length || consumers.get(v)!.some((c) => !s.has(c));

  /** Whether contracting `s` (with every other current group contracted too) keeps the graph acyclic. */
  const acyclic = (s: Set<Node>): boolean => {
    const seen = new Set<Node>();
    const stack: Node[] = [];
    for (const m of s) for (const o of m.outputs) for (const c of consumers.get(o) ?? []) if (!s.has(c)) stack.push(c);
    while (stack.length) {
      const n = stack.pop()!;
      if (s.has(n)) return false;
      if (seen.has(n)) continue;
      const grp = groupOf.get(n);
      const unit: Iterable<Node> = grp && grp !== s ? grp : [n];
      for (const u of unit) seen.add(u);
      for (const u of unit) for (const o of u.outputs) for (const c of consumers.get(o) ?? []) if (!seen.has(c) || s.has(c)) stack.push(c);
    }
    return true;
  };

  const built = new Map<Set<Node>, BuiltGroup>();
  for (const n of nodes) {
    const sh = shape.get(n);
    if (!sh) continue;
    let grp = new Set([n]);
    const alone = buildGroup([n], g, outsideOf(grp), cache);
    if (!alone.fits) continue;
    groupOf.set(n, grp);
    built.set(grp, alone);
    for (const v of n.inputs) {
      const p = producer.get(v);
      const other = p && groupOf.get(p);
      if (!p || !other || other === grp) continue;
      const ps = shape.get(p)!;
      if (ps.rows !== sh.rows || ps.cols !== sh.cols) continue;
      const merged = new Set([...other, ...grp]);
      if (!acyclic(merged)) continue;
      const b = buildGroup(sorted(merged), g, outsideOf(merged), cache);
      if (!b.fits) continue;
      for (const m of merged) groupOf.set(m, merged);
      built.delete(grp);
      built.delete(other);
      built.set(merged, b);
      grp = merged;
    }
  }

  // Materialise: one fused node per group, then a stable topological order.
  const ed = new GraphEditor(g);
  const T = stageTokens(st);
  const fusedNodes: Node[] = [];
  const key = new Map<Node, number>();
  const patterns = new Map<string, number>();
  let fusedOps = 0;
  for (const [set, b] of [...built].sort((x, y) => pos.get(sorted(x[0])[0])! - pos.get(sorted(y[0])[0])!)) {
    const members = sorted(set);
    const node = makeFusedNode(ir, ed, b, members, shape.get(members[0])!, T, byHash);
    fusedNodes.push(node);
    key.set(node, pos.get(members[members.length - 1])!);
    fusedOps += members.length;
    const lab = label(members.map((m) => m.op));
    patterns.set(lab, (patterns.get(lab) ?? 0) + 1);
  }
  const fusedMembers = new Set([...built.keys()].flatMap((s) => [...s]));
  const kept = nodes.filter((n) => !fusedMembers.has(n));
  for (const n of kept) key.set(n, pos.get(n)!);
  g.nodes = stableTopo([...kept, ...fusedNodes], key);
  const live = new Set(g.nodes.flatMap((n) => [...n.inputs, ...n.outputs]));
  for (const m of fusedMembers) for (const o of m.outputs) if (!live.has(o) && o !== g.loss) g.values.delete(o);
  const patternText = [...patterns].map(([p, c]) => `${c}x ${p}`).join(', ');
  return { fusedOps, kernels: fusedNodes.length, patterns: patternText };
}

function makeFusedNode(ir: IR, ed: GraphEditor, b: BuiltGroup, members: Node[], sh: Shape, T: number, byHash: Map<string, string>): Node {
  const ops = members.map((m) => m.op);
  if (!b.ge.meta) {
    const expr = { inputs: b.kinds, forward: serialise(b.fused.outputs) };
    const hash = createHash('sha256').update(JSON.stringify(expr)).digest('hex').slice(0, 10);
    b.ge.meta = { expr, hash, forward: countFlops(b.fused.outputs), backward: countFlops(b.backward.slots.map((s) => s.expr)) };
  }
  const { expr, hash, forward: fl, backward: bfl } = b.ge.meta;
  let kernel = byHash.get(hash);
  const flopsPerRow = fl.perElement * sh.cols + fl.perRow;
  const backwardFlopsPerRow = bfl.perElement * sh.cols + bfl.perRow + b.backward.slots.filter((s) => s.reduce === 'cols').length * sh.cols;
  if (!kernel) {
    kernel = `fused.${label(ops)}.${hash}`;
    byHash.set(hash, kernel);
    const lab = `${ops.join(' + ')} (${kernel})`;
    const gen = generateWgsl(b.fused, b.backward, lab);
    const bwdProgram = serialise(b.backward.slots.map((s) => s.expr));
    ir.kernels.set(kernel, {
      id: kernel,
      op: 'fused_elementwise',
      reference: `ref.fused:${ops.join('+')}`,
      wgsl: { forward: gen.forward.code, backward: gen.backward.code },
      attrs: {
        fusedOps: ops,
        expr: {
          ...expr,
          backward: {
            program: bwdProgram,
            slots: b.backward.slots.map((s) => {
              const identity = s.expr.op === 'dy' ? { identityOf: s.expr.value } : {};
              return { inputs: s.inputs, reduce: s.reduce, ...identity };
            }),
            grads: b.backward.grads,
          },
        },
        text: b.fused.outputs.map((y) => format(y)),
        workgroupSize: WORKGROUP_SIZE,
        bindings: { forward: gen.forward.bindings, backward: gen.backward.bindings },
        entryPoints: { forward: gen.forward.entryPoints, backward: gen.backward.entryPoints },
        requiredLimits: requiredLimits(gen),
        flopsPerElement: fl.perElement,
        flopsPerRowScalar: fl.perRow,
      },
    });
  }
  const layers = members.map((m) => m.layer).filter((l): l is number => l !== undefined);
  const sites = new Set(members.map((m) => m.site));
  const extra: Partial<Node> = {
    ...(layers.length ? { layer: Math.min(...layers) } : {}),
    ...(sites.size === 1 && members[0].site ? { site: members[0].site } : {}),
  };
  const producedBy = new Map(members.flatMap((m) => m.outputs.map((o) => [o, m.op] as const)));
  const sideOutput = members.some((m) => m.attrs.sideOutput);
  return ed.node(
    'fused_elementwise',
    b.inputs,
    b.outputs,
    {
      kernel,
      expr,
      flops: flopsPerRow * dimValue(sh.rows, T),
      flopsPerRow,
      backwardFlopsPerRow,
      rows: sh.rows,
      cols: sh.cols,
      fusedOps: ops,
      fusedNodes: members.map((m) => ({ id: m.id, op: m.op, inputs: m.inputs, outputs: m.outputs, attrs: m.attrs })),
      inputs: b.inputs.map((v, i) => ({ value: v, kind: b.kinds[i] })),
      outputs: b.outputs.map((v) => ({ value: v, op: producedBy.get(v) })),
      ...(sideOutput ? { sideOutput: true } : {}),
    },
    extra,
  );
}

/** Kahn's algorithm, always taking the ready node with the smallest key (its place in the old order). */
function stableTopo(nodes: Node[], key: Map<Node, number>): Node[] {
  const producer = new Map<string, Node>();
  for (const n of nodes) for (const o of n.outputs) producer.set(o, n);
  const waiting = new Map<Node, number>();
  const dependents = new Map<Node, Node[]>();
  for (const n of nodes) {
    const deps = new Set(n.inputs.map((i) => producer.get(i)).filter((p): p is Node => !!p && p !== n));
    waiting.set(n, deps.size);
    for (const d of deps) dependents.set(d, [...(dependents.get(d) ?? []), n]);
  }
  const ready = nodes.filter((n) => waiting.get(n) === 0);
  const out: Node[] = [];
  while (ready.length) {
    let best = 0;
    for (let i = 1; i < ready.length; i++) if (key.get(ready[i])! < key.get(ready[best])!) best = i;
    const n = ready.splice(best, 1)[0];
    out.push(n);
    for (const d of dependents.get(n) ?? []) {
      const w = waiting.get(d)! - 1;
      waiting.set(d, w);
      if (w === 0) ready.push(d);
    }
  }
  if (out.length !== nodes.length) throw new Error('fuse-elementwise: the fused graph has a cycle');
  return out;
}
