/**
 * moe_up_grouped and moe_down_routed of the CPU kernel table (./cpu.ts) as tfjs kernels on the `wasm` and `cpu`
 * backends, over the top-k experts only (the arithmetic: ../tfjs/moe.ts, moe-down.ts and moe.wat):
 *
 *   McpcMoeUp       inputs h, gates, [B_sh], B_e → y
 *   McpcMoeUpDh     dY, h, gates, [B_sh], B_e → dh, dgates (one pass: dh_e and dgates share U = s·dY_rows·B_e)
 *   McpcMoeUpDbe    dY, h, gates → dB_e
 *
 * The gradient computes only what autodiff asks for (tfjs calls the closure of an input only when that input
 * leads to the loss): dh and dgates come from one McpcMoeUpDh (the second of the two asked gets the first
 * call's other output), dB_e from McpcMoeUpDbe, dB_sh = s·dYᵀ·h_sh as one tfjs product.
 *
 * moe_down_routed (the A side, ../tfjs/moe-down.ts), same pattern:
 *
 *   McpcMoeDown     x, gates, A_e → h (x_t·A_eᵀ on the routed (t, e), 0 elsewhere)
 *   McpcMoeDownDx   dh, gates, A_e → dx
 *   McpcMoeDownDa   dh, x, gates → dA_e
 *
 * each only when autodiff asks for it; the gates are a mask and get a zero gradient (the reference's noGrad).
 *
 * dgates is zero outside the routed (t, e) (gate = 0), where the reference's dense gradient gives
 * s·dY[t]·(h_e[t]·B_eᵀ). Those entries never reach a parameter: the gates come from topk_gate, whose gradient
 * multiplies by the top-k mask (renormalised or not: kept_i = 0 off the mask, so the renormalisation's sum
 * term gets nothing from them either); and a kept gate that is exactly 0 is a router probability of 0, whose
 * softmax or sigmoid gradient carries the factor p = 0. So the router's gradient, and every weight's, are the
 * reference's; only the intermediate dgates differs, there.
 */
import { registerFamilyGradient, tf, type Tensor } from '../tfjs/index.js';
import { share } from '../tfjs/share.js';
import { moeUpDbe, moeUpDbeHeap, moeUpDh, moeUpDhHeap, moeUpForward, moeUpForwardHeap, type MoeUpShape } from '../tfjs/moe.js';
import { moeDownDa, moeDownDaHeap, moeDownDx, moeDownDxHeap, moeDownForward, moeDownForwardHeap } from '../tfjs/moe-down.js';
import { keepUntilBackwardEnds } from '../webgpu/program.js';
import { registerCpuKernel } from './cpu-ops.js';

type Info = tf.TensorInfo;
type Attrs = { sharedRank: number; rank: number; experts: number; scale: number };

const FWD = 'McpcMoeUp';
const DH = 'McpcMoeUpDh';
const DB = 'McpcMoeUpDbe';

/**
 * A kernel of the CPU table (./cpu-ops.ts registerCpuKernel, both CPU backends) over Float32Array views; the
 * ../tfjs/moe*.ts functions write every element of their outputs.
 */
function moeKernel<A = Attrs>(name: string, shapes: (ins: Info[], a: A) => number[][], run: (ins: Float32Array[], outs: Float32Array[], infos: Info[], a: A) => void): void {
  registerCpuKernel(name, { shapes: (ins, a) => shapes(ins, a as unknown as A), writesAll: true, run: (ins, outs, infos, a) => run(ins as Float32Array[], outs, infos, a as unknown as A) });
}

const shapeOf = (h: Info, out: number, a: Attrs): MoeUpShape => ({ T: h.shape[0]!, out, sharedRank: a.sharedRank, rank: a.rank, experts: a.experts, scale: a.scale });

