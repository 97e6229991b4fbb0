/**
 * Plan -> a self-contained PyTorch program (`mcpc compile --target torch -o DIR`). It reads the Plan only.
 *
 * Files written into the output folder:
 *   train.py     the entry point: processes (one, `--nproc N` spawned, or torchrun), FSDP or DDP, the stage
 *                loop (optimizer, schedule, clipping, NaN-skipping steps, transitions), checkpoints, metrics,
 *                exports; static (python/train.py)
 *   model.py     generated: per stage, the plan's forward steps as straight-line Python, one line per step,
 *                split into one function per block (the steps before the first layer, each layer, the head),
 *                so FSDP can shard per layer and gradient checkpointing can recompute per layer
 *   pipeline.py  generated: the plan's data as Python literals (model config, parameters with their state
 *                per stage, adapters, data, stages with settings, transitions and constraints, exports) and,
 *                for a byte-tokenizer model, the text of the Hugging Face tokenizer files a merged export
 *                writes (src/plan/byte-tokenizer.ts, the bytes the TypeScript runtime writes)
 *   ops.py, data.py, weights.py   static: one function per plan op (src/runtime/kernels/reference.ts in
 *                PyTorch), data loading (src/runtime/data), file formats (src/runtime/weights, io)
 *   plan.json    the plan the program was generated from, for reference (not read at run time)
 *
 * The program is generated from the plan's unfused step list (a plan compiled at -O0): fused elementwise
 * kernels, concatenated GEMMs and batched experts are the same math, which PyTorch's own kernels do well.
 * The memory planning of the -O1 plan decides gradient checkpointing (`memoryPlan`).
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { byteTokenizerFileTexts } from '../../../plan/byte-tokenizer.js';
import type { Plan, PlanStage, PlanStep } from '../../../plan/types.js';

/** The static Python files copied verbatim into the output folder. */
const STATIC_FILES = ['train.py', 'ops.py', 'data.py', 'weights.py'] as const;
const PY_DIR = new URL('./python/', import.meta.url);

/** The ops the generated model can call (the -O0 step list); anything else is a compiler bug here. */
const OPS: Partial<Record<PlanStep['op'], { kw: [string, string][]; ctx?: boolean }>> = {
  embedding: { kw: [] },
  rmsnorm: { kw: [['eps', 'eps']] },
  rope: { kw: [['theta', 'theta'], ['head_dim', 'headDim'], ['heads', 'heads'], ['kv_heads', 'kvHeads']], ctx: true },
  attention: { kw: [['heads', 'heads'], ['kv_heads', 'kvHeads'], ['head_dim', 'headDim'], ['causal', 'causal']], ctx: true },
  swiglu: { kw: [] },
  add: { kw: [] },
  lm_head_xent: { kw: [] },
  linear: { kw: [] },
  lora_down: { kw: [] },
  lora_up: { kw: [['scale', 'scale']] },
  router: { kw: [['activation', 'activation']] },
  topk_gate: { kw: [['k', 'k'], ['renormalize', 'renormalize']] },
  expert_down: { kw: [['expert', 'expert']] },
  expert_up: { kw: [['expert', 'expert'], ['scale', 'scale']] },
  gate_combine: { kw: [] },
  load_balance: { kw: [['k', 'k']], ctx: true },
  ortho_penalty: { kw: [['target_parts', 'targetParts'], ['matrix', 'matrix'], ['norm', 'norm']] },
  loss_sum: { kw: [['weights', 'weights']] },
};

export interface TorchEmitOptions {
  /** Path from the output folder to the project root (posix), which data, model and export paths resolve against. */
  projectRoot: string;
  /** The same pipeline compiled with optimizations: its memory planning decides activation recomputation. */
  memoryPlan?: Plan;
  /** The pipeline file, shown in the headers. */
  source?: string;
}

export interface TorchEmitResult {
  /** File name -> contents. */
  files: Map<string, string>;
  /** Per stage: how the forward was split, and whether layers are recomputed. */
  stages: { name: string; blocks: number; steps: number; recompute: boolean }[];
}

/** A plan this emitter cannot turn into Python: a compiler bug, never user input. */
export class TorchEmitError extends Error {
  constructor(message: string) {
    super(`--target torch: ${message}`);
    this.name = 'TorchEmitError';
  }
}

