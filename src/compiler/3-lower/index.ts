/**
 * Phase 3: CheckedPipeline -> IR. Builds the parameter table (every tensor with its state in every stage)
 * and, per stage, the training-step graph: the decoder with one `adapted_linear` per linear module
 * listing the adapters live there in that stage, the loss, and the constraint terms. Transitions from the
 * then-blocks become explicit exit transitions. Dropped and merged adapters are already gone here: that is
 * semantics, not optimization, so even `-O0` plans train the right model.
 */
import type { AdapterStatus, CheckedAdapter, CheckedPipeline, CheckedStage, Site } from '../2-check/checked.js';
import type { ModelConfig } from '../2-check/models.js';
import type { Constraint, Graph, IR, Node, Param, ParamState, StageIR, Transition, Value } from '../ir/types.js';

const KAIMING_A = Math.sqrt(5);

/** Parameter ids: `base.<path>.<tensor>` and `<adapter>.<site path>.<tensor>`. */
export const paramId = {
  base: (path: string, tensor: string) => `base.${path}.${tensor}`,
  adapter: (adapter: string, site: string, tensor: string) => `${adapter}.${site}.${tensor}`,
};

export interface LiveAdapter {
  name: string;
  type: 'lora' | 'moe_lora';
  /** lora: A, B. moe_lora: router_W, router_b, expert_A, expert_B and, with shared experts, shared_A, shared_B. */
  params: Record<string, string>;
  scale: number;
  rank: number;
  experts: number;
  topK: number;
  shared: number;
  renormalize: boolean;
  router: 'softmax' | 'sigmoid';
  loadBalance: number;
  /** Routed experts were dropped (the shared part lives on). */
  routedDropped: boolean;
  state: ParamState;
}

export function lower(p: CheckedPipeline): IR {
  const params = new Map<string, Param>();
  buildBaseParams(p, params);
  for (const a of p.adapters) buildAdapterParams(p, a, params);
  const stages = p.stages.map((s, i) => lowerStage(p, s, i, params));
  return { pipeline: p, params, stages, kernels: new Map() };
}

// --- parameters ----------------------------------------------------------------------------------------------

function baseInit(p: CheckedPipeline, role: Param['role']) {
  if (p.model.source.kind === 'hf') return { kind: 'pretrained' as const };
  if (role === 'norm') return { kind: 'ones' as const };
  if (role === 'bias') return { kind: 'zeros' as const };
  return { kind: 'normal' as const, std: 0.02 };
}

function buildBaseParams(p: CheckedPipeline, params: Map<string, Param>): void {
  const c = p.model.config;
  const states = (): Record<string, ParamState> => Object.fromEntries(p.stages.map((s) => [s.name, s.trainBase ? 'trainable' : 'frozen']));
  const add = (id: string, shape: number[], role: Param['role'], hfName: string, site?: string) =>
    params.set(id, { id, shape, owner: 'base', role, hfName, ...(site ? { site } : {}), init: baseInit(p, role), states: states() });
  add('base.embed.weight', [c.vocab, c.hidden], 'embedding', 'model.embed_tokens.weight');
  for (let l = 0; l < c.layers; l++) {
    const pre = `layers[${l}]`;
    const hf = `model.layers.${l}`;
    add(paramId.base(`${pre}.input_norm`, 'weight'), [c.hidden], 'norm', `${hf}.input_layernorm.weight`);
    add(paramId.base(`${pre}.post_norm`, 'weight'), [c.hidden], 'norm', `${hf}.post_attention_layernorm.weight`);
    for (const s of linearSites(c, l)) {
      add(paramId.base(s.path, 'weight'), [s.out, s.in], 'weight', `${s.hfName}.weight`, s.path);
      if (s.bias) add(paramId.base(s.path, 'bias'), [s.out], 'bias', `${s.hfName}.bias`, s.path);
    }
  }
  add('base.norm.weight', [c.hidden], 'norm', 'model.norm.weight');
  if (!c.tied) add('base.lm_head.weight', [c.vocab, c.hidden], 'weight', 'lm_head.weight', 'lm_head');
}

