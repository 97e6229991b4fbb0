/**
 * The wasm GEMM on several threads: gemm-shared.wasm (gemm.wat assembled against an imported shared memory)
 * instantiated on this thread and in worker threads over one shared WebAssembly.Memory. A product large
 * enough to pay for the hand-off is split into row blocks: the workers compute theirs (`gemm_rows` /
 * `gemm_tn_rows`), this thread its own, then waits for theirs. Every element of C is computed by the same
 * instruction sequence whichever thread runs it, so results are bit-identical to one thread's.
 *
 * The product is cut into a few chunks of row blocks per thread, which every thread, this one included,
 * takes from a shared counter (compare-exchange) until none are left; this thread then waits only for
 * chunks a worker has started. So a worker the OS does not schedule (a loaded machine) costs at most one
 * chunk's delay, never a wait for the whole share. Hand-off is a control block in a SharedArrayBuffer with
 * Atomics.wait / notify: a few microseconds, where postMessage would cost tens. Workers are unref'd (they
 * never keep a process alive) and started on first use; one that cannot start simply takes no chunks.
 *
 * MCPC_THREADS=N uses N threads in all (1, the default: this thread only). Without SharedArrayBuffer or
 * worker threads the caller gets null and runs single-threaded.
 */
import { readFileSync } from 'node:fs';
import { Worker } from 'node:worker_threads';

type RowsFn = (a: number, b: number, c: number, batch: number, M: number, N: number, K: number, i0: number, i1: number) => void;

interface SharedExports {
  gemm_rows: RowsFn;
  gemm_tn_rows: RowsFn;
}

/** What gemm.ts runs products on: its memory, and one product (A transposed or not) over row blocks. */
export interface GemmEngine {
  memory: WebAssembly.Memory;
  threads: number;
  /** Chunks of row blocks computed by worker threads so far (how tests and benchmarks see that threads ran). */
  workerShares: number;
  run(transposeA: boolean, a: number, b: number, c: number, batch: number, M: number, N: number, K: number): void;
}

/** Fewer multiply-adds than this run on this thread alone: the hand-off costs more than it saves. */
const MIN_MACS_PER_THREAD = 1 << 20;
/** Chunks of row blocks per thread: a thread the OS does not run for a while delays at most its one chunk. */
const CHUNKS_PER_THREAD = 4;

/**
 * The control block, Int32 slots. GEN: the product's generation (workers wait on it); CLAIM: generation << 16 |
 * the next chunk to take (taken by compare-exchange, so a worker that wakes late for an old product takes
 * nothing of the next); DONE: chunks finished; FAILED: a chunk trapped in a worker; then the arguments.
 */
const GEN = 0;
const CLAIM = 1;
const DONE = 2;
const FAILED = 3;
const ARGS = 4; // transposeA, a, b, c, batch, M, N, K, chunks
const SLOTS = 16;

const WORKER_SOURCE = `
const { workerData } = require('node:worker_threads');
const { module, memory, control } = workerData;
const c = new Int32Array(control);
const g = new WebAssembly.Instance(module, { env: { memory } }).exports;
let seen = 0;
for (;;) {
  Atomics.wait(c, ${GEN}, seen);
  seen = Atomics.load(c, ${GEN});
  const tn = c[${ARGS}], a = c[${ARGS + 1}], b = c[${ARGS + 2}], cc = c[${ARGS + 3}], batch = c[${ARGS + 4}];
  const M = c[${ARGS + 5}], N = c[${ARGS + 6}], K = c[${ARGS + 7}], chunks = c[${ARGS + 8}];
  const gen = seen & 0x7fff, blocks = M / 4;
  for (;;) {
    const v = Atomics.load(c, ${CLAIM});
    if (v >>> 16 !== gen || (v & 0xffff) >= chunks) break;
    if (Atomics.compareExchange(c, ${CLAIM}, v, v + 1) !== v) continue;
    const i = v & 0xffff;
    try {
      (tn ? g.gemm_tn_rows : g.gemm_rows)(a, b, cc, batch, M, N, K, 4 * Math.floor((blocks * i) / chunks), 4 * Math.floor((blocks * (i + 1)) / chunks));
    } catch (e) {
      Atomics.store(c, ${FAILED}, 1);
    }
    Atomics.add(c, ${DONE}, 1);
    Atomics.notify(c, ${DONE});
  }
}
`;