let registered = false;
function register(): void {
  if (registered) return;
  registered = true;
  // inputs: h, gates, [B_sh], B_e
  moeKernel(
    FWD,
    (ins) => [[ins[0]!.shape[0]!, ins[ins.length - 1]!.shape[1]!]],
    (ins, [y], infos, a) => {
      const args = [ins[0]!, ins[1]!, ins[ins.length - 1]!, ins.length === 4 ? ins[2] : undefined, y!, shapeOf(infos[0]!, infos[infos.length - 1]!.shape[1]!, a)] as const;
      if (!moeUpForwardHeap(...args, infos[1]!.dataId)) moeUpForward(...args);
    },
  );
  // inputs: dY, h, gates, [B_sh], B_e
  moeKernel(
    DH,
    (ins) => [ins[1]!.shape, ins[2]!.shape],
    (ins, [dh, dg], infos, a) => {
      const args = [ins[0]!, ins[1]!, ins[2]!, ins[ins.length - 1]!, ins.length === 5 ? ins[3] : undefined, dh!, dg!, shapeOf(infos[1]!, infos[0]!.shape[1]!, a)] as const;
      if (!moeUpDhHeap(...args, infos[2]!.dataId)) moeUpDh(...args);
    },
  );
  // inputs: dY, h, gates
  moeKernel(
    DB,
    (ins, a) => [[a.experts, ins[0]!.shape[1]!, a.rank]],
    (ins, [db], infos, a) => {
      const args = [ins[0]!, ins[1]!, ins[2]!, db!, shapeOf(infos[1]!, infos[0]!.shape[1]!, a)] as const;
      if (!moeUpDbeHeap(...args, infos[2]!.dataId)) moeUpDbe(...args);
    },
  );
  registerFamilyGradient('cpu', {
    kernelName: FWD,
    saveAllInputs: true,
    gradFunc: (dy, saved, attrs) => {
      const a = attrs as unknown as Attrs;
      const d = (Array.isArray(dy) ? dy[0] : dy) as Tensor;
      const [h, g] = saved as Tensor[];
      const bs = (saved as Tensor[]).slice(2);
      // dh ('0') and dgates ('1') from one kernel: the first closure called keeps the other output until the
      // backward pass is over, the second gets a tensor on its buffer (share: no Identity kernel).
      let pair: Tensor[] | undefined;
      const part = (k: 0 | 1) => (): Tensor => {
        if (pair && !pair[k]!.isDisposed) return share(pair[k]!);
        pair = tf.engine().runKernel(DH, [d, ...(saved as Tensor[])] as unknown as tf.NamedTensorMap, attrs as tf.NamedAttrMap) as Tensor[];
        keepUntilBackwardEnds(pair[1 - k]!);
        return pair[k]!;
      };
      const grads: Record<string, () => Tensor> = {
        '0': part(0),
        '1': part(1),
        [String(saved.length - 1)]: () => tf.engine().runKernel(DB, [d, h!, g!] as unknown as tf.NamedTensorMap, attrs as tf.NamedAttrMap) as Tensor,
      };
      if (bs.length === 2) {
        const T = h!.shape[0]!;
        grads['2'] = () => tf.mul(tf.matMul(d as tf.Tensor2D, tf.slice(h!, [0, 0], [T, a.sharedRank]) as tf.Tensor2D, true, false), a.scale);
      }
      return grads;
    },
  });
}

/**
 * Whether {@link moeUpGroupedOp} takes these inputs: float32 h [T, R + E·r], gates [T, E], B_sh [out, R] when
 * R > 0 (and only then), B_e [E, out, r]. `MCPC_MOE_TOPK=0` sends every call to the reference (for A/B
 * timing: `npx tsx bench/train-step.ts --ab MCPC_MOE_TOPK`).
 */
export function moeUpFits(inputs: Tensor[], a: Attrs): boolean {
  if (process.env.MCPC_MOE_TOPK === '0') return false;
  const { sharedRank: R, rank: r, experts: E } = a;
  if (![R, r, E].every((n) => Number.isInteger(n) && n >= 0) || !Number.isFinite(a.scale) || E < 1 || r < 1) return false;
  if (inputs.length !== (R > 0 ? 4 : 3) || inputs.some((t) => t.dtype !== 'float32')) return false;
  const [h, g] = inputs as [Tensor, Tensor];
  const be = inputs[inputs.length - 1]!;
  if (h.rank !== 2 || g.rank !== 2 || be.rank !== 3) return false;
  const T = h.shape[0]!;
  const out = be.shape[1]!;
  if (h.shape[1] !== R + E * r || g.shape[0] !== T || g.shape[1] !== E || be.shape[0] !== E || be.shape[2] !== r) return false;
  if (R > 0) {
    const bsh = inputs[2]!;
    if (bsh.rank !== 2 || bsh.shape[0] !== out || bsh.shape[1] !== R) return false;
  }
  return true;
}

/** moe_up_grouped over the top-k only (inputs checked by {@link moeUpFits}), with its gradient. */
export function moeUpGroupedOp(inputs: Tensor[], a: Attrs): Tensor {
  register();
  return tf.engine().runKernel(FWD, inputs as unknown as tf.NamedTensorMap, { sharedRank: a.sharedRank, rank: a.rank, experts: a.experts, scale: a.scale } as unknown as tf.NamedAttrMap) as Tensor;
}

