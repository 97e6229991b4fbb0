/**
 * A plan stage on WebGPU: the WGSL kernel table (src/runtime/kernels/webgpu.ts) and the one-dispatch AdamW
 * train a tiny stage (LoRA on attention, a mixture with top-k routing and load balancing on the MLP, an
 * orthogonality constraint) to the losses and gradients the reference table gives on the cpu backend, at
 * -O0 (rmsnorm, swiglu, add as their own steps) and -O1 (fused elementwise groups, batched penalty).
 *
 * The stage is driven here, step by step, the way executor.ts drives it (forward over the plan's steps,
 * autodiff, clipping, AdamW), not through `createStageRunner`: the runner reads values with `dataSync`,
 * which tfjs-backend-webgpu cannot do under Node (its readSync draws through an OffscreenCanvas; Dawn's
 * Node binding maps buffers only asynchronously), so every read here is `await data()`.
 */
import { afterAll, expect, it } from 'vitest';
import type { Plan } from '../../../src/plan/types.js';
import type { MicroBatch } from '../../../src/runtime/data/batch.js';
import { reference, type Kernel, type KernelContext } from '../../../src/runtime/kernels/reference.js';
import { fusedAdamW, webgpuKernels, wgslOps } from '../../../src/runtime/kernels/webgpu.js';
import { clipFactor, update, zeroState, type SlotState } from '../../../src/runtime/optimizer.js';
import { initBackend, tf, type Tensor } from '../../../src/runtime/tfjs/index.js';
import { initParameter } from '../../../src/runtime/weights/init.js';
import { compileInline, syntheticBatch, TINY } from '../executor/helpers.js';
import { describeGpu, relErr } from './kernels-support.js';

const PIPELINE = `pipeline gpu
model base = ${TINY}
data d = jsonl("d.jsonl")

adapter know = lora(r: 4, alpha: 8) at layers[*].mlp.{gate, up, down}
adapter attn = lora(r: 4, alpha: 8) at layers[*].attn.{q, k, v, o}
adapter mix  = moe_lora(experts: 4, top_k: 2, r: 4, alpha: 8, shared: 1, load_balance: 0.01) at layers[*].mlp.{gate, up, down}

stage one {
  train know, attn, mix on d
  steps 2
  lr 1e-2
  schedule constant
  weight_decay 0.01
  grad_clip 0.5
  batch 2
  micro_batch 2
  max_len 24
  constrain orthogonal(mix.A, know.A) weight 1.0 norm l1
}
`;

interface Trace {
  losses: number[];
  grads: Float32Array[];
  ops: Set<string>;
}

/** Two AdamW steps of the plan's first stage on `backend` with `kernels`; the loss of each step and the first step's gradients. */
async function train(plan: Plan, backend: 'cpu' | 'webgpu', kernels: Record<string, Kernel>, mb: MicroBatch): Promise<Trace> {
  await initBackend(backend);
  const stage = plan.stages[0]!;
  const s = stage.settings;
  const held = plan.parameters.filter((p) => ['trainable', 'frozen'].includes(p.states[stage.name] ?? ''));
  const params = new Map(held.map((p) => [p.id, tf.keep(tf.tensor(initParameter(p, 3)!, p.shape, 'float32'))]));
  const ids = [...stage.optimizer.params];
  const slots = new Map<string, SlotState>(ids.map((id) => [id, zeroState(s.optimizer, params.get(id)!.shape as number[])]));
  for (const sl of slots.values()) tf.keep(sl.m), sl.v && tf.keep(sl.v);
  const trace: Trace = { losses: [], grads: [], ops: new Set(stage.forward.map((f) => f.op)) };
  for (let step = 1; step <= 2; step++) {
    const { loss, grads } = tf.tidy(() => {
      const xs = ids.map((id) => params.get(id)!);
      const f = (...args: Tensor[]) => {
        const values = new Map<string, Tensor>([
          ['tokens', tf.tensor1d(mb.tokens, 'int32')],
          ['labels', tf.tensor1d(mb.labels, 'int32')],
          ['loss_mask', tf.tensor1d(mb.mask, 'float32')],
        ]);
        for (const [id, t] of params) values.set(id, t);
        ids.forEach((id, i) => values.set(id, args[i]!));
        const ctx: KernelContext = { rows: mb.rows, seqLen: mb.seqLen, positions: mb.positions, segments: mb.segments, cache: new Map() };
        for (const st of stage.forward) {
          const outs = kernels[st.op]!(st.inputs.map((i) => values.get(i)!), st, ctx);
          st.outputs.forEach((o, i) => values.set(o, outs[i]!));
        }
        return values.get(stage.loss)! as tf.Scalar;
      };
      const r = tf.engine().gradients(() => f(...xs), xs, undefined, true);
      return { loss: r.value, grads: xs.map((x, i) => r.grads[i] ?? tf.zerosLike(x)) };
    });
    trace.losses.push((await loss.data())[0]!);
    const norm = Math.sqrt((await tf.tidy(() => tf.addN(grads.map((g) => tf.sum(tf.square(g))))).data())[0]!);
    if (step === 1) for (const g of grads) trace.grads.push(Float32Array.from(await g.data()));
    const factor = clipFactor(norm, s.gradClip);
    if (s.optimizer.kind !== 'adamw') throw new Error('the test stage uses AdamW');
    if (backend === 'webgpu') fusedAdamW(ids, params, slots, grads, s.optimizer, { lr: s.lr, weightDecay: s.weightDecay, t: step, gradScale: factor });
    else {
      ids.forEach((id, i) => {
        const g = factor === 1 ? grads[i]! : tf.mul(grads[i]!, factor);
        const next = update(s.optimizer, params.get(id)!, g, slots.get(id)!, s.lr, s.weightDecay, step);
        tf.dispose([params.get(id)!, slots.get(id)!.m, slots.get(id)!.v!]);
        params.set(id, tf.keep(next.p));
        slots.set(id, { m: tf.keep(next.s.m), v: tf.keep(next.s.v!) });
      });
    }
    tf.dispose([loss, ...grads]);
  }
  tf.dispose([...params.values(), ...[...slots.values()].flatMap((x) => [x.m, x.v!])]);
  return trace;
}

describeGpu('a plan stage on webgpu (WGSL kernel table, one-dispatch AdamW) trains as on cpu', () => {
  afterAll(() => initBackend('cpu'));
  const plans = compileInline(PIPELINE, [0, 1]).plans;
  const mb = syntheticBatch(2, 24, 5, { vocab: 256 });

  it.each([0, 1])('-O%i: same losses over two steps and the same first gradients', async (level) => {
    const plan = plans[level]!;
    const cpu = await train(plan, 'cpu', reference, mb);
    const gpu = await train(plan, 'webgpu', webgpuKernels, mb);
    // The stage does run WGSL kernels (which ones depends on the level: -O1 fuses rmsnorm, swiglu and add).
    expect(wgslOps.filter((op) => gpu.ops.has(op)).length).toBeGreaterThanOrEqual(5);
    expect(cpu.losses[0]).toBeGreaterThan(1);
    expect(cpu.losses[1]).not.toBe(cpu.losses[0]);
    expect(relErr(gpu.losses, cpu.losses)).toBeLessThan(1e-4);
    gpu.grads.forEach((g, i) => expect(relErr(g, cpu.grads[i]!, 1e-3), `gradient ${i}`).toBeLessThan(2e-3));
  });
});
