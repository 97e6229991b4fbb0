/**
 * The plan executor: runs one stage of a compiled plan on a tfjs backend (`cpu` by default) with that
 * backend's kernel table (the reference kernels of ./kernels/reference.ts on `cpu`; see the hooks below).
 *
 *     const runner = await createStageRunner(plan, 'aggregate', { root, totalSteps });
 *     for (const step of loader.steps()) {
 *       const r = await runner.step(step.microBatches);   // forward, backward, AdamW (or a skipped NaN step)
 *       log(r.loss, r.lr, r.gradNorm, r.applied);
 *     }
 *     const report = await runner.applyExit();             // merge / drop / freeze of the stage's then-block
 *     const next = await createStageRunner(plan, 'align', { root, parameters: await runner.parameters() });
 *     runner.dispose();
 *
 * The API (every method that reads tensor values is asynchronous: see "Reads" below):
 *   createStageRunner(plan, stage, {backend?, root?, totalSteps?, parameters?})   a runner for one stage
 *   await runner.step(microBatches, {step?})   one optimizer step over the micro-batches (gradient accumulation)
 *   await runner.gradients(microBatches, {step?})  the loss and every trainable gradient of a training step
 *                                              (LoRA dropout drawn at `step`, default the schedule position),
 *                                              without updating anything
 *   await runner.evalLoss(microBatches)        the loss (and its parts) without gradients
 *   await runner.forward(microBatch, ids)      any values of the step graph (activations, parameters) as arrays
 *   await runner.applyExit()                   the stage's exit transitions, applied to the parameters
 *   await runner.parameters()                  every tensor by plan parameter id, as Float32Arrays (copies)
 *   await runner.loadParameters(map)           replace tensors by plan id (rebuilds the folded stage weights)
 *   await runner.optimizerState() / loadOptimizerState(s)   AdamW moments, step count, schedule position
 *   runner.routerLoad() / loadRouterLoad(l)    the share of routed tokens each expert received so far (kept in checkpoints)
 *   runner.dispose()                           free every tensor the runner holds
 *
 * Reads: values leave the backend only through `await tensor.data()`. tfjs-backend-webgpu's synchronous read
 * (`dataSync`) needs an OffscreenCanvas, which Node lacks (Dawn's Node binding maps buffers only
 * asynchronously), so with asynchronous reads the same runner trains on `cpu`, `wasm` and `webgpu`. `step`,
 * `applyExit` and `loadParameters` change the runner: await each before any other call (reads such as
 * `forward` may overlap one another).
 *
 * What it does, in order:
 *  1. Parameters. The runner holds every plan parameter whose state in the stage is trainable, frozen or
 *     folded. Each comes from `parameters` when given (e.g. the previous stage's runner), else from the
 *     model checkpoint (`pretrained`: weights/hf.ts, `<root>/<model path>`), else from its initialiser,
 *     a pure function of (seed, parameter id) (weights/init.ts, Philox4x32-10; the seed is the first
 *     stage's `seed` unless given), so every stage and every optimisation level starts from the same
 *     tensors whichever stage creates them. Given tensors that the stage does not use are carried through unchanged and
 *     returned by `parameters()`, so one map can be passed from stage to stage.
 *  2. Entry transitions: `fold` builds the stage copy `<site>.weight.folded` = W + s·B·A of each site's base
 *     weight (adapters in the order listed; weights/merge.ts's arithmetic); the copies are constants of the
 *     stage (no gradient).
 *  3. A micro-batch's forward runs the plan's steps in order over a map of values (inputs `tokens`, `labels`,
 *     `loss_mask` from the batch; parameters; folded constants; activations); the stage's `loss` value is
 *     the objective. Gradients of the trainable tensors come from tfjs autodiff over that function.
 *  4. An optimizer step (./optimizer.ts): the loss and gradients are averaged over the micro-batches (the
 *     sum of micro-batch mean losses / count, like Hugging Face's Trainer), the global gradient norm is
 *     clipped to `grad_clip`, and AdamW (or SGD) updates every trainable tensor with the learning rate of
 *     the schedule at this step. If the loss or the gradient norm is NaN or Inf, nothing is updated:
 *     weights, moments and the AdamW step count stay bit-identical, the result says `applied: false`, and
 *     only the schedule position advances (the step's data was consumed).
 *  5. Exit transitions: `merge` adds s·B·A into each site's base weight (weights/merge.ts, the same
 *     arithmetic as the merged export; the adapter's own tensors stay in
 *     `parameters()` for inspection; later stages mark them merged and never apply them again); `drop`
 *     removes the adapter's tensors (`part: experts`: only the router and routed experts); a conditional
 *     `drop X.experts where load < v` drops, per site, the experts whose share of the routed tokens during
 *     the stage compares true: their A and B become 0 and their router bias −1e9, so the router can never
 *     select them again (exp(−1e9) and sigmoid(−1e9) are exactly 0 in f32) while the plan's shapes stay
 *     as compiled; `freeze` / `unfreeze` change nothing in the tensors (the next stage's plan says which
 *     are trainable).
 *
 * Routed-token load (for conditional drops): after every `topk_gate` of an applied training step, each
 * expert counts the real tokens (segment > 0) whose top-k includes it with a gate > 0; its load is that
 * count over all such assignments at the site (so the loads of a site sum to 1).
 *
 * LoRA dropout (./dropout.ts): in training steps only (`step`, `gradients`), the input of each adapter's
 * A projection (`lora_down`, `expert_down`, `moe_down_batched`, `moe_down_routed` of an adapter with dropout p > 0) is
 * multiplied by an inverted-dropout mask (0 with probability p, else 1/(1−p)) drawn from (stage seed, step,
 * micro-batch, adapter, site, element); the base path and the router read x. The executor applies the
 * mask before calling the kernel table, so the reference, wasm and webgpu tables share the semantics.
 * `forward`, `evalLoss` (probes, the merge check) apply none. A `concat_linear` holding such an adapter's A
 * (the compiler no longer writes one: concat-base-adapter) is refused in training.
 *
 * Router noise (./dropout.ts): in training steps only, each `router` of a mixture with router_noise σ > 0
 * gets ε ~ N(0, σ²) [T, E], drawn from (stage seed, step, micro-batch, adapter, site, element) under its own
 * stream tag, as one more input (step attrs.noise), which the kernel adds to the logits before the
 * activation; the reference kernel does it and the CPU and WebGPU tables run the reference router.
 * `forward`, `evalLoss` apply none. A `concat_linear` holding such a router (the compiler no longer writes
 * one: concat-base-adapter) is refused in training.
 *
 * Not here: mixed precision (`precision` bf16/f16 means f16 tensor-core products on a webgpu adapter with subgroup matrices, else all f32), the training loop, checkpoints, evaluation
 * probes and exports (their own modules drive a runner through this API).
 *
 * Memory: every forward and backward runs inside tf.tidy, which cannot span an await: what must be read
 * after it (the loss and its parts, a topk_gate's gates, the values `forward` returns) leaves the scope as
 * kept clones, is read, then disposed (also when a read fails); gradients are kept until the optimizer
 * update. The runner keeps only parameters, folded constants and optimizer state, so
 * tf.memory().numTensors is the same after every step.
 */