/** The thread count asked for (MCPC_THREADS) or the default. */
export function gemmThreadCount(): number {
  const v = process.env.MCPC_THREADS;
  if (v !== undefined && v !== '') {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) throw new Error(`MCPC_THREADS must be a positive integer (got '${v}')`);
    return n;
  }
  // One by default: on the idle 2-core machine two threads made the training step at most 8% faster, and
  // under load they lose (BENCHMARKS.md, "One output per part, gemm_tn, the fused optimizer, threads").
  return 1;
}

/** A threaded engine, or null where it cannot run (one thread asked for, no SharedArrayBuffer, no workers). */
export function threadedGemm(threads = gemmThreadCount()): GemmEngine | null {
  if (threads < 2 || typeof SharedArrayBuffer === 'undefined') return null;
  let memory: WebAssembly.Memory;
  let main: SharedExports;
  let module: WebAssembly.Module;
  try {
    memory = new WebAssembly.Memory({ initial: 1, maximum: 32768, shared: true });
    module = new WebAssembly.Module(readFileSync(new URL('./gemm-shared.wasm', import.meta.url)));
    main = new WebAssembly.Instance(module, { env: { memory } }).exports as unknown as SharedExports;
  } catch {
    return null;
  }
  const control = new SharedArrayBuffer(SLOTS * 4);
  const c = new Int32Array(control);
  let started = false;
  let gen = 0;
  return {
    memory,
    threads,
    workerShares: 0,
    run(transposeA, a, b, cc, batch, M, N, K) {
      const blocks = M / 4;
      const n = Math.min(threads, blocks, Math.floor((batch * M * N * K) / MIN_MACS_PER_THREAD));
      const fn = transposeA ? main.gemm_tn_rows : main.gemm_rows;
      if (n < 2) return fn(a, b, cc, batch, M, N, K, 0, M);
      if (!started) {
        started = true;
        for (let i = 1; i < threads; i++) {
          const w = new Worker(WORKER_SOURCE, { eval: true, workerData: { module, memory, control } });
          // A worker that fails to start takes no chunks; this thread does its work.
          w.on('error', () => {});
          w.unref();
        }
      }
      const chunks = Math.min(blocks, n * CHUNKS_PER_THREAD);
      gen = (gen + 1) & 0x7fff;
      c.set([transposeA ? 1 : 0, a, b, cc, batch, M, N, K, chunks], ARGS);
      Atomics.store(c, DONE, 0);
      Atomics.store(c, FAILED, 0);
      Atomics.store(c, CLAIM, gen << 16);
      Atomics.store(c, GEN, gen);
      Atomics.notify(c, GEN);
      // Take chunks like the workers do; then wait for the ones they took.
      let mine = 0;
      for (;;) {
        const v = Atomics.load(c, CLAIM);
        if ((v & 0xffff) >= chunks) break;
        if (Atomics.compareExchange(c, CLAIM, v, v + 1) !== v) continue;
        const i = v & 0xffff;
        fn(a, b, cc, batch, M, N, K, 4 * Math.floor((blocks * i) / chunks), 4 * Math.floor((blocks * (i + 1)) / chunks));
        mine++;
        Atomics.add(c, DONE, 1);
      }
      for (let d = Atomics.load(c, DONE); d < chunks; d = Atomics.load(c, DONE)) Atomics.wait(c, DONE, d);
      this.workerShares += chunks - mine;
      // A chunk that trapped in a worker: the whole product again here, where a trap raises with its message.
      if (Atomics.load(c, FAILED)) fn(a, b, cc, batch, M, N, K, 0, M);
    },
  };
}
