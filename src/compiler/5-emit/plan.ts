/**
 * IR -> Plan. Assigns each node a kernel from the kernel table, orders the backward steps (reverse
 * topological, only where a gradient is needed), counts FLOPs, bytes and dispatches, and writes the
 * parameter table with per-stage states. The output is deterministic: the same input gives the same bytes.
 */
import { createHash } from 'node:crypto';
import type { PassReport } from '../4-optimize/index.js';
import { backwardFlops, forwardFlops, gradValues, nodeBytes, stageTokens } from '../ir/cost.js';
import { naiveMemory } from '../ir/memory.js';
import type { IR, Node, Op, StageIR } from '../ir/types.js';
import { PLAN_FORMAT, PLAN_VERSION, type Plan, type PlanKernel, type PlanStage } from '../../plan/types.js';

/** Library kernels (implemented by the runtime, each with a reference op); fused kernels carry their own WGSL. */
const libraryKernel: Record<Exclude<Op, 'fused_elementwise'>, string> = {
  embedding: 'embedding',
  rmsnorm: 'rmsnorm',
  rope: 'rope',
  attention: 'attention',
  swiglu: 'swiglu',
  add: 'add',
  lm_head_xent: 'lm_head_xent',
  adapted_linear: 'adapted_linear',
  linear: 'gemm',
  lora_down: 'gemm_nobias',
  lora_up: 'gemm_scaled',
  lora_merge: 'lora_merge',
  router: 'router',
  topk_gate: 'topk_gate',
  expert_down: 'expert_gemm',
  expert_up: 'expert_gemm_scaled',
  gate_combine: 'gate_combine',
  load_balance: 'load_balance',
  moe_down_batched: 'gemm_stacked_experts',
  moe_down_routed: 'gemm_routed_experts',
  moe_up_grouped: 'grouped_gemm_topk',
  concat_linear: 'gemm_concat',
  ortho_penalty: 'ortho_penalty',
  ortho_penalty_batched: 'ortho_penalty_batched',
  loss_sum: 'loss_sum',
};

export function kernelOf(n: Node): string {
  return n.op === 'fused_elementwise' ? String(n.attrs.kernel) : libraryKernel[n.op];
}

export interface EmitOptions {
  compilerVersion: string;
  optLevel: 0 | 1;
  passes: PassReport[];
  sources: { path: string; text: string }[];
}

export function emitPlan(ir: IR, opts: EmitOptions): Plan {
  const p = ir.pipeline;
  const kernels = new Map<string, PlanKernel>();
  const stages = ir.stages.map((st) => emitStage(ir, st, kernels));
  return {
    format: PLAN_FORMAT,
    version: PLAN_VERSION,
    pipeline: p.name,
    compiler: { version: opts.compilerVersion, optLevel: opts.optLevel, passes: opts.passes },
    sources: opts.sources.map((s) => ({ path: s.path, sha256: createHash('sha256').update(s.text).digest('hex') })),
    model: { name: p.model.name, source: p.model.source, config: { ...p.model.config }, tokenizer: p.model.tokenizer },
    data: p.data.map((d) => ({ name: d.name, kind: d.kind, path: d.path, format: d.format, ...(d.maxRecords !== undefined ? { maxRecords: d.maxRecords } : {}) })),
    probes: p.probes.map((x) => ({ name: x.name, kind: x.kind, data: x.data, ...(x.maxExamples !== undefined ? { maxExamples: x.maxExamples } : {}) })),
    adapters: p.adapters.map((a) => ({
      name: a.name,
      type: a.type,
      r: a.lora.r,
      alpha: a.lora.alpha,
      scale: a.lora.scale,
      rslora: a.lora.rslora,
      dropout: a.lora.dropout,
      experts: a.experts,
      topK: a.topK,
      shared: a.shared,
      router: a.router,
      renormalize: a.renormalize,
      loadBalance: a.loadBalance,
      routerNoise: a.routerNoise,
      sites: a.sites.map((s) => s.path),
    })),
    parameters: [...ir.params.values()].map((x) => ({ id: x.id, shape: x.shape, owner: x.owner, role: x.role, ...(x.site ? { site: x.site } : {}), ...(x.hfName ? { hfName: x.hfName } : {}), init: x.init, states: x.states })),
    kernels: [...kernels.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0)),
    stages,
    exports: p.exports.map((e) => ({ format: e.format, adapters: e.adapters, path: e.path })),
  };
}