import { HELD_STATES, heldIn, isRoutedPart } from '../plan/pipeline.js';
import type { Plan, PlanParam, PlanStage, PlanStep } from '../plan/types.js';
import type { MicroBatch } from './data/batch.js';
import { cpuKernelTable } from './kernels/cpu.js';
import { adamwFlatCpu, releaseFusedGrads } from './kernels/cpu-ops.js';
import { dropoutMask, routerNoise, type DropoutDraw } from './dropout.js';
import { reference, type Kernel, type KernelContext } from './kernels/reference.js';
import { webgpuKernelTable } from './kernels/webgpu.js';
import { adamwFlat } from './webgpu/kernels/adamw.js';
import { probeF16 } from './webgpu/gemm-f16.js';
import { openDawn } from './webgpu/device.js';
import { limitsProblem } from './webgpu/limits.js';
import { f16MatmulOn, useF16Matmul } from './webgpu/matmul-f16.js';
import { clipFactor, flat, globalNorm, learningRate, needsTotal, unflat, update, zeroState, type AdamWStep, type SlotState } from './optimizer.js';
import { initBackend, tf, type BackendName, type Tensor } from './tfjs/index.js';
import { readableCopy } from './tfjs/share.js';
import { heapView } from './tfjs/wasm-extra.js';
import { loadBaseParameters } from './weights/hf.js';
import { initParameter } from './weights/init.js';
import { mergeLora } from './weights/merge.js';

export interface StageRunnerOptions {
  /** tfjs backend; default `cpu`. */
  backend?: BackendName;
  /** Project root: the model path of a Hugging Face source resolves against it. Default: the working directory. */
  root?: string;
  /** Optimizer steps of the stage (for the schedule). Default: the stage's `steps`; needed otherwise unless the schedule is constant without a percentage warmup. */
  totalSteps?: number;
  /** Initial tensors by plan parameter id (e.g. the previous stage's `parameters()`); the rest are initialised. */
  parameters?: ParameterMap;
  /** Seed of the initialisers (weights/init.ts). Default: the first stage's `seed`, the same for every stage. */
  seed?: number;
  /**
   * webgpu only: the linear products' input precision. `auto` (default): f16 on tensor cores (f32
   * accumulation, f32 master weights; webgpu/matmul-f16.ts) when the stage's `precision` is bf16 or f16 and
   * the adapter has subgroup matrices (WGSL has no bf16), else f32. `MCPC_F16_MATMUL=0` forces f32. `keep`:
   * leave the switch as the caller set it (webgpu/matmul-f16.ts `useF16Matmul`).
   */
  matmul?: 'auto' | 'f32' | 'f16' | 'keep';
}

export type ParameterMap = ReadonlyMap<string, Float32Array> | Readonly<Record<string, Float32Array>>;

/** The objective of a micro-batch (or the mean over several) and its weighted parts. */
export interface LossParts {
  loss: number;
  /** Cross-entropy of the language-model head. */
  ce: number;
  /** Weighted orthogonality penalties. */
  constraint: number;
  /** Weighted load-balancing terms of mixtures. */
  balance: number;
}

export interface StepResult extends LossParts {
  /** False when the step was skipped (NaN or Inf loss or gradient): nothing changed. */
  applied: boolean;
  /** Why the step was skipped. */
  skipped?: string;
  /** Schedule position of this step (0-based). */
  step: number;
  lr: number;
  /** Global gradient norm before clipping. */
  gradNorm: number;
  microBatches: number;
  /** Targets in the loss over all micro-batches. */
  lossTokens: number;
}

export interface GradientResult extends LossParts {
  /** Mean gradient over the micro-batches, by trainable parameter id. */
  grads: Map<string, Float32Array>;
}

export interface ExitReport {
  merged: { adapter: string; part?: 'shared'; sites: string[] }[];
  /** Parameter ids removed. */
  dropped: string[];
  /** Conditional drops: per site, the experts dropped and every expert's load. */
  droppedExperts: { adapter: string; site: string; experts: number[]; load: number[]; kept?: number[] }[];
  frozen: string[];
  unfrozen: string[];
}

export interface OptimizerState {
  /** Optimizer steps applied (AdamW's t). */
  t: number;
  /** Schedule position: steps taken, applied or skipped. */
  scheduleStep: number;
  slots: Map<string, { m: Float32Array; v?: Float32Array }>;
}

/** The load of one mixture site: tokens routed to each expert. */
export interface RouterLoad {
  adapter: string;
  site: string;
  /** Per expert: its share of the site's routed assignments (sums to 1 once any token was routed). */
  share: number[];
  /** Per expert: assignments counted. */
  counts: number[];
}

/** A plan this runner cannot execute (a compiler bug or a hand-edited plan), or misuse of the API. */
export class RunnerError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RunnerError';
  }
}

export interface StageRunner {
  readonly plan: Plan;
  readonly stage: PlanStage;
  /** Trainable parameter ids, in the plan's optimizer order. */
  readonly trainable: readonly string[];
  step(microBatches: readonly MicroBatch[], opts?: { step?: number }): Promise<StepResult>;
  gradients(microBatches: readonly MicroBatch[], opts?: { step?: number }): Promise<GradientResult>;
  evalLoss(microBatches: MicroBatch | readonly MicroBatch[]): Promise<LossParts>;
  forward(microBatch: MicroBatch, ids: readonly string[]): Promise<Map<string, Float32Array>>;
  applyExit(): Promise<ExitReport>;
  parameters(): Promise<Map<string, Float32Array>>;
  loadParameters(map: ParameterMap): Promise<void>;
  optimizerState(): Promise<OptimizerState>;
  loadOptimizerState(s: OptimizerState): void;
  routerLoad(): RouterLoad[];
  /** The counts routerLoad() gave at a checkpoint: a resumed stage's conditional drops count every step. */
  loadRouterLoad(loads: readonly { adapter: string; site: string; counts: readonly number[] }[]): void;
  dispose(): void;
}