/** The linear sites of layer l, in forward order. */
export function linearSites(c: ModelConfig, l: number): (Site & { bias: boolean; name: string })[] {
  const q = c.heads * c.headDim;
  const kv = c.kvHeads * c.headDim;
  const hf = `model.layers.${l}`;
  const p = `layers[${l}]`;
  return [
    { name: 'q', path: `${p}.attn.q`, hfName: `${hf}.self_attn.q_proj`, in: c.hidden, out: q, bias: c.qkvBias },
    { name: 'k', path: `${p}.attn.k`, hfName: `${hf}.self_attn.k_proj`, in: c.hidden, out: kv, bias: c.qkvBias },
    { name: 'v', path: `${p}.attn.v`, hfName: `${hf}.self_attn.v_proj`, in: c.hidden, out: kv, bias: c.qkvBias },
    { name: 'o', path: `${p}.attn.o`, hfName: `${hf}.self_attn.o_proj`, in: q, out: c.hidden, bias: false },
    { name: 'gate', path: `${p}.mlp.gate`, hfName: `${hf}.mlp.gate_proj`, in: c.hidden, out: c.ffn, bias: false },
    { name: 'up', path: `${p}.mlp.up`, hfName: `${hf}.mlp.up_proj`, in: c.hidden, out: c.ffn, bias: false },
    { name: 'down', path: `${p}.mlp.down`, hfName: `${hf}.mlp.down_proj`, in: c.ffn, out: c.hidden, bias: false },
  ];
}

/** An adapter's state in a stage: from its status at entry and whether the stage trains it. */
function adapterState(s: CheckedStage, a: CheckedAdapter): ParamState {
  const status: AdapterStatus | undefined = s.entry[a.name] ?? (a.declaredIn === s.name ? 'pending' : undefined);
  if (status === undefined) return 'absent';
  if (status === 'merged') return 'merged';
  if (status === 'dropped') return 'dropped';
  if (s.train.includes(a.name)) return 'trainable';
  return 'frozen';
}

function buildAdapterParams(p: CheckedPipeline, a: CheckedAdapter, params: Map<string, Param>): void {
  const states = Object.fromEntries(p.stages.map((s) => [s.name, adapterState(s, a)]));
  const routedStates = Object.fromEntries(p.stages.map((s, i) => [s.name, routedDropped(p, a.name, i) ? 'dropped' : states[s.name]])) as Record<string, ParamState>;
  const initA = a.lora.init === 'kaiming' ? { kind: 'kaiming_uniform' as const, a: KAIMING_A } : a.lora.init === 'gaussian' ? { kind: 'normal' as const, std: 1 / a.lora.r } : { kind: 'zeros' as const };
  const r = a.lora.r;
  for (const site of a.sites) {
    const add = (tensor: string, shape: number[], role: Param['role'], init: Param['init'], st = states, hf?: string) => {
      const id = paramId.adapter(a.name, site.path, tensor);
      params.set(id, { id, shape, owner: a.name, role, site: site.path, init, states: st, ...(hf ? { hfName: hf } : {}) });
    };
    if (a.type === 'lora') {
      add('A', [r * a.experts, site.in], 'lora_A', initA, states, `base_model.model.${site.hfName}.lora_A.weight`);
      add('B', [site.out, r * a.experts], 'lora_B', { kind: 'zeros' }, states, `base_model.model.${site.hfName}.lora_B.weight`);
    } else {
      if (a.shared > 0) {
        add('shared_A', [r * a.shared, site.in], 'lora_A', initA);
        add('shared_B', [site.out, r * a.shared], 'lora_B', { kind: 'zeros' });
      }
      add('router_W', [a.experts, site.in], 'router_W', { kind: 'kaiming_uniform', a: KAIMING_A }, routedStates);
      add('router_b', [a.experts], 'router_b', { kind: 'zeros' }, routedStates);
      add('expert_A', [a.experts, r, site.in], 'expert_A', initA, routedStates);
      add('expert_B', [a.experts, site.out, r], 'expert_B', { kind: 'zeros' }, routedStates);
    }
  }
}