export function emitTorch(plan: Plan, opts: TorchEmitOptions): TorchEmitResult {
  if (plan.compiler.optLevel !== 0) throw new TorchEmitError('the PyTorch program is generated from the unfused step list: compile the plan with optLevel 0');
  const files = new Map<string, string>();
  const stages: TorchEmitResult['stages'] = [];
  const recompute = (s: PlanStage) => s.settings.recompute || s.memory.recompute || (opts.memoryPlan?.stages.find((x) => x.name === s.name)?.memory.recompute ?? false);
  const model = [modelHeader(plan, opts)];
  for (const stage of plan.stages) {
    const { text, blocks } = emitStage(stage);
    model.push(text);
    stages.push({ name: stage.name, blocks, steps: stage.forward.length, recompute: recompute(stage) });
  }
  model.push(`GRAPHS = {${plan.stages.map((s) => `${py(s.name)}: ${graphName(s)}`).join(', ')}}\n`);
  files.set('model.py', model.join('\n'));
  files.set('pipeline.py', emitPipeline(plan, opts, recompute));
  for (const f of STATIC_FILES) files.set(f, readFileSync(fileURLToPath(new URL(f, PY_DIR)), 'utf8'));
  files.set('plan.json', JSON.stringify(plan, null, 1) + '\n');
  return { files, stages };
}

// --- model.py -------------------------------------------------------------------------------------------------

function modelHeader(plan: Plan, opts: TorchEmitOptions): string {
  return `"""The forward pass of each stage of pipeline ${plan.pipeline}, generated by mcpc from its plan${opts.source ? ` (${opts.source})` : ''}.

One line per step of the plan (the node id in the comment); the functions of ops.py compute what mcpc's
reference kernels compute. Each stage is split into blocks: the steps before the first layer, one block
per layer, and the head (final norm, loss, constraint terms). A block is a function of its parameters
\`p\` (by plan id), the micro-batch context and the values it reads from earlier blocks; it returns the
values later blocks read.
"""
from ops import *  # noqa: F401,F403 (the plan's ops: embedding, rmsnorm, rope, attention, ...)


class Block:
    def __init__(self, name, fn, layer, inputs, outputs, params):
        self.name, self.fn, self.layer = name, fn, layer
        self.inputs, self.outputs, self.params = inputs, outputs, params


class StageGraph:
    """A stage's blocks in order; \`loss\` the objective; \`exposed\` values the trainer reads besides it."""

    def __init__(self, name, blocks, loss, exposed, constraint_terms, shared):
        self.name, self.blocks, self.loss = name, blocks, loss
        self.exposed, self.constraint_terms = exposed, constraint_terms
        # Parameters read by several blocks live with the whole stage model, not with one block.
        self.shared = shared
        self.read = {i for b in blocks for i in b.params} | set(shared)
`;
}

const graphName = (s: PlanStage) => `STAGE_${pyName(s.name).toUpperCase()}`;

interface BlockPlan {
  name: string;
  layer: number | null;
  steps: PlanStep[];
}

/** The layer a step belongs to: its `layer`, else the layer of its site (`layers[3].mlp.up`), else none. */
function layerOf(step: PlanStep): number | null {
  if (typeof step.layer === 'number') return step.layer;
  const m = step.site ? /^layers\[(\d+)\]/.exec(step.site) : null;
  return m ? Number(m[1]) : null;
}

/**
 * Splits a stage's steps into blocks: before the first layer, each layer in order, the head. Falls back to
 * one block when a step would read a value that a later block writes.
 */
function splitBlocks(stage: PlanStage): BlockPlan[] {
  const pre: PlanStep[] = [];
  const head: PlanStep[] = [];
  const layers = new Map<number, PlanStep[]>();
  let seenLayer = false;
  for (const s of stage.forward) {
    const l = layerOf(s);
    if (l === null) (seenLayer ? head : pre).push(s);
    else {
      seenLayer = true;
      if (!layers.has(l)) layers.set(l, []);
      layers.get(l)!.push(s);
    }
  }
  const blocks: BlockPlan[] = [];
  if (pre.length) blocks.push({ name: 'embed', layer: null, steps: pre });
  for (const l of [...layers.keys()].sort((a, b) => a - b)) blocks.push({ name: `layer_${l}`, layer: l, steps: layers.get(l)! });
  if (head.length) blocks.push({ name: 'head', layer: null, steps: head });
  const written = new Set(stage.values.filter((v) => v.kind !== 'activation').map((v) => v.id));
  for (const b of blocks) {
    for (const s of b.steps) {
      if (s.inputs.some((i) => !written.has(i))) return [{ name: 'all', layer: null, steps: stage.forward }];
      for (const o of s.outputs) written.add(o);
    }
  }
  return blocks;
}