/** Creates the runner of `stageName` (see the file head). Selects and initialises the backend first. */
export async function createStageRunner(plan: Plan, stageName: string, opts: StageRunnerOptions = {}): Promise<StageRunner> {
  await initBackend(opts.backend ?? 'cpu');
  if (tf.getBackend() === 'webgpu') {
    // Every tensor must fit one storage binding: refused here, naming them, before any weight is uploaded.
    const gpu = await openDawn();
    const why = 'unavailable' in gpu ? undefined : limitsProblem(plan, stageName, gpu.limits);
    if (why) throw new RunnerError(why);
    if (opts.matmul !== 'keep') await chooseMatmul(plan.stages.find((s) => s.name === stageName)?.settings.precision ?? 'f32', opts.matmul ?? 'auto');
  }
  const runner = new Runner(plan, stageName, opts);
  try {
    await runner.buildFolded();
  } catch (e) {
    runner.dispose();
    throw e;
  }
  return runner;
}

/** Switches the webgpu products to f16 tensor cores or f32 (StageRunnerOptions.matmul); returns which. */
export async function chooseMatmul(precision: 'f32' | 'bf16' | 'f16', want: 'auto' | 'f32' | 'f16'): Promise<'f32' | 'f16'> {
  let on = want === 'f16' || (want === 'auto' && precision !== 'f32' && process.env.MCPC_F16_MATMUL !== '0');
  if (on) {
    const sup = await probeF16((tf.backend() as unknown as { device: unknown }).device);
    if (!sup.ok && want === 'f16') throw new RunnerError(`f16 products requested, but this adapter cannot run them: ${sup.why}`);
    on = sup.ok;
  }
  useF16Matmul(on);
  return on ? 'f16' : 'f32';
}

/** The input precision of the webgpu backend's linear products now ('f32' off webgpu). */
export function matmulPrecision(): 'f32' | 'f16' {
  return tf.getBackend() === 'webgpu' && f16MatmulOn() ? 'f16' : 'f32';
}

const entries = (m: ParameterMap): [string, Float32Array][] => (m instanceof Map ? [...m.entries()] : Object.entries(m as Record<string, Float32Array>));
const numel = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);
/** A router bias at or below this is an expert a `drop X.experts where ...` barred (it sets -1e9). */
const BARRED = -1e8;
/** Ops whose first input is the adapter branch's x (dropped in training). */
const DROPPED_INPUT = new Set<PlanStep['op']>(['lora_down', 'expert_down', 'moe_down_batched', 'moe_down_routed']);

class Runner implements StageRunner {
  readonly stage: PlanStage;
  readonly trainable: string[];
  private readonly info = new Map<string, PlanParam>();
  private readonly params = new Map<string, Tensor>();
  private readonly carried = new Map<string, Float32Array>();
  private readonly consts = new Map<string, Tensor>();
  private readonly slots = new Map<string, SlotState>();
  /**
   * On webgpu with AdamW, the moments of every trainable tensor as two flat vectors in `trainable` order
   * (then `slots` holds none of them): kept flat from step to step, so the one-dispatch update
   * (webgpu/kernels/adamw.ts) neither concatenates nor splits them. Whatever reads or edits per-tensor
   * moments (optimizerState, loadOptimizerState, exit transitions) calls `unflattenSlots` first.
   */
  private flatSlots: { m: Tensor; v: Tensor } | undefined;
  private readonly producer = new Map<string, PlanStep>();
  private readonly lossStep: PlanStep;
  private readonly load = new Map<string, RouterLoad>();
  private readonly totalSteps: number;
  private t = 0;
  private scheduleStep = 0;
  private exited = false;
  private disposed = false;
  // WebGPU hook (issue 5): on the webgpu backend the steps run the WGSL kernel table (fused_elementwise: the plan's
  // own WGSL; MCPC_FUSED_WGSL=0 runs the reference) and AdamW is one dispatch.
  // CPU hook (issue 5): on wasm the fused CPU kernel table (kernels/cpu.ts; MCPC_KERNELS=reference|fused overrides).
  private readonly kernels: Record<PlanStep['op'], Kernel>;
  /** Whether the steps run the WebGPU table (and AdamW is one dispatch). */
  private readonly webgpu: boolean;
  /** Adapters with dropout > 0, by name. */
  private readonly dropout: Map<string, number>;
  /** Mixtures with router_noise > 0 (the std), by name. */
  private readonly routerNoise: Map<string, number>;

  constructor(
    readonly plan: Plan,
    stageName: string,
    opts: StageRunnerOptions,
  ) {
    this.webgpu = tf.getBackend() === 'webgpu';
    this.kernels = this.webgpu ? webgpuKernelTable(plan) : cpuKernelTable(plan);
    this.dropout = new Map(plan.adapters.filter((a) => a.dropout > 0).map((a) => [a.name, a.dropout]));
    this.routerNoise = new Map(plan.adapters.filter((a) => a.type === 'moe_lora' && a.routerNoise > 0).map((a) => [a.name, a.routerNoise]));
    const stage = plan.stages.find((s) => s.name === stageName);
    if (!stage) throw new RunnerError(`no stage '${stageName}' in the plan of ${plan.pipeline} (stages: ${plan.stages.map((s) => s.name).join(', ')})`);
    this.stage = stage;
    for (const p of plan.parameters) this.info.set(p.id, p);
    this.checkGraph();
    this.lossStep = this.producer.get(stage.loss)!;
    this.trainable = [...stage.optimizer.params];
    for (const id of this.trainable) if (this.info.get(id)?.states[stage.name] !== 'trainable') throw new RunnerError(`${stage.name}: optimizer parameter ${id} is not trainable in the stage`);

    const s = stage.settings;
    const total = opts.totalSteps ?? s.steps;
    if (total === undefined && needsTotal(s.schedule)) throw new RunnerError(`${stage.name}: the ${s.schedule.kind} schedule needs the stage's total steps (give totalSteps; the stage sets no 'steps')`);
    this.totalSteps = total ?? 1;

    this.materialise(opts);
    // The folded constants are built by createStageRunner (buildFolded reads tensors, which is asynchronous).
    for (const id of this.trainable) {
      const st = zeroState(s.optimizer, this.info.get(id)!.shape);
      tf.keep(st.m);
      if (st.v) tf.keep(st.v);
      this.slots.set(id, st);
    }
  }

  // --- setup ----------------------------------------------------------------------------------------------------

