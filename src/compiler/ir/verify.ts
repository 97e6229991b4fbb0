/**
 * The IR verifier: run after lowering and after every pass (always in tests, and with MCPC_DEBUG=ir).
 * A failure is an internal compiler error naming the pass and the node, never a user diagnostic.
 */
import { concatPartOps, concatParts, isWeight, trainingAltersInput } from './concat.js';
import type { Graph, IR, Node } from './types.js';

export class IRVerifyError extends Error {
  constructor(
    readonly pass: string,
    readonly stage: string,
    readonly node: string | undefined,
    detail: string,
  ) {
    super(`IR invalid after ${pass} (stage ${stage}${node ? `, node ${node}` : ''}): ${detail}`);
  }
}

/** Ops that may appear only before site expansion. */
const preExpansion = new Set(['adapted_linear']);

export function verifyIR(ir: IR, after: string, opts: { expanded: boolean }): void {
  for (const st of ir.stages) verifyGraph(ir, st.graph, st.name, after, opts.expanded);
}

function verifyGraph(ir: IR, g: Graph, stage: string, pass: string, expanded: boolean): void {
  const fail = (n: Node | undefined, msg: string): never => {
    throw new IRVerifyError(pass, stage, n?.id, msg);
  };
  const defined = new Set<string>();
  for (const v of g.values.values()) {
    if (v.kind === 'param') {
      const p = ir.params.get(v.id);
      if (!p) fail(undefined, `value ${v.id} is a param but not in the parameter table`);
      if (p && p.states[stage] !== undefined && (p.states[stage] === 'dropped' || p.states[stage] === 'absent' || p.states[stage] === 'merged')) {
        // A dropped or merged tensor must not be read by the stage graph.
        if (g.nodes.some((n) => n.inputs.includes(v.id))) fail(g.nodes.find((n) => n.inputs.includes(v.id)), `reads ${v.id}, which is ${p.states[stage]} in this stage`);
      }
      // A folded tensor lives on inside the stage copy of its base weight; only constraint terms read it.
      if (p && p.states[stage] === 'folded') {
        const reader = g.nodes.find((n) => n.inputs.includes(v.id) && n.op !== 'ortho_penalty' && n.op !== 'ortho_penalty_batched');
        if (reader) fail(reader, `reads ${v.id}, which is folded into the base weight in this stage (only constraint terms may read it)`);
      }
      defined.add(v.id);
    } else if (v.kind === 'input' || v.kind === 'const') defined.add(v.id);
  }
  const ids = new Set<string>();
  for (const n of g.nodes) {
    if (ids.has(n.id)) fail(n, 'duplicate node id');
    ids.add(n.id);
    if (expanded && preExpansion.has(n.op)) fail(n, `${n.op} must not survive site expansion`);
    for (const i of n.inputs) {
      if (!g.values.has(i)) fail(n, `input ${i} is not a value of the graph`);
      if (!defined.has(i)) fail(n, `input ${i} is used before it is produced`);
    }
    for (const o of n.outputs) {
      const v = g.values.get(o);
      if (!v) fail(n, `output ${o} is not a value of the graph`);
      if (v!.kind !== 'activation') fail(n, `output ${o} is a ${v!.kind}, not an activation`);
      if (defined.has(o)) fail(n, `output ${o} is produced twice`);
      defined.add(o);
    }
    if (n.outputs.length === 0) fail(n, 'node has no outputs');
  }
  if (!defined.has(g.loss)) fail(undefined, `the loss ${g.loss} is never produced`);
  for (const v of g.values.values()) if (v.kind === 'activation' && !defined.has(v.id)) fail(undefined, `activation ${v.id} is declared but never produced`);
  // Every activation except the loss is consumed: a dead value means a pass forgot to rewire a consumer.
  const used = new Set(g.nodes.flatMap((n) => n.inputs));
  for (const n of g.nodes) for (const o of n.outputs) if (o !== g.loss && !used.has(o) && !n.attrs.sideOutput) fail(n, `output ${o} is never used`);
  // concat_linear: the inputs are x then per part its params and bias, one output [T, out] per part, and no
  // part that training feeds something other than x·Wᵀ (dropout's A, a noisy router: they keep their node).
  const altered = trainingAltersInput(ir);
  for (const n of g.nodes) {
    if (n.op !== 'concat_linear') continue;
    const parts = concatParts(n);
    if (!parts.length) fail(n, 'concat_linear has no parts');
    const expect = [n.inputs[0], ...parts.flatMap((p) => [...p.params, ...(p.bias ? [p.bias] : [])])];
    if (expect.length !== n.inputs.length || expect.some((v, i) => v !== n.inputs[i])) fail(n, `concat_linear inputs [${n.inputs.join(', ')}] are not x then each part's params and bias [${expect.join(', ')}]`);
    if (n.outputs.length !== parts.length) fail(n, `concat_linear has ${n.outputs.length} outputs for ${parts.length} parts`);
    if (n.attrs.totalOut !== parts.reduce((s, p) => s + p.out, 0)) fail(n, `concat_linear totalOut ${String(n.attrs.totalOut)} is not the sum of its parts' widths`);
    parts.forEach((p, i) => {
      if (!concatPartOps.has(p.kind)) fail(n, `concat_linear part ${i} is a ${p.kind}, not one of ${[...concatPartOps].join(', ')}`);
      const shape = g.values.get(n.outputs[i])?.shape;
      if (shape && shape[shape.length - 1] !== p.out) fail(n, `concat_linear output ${n.outputs[i]} is [${shape.join(', ')}], its part ${p.kind} writes ${p.out} columns`);
      if (altered({ op: p.kind, adapter: p.adapter })) fail(n, `concat_linear part ${p.kind} of ${p.adapter} is altered in training (dropout or router noise) and must keep its own node`);
    });
  }
  // lora_merge(W, A, B) writes W + s·B·A [out, in] every step from weights only (params, stage copies or an
  // earlier merge), at the graph's head; it never merges an adapter whose A reads dropout(x) in training.
  for (const n of g.nodes) {
    if (n.op !== 'lora_merge') continue;
    if (n.inputs.length !== 3 || n.outputs.length !== 1) fail(n, 'lora_merge takes (W, A, B) and writes one weight');
    const notWeight = n.inputs.find((i) => !isWeight(i, g));
    if (notWeight) fail(n, `lora_merge reads ${notWeight}, which is not a weight`);
    const [wShape, oShape] = [g.values.get(n.inputs[0])?.shape, g.values.get(n.outputs[0])?.shape];
    if (wShape && oShape && wShape.join(',') !== oShape.join(',')) fail(n, `lora_merge writes [${oShape.join(', ')}] for a weight [${wShape.join(', ')}]`);
    if (altered({ op: 'lora_down', adapter: n.adapter })) fail(n, `lora_merge folds ${n.adapter}, whose A reads dropout(x) in training`);
  }
  // moe_down_routed zeroes h off each token's top-k: exact only where every reader of h multiplies it by the
  // same gates (moe_up_grouped on those gates, routed part only).
  for (const n of g.nodes) {
    if (n.op !== 'moe_down_routed') continue;
    if (n.inputs.length !== 3) fail(n, 'moe_down_routed takes (x, gates, A_e)');
    const bad = g.nodes.find((m) => m.inputs.includes(n.outputs[0]) && !(m.op === 'moe_up_grouped' && m.inputs[0] === n.outputs[0] && m.inputs[1] === n.inputs[1] && !m.attrs.sharedRank));
    if (bad) fail(bad, `reads ${n.outputs[0]}, the top-k-only output of moe_down_routed ${n.id}, other than as moe_up_grouped on the same gates`);
  }
}
