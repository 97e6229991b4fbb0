/**
 * `npx tsx bench/fused-wasm.ts [--reps N] [--rows R]`: the fused_elementwise kernels of MedCare's -O1 plan
 * (add+add+RMSNorm at [rows, 64], add+add+SwiGLU at [rows, 176], ...), forward plus every backward slot, as
 * JavaScript (src/runtime/kernels/fused-js.ts) and as WebAssembly SIMD (src/runtime/kernels/fused-wasm.ts):
 * the latter in place on tfjs-backend-wasm's heap (what the `wasm` backend runs) and through the copy into its
 * own memory (plain Float32Arrays: the `cpu` backend). Median ms of fwd+bwd and the largest relative
 * difference from the JavaScript results. Then the backward alone on the heap: one pass per slot (what
 * MCPC_FUSED_GRAD_ONEPASS=0 runs) against every slot in one pass (one program, one root per slot: the
 * default McpcFusedGrad when every input is differentiated). Same process, alternating.
 */
import { fileURLToPath } from 'node:url';
import { loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import { compileFile, nodeHost } from '../src/compiler/index.js';
import type { FusedExprAttrs } from '../src/plan/fused.js';
import { compileFusedJs } from '../src/runtime/kernels/fused-js.js';
import { emitFused, instantiateFused } from '../src/runtime/kernels/fused-wasm.js';
import { initBackend, tf } from '../src/runtime/tfjs/index.js';
import type { WasmBackendLike } from '../src/runtime/tfjs/wasm-extra.js';

const { values } = parseArgs({ options: { reps: { type: 'string', default: '21' }, rows: { type: 'string', default: '2048' } } });
const reps = Number(values.reps);
const rows = Number(values.rows);
const root = fileURLToPath(new URL('../', import.meta.url));
await initBackend('wasm');
const backend = tf.backend() as unknown as WasmBackendLike;

const plan = compileFile('pipelines/medcare.mcp', nodeHost(root, root), {}, { optLevel: 1 }).plan!;
const kernels = new Map<string, { expr: FusedExprAttrs; cols: number }>();
const table = new Map(plan.kernels.map((k) => [k.id, k.attrs as { expr?: FusedExprAttrs; fusedOps?: string[] } | undefined]));
for (const st of plan.stages)
  for (const step of st.forward) {
    if (step.op !== 'fused_elementwise') continue;
    const a = table.get(step.kernel);
    if (!a?.expr?.backward || !a.fusedOps) continue;
    const cols = (step.attrs as { cols: number }).cols;
    const name = `${a.fusedOps.join('+')} [${rows}x${cols}]`;
    if (!kernels.has(name)) kernels.set(name, { expr: a.expr, cols });
  }

type Fn = ReturnType<typeof compileFusedJs>;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
let seed = 7;
const fill = (a: Float32Array) => {
  for (let i = 0; i < a.length; i++) {
    seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
    a[i] = (seed / 2 ** 32) * 2 - 1;
  }
  return a;
};

console.log(`node ${process.version}, load average ${loadavg().map((x) => x.toFixed(2)).join(' ')}, ${reps} reps, median ms of forward + every backward slot`);
console.log('| kernel | JS | WASM in place (heap) | WASM via copy | JS/WASM heap | max rel diff | bwd per slot (heap) | bwd one pass (heap) (max rel diff) | per slot/one pass | fwd (heap) |');
console.log('|---|---|---|---|---|---|---|---|---|---|');
for (const [name, { expr, cols }] of kernels) {
  const bw = expr.backward!;
  const fwdRoots = expr.forward.roots.map((node) => ({ node, reduce: 'none' as const }));
  const progs: { nodes: FusedExprAttrs['forward']['nodes']; roots: { node: number; reduce: 'none' | 'cols' }[] }[] = [
    { nodes: expr.forward.nodes, roots: fwdRoots },
    ...bw.slots.map((s, i) => ({ nodes: bw.program.nodes, roots: [{ node: bw.program.roots[i]!, reduce: s.reduce }] })),
  ];
  const js: Fn[] = progs.map((p) => compileFusedJs(p.nodes, expr.inputs, p.roots));
  const wasm: Fn[] = progs.map((p) => instantiateFused(emitFused(p.nodes, expr.inputs, p.roots)));
  const k = expr.forward.roots.length;
  const size = (kind: string) => (kind === 'vec' ? cols : rows * cols);
  const shapes = [...expr.inputs.map(size), ...Array(k).fill(rows * cols), ...Array(k).fill(rows * cols)];
  const outShapes = [...Array(k).fill(rows * cols), ...bw.slots.map((s) => (s.reduce === 'cols' ? cols : rows * cols))];
  // Plain arrays.
  const plainIn = shapes.map((n) => fill(new Float32Array(n)));
  const plainOut = () => outShapes.map((n) => new Float32Array(n));
  // Heap tensors: views taken after every allocation.
  const tIn = shapes.map((n, i) => tf.tensor1d(plainIn[i]!));
  const tOut = outShapes.map((n) => tf.zeros([n]));
  const tOne = bw.slots.map((s) => tf.zeros([s.reduce === 'cols' ? cols : rows * cols]));
  const heapIn = tIn.map((t) => backend.typedArrayFromHeap(t) as Float32Array);
  const heapOut = tOut.map((t) => backend.typedArrayFromHeap(t) as Float32Array);
  const heapOne = tOne.map((t) => backend.typedArrayFromHeap(t) as Float32Array);
  const run = (fns: Fn[], ins: Float32Array[], outs: Float32Array[]) => {
    const n = expr.inputs.length;
    const xs = ins.slice(0, n);
    fns[0]!(rows, cols, xs, [], [], outs.slice(0, k));
    const ys = ins.slice(n, n + k); // saved outputs: random stand-ins, the cost is the same
    const dys = ins.slice(n + k);
    for (let s = 1; s < fns.length; s++) fns[s]!(rows, cols, xs, ys, dys, [outs[k + s - 1]!]);
  };
  const jsOut = plainOut();
  const copyOut = plainOut();
  // Every slot in one program (roots in slot order), on the heap; outputs of its own to compare.
  const onePass = instantiateFused(emitFused(bw.program.nodes, expr.inputs, bw.slots.map((s, i) => ({ node: bw.program.roots[i]!, reduce: s.reduce }))));
  const n = expr.inputs.length;
  const bwdArgs = (ins: Float32Array[]) => [ins.slice(0, n), ins.slice(n, n + k), ins.slice(n + k)] as const;
  const t = { js: [] as number[], heap: [] as number[], copy: [] as number[], per: [] as number[], one: [] as number[], fwd: [] as number[] };
  for (let r = 0; r < reps + 2; r++) {
    {
      const [xs, ys, dys] = bwdArgs(heapIn);
      let t0 = performance.now();
      wasm[0]!(rows, cols, xs, [], [], heapOut.slice(0, k));
      const f = performance.now() - t0;
      t0 = performance.now();
      for (let s = 1; s < wasm.length; s++) wasm[s]!(rows, cols, xs, ys, dys, [heapOut[k + s - 1]!]);
      const a = performance.now() - t0;
      t0 = performance.now();
      onePass(rows, cols, xs, ys, dys, heapOne);
      const b = performance.now() - t0;
      if (r >= 2) {
        t.fwd.push(f);
        t.per.push(a);
        t.one.push(b);
      }
    }
    let t0 = performance.now();
    run(js, plainIn, jsOut);
    const a = performance.now() - t0;
    t0 = performance.now();
    run(wasm, heapIn, heapOut);
    const b = performance.now() - t0;
    t0 = performance.now();
    run(wasm, plainIn, copyOut);
    const c = performance.now() - t0;
    if (r >= 2) {
      t.js.push(a);
      t.heap.push(b);
      t.copy.push(c);
    }
  }
  let diff = 0;
  jsOut.forEach((o, i) => {
    let num = 0;
    let den = 1e-6;
    for (let j = 0; j < o.length; j++) {
      num = Math.max(num, Math.abs(o[j]! - heapOut[i]![j]!), Math.abs(o[j]! - copyOut[i]![j]!));
      den = Math.max(den, Math.abs(o[j]!));
    }
    diff = Math.max(diff, num / den);
  });
  // One pass gives each slot's per-slot result (within a few ulp: silu as x·sigmoid(x) where both are needed).
  let oneDiff = 0;
  heapOne.forEach((o, s) => {
    const ref = heapOut[k + s]!;
    let den = 1e-6;
    let num = 0;
    for (let j = 0; j < o.length; j++) {
      num = Math.max(num, Math.abs(o[j]! - ref[j]!));
      den = Math.max(den, Math.abs(ref[j]!));
    }
    oneDiff = Math.max(oneDiff, num / den);
  });
  const [mj, mh, mc] = [median(t.js), median(t.heap), median(t.copy)];
  const [mp, mo] = [median(t.per), median(t.one)];
  console.log(
    `| ${name} (fwd + ${bw.slots.length} bwd) | ${mj.toFixed(2)} | ${mh.toFixed(2)} | ${mc.toFixed(2)} | ${(mj / mh).toFixed(1)}x | ${diff.toExponential(1)} | ${mp.toFixed(2)} | ${mo.toFixed(2)} (${oneDiff.toExponential(0)}) | ${(mp / mo).toFixed(2)}x | ${median(t.fwd).toFixed(2)} |`,
  );
  tf.dispose([...tIn, ...tOut, ...tOne]);
}