  /** Every step's op has a kernel, every input is defined before it is read, the loss is produced. */
  private checkGraph(): void {
    const st = this.stage;
    const defined = new Set<string>();
    const kinds = new Map(st.values.map((v) => [v.id, v.kind]));
    for (const v of st.values) if (v.kind !== 'activation') defined.add(v.id);
    for (const v of st.values) {
      if (v.kind === 'param') {
        const p = this.info.get(v.id);
        if (!p) throw new RunnerError(`${st.name}: value ${v.id} is a parameter the plan does not list`);
        if (!heldIn(p, st.name)) throw new RunnerError(`${st.name}: the graph reads ${v.id}, whose state in the stage is ${p.states[st.name] ?? 'absent'}`);
      }
      if (v.kind === 'input' && !['tokens', 'labels', 'loss_mask'].includes(v.id)) throw new RunnerError(`${st.name}: unknown input value '${v.id}' (the runtime provides tokens, labels, loss_mask)`);
    }
    for (const step of st.forward) {
      if (!(step.op in reference)) throw new RunnerError(`${st.name}: step ${step.node} has op '${step.op}', which has no kernel`);
      for (const i of step.inputs) if (!defined.has(i)) throw new RunnerError(`${st.name}: step ${step.node} (${step.op}) reads ${i} before it is written${kinds.has(i) ? '' : ' (not a value of the stage)'}`);
      for (const o of step.outputs) {
        defined.add(o);
        this.producer.set(o, step);
      }
    }
    const loss = this.producer.get(st.loss);
    if (!loss) throw new RunnerError(`${st.name}: no step writes the loss value '${st.loss}'`);
  }

  private materialise(opts: StageRunnerOptions): void {
    const st = this.stage;
    const given = new Map(opts.parameters ? entries(opts.parameters) : []);
    const seed = opts.seed ?? this.plan.stages[0]?.settings.seed ?? 0;
    let checkpoint: Map<string, Float32Array> | undefined;
    for (const p of this.plan.parameters) {
      const state = p.states[st.name] ?? 'absent';
      const g = given.get(p.id);
      if (!HELD_STATES.has(state)) {
        if (g) this.carried.set(p.id, g);
        continue;
      }
      let data: Float32Array;
      if (g) {
        if (g.length !== numel(p.shape)) throw new RunnerError(`parameter ${p.id}: ${g.length} values given, shape [${p.shape}] has ${numel(p.shape)}`);
        data = g;
      } else if (p.init.kind === 'pretrained') {
        checkpoint ??= loadBaseParameters(this.plan, opts.root ?? '.').weights;
        const v = checkpoint.get(p.id);
        if (!v) throw new RunnerError(`parameter ${p.id} is pretrained but the checkpoint of ${this.plan.model.name} does not provide it`);
        data = v;
      } else {
        data = initParameter(p, seed)!;
      }
      this.params.set(p.id, tf.keep(tf.tensor(data, p.shape, 'float32')));
    }
    // Given tensors the plan does not list at all: carried as they are.
    for (const [id, g] of given) if (!this.info.has(id)) this.carried.set(id, g);
  }

  /** Entry `fold` transitions: the stage copies `<site>.weight.folded` = W + Σ s·B·A. */
  async buildFolded(): Promise<void> {
    for (const t of this.consts.values()) t.dispose();
    this.consts.clear();
    const st = this.stage;
    for (const tr of st.entry) {
      if (tr.op !== 'fold') continue;
      // Rebuilt after the exit transitions (merges change the base): an adapter the exit dropped adds nothing.
      const gone = this.exited && this.plan.parameters.some((p) => p.owner === tr.adapter && !this.params.has(p.id));
      for (const site of tr.sites) {
        const id = `${site}.weight.folded`;
        if (gone) {
          if (!this.consts.has(id)) this.consts.set(id, tf.keep(this.heldTensor(`base.${site}.weight`, `fold ${tr.adapter}`).clone()));
          continue;
        }
        const W = this.consts.get(id) ?? this.heldTensor(`base.${site}.weight`, `fold ${tr.adapter}`);
        const next = tf.keep(await this.merged(W, tr.adapter, site, 'A', 'B', `fold ${tr.adapter}`));
        this.consts.get(id)?.dispose();
        this.consts.set(id, next);
      }
    }
    for (const v of st.values) if (v.kind === 'const' && !this.consts.has(v.id)) throw new RunnerError(`${st.name}: constant ${v.id} is read by the graph but no entry transition builds it`);
  }

  /** W + s·B·A for the adapter's tensors `a`, `b` at `site` (weights/merge.ts: f64 sums, one f32 rounding). */
  private async merged(W: Tensor, adapter: string, site: string, a: string, b: string, why: string): Promise<Tensor> {
    const A = this.heldTensor(`${adapter}.${site}.${a}`, why);
    const B = this.heldTensor(`${adapter}.${site}.${b}`, why);
    const [out, inF] = W.shape as number[];
    const [wd, ad, bd] = await Promise.all([W.data(), A.data(), B.data()]);
    const w = Float32Array.from(wd as Float32Array);
    mergeLora(w, ad as Float32Array, bd as Float32Array, this.adapterScale(adapter), out, inF);
    return tf.tensor2d(w, [out, inF]);
  }

  private adapterScale(name: string): number {
    const a = this.plan.adapters.find((x) => x.name === name);
    if (!a) throw new RunnerError(`no adapter '${name}' in the plan`);
    return a.scale;
  }

  private heldTensor(id: string, why: string): Tensor {
    const t = this.params.get(id);
    if (!t) throw new RunnerError(`${this.stage.name}: ${why} needs ${id}, which the stage does not hold`);
    return t;
  }

  // --- forward --------------------------------------------------------------------------------------------------

  private batchTensors(mb: MicroBatch): Map<string, Tensor> {
    const T = mb.rows * mb.seqLen;
    for (const [k, a] of [['tokens', mb.tokens], ['labels', mb.labels], ['mask', mb.mask], ['positions', mb.positions], ['segments', mb.segments]] as const) {
      if (a.length !== T) throw new RunnerError(`micro-batch ${k} has ${a.length} entries, rows × seqLen = ${T}`);
    }
    const V = this.plan.model.config.vocab;
    for (let i = 0; i < T; i++) if (!(mb.tokens[i] >= 0 && mb.tokens[i] < V)) throw new RunnerError(`micro-batch token ${mb.tokens[i]} at ${i} is outside the vocabulary (0..${V - 1})`);
    return new Map<string, Tensor>([
      ['tokens', tf.tensor1d(mb.tokens, 'int32')],
      ['labels', tf.tensor1d(mb.labels, 'int32')],
      ['loss_mask', tf.tensor1d(mb.mask, 'float32')],
    ]);
  }

  /**
   * Runs the stage's steps on one micro-batch (call inside tf.tidy). `override` replaces parameter tensors
   * (the differentiated copies); `onStep` sees each step's outputs; `train` (training steps only) draws the
   * LoRA dropout masks and the router noise.
   */
  private run(mb: MicroBatch, override?: Map<string, Tensor>, onStep?: (step: PlanStep, outs: Tensor[], ctx: KernelContext) => void, train?: DropoutDraw): Map<string, Tensor> {
    const values = this.batchTensors(mb);
    for (const [id, t] of this.params) values.set(id, override?.get(id) ?? t);
    for (const [id, t] of this.consts) values.set(id, t);
    const ctx: KernelContext = { rows: mb.rows, seqLen: mb.seqLen, positions: mb.positions, segments: mb.segments, cache: new Map() };
    const dropped = new Map<string, Tensor>();
    for (const step of this.stage.forward) {
      const ins = step.inputs.map((i) => values.get(i)!);
      if (train && this.dropout.size) this.applyDropout(step, ins, train, dropped);
      const kstep = train && this.routerNoise.size ? this.applyRouterNoise(step, ins, train) : step;
      const outs = this.kernels[step.op](ins, kstep, ctx);
      if (outs.length !== step.outputs.length) throw new RunnerError(`step ${step.node} (${step.op}) returned ${outs.length} outputs for ${step.outputs.length}`);
      step.outputs.forEach((o, i) => values.set(o, outs[i]));
      onStep?.(step, outs, ctx);
    }
    return values;
  }

