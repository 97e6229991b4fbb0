/**
 * plan-memory: liveness of every activation over the training step, buffer reuse, activation recomputation
 * and the micro-batch under a memory budget; the stage's peak-memory estimate.
 *
 * The schedule of one micro-batch is the forward, node by node in graph order (steps 0 .. N-1), then the
 * backward in reverse graph order, one step per node that has a gradient to compute (steps N .. N+B-1),
 * exactly the backward list the emitter writes. A node has a gradient to compute when one of its inputs is
 * in `gradValues` (downstream of a trainable tensor).
 *
 * Lifetimes (all bytes are f32/i32: 4 per element, as the runtime stores every tensor; `precision` does
 * not change them yet):
 *  - an activation lives from the forward step of its producer to its last forward read, and further to
 *    the backward step of every consumer whose backward reads it (`savedForBackward`: a bilinear op such as
 *    a GEMM reads an operand only when another operand needs a gradient; `add`, `loss_sum` and `rope` read
 *    nothing; every other op reads its inputs, and ops whose backward uses their result (softmax-like:
 *    attention, router, top-k gate, and any op this pass does not know) their outputs too);
 *  - an input (tokens, labels, mask) lives from step 0 to its last read;
 *  - the gradient of an activation in `gradValues` (`grad:<id>`) lives from the backward step of its first
 *    consumer in backward order (where accumulation starts) to the backward step of its producer.
 *  - With recompute, a value produced inside decoder layer l and read only inside it is freed after its last
 *    forward read; the backward re-runs layer l's forward at the layer's first backward step R_l, and a value
 *    the backward reads lives again from R_l to its last backward read. Layer inputs (the checkpoints) live
 *    at least until R_l. The re-run nodes and their forward FLOPs are recorded in `MemoryPlan.recomputed`
 *    (the emitter adds them to the step's FLOPs and dispatches).
 *
 * Buffer reuse: lifetimes are coloured greedily in order of start (larger first on ties); a lifetime takes a
 * released buffer of the best-fitting size (at least its size and at most twice it; the most recently
 * released of that size), else a new buffer. A buffer is live over the hull of its lifetimes; `spans` lists
 * each lifetime, never two overlapping in one buffer. Peak = parameters (plus folded constants and the fused
 * optimizer's padding) + gradients + optimizer moments + the maximum over steps of the bytes of the buffers
 * live at that step.
 *
 * Memory budget (`memory` in the stage, else `memory:` in mcpc.yaml): the largest micro-batch that divides
 * `batch` and fits; if micro-batch 1 does not fit, recompute is turned on and the largest micro-batch that
 * fits with it is taken; if none does, micro-batch 1 with recompute and a note that it does not fit.
 * Without a budget the stage's micro_batch and recompute settings are kept. `recompute true` in the stage is
 * always honoured. The choice is written to `st.settings.microBatch` / `st.settings.recompute` (a new
 * settings object) and the plan to `st.memory`. Recomputing and re-chunking the batch keep the trained
 * result identical (same gradient sum over the same batch).
 * changes = buffers saved by reuse, plus 1 per stage whose micro-batch or recompute setting changed.
 */
import { fmtBytes } from '../../../plan/units.js';
import { forwardFlops, gradValues } from '../../ir/cost.js';
import { paramBytes } from '../../ir/memory.js';
import type { Buffer, Graph, IR, MemoryPlan, Node, StageIR } from '../../ir/types.js';
import { numel } from '../../ir/types.js';
import type { Pass } from '../pass.js';

export interface Lifetime {
  /** Value id; `grad:<id>` for an activation's gradient. A recomputed value has a second lifetime. */
  value: string;
  bytes: number;
  start: number;
  end: number;
}

export interface StageSchedule {
  /** Forward steps: node i runs at step i. */
  forward: Node[];
  /** Backward steps in execution order: backward[k] runs at step forward.length + k. */
  backward: Node[];
  steps: number;
  need: Set<string>;
}

export function stageSchedule(ir: IR, st: StageIR): StageSchedule {
  const need = gradValues(ir, st);
  const forward = st.graph.nodes;
  const backward = [...forward].reverse().filter((n) => n.inputs.some((i) => need.has(i)));
  return { forward, backward, steps: forward.length + backward.length, need };
}

