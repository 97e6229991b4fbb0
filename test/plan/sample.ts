/**
 * Hand-written plans typed against src/plan/types.ts, for checking that the schema says what the types say.
 *
 * `complete` is typed `Complete<Plan>`: every optional property, at every depth, must be present, so adding
 * an optional field to the plan types fails to type-check here until the sample shows it (and the schema
 * test then checks that the schema accepts it). Its arrays hold one entry per member of each union
 * (initialisers, transitions, warmups). `minimal` is a `Plan` with no optional property at all.
 */
import type { Plan, PlanStage, PlanStep } from '../../src/plan/types.js';

/** T with every optional property required, recursively (unions stay unions, tuples stay tuples). */
export type Complete<T> = T extends readonly unknown[]
  ? { [K in keyof T]-?: Complete<T[K]> }
  : T extends object
    ? { [K in keyof T]-?: Complete<NonNullable<T[K]>> }
    : T;

const hex = 'ab'.repeat(32);

const step = (node: string, op: PlanStep['op'], extra: Partial<PlanStep> = {}): PlanStep => ({ node, op, kernel: op, inputs: [], outputs: [], attrs: {}, flops: 0, bytes: 0, ...extra });

export const complete: Complete<Plan> = {
  format: 'mcpc-plan',
  version: 1,
  pipeline: 'sample',
  compiler: { version: '0.1.0', optLevel: 1, passes: [{ name: 'expand-sites', description: 'expand', required: true, ran: true, changes: 2, notes: ['2 sites'] }] },
  sources: [{ path: 'pipelines/sample.mcp', sha256: hex }],
  model: {
    name: 'base',
    source: { kind: 'hf', path: 'models/tiny' },
    config: { arch: 'qwen2', vocab: 256, hidden: 8, layers: 1, heads: 2, kvHeads: 1, headDim: 4, ffn: 16, tied: true, qkvBias: false, ropeTheta: 10000, rmsEps: 1e-6, maxPositions: 64 },
    tokenizer: { kind: 'hf', path: 'models/tiny' },
  },
  data: [{ name: 'd', kind: 'jsonl', path: 'data/d.jsonl', format: 'chat', maxRecords: 10 }],
  probes: [{ name: 'p', kind: 'multiple_choice', data: 'd', maxExamples: 5 }],
  adapters: [
    { name: 'k', type: 'moe_lora', r: 2, alpha: 4, scale: 2, rslora: false, dropout: 0, experts: 2, topK: 1, shared: 1, router: 'softmax', renormalize: true, loadBalance: 0.01, routerNoise: 0, sites: ['layers[0].mlp.up'] },
  ],
  parameters: [
    { id: 'w', shape: [8, 16], owner: 'base', role: 'weight', site: 'layers[0].mlp.up', hfName: 'model.layers.0.mlp.up_proj.weight', init: { kind: 'pretrained' }, states: { s1: 'frozen', s2: 'frozen' } },
    { id: 'a', shape: [2, 8], owner: 'k', role: 'lora_A', site: 'layers[0].mlp.up', hfName: 'a', init: { kind: 'kaiming_uniform', a: Math.sqrt(5) }, states: { s1: 'trainable', s2: 'folded' } },
    { id: 'b', shape: [16, 2], owner: 'k', role: 'lora_B', site: 'layers[0].mlp.up', hfName: 'b', init: { kind: 'zeros' }, states: { s1: 'trainable', s2: 'merged' } },
    { id: 'r', shape: [2, 8], owner: 'k', role: 'router_W', site: 'layers[0].mlp.up', hfName: 'r', init: { kind: 'normal', std: 0.02 }, states: { s1: 'trainable', s2: 'dropped' } },
    { id: 'n', shape: [8], owner: 'base', role: 'norm', site: 'layers[0]', hfName: 'n', init: { kind: 'ones' }, states: { s1: 'frozen', s2: 'absent' } },
  ],
  kernels: [{ id: 'fused_0', op: 'fused_elementwise', reference: 'ref.fused_elementwise', wgsl: { forward: 'fn f() {}', backward: 'fn b() {}' }, attrs: { expr: 'x * y' } }],
  stages: [stage('s1'), stage('s2')],
  exports: [{ format: 'peft', adapters: ['k'], path: 'out/sample' }],
};