const DOWN = 'McpcMoeDown';
const DOWN_DX = 'McpcMoeDownDx';
const DOWN_DA = 'McpcMoeDownDa';
type DownAttrs = { rank: number; experts: number };

let downRegistered = false;
function registerDown(): void {
  if (downRegistered) return;
  downRegistered = true;
  // x [T, in], gates [T, E], A_e [E, r, in], dh [T, E·r]
  const shape = (T: number, inF: number, a: DownAttrs) => ({ T, inF, rank: a.rank, experts: a.experts });
  // inputs: x, gates, A_e
  moeKernel<DownAttrs>(
    DOWN,
    (ins, a) => [[ins[0]!.shape[0]!, a.experts * a.rank]],
    (ins, [h], infos, a) => {
      const args = [ins[0]!, ins[1]!, ins[2]!, h!, shape(infos[0]!.shape[0]!, infos[0]!.shape[1]!, a)] as const;
      if (!moeDownForwardHeap(...args, infos[1]!.dataId)) moeDownForward(...args);
    },
  );
  // inputs: dh, gates, A_e
  moeKernel<DownAttrs>(
    DOWN_DX,
    (ins) => [[ins[0]!.shape[0]!, ins[2]!.shape[2]!]],
    (ins, [dx], infos, a) => {
      const args = [ins[0]!, ins[1]!, ins[2]!, dx!, shape(infos[0]!.shape[0]!, infos[2]!.shape[2]!, a)] as const;
      if (!moeDownDxHeap(...args, infos[1]!.dataId)) moeDownDx(...args);
    },
  );
  // inputs: dh, x, gates
  moeKernel<DownAttrs>(
    DOWN_DA,
    (ins, a) => [[a.experts, a.rank, ins[1]!.shape[1]!]],
    (ins, [da], infos, a) => {
      const args = [ins[0]!, ins[1]!, ins[2]!, da!, shape(infos[1]!.shape[0]!, infos[1]!.shape[1]!, a)] as const;
      if (!moeDownDaHeap(...args, infos[2]!.dataId)) moeDownDa(...args);
    },
  );
  registerFamilyGradient('cpu', {
    kernelName: DOWN,
    saveAllInputs: true,
    gradFunc: (dy, saved, attrs) => {
      const d = (Array.isArray(dy) ? dy[0] : dy) as Tensor;
      const [x, g, ae] = saved as Tensor[];
      return {
        '0': () => tf.engine().runKernel(DOWN_DX, [d, g!, ae!] as unknown as tf.NamedTensorMap, attrs as tf.NamedAttrMap) as Tensor,
        '1': () => tf.zerosLike(g!),
        '2': () => tf.engine().runKernel(DOWN_DA, [d, x!, g!] as unknown as tf.NamedTensorMap, attrs as tf.NamedAttrMap) as Tensor,
      };
    },
  });
}

/**
 * Whether {@link moeDownRoutedOp} takes these inputs: float32 x [T, in], gates [T, E], A_e [E, r, in].
 * `MCPC_MOE_DOWN_TOPK=0` (or `MCPC_MOE_TOPK=0`, which covers both sides) sends every call to the reference.
 */
export function moeDownFits(inputs: Tensor[], a: DownAttrs): boolean {
  if (process.env.MCPC_MOE_TOPK === '0' || process.env.MCPC_MOE_DOWN_TOPK === '0') return false;
  const { rank: r, experts: E } = a;
  if (![r, E].every((n) => Number.isInteger(n) && n >= 1)) return false;
  if (inputs.length !== 3 || inputs.some((t) => t.dtype !== 'float32')) return false;
  const [x, g, ae] = inputs as [Tensor, Tensor, Tensor];
  if (x.rank !== 2 || g.rank !== 2 || ae.rank !== 3) return false;
  const [T, inF] = x.shape as [number, number];
  return g.shape[0] === T && g.shape[1] === E && ae.shape[0] === E && ae.shape[1] === r && ae.shape[2] === inF;
}

/** moe_down_routed over the top-k only (inputs checked by {@link moeDownFits}), with its gradient. */
export function moeDownRoutedOp(inputs: Tensor[], a: DownAttrs): Tensor {
  registerDown();
  return tf.engine().runKernel(DOWN, inputs as unknown as tf.NamedTensorMap, { rank: a.rank, experts: a.experts } as unknown as tf.NamedAttrMap) as Tensor;
}