/** Whether the routed experts of `name` were dropped (`drop X.experts` with no condition) before stage i. */
function routedDropped(p: CheckedPipeline, name: string, i: number): boolean {
  return p.stages.slice(0, i).some((s) => s.transitions.some((t) => t.kind === 'drop' && t.adapter === name && t.part === 'experts' && !t.condition));
}

// --- stage graph -----------------------------------------------------------------------------------------------

class GraphBuilder {
  readonly nodes: Node[] = [];
  readonly values = new Map<string, Value>();
  private n = 0;

  value(id: string, shape: Value['shape'], kind: Value['kind'] = 'activation', dtype: Value['dtype'] = 'f32'): string {
    this.values.set(id, { id, shape, dtype, kind });
    return id;
  }
  param(prm: Param): string {
    if (!this.values.has(prm.id)) this.values.set(prm.id, { id: prm.id, shape: prm.shape, dtype: 'f32', kind: 'param' });
    return prm.id;
  }
  node(op: Node['op'], inputs: string[], outputs: string[], attrs: Record<string, unknown> = {}, extra: Partial<Node> = {}): Node {
    const n: Node = { id: `n${this.n++}`, op, inputs, outputs, attrs, ...extra };
    this.nodes.push(n);
    return n;
  }
}

function lowerStage(p: CheckedPipeline, s: CheckedStage, index: number, params: Map<string, Param>): StageIR {
  const c = p.model.config;
  const g = new GraphBuilder();
  const P = (id: string) => g.param(params.get(id)!);
  const live = liveAdapters(p, s, params);

  const tokens = g.value('tokens', ['T'], 'input', 'i32');
  const labels = g.value('labels', ['T'], 'input', 'i32');
  const mask = g.value('loss_mask', ['T'], 'input');
  let x = g.value('x.embed', ['T', c.hidden]);
  g.node('embedding', [tokens, P('base.embed.weight')], [x]);

  const linear = (input: string, site: Site & { bias: boolean }, out: string, layer?: number) => {
    const ads = live.get(site.path) ?? [];
    const w = P(paramId.base(site.path, 'weight'));
    const b = site.bias ? P(paramId.base(site.path, 'bias')) : undefined;
    const adParams = ads.flatMap((a) => Object.values(a.params).map(P));
    g.value(out, ['T', site.out]);
    g.node('adapted_linear', [input, w, ...(b ? [b] : []), ...adParams], [out], { in: site.in, out: site.out, weight: w, ...(b ? { bias: b } : {}), adapters: ads }, { site: site.path, ...(layer !== undefined ? { layer } : {}) });
    return out;
  };

  for (let l = 0; l < c.layers; l++) {
    const L = `L${l}`;
    const sites = Object.fromEntries(linearSites(c, l).map((st) => [st.name, st]));
    const h = g.value(`${L}.attn_in`, ['T', c.hidden]);
    g.node('rmsnorm', [x, P(paramId.base(`layers[${l}].input_norm`, 'weight'))], [h], { eps: c.rmsEps }, { layer: l });
    const q = linear(h, sites.q, `${L}.q`, l);
    const k = linear(h, sites.k, `${L}.k`, l);
    const v = linear(h, sites.v, `${L}.v`, l);
    const qr = g.value(`${L}.q_rot`, ['T', c.heads * c.headDim]);
    const kr = g.value(`${L}.k_rot`, ['T', c.kvHeads * c.headDim]);
    g.node('rope', [q, k], [qr, kr], { theta: c.ropeTheta, headDim: c.headDim, heads: c.heads, kvHeads: c.kvHeads }, { layer: l });
    const att = g.value(`${L}.attn`, ['T', c.heads * c.headDim]);
    g.node('attention', [qr, kr, v], [att], { heads: c.heads, kvHeads: c.kvHeads, headDim: c.headDim, causal: true, seqLen: s.settings.maxLen }, { layer: l });
    const o = linear(att, sites.o, `${L}.o`, l);
    const x1 = g.value(`${L}.resid_attn`, ['T', c.hidden]);
    g.node('add', [x, o], [x1], {}, { layer: l });
    const h2 = g.value(`${L}.mlp_in`, ['T', c.hidden]);
    g.node('rmsnorm', [x1, P(paramId.base(`layers[${l}].post_norm`, 'weight'))], [h2], { eps: c.rmsEps }, { layer: l });
    const gt = linear(h2, sites.gate, `${L}.gate`, l);
    const up = linear(h2, sites.up, `${L}.up`, l);
    const act = g.value(`${L}.act`, ['T', c.ffn]);
    g.node('swiglu', [gt, up], [act], {}, { layer: l });
    const d = linear(act, sites.down, `${L}.down`, l);
    const x2 = g.value(`${L}.resid_mlp`, ['T', c.hidden]);
    g.node('add', [x1, d], [x2], {}, { layer: l });
    x = x2;
  }
  const xf = g.value('x.final', ['T', c.hidden]);
  g.node('rmsnorm', [x, P('base.norm.weight')], [xf], { eps: c.rmsEps });
  const headW = c.tied ? 'base.embed.weight' : 'base.lm_head.weight';
  const ce = g.value('loss.ce', []);
  const headAdapters = live.get('lm_head');
  if (headAdapters?.length) {
    // Adapters on the head need the logits as an explicit value; the fused head+loss kernel is not usable.
    const logits = linear(xf, { path: 'lm_head', hfName: 'lm_head', in: c.hidden, out: c.vocab, bias: false }, 'logits');
    g.node('lm_head_xent', [logits, labels, mask], [ce], { vocab: c.vocab, logitsGiven: true, loss: s.settings.loss });
  } else {
    g.node('lm_head_xent', [xf, P(headW), labels, mask], [ce], { vocab: c.vocab, logitsGiven: false, loss: s.settings.loss });
  }

  // Constraint terms: one per (constraint, common site, other adapter).
  const terms: { value: string; weight: number }[] = [{ value: ce, weight: 1 }];
  const constraints: Constraint[] = s.constraints.map((k) => ({ kind: 'orthogonal', target: k.target, others: k.others, matrix: k.matrix, weight: k.weight, norm: k.norm, sites: k.sites }));
  constraints.forEach((k, ci) => {
    for (const site of k.sites) {
      for (const other of k.others) {
        const ta = matrixParams(p, k.target, site, k.matrix, params, s.name);
        const oa = matrixParams(p, other, site, k.matrix, params, s.name);
        if (!ta.length || !oa.length) continue;
        const out = g.value(`ortho.${ci}.${site}.${other}`, []);
        const flops = orthoFlops(ta.map((id) => params.get(id)!.shape), oa.map((id) => params.get(id)!.shape), k.matrix);
        g.node('ortho_penalty', [...ta.map(P), ...oa.map(P)], [out], { targetParts: ta.length, norm: k.norm, matrix: k.matrix, target: k.target, other, constraint: ci, flops }, { site });
        terms.push({ value: out, weight: k.weight });
      }
    }
  });
  const loss = g.value('loss', []);
  g.node('loss_sum', terms.map((t) => t.value), [loss], { weights: terms.map((t) => t.weight) });

  const graph: Graph = { nodes: g.nodes, values: g.values, loss };
  const byStatus = (st: AdapterStatus) => Object.entries(s.entry).filter(([, v]) => v === st).map(([k]) => k);
  const exit: Transition[] = s.transitions.map((t) => {
    const sitesOf = (n: string) => p.adapters.find((a) => a.name === n)?.sites.map((x) => x.path) ?? [];
    if (t.kind === 'merge') return { op: 'merge', adapter: t.adapter, ...(t.part ? { part: t.part } : {}), sites: sitesOf(t.adapter) };
    if (t.kind === 'drop') return { op: 'drop', adapter: t.adapter, ...(t.part ? { part: t.part } : {}), ...(t.condition ? { condition: t.condition } : {}) };
    return { op: t.kind, adapter: t.adapter };
  });
  const declared = p.adapters.filter((a) => adapterState(s, a) !== 'absent').map((a) => a.name);
  return {
    name: s.name,
    index,
    settings: s.settings,
    trainBase: s.trainBase,
    trainable: [...s.train],
    data: [...s.data],
    adapters: {
      trainable: [...s.train],
      frozen: declared.filter((n) => !s.train.includes(n) && (s.entry[n] === 'frozen' || s.entry[n] === 'trainable')),
      folded: [],
      merged: byStatus('merged'),
      dropped: byStatus('dropped'),
      inactive: declared.filter((n) => !s.train.includes(n) && (s.entry[n] ?? 'pending') === 'pending'),
    },
    entry: [],
    exit,
    constraints,
    evals: s.evals.map((e) => ({ probes: e.probes, ...(e.every !== undefined ? { every: e.every } : {}) })),
    graph,
    fusedOptimizer: false,
  };
}