  /**
   * LoRA dropout of a training step: replaces `ins[0]` of an adapter's A projection by x·mask (one mask per
   * adapter and site, shared by its projections there; see ./dropout.ts).
   */
  private applyDropout(step: PlanStep, ins: Tensor[], train: DropoutDraw, dropped: Map<string, Tensor>): void {
    if (step.op === 'concat_linear') {
      const parts = (step.attrs.parts ?? []) as { kind: string; adapter?: string }[];
      const bad = parts.find((p) => (p.kind === 'lora_down' || p.kind === 'moe_down_batched') && p.adapter && this.dropout.has(p.adapter));
      if (bad) throw new RunnerError(`${this.stage.name}: step ${step.node} concatenates the A of ${bad.adapter}, which has dropout ${this.dropout.get(bad.adapter!)}, into the base GEMM; its A must read dropout(x) in training (recompile the plan)`);
      return;
    }
    if (!DROPPED_INPUT.has(step.op) || !step.adapter) return;
    const p = this.dropout.get(step.adapter);
    if (!p) return;
    const site = step.site ?? step.node;
    const key = `${step.adapter}@${site}@${step.inputs[0]}`;
    let x = dropped.get(key);
    if (!x) {
      const shape = ins[0].shape as number[];
      x = tf.mul(ins[0], tf.tensor(dropoutMask(train, step.adapter, site, numel(shape), p), shape, 'float32'));
      dropped.set(key, x);
    }
    ins[0] = x;
  }

  /**
   * Router noise of a training step: for a `router` of a mixture with router_noise σ > 0, appends ε [T, E]
   * (N(0, σ²), see ./dropout.ts) to `ins` and returns the step with attrs.noise set; else the step itself.
   */
  private applyRouterNoise(step: PlanStep, ins: Tensor[], train: DropoutDraw): PlanStep {
    if (step.op === 'concat_linear') {
      const parts = (step.attrs.parts ?? []) as { kind: string; adapter?: string }[];
      const bad = parts.find((p) => p.kind === 'router' && p.adapter && this.routerNoise.has(p.adapter));
      if (bad) throw new RunnerError(`${this.stage.name}: step ${step.node} concatenates the router of ${bad.adapter}, which has router_noise ${this.routerNoise.get(bad.adapter!)}, into the base GEMM; its logits must get the noise in training (recompile the plan)`);
      return step;
    }
    if (step.op !== 'router' || !step.adapter) return step;
    const std = this.routerNoise.get(step.adapter);
    if (!std) return step;
    const shape = [ins[0].shape[0]!, ins[1].shape[0]!];
    ins.push(tf.tensor(routerNoise(train, step.adapter, step.site ?? step.node, shape[0] * shape[1], std), shape, 'float32'));
    return { ...step, attrs: { ...step.attrs, noise: true } };
  }

  /**
   * The scalars the loss parts are read from (the loss, then each input of a `loss_sum`), as kept clones of the
   * forward's values: they outlive the tf.tidy scope of the forward, for {@link readParts} to read
   * asynchronously (and dispose).
   */
  private partTensors(values: Map<string, Tensor>): Tensor[] {
    const s = this.lossStep;
    const ids = [this.stage.loss, ...(s.op === 'loss_sum' ? s.inputs : [])];
    return ids.map((id) => tf.keep(readableCopy(values.get(id)!)));
  }

  /** The weighted parts of the loss from {@link partTensors}' scalars, which it disposes. */
  private async readParts(ts: Tensor[]): Promise<LossParts> {
    const data = await readAll(ts);
    const s = this.lossStep;
    const out: LossParts = { loss: data[0][0], ce: 0, constraint: 0, balance: 0 };
    if (s.op !== 'loss_sum') return { ...out, ce: out.loss };
    const w = s.attrs.weights as number[];
    s.inputs.forEach((id, i) => {
      const v = data[i + 1][0] * w[i];
      const op = this.producer.get(id)?.op;
      if (op === 'ortho_penalty' || op === 'ortho_penalty_batched') out.constraint += v;
      else if (op === 'load_balance') out.balance += v;
      else out.ce += v;
    });
    return out;
  }

  /**
   * Loss parts and gradients (kept tensors, in `trainable` order) of one micro-batch. The forward and backward
   * run inside tf.tidy; the scalars of the loss parts and the gates of every topk_gate (for `routed`) leave it
   * as kept clones, are read after it (asynchronously: the only reads webgpu has in Node) and disposed.
   */
  private async lossAndGrads(mb: MicroBatch, train: DropoutDraw, routed?: Map<string, RouterLoad>): Promise<{ parts: LossParts; grads: Tensor[] }> {
    let partTs: Tensor[] = [];
    const gates: { step: PlanStep; gates: Tensor; segments: KernelContext['segments'] }[] = [];
    const onStep = routed ? (step: PlanStep, outs: Tensor[], ctx: KernelContext) => void (step.op === 'topk_gate' && gates.push({ step, gates: tf.keep(readableCopy(outs[0])), segments: ctx.segments })) : undefined;
    let grads: Tensor[];
    try {
      grads = tf.tidy(() => {
        const xs = this.trainable.map((id) => this.params.get(id)!);
        if (!xs.length) {
          partTs = this.partTensors(this.run(mb, undefined, onStep, train));
          return [];
        }
        const f = (...args: Tensor[]) => {
          const values = this.run(mb, new Map(this.trainable.map((id, i) => [id, args[i]])), onStep, train);
          partTs = this.partTensors(values);
          return values.get(this.stage.loss)!;
        };
        // allowNoGradients: a trainable tensor the loss does not reach gets a zero gradient, not an error.
        const { grads } = tf.engine().gradients(() => f(...xs) as tf.Scalar, xs, undefined, true);
        releaseFusedGrads(); // fused gradient slots computed ahead and not taken
        return xs.map((x, i) => grads[i] ?? tf.zerosLike(x));
      });
    } catch (e) {
      tf.dispose([...partTs, ...gates.map((g) => g.gates)]);
      throw e;
    }
    try {
      // On the wasm heap the gates are counted where they lie (heapView: nothing allocated, so the views stay
      // valid through the counting); elsewhere read back first.
      const views = gates.map((g) => heapView(g.gates));
      const onHeap = views.every((v) => v !== null);
      const gateData = onHeap ? (views as Float32Array[]) : await readAll(gates.map((g) => g.gates));
      try {
        if (routed) gates.forEach((g, i) => countRouting(routed, g.step, g.gates.shape[1] as number, gateData[i]!, g.segments));
      } finally {
        if (onHeap) tf.dispose(gates.map((g) => g.gates)); // readAll disposed them otherwise
      }
      return { parts: await this.readParts(partTs), grads };
    } catch (e) {
      tf.dispose([...partTs, ...grads]);
      throw e;
    }
  }