function emitStage(stage: PlanStage): { text: string; blocks: number } {
  const kinds = new Map(stage.values.map((v) => [v.id, v.kind]));
  for (const v of stage.values) if (v.kind === 'const') throw new TorchEmitError(`stage ${stage.name}: constant ${v.id} (folded weights are an -O1 plan's; the torch target reads the -O0 plan)`);
  const producer = new Map<string, PlanStep>();
  for (const s of stage.forward) for (const o of s.outputs) producer.set(o, s);
  const lossStep = producer.get(stage.loss);
  if (!lossStep) throw new TorchEmitError(`stage ${stage.name}: no step writes the loss ${stage.loss}`);
  const constraintTerms: [string, number][] = [];
  if (lossStep.op === 'loss_sum') {
    const w = lossStep.attrs.weights as number[];
    lossStep.inputs.forEach((id, i) => {
      const op = producer.get(id)?.op;
      if (op === 'ortho_penalty' || op === 'ortho_penalty_batched') constraintTerms.push([id, w[i]!]);
    });
  }
  const exposed = [...new Set([...(kinds.has('x.final') ? ['x.final'] : []), ...(lossStep.op === 'loss_sum' ? lossStep.inputs : [])])];

  const blocks = splitBlocks(stage);
  const names = new Names();
  const readers = new Map<string, number>(); // value -> last block index that reads it
  blocks.forEach((b, i) => b.steps.forEach((s) => s.inputs.forEach((x) => readers.set(x, i))));
  const paramBlocks = new Map<string, Set<number>>();
  blocks.forEach((b, i) => b.steps.forEach((s) => s.inputs.forEach((x) => {
    if (kinds.get(x) !== 'param') return;
    if (!paramBlocks.has(x)) paramBlocks.set(x, new Set());
    paramBlocks.get(x)!.add(i);
  })));
  const shared = [...paramBlocks].filter(([, s]) => s.size > 1).map(([id]) => id);
  const sharedSet = new Set(shared);

  const out: string[] = [`# --- stage ${stage.name} ${'-'.repeat(Math.max(3, 96 - stage.name.length))}\n`];
  const blockEntries: string[] = [];
  blocks.forEach((b, bi) => {
    const fn = `${pyName(stage.name)}_${b.name}`;
    const produced = new Set(b.steps.flatMap((s) => s.outputs));
    const inputs: string[] = [];
    for (const s of b.steps) for (const x of s.inputs) if (kinds.get(x) !== 'param' && !produced.has(x) && !inputs.includes(x)) inputs.push(x);
    const outputs = [...produced].filter((x) => (readers.get(x) ?? -1) > bi || x === stage.loss || exposed.includes(x));
    const params = [...new Set(b.steps.flatMap((s) => s.inputs.filter((x) => kinds.get(x) === 'param' && !sharedSet.has(x))))];
    const what = b.layer !== null ? `layers[${b.layer}]` : b.name === 'embed' ? 'before the first layer' : b.name === 'head' ? 'the head: final norm, loss and constraint terms' : 'every step';
    out.push(`def ${fn}(p, ctx, ${inputs.map((x) => names.of(x)).join(', ')}):`);
    out.push(`    """Stage ${stage.name}, ${what}: ${b.steps.length} step${b.steps.length === 1 ? '' : 's'}."""`);
    for (const s of b.steps) out.push(...stepLines(stage, s, kinds, names));
    out.push(`    return ${outputs.length ? outputs.map((x) => names.of(x)).join(', ') : 'None'}\n\n`);
    blockEntries.push(
      `        Block(${py(b.name === 'all' ? 'all' : b.layer !== null ? `layers[${b.layer}]` : b.name)}, ${fn}, ${b.layer ?? 'None'},\n` +
        `              inputs=${py(inputs)},\n              outputs=${py(outputs)},\n              params=${py(params)}),`,
    );
  });
  out.push(`${graphName(stage)} = StageGraph(`);
  out.push(`    ${py(stage.name)},`);
  out.push(`    blocks=[\n${blockEntries.join('\n')}\n    ],`);
  out.push(`    loss=${py(stage.loss)},`);
  out.push(`    exposed=${py(exposed)},`);
  out.push(`    constraint_terms=${py(constraintTerms)},`);
  out.push(`    shared=${py(shared)},`);
  out.push(')\n\n');
  return { text: out.join('\n'), blocks: blocks.length };
}