/** The adapters live at each site in a stage (not absent, merged or dropped), in declaration order. */
function liveAdapters(p: CheckedPipeline, s: CheckedStage, params: Map<string, Param>): Map<string, LiveAdapter[]> {
  const out = new Map<string, LiveAdapter[]>();
  for (const a of p.adapters) {
    const state = adapterState(s, a);
    if (state === 'absent' || state === 'merged' || state === 'dropped') continue;
    for (const site of a.sites) {
      const ids: Record<string, string> = {};
      for (const t of a.type === 'lora' ? ['A', 'B'] : ['shared_A', 'shared_B', 'router_W', 'router_b', 'expert_A', 'expert_B']) {
        const id = paramId.adapter(a.name, site.path, t);
        if (params.has(id) && params.get(id)!.states[s.name] !== 'dropped') ids[t] = id;
      }
      const la: LiveAdapter = {
        name: a.name,
        type: a.type,
        params: ids,
        scale: a.lora.scale,
        rank: a.lora.r,
        experts: a.experts,
        topK: a.topK,
        shared: a.shared,
        renormalize: a.renormalize,
        router: a.router,
        loadBalance: a.loadBalance,
        routedDropped: a.type === 'moe_lora' && !ids.expert_A,
        state,
      };
      out.set(site.path, [...(out.get(site.path) ?? []), la]);
    }
  }
  return out;
}