  // --- the API --------------------------------------------------------------------------------------------------

  private live(): void {
    if (this.disposed) throw new RunnerError('the runner was disposed');
  }

  async gradients(microBatches: readonly MicroBatch[], opts: { step?: number } = {}): Promise<GradientResult> {
    this.live();
    const { parts, grads } = await this.accumulate(microBatches, opts.step ?? this.scheduleStep);
    const data = await readAll(grads);
    const out = new Map(this.trainable.map((id, i) => [id, data[i]]));
    return { ...parts, grads: out };
  }

  /** Mean loss parts and mean gradients over micro-batches (kept tensors). */
  /**
   * With `flatGrads` each micro-batch's gradients are concatenated into one vector in `trainable` order as
   * they arrive (webgpu's AdamW path): one add per micro-batch and one divide, instead of one per tensor.
   */
  private async accumulate(microBatches: readonly MicroBatch[], stepIndex: number, routed?: Map<string, RouterLoad>, flatGrads = false): Promise<{ parts: LossParts; grads: Tensor[]; lossTokens: number }> {
    if (!microBatches.length) throw new RunnerError('a step needs at least one micro-batch');
    const n = microBatches.length;
    const sum: LossParts = { loss: 0, ce: 0, constraint: 0, balance: 0 };
    let acc: Tensor[] = [];
    let lossTokens = 0;
    for (const [i, mb] of microBatches.entries()) {
      let step: { parts: LossParts; grads: Tensor[] };
      try {
        step = await this.lossAndGrads(mb, { seed: this.stage.settings.seed, stage: this.stage.name, step: stepIndex, microBatch: i }, routed);
      } catch (e) {
        tf.dispose(acc);
        throw e;
      }
      const { parts } = step;
      let grads = step.grads;
      if (flatGrads && grads.length) {
        const one = tf.tidy(() => flat(grads));
        tf.dispose(grads);
        grads = [one];
      }
      for (const k of Object.keys(sum) as (keyof LossParts)[]) sum[k] += parts[k];
      lossTokens += mb.lossTokens;
      if (!acc.length) acc = grads;
      else {
        const next = grads.map((g, i) => tf.add(acc[i], g));
        tf.dispose([...acc, ...grads]);
        acc = next;
      }
    }
    if (n > 1) {
      const mean = acc.map((g) => tf.div(g, n));
      tf.dispose(acc);
      acc = mean;
    }
    for (const k of Object.keys(sum) as (keyof LossParts)[]) sum[k] /= n;
    return { parts: sum, grads: acc, lossTokens };
  }

  async step(microBatches: readonly MicroBatch[], opts: { step?: number } = {}): Promise<StepResult> {
    this.live();
    if (this.exited) throw new RunnerError(`${this.stage.name}: the stage's exit transitions were applied; it cannot train any more`);
    const index = opts.step ?? this.scheduleStep;
    const s = this.stage.settings;
    const lr = learningRate(s, index, this.totalSteps);
    const routed = new Map<string, RouterLoad>();
    // The fused AdamW (always on webgpu; on the CPU table where the plan fused the optimizer, -O1's
    // fuse-optimizer): gradients and moments flat, one norm, one update call (see flatSlots).
    const fused = this.webgpu || (this.kernels !== reference && this.stage.optimizer.fused);
    const flatPath = fused && s.optimizer.kind === 'adamw' && this.trainable.length > 0;
    const { parts, grads, lossTokens } = await this.accumulate(microBatches, index, routed, flatPath);
    let gradNorm: number;
    try {
      gradNorm = await globalNorm(grads);
    } catch (e) {
      tf.dispose(grads);
      throw e;
    }
    const base = { ...parts, step: index, lr, gradNorm, microBatches: microBatches.length, lossTokens };
    this.scheduleStep = index + 1;
    if (!Number.isFinite(parts.loss) || !Number.isFinite(gradNorm)) {
      tf.dispose(grads);
      return { ...base, applied: false, skipped: !Number.isFinite(parts.loss) ? `loss is ${parts.loss}` : `gradient norm is ${gradNorm}` };
    }
    const factor = clipFactor(gradNorm, s.gradClip);
    const t = this.t + 1;
    // WebGPU hook (issue 5): every trainable tensor in one AdamW dispatch (webgpu/kernels/adamw.ts). The CPU table
    // does the same where the plan fused the optimizer (-O1's fuse-optimizer): one kernel call (kernels/cpu-ops.ts
    // McpcAdamW), equal to the per-tensor update bit for bit; -O0's plan updates tensor by tensor.
    // The fused path: the gradients arrived flat and the moments stay flat between steps (adamwFlatStep).
    const o = s.optimizer;
    if (o.kind === 'adamw' && flatPath) this.adamwFlatStep(grads[0]!, { lr, weightDecay: s.weightDecay, beta1: o.beta1, beta2: o.beta2, eps: o.eps, t, gradScale: factor });
    else this.trainable.forEach((id, i) => {
      const p = this.params.get(id)!;
      const slot = this.slots.get(id)!;
      const g = factor === 1 ? grads[i] : tf.mul(grads[i], factor);
      const next = update(s.optimizer, p, g, slot, lr, s.weightDecay, t);
      if (g !== grads[i]) g.dispose();
      tf.keep(next.p);
      tf.keep(next.s.m);
      if (next.s.v) tf.keep(next.s.v);
      tf.dispose([p, slot.m, ...(slot.v ? [slot.v] : [])]);
      this.params.set(id, next.p);
      this.slots.set(id, next.s);
    });
    tf.dispose(grads);
    this.t = t;
    for (const [k, r] of routed) {
      const into = this.load.get(k);
      if (!into) this.load.set(k, r);
      else {
        r.counts.forEach((c, e) => (into.counts[e] += c));
        into.share = shares(into.counts);
      }
    }
    return { ...base, applied: true };
  }