const readsNothing = new Set(['add', 'loss_sum', 'rope']);
const bilinear = new Set(['linear', 'lora_down', 'lora_up', 'lora_merge', 'expert_down', 'expert_up', 'concat_linear', 'moe_down_batched', 'gate_combine']);
const inputsOnly = new Set(['rmsnorm', 'swiglu', 'embedding', 'lm_head_xent', 'ortho_penalty', 'ortho_penalty_batched', 'load_balance']);

/** The values (of any kind) the backward step of `n` reads, given the values that need gradients. */
export function savedForBackward(n: Node, need: Set<string>, kernels?: IR['kernels']): string[] {
  if (!n.inputs.some((i) => need.has(i)) || readsNothing.has(n.op)) return [];
  if (bilinear.has(n.op)) return n.inputs.filter((_, i) => n.inputs.some((w, j) => j !== i && need.has(w)));
  // moe_down_routed(x, gates, A_e): the gates (the routing mask) always; x for dA, A_e for dx.
  if (n.op === 'moe_down_routed') {
    const [x, gates, a] = n.inputs;
    return [gates, ...(need.has(a) ? [x] : []), ...(need.has(x) ? [a] : [])];
  }
  if (inputsOnly.has(n.op)) return [...n.inputs];
  if (n.op === 'fused_elementwise') {
    const leaves = fusedBackwardLeaves(kernels?.get(String(n.attrs.kernel))?.attrs);
    if (leaves) return [...[...leaves.in].map((i) => n.inputs[i]), ...[...leaves.out].map((o) => n.outputs[o])].filter((v) => v !== undefined);
  }
  return [...n.inputs, ...n.outputs];
}

/**
 * The forward inputs (`in` leaves) and saved outputs (`out` leaves) a generated elementwise kernel's backward
 * program reads (the kernel table's `attrs.expr.backward.program`: nodes `[op, value | arg indices...]`).
 */
function fusedBackwardLeaves(attrs: Record<string, unknown> | undefined): { in: Set<number>; out: Set<number> } | undefined {
  const program = (attrs?.expr as { backward?: { program?: { nodes?: unknown } } } | undefined)?.backward?.program;
  if (!program || !Array.isArray(program.nodes)) return undefined;
  const res = { in: new Set<number>(), out: new Set<number>() };
  for (const node of program.nodes as unknown[]) {
    if (!Array.isArray(node) || typeof node[1] !== 'number') continue;
    if (node[0] === 'in') res.in.add(node[1]);
    else if (node[0] === 'out') res.out.add(node[1]);
  }
  return res;
}

const BYTES = 4;