function stage(name: string): Complete<PlanStage> {
  return {
    name,
    index: name === 's1' ? 0 : 1,
    settings: {
      epochs: 1,
      steps: 10,
      lr: 2e-4,
      schedule: { kind: 'cosine', warmup: name === 's1' ? { percent: 3 } : { steps: 2 }, minLr: 0 },
      batch: 4,
      microBatch: 2,
      maxLen: 16,
      weightDecay: 0,
      optimizer: name === 's1' ? { kind: 'adamw', beta1: 0.9, beta2: 0.999, eps: 1e-8 } : { kind: 'sgd', momentum: 0.9 },
      gradClip: 1,
      seed: 42,
      precision: 'f32',
      memoryBytes: 1 << 30,
      checkpointEvery: 0,
      packing: false,
      loss: 'response',
      recompute: false,
      maxBadSteps: 5,
      shuffle: true,
    },
    trainBase: false,
    trainable: ['a', 'b'],
    data: ['d'],
    adapters: { trainable: ['k'], frozen: [], folded: [], merged: [], dropped: [], inactive: [] },
    entry: [{ op: 'fold', adapter: 'k', sites: ['layers[0].mlp.up'], note: 'W += s B A' }],
    exit: [
      { op: 'merge', adapter: 'k', part: 'shared', sites: ['layers[0].mlp.up'] },
      { op: 'drop', adapter: 'k', part: 'experts', condition: { metric: 'load', op: '<', value: 0.01 } },
      { op: 'freeze', adapter: 'k' },
      { op: 'unfreeze', adapter: 'k' },
    ],
    constraints: [{ kind: 'orthogonal', target: 'k', others: ['j'], matrix: 'A', weight: 1, norm: 'l1', sites: ['layers[0].mlp.up'] }],
    evals: [{ probes: ['p'], every: 5 }],
    values: [
      { id: 'tokens', shape: ['T'], dtype: 'i32', kind: 'input' },
      { id: 'x', shape: ['T', 8], dtype: 'f32', kind: 'activation' },
    ],
    loss: 'loss',
    forward: [{ node: 'n1', op: 'embedding', kernel: 'embedding', inputs: ['tokens'], outputs: ['x'], attrs: { scale: 1 }, site: 'embed', adapter: 'k', layer: 0, flops: 10, bytes: 64 }],
    backward: [{ node: 'n1', kernel: 'embedding.backward', gradInputs: ['x'], flops: 10 }],
    optimizer: { kind: 'adamw', fused: true, dispatches: 1, params: ['a', 'b'], layout: [{ param: 'a', offset: 0, size: 16 }], size: 64, align: 16 },
    memory: {
      microBatch: 2,
      recompute: true,
      budget: 1 << 30,
      buffers: [{ id: 'b0', bytes: 64, values: ['x'], live: [0, 3], spans: [[0, 3]] }],
      bytes: { params: 1, grads: 1, optimizer: 2, activations: 64, peak: 68 },
      recomputed: { nodes: 1, flops: 5 },
      notes: ['fits'],
    },
    estimates: {
      tokensPerMicroBatch: 32,
      microBatchesPerStep: 2,
      flopsPerStep: 30,
      forwardFlopsPerStep: 10,
      backwardFlopsPerStep: 10,
      recomputeFlopsPerStep: 10,
      bytesPerStep: 100,
      dispatchesPerStep: 5,
      kernels: 3,
      peakBytes: 68,
      trainableParams: 48,
    },
  };
}

/** The other members of unions that hold one value in `complete`. */
export const variants: ((p: Plan) => void)[] = [
  (p) => void (p.model.source = { kind: 'builtin', name: 'tiny' }),
  (p) => void (p.model.tokenizer = { kind: 'bytes' }),
  (p) => void (p.model.tokenizer = { kind: 'unspecified' }),
  (p) => void (p.compiler.optLevel = 0),
];

export const minimal: Plan = {
  format: 'mcpc-plan',
  version: 1,
  pipeline: 'minimal',
  compiler: { version: '0.1.0', optLevel: 0, passes: [] },
  sources: [],
  model: {
    name: 'base',
    source: { kind: 'builtin', name: 'tiny' },
    config: { arch: 'llama', vocab: 16, hidden: 4, layers: 1, heads: 1, kvHeads: 1, headDim: 4, ffn: 8, tied: false, qkvBias: false, ropeTheta: 10000, rmsEps: 1e-5, maxPositions: 8 },
    tokenizer: { kind: 'unspecified' },
  },
  data: [{ name: 'd', kind: 'text', path: 'd.txt', format: 'text' }],
  probes: [{ name: 'p', kind: 'perplexity', data: 'd' }],
  adapters: [],
  parameters: [{ id: 'w', shape: [4, 4], owner: 'base', role: 'weight', init: { kind: 'pretrained' }, states: { only: 'trainable' } }],
  kernels: [{ id: 'gemm', op: 'linear', reference: 'ref.linear' }],
  stages: [
    {
      name: 'only',
      index: 0,
      settings: {
        epochs: 1,
        lr: 1e-3,
        schedule: { kind: 'constant', warmup: { steps: 0 }, minLr: 0 },
        batch: 1,
        microBatch: 1,
        maxLen: 8,
        weightDecay: 0,
        optimizer: { kind: 'sgd', momentum: 0 },
        gradClip: 0,
        seed: 0,
        precision: 'f32',
        checkpointEvery: 0,
        packing: false,
        loss: 'all',
        recompute: false,
        maxBadSteps: 1,
        shuffle: false,
      },
      trainBase: true,
      trainable: ['w'],
      data: ['d'],
      adapters: { trainable: [], frozen: [], folded: [], merged: [], dropped: [], inactive: [] },
      entry: [],
      exit: [],
      constraints: [],
      evals: [],
      values: [],
      loss: 'loss',
      forward: [step('n0', 'linear')],
      backward: [],
      optimizer: { kind: 'sgd', fused: false, dispatches: 1, params: ['w'] },
      memory: { microBatch: 1, recompute: false, buffers: [], bytes: { params: 64, grads: 64, optimizer: 0, activations: 0, peak: 128 }, notes: [] },
      estimates: {
        tokensPerMicroBatch: 8,
        microBatchesPerStep: 1,
        flopsPerStep: 0,
        forwardFlopsPerStep: 0,
        backwardFlopsPerStep: 0,
        recomputeFlopsPerStep: 0,
        bytesPerStep: 0,
        dispatchesPerStep: 2,
        kernels: 2,
        peakBytes: 128,
        trainableParams: 16,
      },
    },
  ],
  exports: [],
};