function stepLines(stage: PlanStage, s: PlanStep, kinds: Map<string, string>, names: Names): string[] {
  const spec = OPS[s.op];
  if (!spec) throw new TorchEmitError(`stage ${stage.name}: step ${s.node} has op '${s.op}', which the torch target does not emit (it reads the -O0 step list)`);
  if (s.op === 'lm_head_xent' && s.attrs.logitsGiven === true) throw new TorchEmitError(`stage ${stage.name}: step ${s.node}: lm_head_xent with given logits is not emitted`);
  const args = s.inputs.map((x) => (kinds.get(x) === 'param' ? `p[${py(x)}]` : names.of(x)));
  if (spec.ctx) args.push('ctx');
  for (const [kw, attr] of spec.kw) {
    const v = s.attrs[attr];
    if (v === undefined) {
      if (attr === 'causal' || attr === 'renormalize') continue; // the op's default (true)
      if (attr === 'activation' || attr === 'matrix' || attr === 'norm') continue;
      throw new TorchEmitError(`stage ${stage.name}: step ${s.node} (${s.op}) has no attrs.${attr}`);
    }
    args.push(`${kw}=${py(v)}`);
  }
  const lhs = s.outputs.map((o) => names.of(o)).join(', ');
  const where = [s.node, s.site, s.adapter].filter(Boolean).join(' ');
  const lines = [`    ${lhs} = ${s.op}(${args.join(', ')})  # ${where}`];
  if (s.op === 'topk_gate') lines.push(`    ctx.route(${py(s.adapter ?? s.node)}, ${py(s.site ?? '')}, ${names.of(s.outputs[0]!)})`);
  return lines;
}

/** Plan value ids as Python identifiers, unique within a stage. */
class Names {
  private readonly byId = new Map<string, string>();
  private readonly used = new Set(['p', 'ctx', ...Object.keys(OPS), ...PY_KEYWORDS]);

  of(id: string): string {
    let n = this.byId.get(id);
    if (n) return n;
    const base = pyName(id);
    n = base;
    for (let k = 2; this.used.has(n); k++) n = `${base}_${k}`;
    this.used.add(n);
    this.byId.set(id, n);
    return n;
  }
}

const PY_KEYWORDS = ['False', 'None', 'True', 'and', 'as', 'assert', 'async', 'await', 'break', 'class', 'continue', 'def', 'del', 'elif', 'else', 'except', 'finally', 'for', 'from', 'global', 'if', 'import', 'in', 'is', 'lambda', 'nonlocal', 'not', 'or', 'pass', 'raise', 'return', 'try', 'while', 'with', 'yield'];

function pyName(id: string): string {
  const n = id.replace(/[^A-Za-z0-9_]+/g, '_').replace(/^_+|_+$/g, '');
  return !n ? 'v' : /^[0-9]/.test(n) ? `v_${n}` : n;
}

// --- pipeline.py ----------------------------------------------------------------------------------------------