/** Every lifetime of one micro-batch of `tokens` tokens, and what recompute re-runs. */
export function stageLifetimes(ir: IR, st: StageIR, tokens: number, recompute: boolean): { lifetimes: Lifetime[]; steps: number; recomputed: { nodes: number; flops: number } } {
  const g = st.graph;
  const sch = stageSchedule(ir, st);
  const N = sch.forward.length;
  const fwd = new Map(sch.forward.map((n, i) => [n, i]));
  const bwd = new Map(sch.backward.map((n, k) => [n, N + k]));
  const tracked = (v: string) => {
    const k = g.values.get(v)?.kind;
    return k === 'activation' || k === 'input';
  };
  const bytesOf = (v: string) => numel(g.values.get(v)!.shape, tokens) * BYTES;
  const producer = new Map<string, Node>();
  const consumers = new Map<string, Node[]>();
  for (const n of sch.forward) {
    for (const o of n.outputs) producer.set(o, n);
    for (const i of n.inputs) if (!consumers.get(i)?.includes(n)) consumers.set(i, [...(consumers.get(i) ?? []), n]);
  }

  // Forward lifetimes, then backward reads.
  const start = new Map<string, number>();
  const fwdEnd = new Map<string, number>();
  const bwdEnd = new Map<string, number>();
  for (const v of g.values.values()) if (v.kind === 'input') (start.set(v.id, 0), fwdEnd.set(v.id, 0));
  for (const n of sch.forward) {
    const s = fwd.get(n)!;
    for (const o of n.outputs) (start.set(o, s), fwdEnd.set(o, s));
    for (const i of n.inputs) if (tracked(i)) fwdEnd.set(i, Math.max(fwdEnd.get(i) ?? 0, s));
  }
  for (const n of sch.backward) {
    const s = bwd.get(n)!;
    for (const v of savedForBackward(n, sch.need, ir.kernels)) if (tracked(v)) bwdEnd.set(v, Math.max(bwdEnd.get(v) ?? 0, s));
  }

  // Recompute: values internal to a decoder layer drop their backward extension and come back at R_l.
  const recomputeStart = new Map<number, number>();
  let recomputed = { nodes: 0, flops: 0 };
  const internalLayer = new Map<string, number>();
  if (recompute) {
    for (const n of sch.backward) if (n.layer !== undefined && !recomputeStart.has(n.layer)) recomputeStart.set(n.layer, bwd.get(n)!);
    for (const [v, p] of producer) {
      if (p.layer === undefined || !recomputeStart.has(p.layer)) continue;
      if ((consumers.get(v) ?? []).every((c) => c.layer === p.layer) && v !== g.loss) internalLayer.set(v, p.layer);
    }
    for (const n of sch.forward) {
      if (n.layer === undefined || !recomputeStart.has(n.layer)) continue;
      recomputed.nodes++;
      recomputed.flops += forwardFlops(n, g, tokens);
      // The layer's inputs from outside are the checkpoints the re-run starts from.
      for (const i of n.inputs) {
        const p = producer.get(i);
        if (tracked(i) && (p === undefined || p.layer !== n.layer)) bwdEnd.set(i, Math.max(bwdEnd.get(i) ?? 0, recomputeStart.get(n.layer)!));
      }
    }
  } else recomputed = { nodes: 0, flops: 0 };

  const lifetimes: Lifetime[] = [];
  for (const v of g.values.values()) {
    if (!start.has(v.id)) continue;
    const bytes = bytesOf(v.id);
    const s = start.get(v.id)!;
    const fe = fwdEnd.get(v.id)!;
    const be = bwdEnd.get(v.id);
    const layer = internalLayer.get(v.id);
    if (layer !== undefined) {
      lifetimes.push({ value: v.id, bytes, start: s, end: fe });
      if (be !== undefined) lifetimes.push({ value: v.id, bytes, start: recomputeStart.get(layer)!, end: be });
    } else lifetimes.push({ value: v.id, bytes, start: s, end: Math.max(fe, be ?? 0) });
  }
  // Gradients of activations.
  for (const v of g.values.values()) {
    if (v.kind !== 'activation' || !sch.need.has(v.id)) continue;
    const p = producer.get(v.id);
    const end = p && bwd.get(p);
    if (end === undefined) continue;
    const firstUse = Math.min(...(consumers.get(v.id) ?? []).map((c) => bwd.get(c) ?? Infinity), end);
    lifetimes.push({ value: `grad:${v.id}`, bytes: bytesOf(v.id), start: firstUse, end });
  }
  return { lifetimes, steps: sch.steps, recomputed };
}

/** Tiny binary min-heap keyed by a number. */
class Heap<T> {
  private a: { k: number; v: T }[] = [];
  get size(): number {
    return this.a.length;
  }
  peek(): number {
    return this.a[0].k;
  }
  push(k: number, v: T): void {
    const a = this.a;
    a.push({ k, v });
    for (let i = a.length - 1; i > 0; ) {
      const p = (i - 1) >> 1;
      if (a[p].k <= a[i].k) break;
      [a[p], a[i]] = [a[i], a[p]];
      i = p;
    }
  }
  pop(): T {
    const a = this.a;
    const top = a[0];
    const last = a.pop()!;
    if (a.length) {
      a[0] = last;
      for (let i = 0; ; ) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < a.length && a[l].k < a[m].k) m = l;
        if (r < a.length && a[r].k < a[m].k) m = r;
        if (m === i) break;
        [a[m], a[i]] = [a[i], a[m]];
        i = m;
      }
    }
    return top.v;
  }
}

