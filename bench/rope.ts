/**
 * `npx tsx bench/rope.ts`: the CPU rotary embedding (McpcRope) on the wasm backend at the training bench's q
 * shape (2048 tokens, 4 heads of 16): the JavaScript loop (MCPC_ROPE_WASM=0) against WebAssembly SIMD
 * (src/runtime/tfjs/rope.wat), alternating in one process; median wall ms per call, with the load average.
 */
import { loadavg } from 'node:os';
import { ropeOp } from '../src/runtime/kernels/cpu-ops.js';
import { initBackend, tf } from '../src/runtime/tfjs/index.js';
await initBackend('wasm');
const T = 2048, H = 4, d = 16;
const x = tf.randomNormal([T, H * d]), c = tf.randomNormal([T, d / 2]), s = tf.randomNormal([T, d / 2]);
const med = (a: number[]) => a.sort((p, q) => p - q)[a.length >> 1]!;
const res: Record<string, number[]> = { js: [], wasm: [] };
for (let r = 0; r < 60; r++)
  for (const k of ['js', 'wasm']) {
    if (k === 'js') process.env.MCPC_ROPE_WASM = '0'; else delete process.env.MCPC_ROPE_WASM;
    const t0 = performance.now();
    const y = ropeOp(x, c, s, H, d);
    res[k]!.push(performance.now() - t0);
    y.dispose();
  }
console.log(`rope [${T}, ${H}x${d}] median ms: js ${med(res.js!).toFixed(3)} wasm ${med(res.wasm!).toFixed(3)} load ${loadavg()[0]!.toFixed(2)}`);