function emitPipeline(plan: Plan, opts: TorchEmitOptions, recompute: (s: PlanStage) => boolean): string {
  const parameters = plan.parameters.map((p) => ({
    id: p.id,
    shape: p.shape,
    owner: p.owner,
    role: p.role,
    ...(p.site !== undefined ? { site: p.site } : {}),
    ...(p.hfName !== undefined ? { hfName: p.hfName } : {}),
    init: p.init,
    states: p.states,
  }));
  const stages = plan.stages.map((s) => ({
    name: s.name,
    index: s.index,
    settings: s.settings,
    trainable: s.optimizer.params,
    data: s.data,
    recompute: recompute(s),
    adapters: s.adapters,
    entry: s.entry,
    exit: s.exit,
    constraints: s.constraints,
  }));
  const lines = [
    `"""Pipeline ${plan.pipeline} as data, generated by mcpc from its plan${opts.source ? ` (${opts.source})` : ''}.`,
    '',
    'PLAN holds what the trainer needs of the plan: the model, every parameter (shape, owner, initialiser, its',
    'state in each stage: trainable, frozen, merged, dropped, absent), the adapters, the data, each stage (its',
    'settings, trainable tensors, entry and exit transitions, constraints) and the exports.',
    '"""',
    '',
    `# The project root, relative to this folder: data, model and export paths in PLAN resolve against it.`,
    `PROJECT_ROOT = ${py(opts.projectRoot)}`,
    '',
    `MODEL = ${py(plan.model, 0)}`,
    '',
    `DATA = ${py(plan.data, 0)}`,
    '',
    `ADAPTERS = ${py(plan.adapters, 0)}`,
    '',
    `PARAMETERS = ${py(parameters, 0, 1)}`,
    '',
    `STAGES = ${py(stages, 0)}`,
    '',
    `EXPORTS = ${py(plan.exports, 0)}`,
    '',
    '# The tokenizer files a merged export writes for a byte-tokenizer model, by name: their exact text (UTF-8),',
    '# as the TypeScript runtime writes them (src/plan/byte-tokenizer.ts). Empty for other tokenizers.',
    `TOKENIZER_FILES = ${pyTextMap(plan.model.tokenizer.kind === 'bytes' ? byteTokenizerFileTexts(plan.model.config) : {})}`,
    '',
    `PLAN = {"pipeline": ${py(plan.pipeline)}, "model": MODEL, "data": DATA, "adapters": ADAPTERS, "parameters": PARAMETERS, "stages": STAGES, "exports": EXPORTS, "tokenizerFiles": TOKENIZER_FILES}`,
    '',
  ];
  return lines.join('\n');
}

/** Texts by name as a Python dict of string literals, each text one source line per line of it. */
function pyTextMap(texts: Record<string, string>): string {
  const entries = Object.entries(texts);
  if (!entries.length) return '{}';
  return `{\n${entries.map(([name, text]) => `    ${pyString(name)}: (\n${text.split(/(?<=\n)/).map((l) => `        ${pyString(l)}`).join('\n')}\n    ),`).join('\n')}\n}`;
}

/** A Python string literal in printable ASCII: anything else escaped (\xNN, \uNNNN, \UNNNNNNNN). */
export function pyString(s: string): string {
  let out = '"';
  for (const ch of s) {
    const c = ch.codePointAt(0)!;
    if (ch === '"' || ch === '\\') out += `\\${ch}`;
    else if (ch === '\n') out += '\\n';
    else if (c >= 0x20 && c < 0x7f) out += ch;
    else if (c < 0x100) out += `\\x${c.toString(16).padStart(2, '0')}`;
    else if (c < 0x10000) out += `\\u${c.toString(16).padStart(4, '0')}`;
    else out += `\\U${c.toString(16).padStart(8, '0')}`;
  }
  return `${out}"`;
}

/**
 * A Python literal. Containers break over lines (4-space indent) when they do not fit on one, except below
 * `flatBelow` levels of nesting from here, which stay on one line (one parameter per line, say).
 */
export function py(v: unknown, indent = -1, flatBelow = Infinity): string {
  const one = flat(v);
  if (indent < 0 || one.length + indent * 4 <= 110 || flatBelow <= 0 || v === null || typeof v !== 'object') return one;
  const pad = ' '.repeat((indent + 1) * 4);
  const end = ' '.repeat(indent * 4);
  if (Array.isArray(v)) return `[\n${v.map((x) => pad + py(x, indent + 1, flatBelow - 1)).join(',\n')},\n${end}]`;
  const entries = Object.entries(v as Record<string, unknown>).filter(([, x]) => x !== undefined);
  return `{\n${entries.map(([k, x]) => `${pad}${JSON.stringify(k)}: ${py(x, indent + 1, flatBelow - 1)}`).join(',\n')},\n${end}}`;
}

function flat(v: unknown): string {
  if (v === null || v === undefined) return 'None';
  if (v === true) return 'True';
  if (v === false) return 'False';
  if (typeof v === 'number') {
    if (!Number.isFinite(v)) return Number.isNaN(v) ? 'float("nan")' : v > 0 ? 'float("inf")' : '-float("inf")';
    return String(v);
  }
  if (typeof v === 'string') return JSON.stringify(v);
  if (Array.isArray(v)) return `[${v.map(flat).join(', ')}]`;
  if (typeof v === 'object') {
    return `{${Object.entries(v as Record<string, unknown>).filter(([, x]) => x !== undefined).map(([k, x]) => `${JSON.stringify(k)}: ${flat(x)}`).join(', ')}}`;
  }
  throw new TorchEmitError(`cannot write ${typeof v} as a Python literal`);
}