function emitStage(ir: IR, st: StageIR, kernels: Map<string, PlanKernel>): PlanStage {
  const g = st.graph;
  const T = stageTokens(st);
  const need = gradValues(ir, st);
  const register = (n: Node) => {
    const id = kernelOf(n);
    if (!kernels.has(id)) kernels.set(id, ir.kernels.get(id) ?? { id, op: n.op, reference: `ref.${n.op}` });
    return id;
  };
  const forward = g.nodes.map((n) => ({
    node: n.id,
    op: n.op,
    kernel: register(n),
    inputs: n.inputs,
    outputs: n.outputs,
    attrs: n.attrs,
    ...(n.site ? { site: n.site } : {}),
    ...(n.adapter ? { adapter: n.adapter } : {}),
    ...(n.layer !== undefined ? { layer: n.layer } : {}),
    flops: forwardFlops(n, g, T),
    bytes: nodeBytes(n, g, T),
  }));
  const backward = [...g.nodes]
    .reverse()
    .map((n) => ({ n, gi: n.inputs.filter((i) => need.has(i)) }))
    .filter(({ gi }) => gi.length > 0)
    .map(({ n, gi }) => ({ node: n.id, kernel: `${kernelOf(n)}.backward`, gradInputs: gi, flops: backwardFlops(n, g, T, need) }));

  const trainableParams = [...g.values.values()].filter((v) => v.kind === 'param' && ir.params.get(v.id)?.states[st.name] === 'trainable').map((v) => v.id);
  const trainableCount = trainableParams.reduce((s, id) => s + ir.params.get(id)!.shape.reduce((a, b) => a * b, 1), 0);
  const layout = st.fusedOptimizer ? st.optimizerLayout : undefined;
  const optimizer = {
    kind: st.settings.optimizer.kind,
    fused: st.fusedOptimizer,
    dispatches: st.fusedOptimizer ? (trainableParams.length ? 1 : 0) : trainableParams.length,
    params: trainableParams,
    ...(layout ? { layout: layout.entries.map((e) => ({ ...e })), size: layout.size, align: layout.align } : {}),
  };
  const memory = st.memory ?? naiveMemory(ir, st);
  const micro = Math.max(1, Math.round(st.settings.batch / memory.microBatch));
  const fwd = forward.reduce((s, x) => s + x.flops, 0);
  const bwd = backward.reduce((s, x) => s + x.flops, 0);
  const bytes = forward.reduce((s, x) => s + x.bytes, 0);
  const re = memory.recompute ? (memory.recomputed ?? { nodes: 0, flops: 0 }) : { nodes: 0, flops: 0 };
  const kernelsPerMicro = forward.length + backward.length + re.nodes;
  return {
    name: st.name,
    index: st.index,
    settings: { ...st.settings },
    trainBase: st.trainBase,
    trainable: st.trainable,
    data: st.data,
    adapters: st.adapters,
    entry: st.entry,
    exit: st.exit,
    constraints: st.constraints,
    evals: st.evals,
    values: [...g.values.values()].map((v) => ({ id: v.id, shape: v.shape, dtype: v.dtype, kind: v.kind })),
    loss: g.loss,
    forward,
    backward,
    optimizer,
    memory: { microBatch: memory.microBatch, recompute: memory.recompute, ...(memory.budget !== undefined ? { budget: memory.budget } : {}), buffers: memory.buffers, bytes: memory.bytes, ...(memory.recomputed ? { recomputed: memory.recomputed } : {}), notes: memory.notes },
    estimates: {
      tokensPerMicroBatch: T,
      microBatchesPerStep: micro,
      flopsPerStep: (fwd + bwd + re.flops) * micro,
      forwardFlopsPerStep: fwd * micro,
      backwardFlopsPerStep: bwd * micro,
      recomputeFlopsPerStep: re.flops * micro,
      bytesPerStep: bytes * micro * 2,
      dispatchesPerStep: kernelsPerMicro * micro + optimizer.dispatches,
      kernels: kernelsPerMicro + optimizer.dispatches,
      peakBytes: memory.bytes.peak,
      trainableParams: trainableCount,
    },
  };
}