/** Assign lifetimes to buffers. Without reuse every lifetime gets its own buffer. Deterministic. */
export function assignBuffers(lts: Lifetime[], reuse: boolean): Buffer[] {
  const order = lts.map((l, i) => ({ l, i })).sort((a, b) => a.l.start - b.l.start || b.l.bytes - a.l.bytes || a.i - b.i);
  const buffers: Buffer[] = [];
  if (!reuse) {
    for (const { l } of order) buffers.push({ id: `b${buffers.length}`, bytes: l.bytes, values: [l.value], live: [l.start, l.end], spans: [[l.start, l.end]] });
    return buffers;
  }
  const busy = new Heap<Buffer>();
  const free = new Map<number, Buffer[]>(); // by size; each list in release order (last = most recently released)
  const sizes: number[] = []; // sorted distinct sizes with a free list
  const addSize = (s: number) => {
    let lo = 0;
    let hi = sizes.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (sizes[mid] < s) lo = mid + 1;
      else hi = mid;
    }
    if (sizes[lo] !== s) sizes.splice(lo, 0, s);
  };
  for (const { l } of order) {
    while (busy.size && busy.peek() < l.start) {
      const b = busy.pop();
      if (!free.has(b.bytes)) (free.set(b.bytes, []), addSize(b.bytes));
      free.get(b.bytes)!.push(b);
    }
    let lo = 0;
    let hi = sizes.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (sizes[mid] < l.bytes) lo = mid + 1;
      else hi = mid;
    }
    let b: Buffer | undefined;
    for (let i = lo; i < sizes.length && sizes[i] <= 2 * l.bytes; i++) {
      const list = free.get(sizes[i])!;
      if (list.length) {
        b = list.pop()!;
        break;
      }
    }
    if (b) {
      b.values.push(l.value);
      b.spans!.push([l.start, l.end]);
      b.live = [b.live[0], l.end];
    } else {
      b = { id: `b${buffers.length}`, bytes: l.bytes, values: [l.value], live: [l.start, l.end], spans: [[l.start, l.end]] };
      buffers.push(b);
    }
    busy.push(l.end, b);
  }
  return buffers;
}

/** Maximum over steps of the bytes of the intervals live at that step, and the first step reaching it. */
export function maxLive(intervals: { bytes: number; live: [number, number] }[], steps: number): { bytes: number; step: number } {
  const diff = new Array<number>(steps + 2).fill(0);
  for (const x of intervals) {
    diff[x.live[0]] += x.bytes;
    diff[x.live[1] + 1] -= x.bytes;
  }
  let cur = 0;
  let best = { bytes: 0, step: 0 };
  for (let s = 0; s <= steps; s++) {
    cur += diff[s];
    if (cur > best.bytes) best = { bytes: cur, step: s };
  }
  return best;
}


/** Parameter, gradient and optimizer-moment bytes, with folded constants and the fused layout's padding. */
export function stateBytes(ir: IR, st: StageIR): { params: number; grads: number; optimizer: number } {
  const pb = paramBytes(ir, st);
  let consts = 0;
  for (const v of st.graph.values.values()) if (v.kind === 'const' && !ir.params.has(v.id)) consts += numel(v.shape, 1) * BYTES;
  const layout = st.optimizerLayout;
  const pad = layout ? (layout.size - layout.entries.reduce((s, e) => s + e.size, 0)) * BYTES : 0;
  const slots = pb.grads ? pb.optimizer / pb.grads : 0;
  return { params: pb.params + consts + pad, grads: pb.grads + pad, optimizer: pb.optimizer + slots * pad };
}

/** The memory plan of one stage at a given micro-batch and recompute setting. Does not change the stage. */
export function planStageMemory(ir: IR, st: StageIR, opts: { microBatch: number; recompute: boolean; reuse?: boolean; budget?: number }): MemoryPlan & { steps: number; lifetimes: number; ideal: number; peakStep: number } {
  const tokens = opts.microBatch * st.settings.maxLen;
  const { lifetimes, steps, recomputed } = stageLifetimes(ir, st, tokens, opts.recompute);
  const buffers = assignBuffers(lifetimes, opts.reuse ?? true);
  const live = maxLive(buffers, steps);
  const ideal = maxLive(lifetimes.map((l) => ({ bytes: l.bytes, live: [l.start, l.end] as [number, number] })), steps).bytes;
  const sb = stateBytes(ir, st);
  return {
    microBatch: opts.microBatch,
    recompute: opts.recompute,
    buffers,
    bytes: { ...sb, activations: live.bytes, peak: sb.params + sb.grads + sb.optimizer + live.bytes },
    ...(opts.budget !== undefined ? { budget: opts.budget } : {}),
    ...(opts.recompute ? { recomputed } : {}),
    notes: [],
    steps,
    lifetimes: lifetimes.length,
    ideal,
    peakStep: live.step,
  };
}