  /**
   * The fused AdamW over the flat gradient `g` (trainable order); the moments stay flat (flatSlots). On webgpu
   * the parameters are concatenated, updated in one dispatch and split back; the CPU kernel reads and writes
   * them as they are.
   */
  private adamwFlatStep(g: Tensor, h: AdamWStep): void {
    const ids = this.trainable;
    if (!this.flatSlots) {
      const slots = ids.map((id) => this.slots.get(id)!);
      this.flatSlots = tf.tidy(() => ({ m: tf.keep(flat(slots.map((x) => x.m))), v: tf.keep(flat(slots.map((x) => x.v!))) }));
      for (const id of ids) this.slots.delete(id);
      tf.dispose(slots.flatMap((x) => [x.m, x.v!]));
    }
    const old = ids.map((id) => this.params.get(id)!);
    const { m, v } = this.flatSlots;
    const next = this.webgpu
      ? tf.tidy(() => {
          const r = adamwFlat(flat(old), g, m, v, h);
          return { p: unflat(r.p, old.map((x) => x.shape)), m: r.m, v: r.v };
        })
      : adamwFlatCpu(old, g, m, v, h);
    ids.forEach((id, i) => this.params.set(id, tf.keep(next.p[i]!)));
    this.flatSlots = { m: tf.keep(next.m), v: tf.keep(next.v) };
    tf.dispose([...old, m, v]);
  }

  /** The flat moments (flatSlots) back into per-tensor `slots`. */
  private unflattenSlots(): void {
    const f = this.flatSlots;
    if (!f) return;
    const shapes = this.trainable.map((id) => this.params.get(id)?.shape ?? this.info.get(id)!.shape);
    const [ms, vs] = tf.tidy(() => [unflat(f.m, shapes).map((t) => tf.keep(t)), unflat(f.v, shapes).map((t) => tf.keep(t))]);
    this.trainable.forEach((id, i) => this.slots.set(id, { m: ms![i]!, v: vs![i]! }));
    tf.dispose([f.m, f.v]);
    this.flatSlots = undefined;
  }

  async evalLoss(microBatches: MicroBatch | readonly MicroBatch[]): Promise<LossParts> {
    this.live();
    const list = Array.isArray(microBatches) ? (microBatches as readonly MicroBatch[]) : [microBatches as MicroBatch];
    if (!list.length) throw new RunnerError('evalLoss needs at least one micro-batch');
    const sum: LossParts = { loss: 0, ce: 0, constraint: 0, balance: 0 };
    for (const mb of list) {
      const p = await this.readParts(tf.tidy(() => this.partTensors(this.run(mb))));
      for (const k of Object.keys(sum) as (keyof LossParts)[]) sum[k] += p[k] / list.length;
    }
    return sum;
  }

  async forward(microBatch: MicroBatch, ids: readonly string[]): Promise<Map<string, Float32Array>> {
    this.live();
    // Clones leave the tidy scope (a value may be a parameter, which must not be disposed); read, then disposed.
    const kept = tf.tidy(() => {
      const values = this.run(microBatch);
      return ids.map((id) => {
        const v = values.get(id);
        if (!v) throw new RunnerError(`${this.stage.name}: no value '${id}' in the stage graph`);
        return tf.clone(v);
      });
    });
    const data = await readAll(kept);
    return new Map(ids.map((id, i) => [id, data[i]]));
  }

  async applyExit(): Promise<ExitReport> {
    this.live();
    if (this.exited) throw new RunnerError(`${this.stage.name}: the exit transitions were already applied`);
    this.unflattenSlots();
    const report: ExitReport = { merged: [], dropped: [], droppedExperts: [], frozen: [], unfrozen: [] };
    for (const tr of this.stage.exit) {
      if (tr.op === 'merge') {
        const [a, b] = tr.part === 'shared' ? ['shared_A', 'shared_B'] : ['A', 'B'];
        for (const site of tr.sites) {
          const wid = `base.${site}.weight`;
          const W = this.heldTensor(wid, `merge ${tr.adapter}`);
          const next = tf.keep(await this.merged(W, tr.adapter, site, a, b, `merge ${tr.adapter}`));
          W.dispose();
          this.params.set(wid, next);
        }
        report.merged.push({ adapter: tr.adapter, ...(tr.part ? { part: tr.part } : {}), sites: [...tr.sites] });
      } else if (tr.op === 'drop' && tr.condition) {
        report.droppedExperts.push(...(await this.dropByLoad(tr.adapter, tr.condition)));
      } else if (tr.op === 'drop') {
        for (const p of this.plan.parameters) {
          if (p.owner !== tr.adapter) continue;
          if (tr.part === 'experts' && !isRoutedPart(p)) continue;
          const t = this.params.get(p.id);
          if (t) {
            t.dispose();
            this.params.delete(p.id);
            this.slots.get(p.id)?.m.dispose();
            this.slots.get(p.id)?.v?.dispose();
            this.slots.delete(p.id);
            report.dropped.push(p.id);
          }
          if (this.carried.delete(p.id)) report.dropped.push(p.id);
        }
      } else if (tr.op === 'freeze') report.frozen.push(tr.adapter);
      else if (tr.op === 'unfreeze') report.unfrozen.push(tr.adapter);
    }
    this.exited = true;
    await this.buildFolded();
    return report;
  }

  /**
   * `drop X.experts where load <op> v`: per site, zero the matching experts and bar the router from them. A site
   * keeps at least top_k live experts (fewer would leave the router choosing among barred experts, tied at -1e9:
   * no defined routing): when more match, the most loaded of them are kept (`kept`) and the run says so.
   * Experts an earlier drop barred are not counted again.
   */
  private async dropByLoad(adapter: string, cond: { metric: 'load'; op: string; value: number }): Promise<ExitReport['droppedExperts']> {
    if (cond.metric !== 'load') throw new RunnerError(`drop ${adapter}: unknown metric '${cond.metric}'`);
    const cmp: Record<string, (a: number, b: number) => boolean> = { '<': (a, b) => a < b, '<=': (a, b) => a <= b, '>': (a, b) => a > b, '>=': (a, b) => a >= b, '==': (a, b) => a === b, '!=': (a, b) => a !== b };
    const test = cmp[cond.op];
    if (!test) throw new RunnerError(`drop ${adapter}: unknown comparison '${cond.op}'`);
    const out: ExitReport['droppedExperts'] = [];
    const spec = this.plan.adapters.find((a) => a.name === adapter);
    const sites = spec?.sites ?? [];
    for (const site of sites) {
      const ids = { A: `${adapter}.${site}.expert_A`, B: `${adapter}.${site}.expert_B`, b: `${adapter}.${site}.router_b` };
      const [A, B, b] = [this.params.get(ids.A), this.params.get(ids.B), this.params.get(ids.b)];
      if (!A || !B || !b) continue;
      const E = b.shape[0] as number;
      const share = this.load.get(`${adapter}@${site}`)?.share ?? new Array<number>(E).fill(0);
      const bias = (await b.data()) as Float32Array;
      const live = Array.from({ length: E }, (_, e) => e).filter((e) => bias[e]! > BARRED);
      let drop = live.filter((e) => test(share[e]!, cond.value));
      const floor = Math.min(spec?.topK ?? 1, live.length);
      const kept = live.length - drop.length < floor ? [...drop].sort((x, y) => share[y]! - share[x]! || x - y).slice(0, floor - (live.length - drop.length)) : [];
      drop = drop.filter((e) => !kept.includes(e));
      out.push({ adapter, site, experts: drop, load: [...share], ...(kept.length ? { kept: kept.sort((x, y) => x - y) } : {}) });
      if (!drop.length) continue;
      const keep = new Float32Array(E).fill(1);
      const bar = new Float32Array(E);
      for (const e of drop) {
        keep[e] = 0;
        bar[e] = -1e9;
      }
      const next = tf.tidy(() => {
        const k = tf.tensor1d(keep);
        return {
          A: tf.mul(A, tf.reshape(k, [E, 1, 1])),
          B: tf.mul(B, tf.reshape(k, [E, 1, 1])),
          b: tf.add(tf.mul(b, k), tf.tensor1d(bar)),
        };
      });
      for (const [key, t] of Object.entries(next) as ['A' | 'B' | 'b', Tensor][]) {
        this.params.get(ids[key])!.dispose();
        this.params.set(ids[key], tf.keep(t));
      }
    }
    return out;
  }