/**
 * The A (or B) tensors of an adapter at a site that exist in `stage`, as used by an orthogonality term:
 * after `drop X.experts` a mixture's routed experts are gone and only its shared experts count.
 */
function matrixParams(p: CheckedPipeline, adapter: string, site: string, m: 'A' | 'B', params: Map<string, Param>, stage: string): string[] {
  const a = p.adapters.find((x) => x.name === adapter);
  if (!a) return [];
  const names = a.type === 'lora' ? [m] : [`shared_${m}`, `expert_${m}`];
  return names.map((t) => paramId.adapter(adapter, site, t)).filter((id) => params.has(id) && params.get(id)!.states[stage] !== 'dropped');
}

/**
 * FLOPs of one orthogonality term: M = X_t X_o^T over the shared dimension d (A: [.., r, in], so d = in;
 * B: [.., out, r], so d = out), r_t and r_o the stacked ranks of the parts (expert tensors count every
 * expert): 2·r_t·r_o·d for the product plus r_t·r_o for the norm.
 */
export function orthoFlops(target: number[][], other: number[][], matrix: 'A' | 'B'): number {
  const dims = (shapes: number[][]) => {
    let rows = 0;
    let d = 0;
    for (const s of shapes) {
      const n = s.reduce((a, b) => a * b, 1);
      d = matrix === 'A' ? s[s.length - 1] : s[s.length - 2];
      rows += n / d;
    }
    return { rows, d };
  };
  const t = dims(target);
  const o = dims(other);
  return 2 * t.rows * o.rows * t.d + t.rows * o.rows;
}
