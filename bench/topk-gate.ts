/**
 * `npx tsx bench/topk-gate.ts [--reps N]`: the CPU table's topk_gate forward (src/runtime/kernels/cpu-topk.ts) on
 * the `wasm` backend at a training step's router shape (2048 tokens x 8 experts, softmax rows), median ms a call:
 * on the same rows every call and on fresh random rows every call (what training sees: router probabilities change
 * each step), for k = 2 (each row's two largest by src/runtime/tfjs/topk.wat, branch-free) and k = 3 (the
 * JavaScript insertion pick, which branches on the data). New rows cost both paths more than repeated ones; the
 * JavaScript pick, whose branches follow the data, more than topk.wat's selects.
 *
 * Then the routing tables the in-place MoE kernels build from those gates once per site and step
 * (src/runtime/tfjs/moe.ts routesOf): by per-token bit masks (what runs for up to 32 experts) against the scan
 * testing each gate, on fresh top-2 gates each call, alternating.
 */
import { parseArgs } from 'node:util';
import { topkGateCpu } from '../src/runtime/kernels/cpu-topk.js';
import { initBackend, tf } from '../src/runtime/tfjs/index.js';
import { routeByMasks, routeByScan } from '../src/runtime/tfjs/moe.js';

const { values } = parseArgs({ options: { reps: { type: 'string', default: '100' } } });
const reps = Number(values.reps);
await initBackend('wasm');
const [T, E] = [2048, 8];
const rows = () => tf.softmax(tf.randomNormal([T, E]));
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
console.log(`topk_gate forward on wasm, [${T}, ${E}], median ms a call over ${reps}:`);
for (const k of [2, 3]) {
  const fixed = rows();
  const time = (fresh: boolean) => {
    const ts: number[] = [];
    for (let i = 0; i < reps + 10; i++) {
      const p = fresh ? rows() : fixed;
      const t = performance.now();
      topkGateCpu(p, k, true).dispose();
      if (i >= 10) ts.push(performance.now() - t);
      if (fresh) p.dispose();
    }
    return median(ts);
  };
  const [same, fresh] = [time(false), time(true)];
  console.log(`  k = ${k} (${k === 2 ? 'topk.wat' : 'JavaScript'}): same rows ${same.toFixed(3)}, fresh rows ${fresh.toFixed(3)} (${(fresh / same).toFixed(2)}x)`);
  fixed.dispose();
}

{
  const gates = Array.from({ length: 16 }, () => {
    const t = topkGateCpu(rows(), 2, true);
    const g = Float32Array.from(t.dataSync());
    t.dispose();
    return g;
  });
  const ts: Record<string, number[]> = { masks: [], scan: [] };
  for (let i = 0; i < reps + 10; i++)
    for (const [name, f] of [['masks', routeByMasks], ['scan', routeByScan]] as const) {
      const g = gates[i % gates.length]!;
      const t = performance.now();
      f(g, T, E);
      if (i >= 10) ts[name]!.push(performance.now() - t);
    }
  console.log(`routing tables of top-2 gates [${T}, ${E}] (16 gate tensors in turn), median ms a call: bit masks ${median(ts.masks!).toFixed(3)}, scan ${median(ts.scan!).toFixed(3)}`);
}