  async parameters(): Promise<Map<string, Float32Array>> {
    this.live();
    const out = new Map<string, Float32Array>();
    const held = [...this.params];
    const data = await Promise.all(held.map(([, t]) => t.data()));
    held.forEach(([id], i) => out.set(id, Float32Array.from(data[i] as Float32Array)));
    for (const [id, a] of this.carried) out.set(id, a);
    return out;
  }

  async loadParameters(map: ParameterMap): Promise<void> {
    this.live();
    for (const [id, data] of entries(map)) {
      const t = this.params.get(id);
      if (!t) {
        this.carried.set(id, data);
        continue;
      }
      if (data.length !== t.size) throw new RunnerError(`parameter ${id}: ${data.length} values given, the tensor has ${t.size}`);
      this.params.set(id, tf.keep(tf.tensor(data, t.shape, 'float32')));
      t.dispose();
    }
    await this.buildFolded();
  }

  async optimizerState(): Promise<OptimizerState> {
    this.live();
    this.unflattenSlots();
    const slots = new Map<string, { m: Float32Array; v?: Float32Array }>();
    const held = [...this.slots];
    const data = await Promise.all(held.map(([, s]) => Promise.all([s.m.data(), s.v?.data()])));
    held.forEach(([id], i) => {
      const [m, v] = data[i];
      slots.set(id, { m: Float32Array.from(m as Float32Array), ...(v ? { v: Float32Array.from(v as Float32Array) } : {}) });
    });
    return { t: this.t, scheduleStep: this.scheduleStep, slots };
  }

  loadOptimizerState(state: OptimizerState): void {
    this.live();
    this.unflattenSlots();
    for (const [id, s] of state.slots) {
      const cur = this.slots.get(id);
      if (!cur) throw new RunnerError(`optimizer state for ${id}, which is not trainable in ${this.stage.name}`);
      if (s.m.length !== cur.m.size || (cur.v && s.v?.length !== cur.v.size)) throw new RunnerError(`optimizer state for ${id} does not fit its tensor`);
      const next: SlotState = { m: tf.keep(tf.tensor(s.m, cur.m.shape, 'float32')), ...(cur.v ? { v: tf.keep(tf.tensor(s.v!, cur.v.shape, 'float32')) } : {}) };
      tf.dispose([cur.m, ...(cur.v ? [cur.v] : [])]);
      this.slots.set(id, next);
    }
    this.t = state.t;
    this.scheduleStep = state.scheduleStep;
  }

  routerLoad(): RouterLoad[] {
    return [...this.load.values()].map((r) => ({ ...r, share: [...r.share], counts: [...r.counts] }));
  }

  loadRouterLoad(loads: readonly { adapter: string; site: string; counts: readonly number[] }[]): void {
    this.load.clear();
    for (const l of loads) this.load.set(`${l.adapter}@${l.site}`, { adapter: l.adapter, site: l.site, counts: [...l.counts], share: shares([...l.counts]) });
  }

  dispose(): void {
    if (this.disposed) return;
    tf.dispose([...this.params.values(), ...this.consts.values()]);
    for (const s of this.slots.values()) tf.dispose([s.m, ...(s.v ? [s.v] : [])]);
    if (this.flatSlots) tf.dispose([this.flatSlots.m, this.flatSlots.v]);
    this.flatSlots = undefined;
    this.params.clear();
    this.consts.clear();
    this.slots.clear();
    this.disposed = true;
  }
}

/**
 * The values of tensors the caller owns, read asynchronously (`await t.data()`: webgpu in Node has no
 * synchronous read) as copies, then disposed (also when a read fails).
 */
async function readAll(ts: readonly Tensor[]): Promise<Float32Array[]> {
  try {
    // data() gives a fresh array (a copy out of the wasm heap or the GPU; the cpu backend's own, which disposing
    // the tensor leaves to us): no second copy
    return (await Promise.all(ts.map((t) => t.data()))) as Float32Array[];
  } finally {
    tf.dispose(ts as Tensor[]);
  }
}

/** Adds one topk_gate's routing (real tokens, gate > 0; `g` is its [tokens, E] gates) to the per-site counts. */
function countRouting(into: Map<string, RouterLoad>, step: PlanStep, E: number, g: Float32Array, segments: KernelContext['segments']): void {
  const key = `${step.adapter ?? step.node}@${step.site ?? ''}`;
  let r = into.get(key);
  if (!r) {
    r = { adapter: step.adapter ?? step.node, site: step.site ?? '', share: [], counts: new Array<number>(E).fill(0) };
    into.set(key, r);
  }
  // Counted without a branch on the gate ((g > 0) | 0 into int32 sums): an `if` per gate follows random routing
  // and mispredicted about one gate in four (~60 vs ~25 us a [2048, 8] call on fresh gates).
  const acc = new Int32Array(E);
  for (let t = 0; t < segments.length; t++) {
    if (segments[t] <= 0) continue;
    for (let e = 0, o = t * E; e < E; e++) acc[e] += ((g[o + e]! > 0) as unknown as number) | 0;
  }
  for (let e = 0; e < E; e++) r.counts[e] += acc[e]!;
  r.share = shares(r.counts);
}

function shares(counts: number[]): number[] {
  const total = counts.reduce((a, b) => a + b, 0);
  return counts.map((c) => (total > 0 ? c / total : 0));
}