/**
 * Divisors of n, largest first, by trial division up to √n (a loop from n down to 1 hung on a large batch, and
 * `batch 99999999999999999999` grew its array until V8 aborted the process). A number past 2^53 is not a
 * whole number JavaScript can divide exactly: only n itself.
 */
export const divisorsDesc = (n: number): number[] => {
  if (!Number.isSafeInteger(n) || n < 1) return Number.isFinite(n) && n >= 1 ? [n] : [];
  const large: number[] = [];
  const small: number[] = [];
  for (let d = 1; d * d <= n; d++) {
    if (n % d !== 0) continue;
    small.push(d);
    if (d * d !== n) large.push(n / d);
  }
  return [...large, ...small.reverse()];
};

export const planMemory: Pass = {
  name: 'plan-memory',
  description: 'liveness, buffer reuse, micro-batch and recompute under the memory budget; peak memory estimate',
  run(ir, ctx) {
    let changes = 0;
    const notes: string[] = [];
    for (const st of ir.stages) {
      const budget = st.settings.memoryBytes ?? ctx.memoryBudget;
      const plan = (microBatch: number, recompute: boolean) => planStageMemory(ir, st, { microBatch, recompute, ...(budget !== undefined ? { budget } : {}) });
      const stageNotes: string[] = [];
      let chosen = plan(st.settings.microBatch, st.settings.recompute);
      if (budget !== undefined) {
        const fits = (p: MemoryPlan) => p.bytes.peak <= budget;
        const search = (recompute: boolean) => {
          for (const mb of divisorsDesc(st.settings.batch)) {
            const p = plan(mb, recompute);
            if (fits(p)) return p;
          }
          return undefined;
        };
        const found = (st.settings.recompute ? undefined : search(false)) ?? search(true);
        if (found) {
          chosen = found;
          stageNotes.push(
            `budget ${fmtBytes(budget)}: micro_batch ${chosen.microBatch} is the largest divisor of batch ${st.settings.batch} that fits${chosen.recompute ? ' with recompute' : ''} (peak ${fmtBytes(chosen.bytes.peak)})` +
              (chosen.recompute && !st.settings.recompute ? '; micro_batch 1 does not fit without recompute' : ''),
          );
        } else {
          chosen = plan(1, true);
          stageNotes.push(`does not fit the budget of ${fmtBytes(budget)}: peak ${fmtBytes(chosen.bytes.peak)} even with micro_batch 1 and recompute (parameters and optimizer state alone: ${fmtBytes(chosen.bytes.params + chosen.bytes.grads + chosen.bytes.optimizer)})`);
        }
      }
      const changed = chosen.microBatch !== st.settings.microBatch || chosen.recompute !== st.settings.recompute;
      if (changed) {
        changes++;
        const parts = [
          ...(chosen.microBatch !== st.settings.microBatch ? [`micro_batch ${st.settings.microBatch} -> ${chosen.microBatch}`] : []),
          ...(chosen.recompute !== st.settings.recompute ? [`recompute ${st.settings.recompute} -> ${chosen.recompute}`] : []),
        ];
        stageNotes.push(parts.join(', '));
        st.settings = { ...st.settings, microBatch: chosen.microBatch, recompute: chosen.recompute };
      }
      if (chosen.recomputed) stageNotes.push(`recompute re-runs ${chosen.recomputed.nodes} forward nodes per micro-batch (+${(chosen.recomputed.flops / 1e9).toFixed(1)} GFLOP)`);
      const saved = chosen.lifetimes - chosen.buffers.length;
      changes += saved;
      stageNotes.unshift(
        `${chosen.lifetimes} lifetimes in ${chosen.buffers.length} buffers (reuse saves ${saved}); activations peak ${fmtBytes(chosen.bytes.activations)} at step ${chosen.peakStep} of ${chosen.steps} (no-fragmentation bound ${fmtBytes(chosen.ideal)}); peak ${fmtBytes(chosen.bytes.peak)}`,
      );
      const { steps: _s, lifetimes: _l, ideal: _i, peakStep: _p, ...memory } = chosen;
      st.memory = { ...memory, notes: stageNotes };
      for (const n of stageNotes) notes.push(`${st.name}: ${n}`);
    }
    return { changes, notes };
  },
};
