/**
 * The GPU benchmark: our WGSL kernels and PyTorch on the same GPU, in one run.
 *
 *   npm ci && bash ../shared/gpu/pack.sh bench/gpu.ts .gpu      # here
 *   bash .gpu/run.sh                                            # on the GPU machine (see shared/gpu/README.md)
 *   npx tsx bench/gpu.ts --quick                                # small shapes, any WebGPU adapter (llvmpipe too)
 *
 * Prints, ours then PyTorch's (python3 runs a script this program writes to a temp dir; its JSON comes
 * back on stdout; without python3 + torch + CUDA it says so and goes on):
 *   - f32 GEMM 4096³ (ours: register-tiled WGSL, tile tuned first; PyTorch: fp32 with TF32 off, and for
 *     context TF32 and bf16)
 *   - f16-input, f32-accumulate GEMM 4096³ on subgroup matrices (ours: checked against an f32 product first,
 *     every tile candidate timed; PyTorch: fp16 matmul), then where the winner's time goes: the same tile
 *     with one part taken out (cross / nostage / hoist probes, F16Tile.probe) and its time against K
 *   - the MoE-LoRA FFN layer of shared/gpu/README.md: T=2048, d=1024, ff=2816, SwiGLU; gate, up and down
 *     each a frozen base + shared LoRA 2×16 + 8 routed rank-16 experts (softmax router, top-2,
 *     renormalised), scale 2; forward and forward+backward (gradients of x and every adapter and router
 *     weight). Ours: the fused kernels (src/runtime/webgpu/moe-lora.ts), f32. PyTorch: eager fp32 running
 *     MedCare's naive formulation (every expert for every token, then gathered), and bf16 autocast.
 * with TFLOP/s and ms (median of --reps runs after warm-up, GPU work synchronised), and a PASS/FAIL line per
 * target of issue 5. `--quick` (the default on a software adapter) shrinks every shape.
 */
import { spawnSync } from 'node:child_process';
import { loadavg } from 'node:os';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { initBackend, tf, type Tensor } from '../src/runtime/tfjs/index.js';
import { describeDevice, openDawn } from '../src/runtime/webgpu/device.js';
import { gpuFaultMark, gpuFaultSince, settleGpuFaults, takeGpuErrors, withErrorScopes } from '../src/runtime/webgpu/faults.js';
import { gemm, gpuSync, tuneGemm, tunePending } from '../src/runtime/webgpu/gemm.js';
import { forceTile } from '../src/runtime/webgpu/gemm-tune.js';
import type { Tile } from '../src/runtime/webgpu/gemm-wgsl.js';
import { castF16, emulateF16, F16_CANDIDATES, F16_EMULATION_TILES, f16TileName, gemmF16, gemmF16Packed, probeF16, rememberF16Tile, setF16Tile, type F16Support, type F16Tile } from '../src/runtime/webgpu/gemm-f16.js';
import { f16MatmulCount, useF16Matmul, useF16MatmulEmulated } from '../src/runtime/webgpu/matmul-f16.js';
import { moeLoraLinear, moeLoraLinearPair, type MoeLoraWeights } from '../src/runtime/webgpu/moe-lora.js';
import { swiglu } from '../src/runtime/webgpu/kernels/swiglu.js';
import { createStageRunner, type StageRunner } from '../src/runtime/executor.js';
import { medcarePlan, syntheticBatch } from './support/medcare.js';
import { passes as defaultPasses } from '../src/compiler/4-optimize/index.js';
import { concatSharedInput } from '../src/compiler/4-optimize/passes/concat-shared-input.js';
import { routeExpertDown } from '../src/compiler/4-optimize/passes/route-expert-down.js';

const { values } = parseArgs({
  options: { quick: { type: 'boolean' }, full: { type: 'boolean' }, reps: { type: 'string' }, 'no-torch': { type: 'boolean' }, only: { type: 'string' }, profile: { type: 'boolean' }, 'submit-batch': { type: 'string' }, host: { type: 'boolean' }, 'emulate-f16': { type: 'boolean' } },
});
/** `--only torch,faults,gemm,f16,moe,step,curve`: the parts to run (default all). */
const parts = new Set((values.only ?? 'torch,faults,gemm,f16,moe,step,curve').split(','));
process.env.EGL_PLATFORM ??= 'surfaceless';
const gpu = await openDawn();
if ('unavailable' in gpu) {
  // Under CI llvmpipe is installed, so no adapter is a failure; elsewhere it is a skip.
  console.log(`bench/gpu: ${process.env.CI ? 'FAILED' : 'skipped'}: ${gpu.unavailable}`);
  process.exit(process.env.CI ? 1 : 0);
}
await initBackend('webgpu');
// Dispatches tfjs records before it submits the command buffer (tfjs's default 15): a host-cost experiment.
if (values['submit-batch']) tf.env().set('WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE', Number(values['submit-batch']));
const quick = values.full ? false : (values.quick ?? gpu.software);
const reps = Number(values.reps ?? (quick ? 3 : 10));
console.log(`device: ${describeDevice(gpu)}; submit batch ${tf.env().getNumber('WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE')}`);
console.log(`date: ${new Date().toISOString()}; ${quick ? 'QUICK (small shapes: figures are not the benchmark)' : 'full shapes'}${gpu.software ? '; software adapter: timings mean nothing for a GPU' : ''}`);

const G = quick ? 256 : 4096;
const L = quick ? { T: 64, d: 64, ff: 96 } : { T: 2048, d: 1024, ff: 2816 };
const MOE = { shared: 2, sharedRank: 16, E: 8, r: 16, k: 2, scale: 2 };

// --- PyTorch ---------------------------------------------------------------------------------------------
const PY = String.raw`
import json, sys, time
out = {}
try:
    import torch
except Exception as e:
    print(json.dumps({"error": "no torch: %s" % e})); sys.exit(0)
if not torch.cuda.is_available():
    print(json.dumps({"error": "torch %s without CUDA" % torch.__version__})); sys.exit(0)
cfg = json.loads(sys.argv[1])
dev = "cuda"
reps = cfg["reps"]
out["torch"] = torch.__version__
out["gpu"] = torch.cuda.get_device_name(0)
def timeit(f):
    for _ in range(3): f()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        s = torch.cuda.Event(enable_timing=True); e = torch.cuda.Event(enable_timing=True)
        s.record(); f(); e.record(); torch.cuda.synchronize(); ts.append(s.elapsed_time(e))
    ts.sort(); return ts[len(ts) // 2]
n = cfg["G"]
a = torch.randn(n, n, device=dev); b = torch.randn(n, n, device=dev)
torch.backends.cuda.matmul.allow_tf32 = False
out["f32"] = timeit(lambda: a @ b)
torch.backends.cuda.matmul.allow_tf32 = True
out["tf32"] = timeit(lambda: a @ b)
torch.backends.cuda.matmul.allow_tf32 = False
ah, bh = a.half(), b.half()
out["f16"] = timeit(lambda: ah @ bh)
ab, bb = a.bfloat16(), b.bfloat16()
out["bf16"] = timeit(lambda: ab @ bb)
T, d, ff = cfg["T"], cfg["d"], cfg["ff"]
S, RS, E, r, k, sc = cfg["shared"], cfg["sharedRank"], cfg["E"], cfg["r"], cfg["k"], cfg["scale"]
def site(i, o):
    p = lambda *s: (torch.randn(*s, device=dev) * 0.02).requires_grad_()
    return dict(W=torch.randn(o, i, device=dev) * 0.02, shA=[p(RS, i) for _ in range(S)], shB=[p(o, RS) for _ in range(S)],
                Wr=p(E, i), br=p(E), Ae=p(E, r, i), Be=p(E, o, r))
def moe_linear(x, s):
    # MedCare's formulation: every expert for every token, then the top-k gathered.
    y = x @ s["W"].T
    for A, B in zip(s["shA"], s["shB"]):
        y = y + sc * ((x @ A.T) @ B.T)
    p = torch.softmax(x @ s["Wr"].T + s["br"], -1)
    v, i = p.topk(k, -1)
    g = v / v.sum(-1, keepdim=True)
    outs = torch.stack([sc * ((x @ s["Ae"][e].T) @ s["Be"][e].T) for e in range(E)], 1)
    sel = outs.gather(1, i.unsqueeze(-1).expand(-1, -1, outs.shape[-1]))
    return y + (g.unsqueeze(-1) * sel).sum(1)
gate, up, down = site(d, ff), site(d, ff), site(ff, d)
x = torch.randn(T, d, device=dev, requires_grad=True)
dy = torch.randn(T, d, device=dev)
def layer():
    h = torch.nn.functional.silu(moe_linear(x, gate)) * moe_linear(x, up)
    return moe_linear(h, down)
def fwd():
    with torch.no_grad(): layer()
def fwdbwd():
    y = layer(); (y * dy).sum().backward()
out["ffn_fwd"] = timeit(fwd)
out["ffn_fwdbwd"] = timeit(fwdbwd)
def fwdbwd16():
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = layer()
    (y.float() * dy).sum().backward()
out["ffn_fwdbwd_bf16"] = timeit(fwdbwd16)
print(json.dumps(out))
`;

function torchFigures(): Record<string, number | string> {
  if (values['no-torch']) return { error: 'skipped (--no-torch)' };
  const dir = mkdtempSync(join(tmpdir(), 'mcpc-torch-'));
  try {
    const file = join(dir, 'bench.py');
    writeFileSync(file, PY);
    const cfg = JSON.stringify({ G, ...L, ...MOE, reps });
    const res = spawnSync('python3', [file, cfg], { encoding: 'utf8', timeout: 600_000 });
    if (res.error) return { error: `python3 could not run (${res.error.message})` };
    const line = res.stdout.trim().split('\n').pop() ?? '';
    try {
      return JSON.parse(line) as Record<string, number | string>;
    } catch {
      return { error: `python3 exited ${res.status}: ${(res.stderr || res.stdout).trim().split('\n').slice(-3).join(' | ')}` };
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

// --- ours ------------------------------------------------------------------------------------------------
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
/**
 * Median milliseconds per call: each of `n` samples records `inner` calls back to back and waits for the GPU
 * once, so the host's submit-and-read-back latency (about a millisecond through Dawn) is spread over them.
 */
async function time(f: () => Tensor | Tensor[], n = reps, inner = 10): Promise<number> {
  for (let i = 0; i < 2; i++) {
    tf.dispose(f());
    await gpuSync();
  }
  const ts: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    const rs: (Tensor | Tensor[])[] = [];
    for (let j = 0; j < inner; j++) rs.push(f());
    await gpuSync();
    ts.push((performance.now() - t0) / inner);
    tf.dispose(rs.flat());
  }
  return median(ts);
}
/**
 * Median GPU milliseconds per call from timestamp queries (tfjs's timer: each dispatch in its own pass),
 * free of the host's latency; undefined where the adapter has no timestamp-query.
 */
async function gpuTime(f: () => Tensor | Tensor[], n = 5, inner = 10): Promise<number | undefined> {
  // `inner` calls back to back per measurement, after a warm-up: the GPU stays busy (and at its clocks) as
  // in the wall-time loop, instead of idling between single dispatches.
  for (let i = 0; i < 2; i++) tf.dispose(f());
  await gpuSync();
  const ts: number[] = [];
  for (let i = 0; i < n; i++) {
    const outs: (Tensor | Tensor[])[] = [];
    const info = await tf.time(() => {
      for (let j = 0; j < inner; j++) outs.push(f());
    });
    tf.dispose(outs.flat());
    // Without timestamp-query tfjs reports 0 (or an error object).
    if (typeof info.kernelMs !== 'number' || info.kernelMs <= 0) return undefined;
    ts.push(info.kernelMs / inner);
  }
  return median(ts);
}
/** Host milliseconds to record one call (no wait for the GPU): what the JavaScript side costs. */
async function hostTime(f: () => Tensor | Tensor[], n = 10): Promise<number> {
  await gpuSync();
  const t0 = performance.now();
  const rs: (Tensor | Tensor[])[] = [];
  for (let i = 0; i < n; i++) rs.push(f());
  const ms = (performance.now() - t0) / n;
  await gpuSync();
  tf.dispose(rs.flat());
  return ms;
}
// --host: what recording one call costs the host, per variant: tfjs kernels (by name), dispatches, bind groups,
// uniform writes, and host ms (wall less the time inside queue.submit, where a software adapter runs the shaders),
// the variants alternating in one process so that the machine's load moves them alike.
const hostCounts = { dispatch: 0, bindGroup: 0, writeBuffer: 0, submit: 0, submitMs: 0 };
let hostHooked = false;
const dispatchLabels = new Map<string, number>();
function hookHost(): void {
  if (hostHooked) return;
  hostHooked = true;
  const backend = tf.backend() as any;
  const device = backend.device;
  const queue = backend.queue;
  const submit = queue.submit.bind(queue);
  queue.submit = (b: unknown) => {
    const t0 = performance.now();
    const r = submit(b);
    hostCounts.submitMs += performance.now() - t0;
    hostCounts.submit++;
    return r;
  };
  const write = queue.writeBuffer.bind(queue);
  queue.writeBuffer = (...a: unknown[]) => {
    hostCounts.writeBuffer++;
    return write(...a);
  };
  const bind = device.createBindGroup.bind(device);
  device.createBindGroup = (d: unknown) => {
    hostCounts.bindGroup++;
    return bind(d);
  };
  const enc = device.createCommandEncoder.bind(device);
  device.createCommandEncoder = (d?: unknown) => {
    const e = enc(d);
    const begin = e.beginComputePass.bind(e);
    e.beginComputePass = (pd?: unknown) => {
      const pass = begin(pd);
      const disp = pass.dispatchWorkgroups.bind(pass);
      const setp = pass.setPipeline.bind(pass);
      let label = '';
      pass.setPipeline = (p: any) => {
        label = String(p.label ?? '').slice(0, 40);
        return setp(p);
      };
      pass.dispatchWorkgroups = (x: number, y?: number, z?: number) => {
        hostCounts.dispatch++;
        dispatchLabels.set(label, (dispatchLabels.get(label) ?? 0) + 1);
        return disp(x, y, z);
      };
      return pass;
    };
    return e;
  };
}
const load = () =>
  loadavg()
    .map((x) => x.toFixed(2))
    .join(' ');
async function hostReport(title: string, variants: { name: string; f: () => Tensor | Tensor[] }[], rounds = 7, n = 5): Promise<void> {
  hookHost();
  const l0 = load();
  for (const v of variants) {
    tf.dispose(v.f());
    await gpuSync();
    const c0 = { ...hostCounts };
    dispatchLabels.clear();
    tf.dispose(v.f());
    const labels = [...dispatchLabels.entries()].sort((a, b) => b[1] - a[1]).map(([k, c]) => `${k || '?'} ${c}`).join(', ');
    const c1 = { ...hostCounts };
    const d = (k: keyof typeof hostCounts) => c1[k] - c0[k];
    await gpuSync();
    const info = await tf.profile(() => v.f() as any);
    tf.dispose(info.result as Tensor | Tensor[]);
    const by = new Map<string, number>();
    for (const k of info.kernels) by.set(k.name, (by.get(k.name) ?? 0) + 1);
    const names = [...by.entries()].sort((a, b) => b[1] - a[1]).map(([k, c]) => `${k} ${c}`).join(', ');
    report(`host ${title} [${v.name}]: ${info.kernels.length} tfjs kernels, ${d('dispatch')} dispatches, ${d('bindGroup')} bind groups, ${d('writeBuffer')} buffer writes; kernels: ${names}; dispatches: ${labels}`);
  }
  const ms = variants.map(() => [] as number[]);
  const groups = variants.map(() => 0);
  for (let r = 0; r < rounds; r++) {
    for (let i = 0; i < variants.length; i++) {
      await gpuSync();
      const s0 = hostCounts.submitMs;
      const b0 = hostCounts.bindGroup;
      const t0 = performance.now();
      const rs: (Tensor | Tensor[])[] = [];
      for (let j = 0; j < n; j++) rs.push(variants[i]!.f());
      ms[i]!.push((performance.now() - t0 - (hostCounts.submitMs - s0)) / n);
      groups[i]! += hostCounts.bindGroup - b0;
      await gpuSync();
      tf.dispose(rs.flat());
    }
  }
  report(`host ${title}: ms per call (wall less queue.submit), median of ${rounds} alternating rounds of ${n}: ${variants.map((v, i) => `${v.name} ${median(ms[i]!).toFixed(2)} (min ${Math.min(...ms[i]!).toFixed(2)}; ${(groups[i]! / (rounds * n)).toFixed(1)} bind groups made a call)`).join(', ')}; load average ${l0} -> ${load()}`);
}
const gfmt = (ms: number | undefined, flop?: number) => (ms === undefined ? 'GPU time n/a' : `GPU ${fmt(ms, flop)}`);
/** GPU time per kernel (timestamp queries through tfjs's profiler): the largest first, with the wall time. */
async function profile(name: string, f: () => Tensor | Tensor[] | Promise<Tensor[]>): Promise<void> {
  if (!values.profile) return;
  const t0 = performance.now();
  const info = await tf.profile(f as () => Promise<Tensor[]>);
  const wall = performance.now() - t0;
  const by = new Map<string, { ms: number; n: number }>();
  for (const k of info.kernels) {
    const e = by.get(k.name) ?? { ms: 0, n: 0 };
    e.ms += Number(k.kernelTimeMs) || 0;
    e.n++;
    by.set(k.name, e);
  }
  const total = [...by.values()].reduce((a, b) => a + b.ms, 0);
  const top = [...by.entries()].sort((a, b) => b[1].ms - a[1].ms).slice(0, 14);
  report(`profile ${name}: GPU ${total.toFixed(2)} ms in ${info.kernels.length} kernels, wall ${wall.toFixed(1)} ms (profiling ends a pass per kernel); ${top.map(([k, e]) => `${k} ${e.ms.toFixed(2)}/${e.n}`).join(', ')}`);
  tf.dispose(info.result as Tensor | Tensor[]);
}
const tflops = (flop: number, ms: number) => flop / ms / 1e9;
const fmt = (ms: number, flop?: number) => `${ms.toFixed(3)} ms${flop ? `, ${tflops(flop, ms).toPrecision(3)} TFLOP/s` : ''}`;
const lines: string[] = [];
const report = (s: string) => {
  console.log(s);
  lines.push(s);
};
const targets: { what: string; ok: boolean | undefined; detail: string }[] = [];
/**
 * One part of the run: a failure is reported and the next part still runs (GPU time is scarce). An error the
 * device raised outside an error scope (src/runtime/webgpu/faults.ts: a kernel that failed validation runs as
 * nothing and times fast) marks the section's figures as suspect.
 */
async function section(name: string, body: () => Promise<void>, raisesErrors = false): Promise<void> {
  const t0 = performance.now();
  const mark = gpuFaultMark();
  try {
    await body();
  } catch (e) {
    report(`FAILED ${name}: ${e instanceof Error ? (e.stack ?? e.message).split('\n').slice(0, 4).join(' | ') : String(e)}`);
  }
  const fault = raisesErrors ? undefined : await settleGpuFaults(mark, 0);
  if (fault) report(`DEVICE ERROR in ${name}: ${fault.kind}: ${fault.message}${fault.more ? ` (and ${fault.more} more)` : ''}; this section's figures are suspect`);
  console.log(`(${name}: ${((performance.now() - t0) / 1000).toFixed(1)} s)`);
}

// PyTorch first: it needs nothing of ours, so its figures come back whatever happens below.
const t: Record<string, number | string> = parts.has('torch') ? torchFigures() : { error: 'skipped (--only)' };
if ('error' in t) report(`torch: ${t.error}; continuing without PyTorch figures`);
else {
  report(`torch ${t.torch} on ${t.gpu}`);
  report(`torch f32 matmul ${G}^3 (TF32 off): ${fmt(Number(t.f32), 2 * G ** 3)}; TF32 ${fmt(Number(t.tf32), 2 * G ** 3)}; fp16 ${fmt(Number(t.f16), 2 * G ** 3)}; bf16 ${fmt(Number(t.bf16), 2 * G ** 3)}`);
  report(`torch MoE-LoRA FFN forward (fp32 eager, naive): ${fmt(Number(t.ffn_fwd))}`);
  report(`torch MoE-LoRA FFN forward+backward (fp32 eager, naive): ${fmt(Number(t.ffn_fwdbwd))}; bf16 autocast ${fmt(Number(t.ffn_fwdbwd_bf16))}`);
}
let f32ms: number | undefined;
let f16ms: number | undefined;
let f16gpu: number | undefined;
let ffnF: number | undefined;
let ffnFB: number | undefined;

const gemmFlop = 2 * G * G * G;
const a = tf.randomNormal([G, G]);
const b = tf.randomNormal([G, G]);

// The fault watch on this device (src/runtime/webgpu/faults.ts), which a run relies on: a buffer one word past
// the device's limit raises a validation error, captured inside error scopes (the tuner's trials) and, outside
// them, recorded before createBuffer returns (a run checks right after each step).
if (parts.has('faults'))
  await section(
    'fault watch',
    async () => {
      const device = (gpu as { device: GPUDevice }).device;
      const tooBig = { size: Number(gpu.limits.maxBufferSize) + 4, usage: GPUBufferUsage.STORAGE };
      const mark = gpuFaultMark();
      const scoped = await withErrorScopes(device, () => device.createBuffer(tooBig));
      const leaked = gpuFaultSince(mark);
      const mark2 = gpuFaultMark();
      const release = takeGpuErrors();
      try {
        device.createBuffer(tooBig);
      } finally {
        release();
      }
      const now = gpuFaultSince(mark2);
      report(
        `fault watch: inside error scopes ${scoped.error ? `captured (${scoped.error.kind})` : 'NOT captured'}, ${leaked ? 'but ALSO recorded as a fault' : 'not recorded as a fault'}; ` +
          `outside them ${now ? `recorded at once (${now.kind}: ${now.message.slice(0, 80)})` : 'NOT recorded at once'}`,
      );
    },
    true,
  );

// f32 GEMM
if (parts.has('gemm')) await section('f32 GEMM', async () => {
  const tuned = await tuneGemm(G, G, G);
  report(`tuner (f32 ${G}^3): best ${JSON.stringify(tuned.best)}; ${tuned.timings.map((t) => `${f32TileName(t.tile)} ${t.ms.toFixed(2)}`).join(', ')} ms`);
  for (const f of tuned.failed) report(`tuner (f32 ${G}^3): ${f32TileName(f.tile)} left out: ${f.error}`);
  f32ms = await time(() => gemm(a, b));
  const tfjsMs = await time(() => tf.matMul(a as tf.Tensor2D, b as tf.Tensor2D));
  const f32gpu = await gpuTime(() => gemm(a, b));
  report(`ours  f32 GEMM ${G}^3 (WGSL, tuned tile): ${fmt(f32ms!, gemmFlop)}; ${gfmt(f32gpu, gemmFlop)}`);
  report(`tfjs  f32 matMul ${G}^3 (tfjs-backend-webgpu): ${fmt(tfjsMs, gemmFlop)}; ${gfmt(await gpuTime(() => tf.matMul(a as tf.Tensor2D, b as tf.Tensor2D)), gemmFlop)}`);
  await f32Probes(tuned.best).catch((e: unknown) => report(`f32 probes failed: ${why(e, 300)}`));
  const f32best = f32gpu ?? f32ms!;
  targets.push({ what: `f32 GEMM 4096^3 >= 30 TFLOP/s`, ok: quick ? undefined : tflops(gemmFlop, f32best) >= 30, detail: `${tflops(gemmFlop, f32best).toFixed(1)} TFLOP/s (${f32gpu ? 'GPU time' : 'wall'})` });
});

/** `128x128x8/8x8 pf db sw8 ur`: an f32 tile in reports (a declaration: the f32 section above runs first). */
function f32TileName(t: Tile): string {
  return `${t.bm}x${t.bn}x${t.bk}/${t.tm}x${t.tn}${t.pf ? ' pf' : ''}${t.db ? ' db' : ''}${t.sw ? ` sw${t.sw}` : ''}${t.ur ? ' ur' : ''}`;
}

/** An error's message for a report line, cut to n characters (a declaration: the sections above call it). */
function why(e: unknown, n = 200): string {
  return e instanceof Error ? e.message.slice(0, n) : String(e);
}

/**
 * `f()` with Dawn's validation, out-of-memory and internal errors scoped to it (webgpu/faults.ts), the first
 * thrown as its kind and first line: a pipeline that fails to build writes nothing (and dispatches nothing), and
 * the output buffer tfjs hands out may be a recycled one holding an earlier, correct, product.
 */
async function dawnChecked<T>(f: () => T | Promise<T>): Promise<T> {
  const device = (gpu as { device: GPUDevice }).device; // (opened: this runs after the adapter check)
  const { value, error } = await withErrorScopes(device, f);
  if (error) throw new Error(`${error.kind}: ${error.message}`);
  return value as T;
}

/** GPU ms of `f` (wall where the adapter has no timestamps), after one call checked for Dawn errors. */
async function probeMs(f: () => Tensor): Promise<number> {
  // A probe whose pipeline does not build would time an empty dispatch.
  await dawnChecked(() => tf.dispose(f()));
  return (await gpuTime(f, 3)) ?? (await time(f, 3));
}

/** `f` on a [G, k] and b [k, G] (the first k columns / rows of the benchmark's operands), slices freed after. */
async function atK<T>(k: number, f: (ak: Tensor, bk: Tensor) => Promise<T>): Promise<T> {
  if (k === G) return f(a, b);
  const [ak, bk] = [tf.slice(a, [0, 0], [G, k]), tf.slice(b, [0, 0], [k, G])];
  try {
    return await f(ak, bk);
  } finally {
    tf.dispose([ak, bk]);
  }
}

/** `name (what) ms (n% less)` per probe, a failed one named with its error. */
async function probeRows(full: number, probes: { name: string; what: string; ms: () => Promise<number> }[]): Promise<string[]> {
  const rows = [`full ${full.toFixed(3)}`];
  for (const p of probes) {
    try {
      const ms = await p.ms();
      const less = Math.round(100 * (1 - ms / full));
      rows.push(`${p.name} (${p.what}) ${ms.toFixed(3)} (${less >= 0 ? `${less}% less` : `${-less}% more`})`);
    } catch (e) {
      rows.push(`${p.name} failed (${why(e)})`);
    }
  }
  return rows;
}

/** Times at K = G/8 … G and the least-squares fit ms = c + s·K: c is what a call pays outside its K loop. */
async function kScaling(what: string, full: number, at: (k: number) => Promise<number>): Promise<void> {
  const byK: { k: number; ms: number }[] = [];
  for (const k of [G / 8, G / 4, G / 2, G].filter((x) => x >= 64)) byK.push({ k, ms: k === G ? full : await at(k) });
  const mk = byK.reduce((x, r) => x + r.k, 0) / byK.length;
  const mm = byK.reduce((x, r) => x + r.ms, 0) / byK.length;
  const slope = byK.reduce((x, r) => x + (r.k - mk) * (r.ms - mm), 0) / byK.reduce((x, r) => x + (r.k - mk) ** 2, 0);
  const c = mm - slope * mk;
  report(
    `${what} ${G}x${G}xK: ${byK.map((r) => `K ${r.k} ${r.ms.toFixed(3)} ms = ${tflops(2 * G * G * r.k, r.ms).toPrecision(3)} TFLOP/s`).join(', ')}; fit ms = ${c.toFixed(3)} + K x ${(slope * 1000).toFixed(3)}e-3 (the K loop alone: ${tflops(2 * G * G, slope).toPrecision(3)} TFLOP/s)`,
  );
}

/**
 * Where the tuned f32 tile's time goes: the same tile with one part taken out (Tile.probe: products wrong by
 * design, never checked or cached), and its time against K.
 */
async function f32Probes(t: Tile): Promise<void> {
  const withTile = async <T>(tile: Tile, f: () => Promise<T>): Promise<T> => {
    forceTile(tile);
    try {
      return await f();
    } finally {
      forceTile(undefined);
    }
  };
  const ms = (tile: Tile, k: number) => withTile(tile, () => atK(k, (ak, bk) => probeMs(() => gemm(ak, bk))));
  const full = await ms(t, G);
  const name = f32TileName(t);
  const fmas = (t.tm * t.tn) / 4;
  const rows = await probeRows(full, [
    ...(t.tn > 4 ? [{ name: 'cross', what: `each value read feeds one FMA (${t.tm + t.tn / 4 - 1} of ${fmas} vec4 FMAs a k)`, ms: () => ms({ ...t, probe: 'cross' }, G) }] : []),
    { name: 'nostage', what: 'no global loads or workgroup stores', ms: () => ms({ ...t, probe: 'nostage' }, G) },
    { name: 'hoist', what: 'no workgroup reads in the K loop', ms: () => ms({ ...t, probe: 'hoist' }, G) },
  ]);
  report(`f32 probes (${name}, ${G}^3, ms; products wrong by design): ${rows.join('; ')}`);
  await kScaling(`f32 (${name})`, full, (k) => ms(t, k));
}

/**
 * Where the f16 winner's time goes, for the next kernel change to aim at: the same tile with one part taken out
 * (F16Tile.probe: products wrong by design, never checked or cached), and the kernel at shorter K (the intercept
 * of time against K is what a workgroup pays outside its K loop: launch, prologue, the stores of its results).
 * GPU time where the adapter has timestamps, else wall.
 */
async function f16Probes(t: F16Tile, emu: boolean): Promise<void> {
  const ms = (tile: F16Tile, k: number) =>
    atK(k, async (ak, bk) => {
      const a16 = castF16(ak, 'a', G, G, k, false, tile, emu);
      const b16 = castF16(bk, 'b', G, G, k, true, tile, emu);
      try {
        return await probeMs(() => gemmF16Packed(a16, b16, G, G, k, tile, emu));
      } finally {
        tf.dispose([a16, b16]);
      }
    });
  const full = await ms(t, G);
  const probe = (p: NonNullable<F16Tile['probe']>, what: string) => ({ name: p, what, ms: () => ms({ ...t, probe: p }, G) });
  const rows = await probeRows(full, [
    // (cross with one fragment row or column is the full kernel.)
    ...(t.tm > 1 && t.tn > 1 ? [probe('cross', `each loaded fragment multiplied once (${t.tm + t.tn - 1} of ${t.tm * t.tn} products)`)] : []),
    ...(t.variant === 'staged' ? [probe('nostage', 'no global loads or workgroup stores')] : []),
    probe('hoist', 'no fragment loads in the K loop'),
  ]);
  report(`f16 probes (${f16TileName(t)}, ${G}^3 on f16 operands, ms; products wrong by design): ${rows.join('; ')}`);
  await kScaling(`f16 (${f16TileName(t)})`, full, (k) => ms(t, k));
}

// f16 subgroup-matrix GEMM
if (parts.has('f16')) await section('f16 subgroup-matrix GEMM', async () => {
  // --emulate-f16: the same kernels in their emulated spelling (f32, any adapter): exercises this section on
  // llvmpipe; its timings mean nothing.
  const emu = !!values['emulate-f16'];
  const sup: F16Support = emu ? { ok: true } : await probeF16(gpu.device);
  const f16 = (x: Tensor, y: Tensor, tA: boolean, tB: boolean, t?: F16Tile) => gemmF16(x, y, tA, tB, t, emu);
  const candidates = emu ? F16_EMULATION_TILES : F16_CANDIDATES;

  if (!sup.ok) {
    report(`ours  f16 subgroup-matrix GEMM: not available on this device (${sup.why})`);
    targets.push({ what: 'f16 subgroup-matrix GEMM 4096^3 >= 300 TFLOP/s', ok: undefined, detail: `not run: ${sup.why}` });
  } else {
    // Correctness first: an awkward shape against the f32 product on the CPU, then the benchmark shape against our f32 GEMM.
    const [m, n, k] = [200, 136, 328];
    const x = tf.randomNormal([m, k]);
    const w = tf.randomNormal([n, k]);
    const xd = await x.data();
    const wd = await w.data();
    // Each tile variant checked on its own: one that fails to compile or computes wrong is reported and left out.
    const good: F16Tile[] = [];
    const checks: string[] = [];
    for (const t of candidates) {
      try {
        // Errors scoped to this tile (dawnChecked).
        const got = await dawnChecked(async () => {
          const out = f16(x, w, false, true, t);
          const d = await out.data();
          out.dispose();
          return d;
        });
        let err = 0;
        let scale = 0;
        for (let i = 0; i < m; i++) {
          for (let j = 0; j < n; j++) {
            let s = 0;
            for (let q = 0; q < k; q++) s += xd[i * k + q]! * wd[j * k + q]!;
            err = Math.max(err, Math.abs(s - got[i * n + j]!));
            scale = Math.max(scale, Math.abs(s));
          }
        }
        const rel = err / scale;
        checks.push(`${f16TileName(t)} ${rel.toExponential(2)}`);
        if (rel < 5e-3) good.push(t);
      } catch (e) {
        checks.push(`${f16TileName(t)} failed (${why(e)})`);
      }
    }
    tf.dispose([x, w]);
    report(`check f16 GEMM vs CPU f32 (${m}x${n}x${k}), max rel error per tile: ${checks.join(', ')}`);
    if (good.length === 0) throw new Error('no f16 tile computed the product correctly');
    // Every good tile timed two ways: the matrix kernel alone on operands already cast to f16 (the f16-input
    // GEMM the target names), and the whole gemmF16 from f32 operands (the two cast passes included).
    // Ranked by the kernel's GPU time (timestamps) where the adapter has them, else by its wall time.
    // Two passes over the tiles (a tile's figure is its better pass): clocks and the memory system drift
    // within a run, and one pass in a fixed order lets that drift rank the tiles.
    let best: { t: F16Tile; ms: number } | undefined;
    const rows: string[] = [];
    const passes = new Map<F16Tile, string[]>();
    for (let pass = 0; pass < 2; pass++) {
      for (const t of pass ? [...good].reverse() : good) {
        const a16 = castF16(a, 'a', G, G, G, false, t, emu);
        const b16 = castF16(b, 'b', G, G, G, true, t, emu);
        try {
          const kWall = await time(() => gemmF16Packed(a16, b16, G, G, G, t, emu), Math.max(3, reps >> 1));
          const kGpu = await gpuTime(() => gemmF16Packed(a16, b16, G, G, G, t, emu), 3);
          const g = pass ? undefined : await gpuTime(() => f16(a, b, false, false, t), 3);
          passes.set(t, [...(passes.get(t) ?? []), `${kWall.toFixed(3)}${kGpu === undefined ? '' : `/GPU ${kGpu.toFixed(3)}`}${g === undefined ? '' : ` (with casts GPU ${g.toFixed(3)})`}`]);
          const ms = kGpu ?? kWall;
          if (!best || ms < best.ms) best = { t, ms };
        } finally {
          tf.dispose([a16, b16]);
        }
      }
    }
    for (const t of good) rows.push(`${f16TileName(t)} ${passes.get(t)!.join(' | ')}`);
    report(`f16 tiles, kernel on f16 operands wall/GPU ms per pass (and the whole call from f32): ${rows.join(', ')}`);
    setF16Tile(best!.t);
    // Recorded for this adapter and shape class, where the runtime's f16 GEMMs look first (not the emulated run's).
    if (!emu) {
      const where = rememberF16Tile(gpu.device, G, G, G, best!.t);
      report(`f16 tile ${f16TileName(best!.t)} ${where ? `cached in ${where}` : 'not cached (MCPC_GEMM_TUNE=0 or a read-only cache)'}`);
    }
    // The winner checked at the benchmark shape against our f32 GEMM before its figures count.
    const ref = gemm(a, b);
    const mine = f16(a, b, false, false);
    const big = tf.tidy(() => tf.div(tf.max(tf.abs(tf.sub(ref, mine))), tf.max(tf.abs(ref))));
    const bigErr = (await big.data())[0]!;
    tf.dispose([ref, mine, big]);
    const ok = bigErr < 5e-3;
    report(`check f16 GEMM (${f16TileName(best!.t)}) at ${G}^3 vs our f32 GEMM: max rel error ${bigErr.toExponential(2)}: ${ok ? 'ok' : 'WRONG'}`);
    if (ok) {
      const a16 = castF16(a, 'a', G, G, G, false, best!.t, emu);
      const b16 = castF16(b, 'b', G, G, G, true, best!.t, emu);
      const kMs = await time(() => gemmF16Packed(a16, b16, G, G, G, best!.t, emu));
      f16gpu = await gpuTime(() => gemmF16Packed(a16, b16, G, G, G, best!.t, emu));
      tf.dispose([a16, b16]);
      f16ms = await time(() => f16(a, b, false, false));
      const withCasts = await gpuTime(() => f16(a, b, false, false));
      report(`ours  f16 subgroup-matrix GEMM ${G}^3, f16 operands (${f16TileName(best!.t)}): ${fmt(kMs, gemmFlop)}; ${gfmt(f16gpu, gemmFlop)}`);
      report(`ours  f16 subgroup-matrix GEMM ${G}^3 from f32 operands (both cast passes included): ${fmt(f16ms, gemmFlop)}; ${gfmt(withCasts, gemmFlop)}`);
      f16ms = kMs;
      // The probes are diagnostics: a failure there is reported and the target's figure still counts.
      await f16Probes(best!.t, emu).catch((e: unknown) => report(`f16 probes failed: ${why(e, 300)}`));
    }
    const f16best = f16gpu ?? f16ms;
    targets.push({ what: 'f16 subgroup-matrix GEMM 4096^3 >= 300 TFLOP/s', ok: quick || f16best === undefined ? undefined : tflops(gemmFlop, f16best) >= 300, detail: f16best ? `${tflops(gemmFlop, f16best).toFixed(1)} TFLOP/s (f16 operands, ${f16gpu ? 'GPU time' : 'wall'})` : 'not timed (check failed)' });
  }
});
tf.dispose([a, b]);

// MoE-LoRA FFN layer
function site(din: number, dout: number): MoeLoraWeights {
  const p = (...s: number[]) => tf.mul(tf.randomNormal(s), 0.02);
  return {
    w: p(dout, din),
    sharedA: p(MOE.shared * MOE.sharedRank, din),
    sharedB: p(dout, MOE.shared * MOE.sharedRank),
    routerW: p(MOE.E, din),
    routerB: p(MOE.E),
    expertA: p(MOE.E, MOE.r, din),
    expertB: p(MOE.E, dout, MOE.r),
  };
}
if (parts.has('moe')) await section('MoE-LoRA FFN layer', async () => {
  const sites = [site(L.d, L.ff), site(L.d, L.ff), site(L.ff, L.d)];
  const x = tf.randomNormal([L.T, L.d]);
  const dy = tf.randomNormal([L.T, L.d]);
  const opts = { scale: MOE.scale, topK: MOE.k, renormalize: true };
  // Gate and up read the same x: one op (moeLoraLinearPair, as the plan's concat-shared-input makes them one
  // GEMM), x's gradient summed in a GEMM epilogue. SwiGLU as the plan's runtime runs it (one dispatch forward,
  // one backward: src/runtime/webgpu/kernels/swiglu.ts). The reference layer below keeps separate sites and
  // tfjs's sigmoid and products, so the check covers both.
  const layerWith = (o: typeof opts & { base?: 'fused' | 'f16' | 'f32' }) => (xx: Tensor, [g, u, dn]: MoeLoraWeights[]) => {
    const [gy, uy] = moeLoraLinearPair(xx, [g!, u!], o);
    return moeLoraLinear(swiglu(gy.y, uy.y), dn!, o).y;
  };
  const layer = layerWith(opts);
  const trained = sites.flatMap((s) => [s.sharedA!, s.sharedB!, s.routerW!, s.routerB!, s.expertA!, s.expertB!]);
  const fwd = () => tf.tidy(() => layer(x, sites));
  const fwdbwd = () =>
    tf.tidy(() => {
      // dy seeds the backward directly (PyTorch's (y·dy).sum().backward() expands it on the GPU); through
      // tf.sum(y·dy), tfjs's Sum gradient builds an [T, d] array of ones on the CPU and uploads it every call.
      const { grads } = tf.engine().gradients(() => layer(x, sites), [x, ...trained], dy, true);
      return grads.map((g) => tf.keep(g));
    });
  fwd().dispose();
  tf.dispose(fwdbwd());
  {
    // Correct before fast: the fused layer against the same layer in the plan's reference ops, on this device.
    const refLayer = (xx: Tensor, [g, u, dn]: MoeLoraWeights[]) => {
      const gy = moeLoraLinear(xx, g!, opts, true).y;
      const uy = moeLoraLinear(xx, u!, opts, true).y;
      return moeLoraLinear(tf.mul(tf.mul(gy, tf.sigmoid(gy)), uy), dn!, opts, true).y;
    };
    const err = tf.tidy(() => {
      const a = layer(x, sites);
      const b = refLayer(x, sites);
      return tf.div(tf.max(tf.abs(tf.sub(a, b))), tf.max(tf.abs(b)));
    });
    const e = (await err.data())[0]!;
    err.dispose();
    report(`check MoE-LoRA FFN layer forward vs the reference ops: max rel error ${e.toExponential(2)}: ${e < 1e-3 ? 'ok' : 'WRONG'}`);
    if (!(e < 1e-3)) throw new Error('the fused MoE layer disagrees with the reference: timings withheld');
  }
  await tunePending();
  if (values.host) {
    // The same layer with each site's base product apart through the f32 GEMM: the tensor-core path's plumbing.
    const at = (o: typeof opts & { base?: 'fused' | 'f16' | 'f32' }) => () =>
      tf.tidy(() => {
        const l = layerWith(o);
        const { grads } = tf.engine().gradients(() => l(x, sites), [x, ...trained], dy, true);
        return grads.map((g) => tf.keep(g));
      });
    // The layer as it was composed before (gate and up as two ops, x's gradient summed by tfjs; SwiGLU in tfjs
    // ops): what the pair and the fused SwiGLU save, in the same process.
    const separate = () =>
      tf.tidy(() => {
        const l = (xx: Tensor, [g, u, dn]: MoeLoraWeights[]) => {
          const gy = moeLoraLinear(xx, g!, opts).y;
          const uy = moeLoraLinear(xx, u!, opts).y;
          return moeLoraLinear(tf.mul(tf.mul(gy, tf.sigmoid(gy)), uy), dn!, opts).y;
        };
        const { grads } = tf.engine().gradients(() => l(x, sites), [x, ...trained], dy, true);
        return grads.map((g) => tf.keep(g));
      });
    const variants = [
      { name: 'fused', f: at(opts) },
      { name: 'fused, separate gate/up + tfjs SwiGLU', f: separate },
      { name: 'f32', f: at({ ...opts, base: 'f32' }) },
    ];
    if ((await probeF16(gpu.device)).ok) variants.push({ name: 'f16', f: at({ ...opts, base: 'f16' }) });
    await hostReport('MoE-LoRA FFN forward+backward', variants);
  }
  ffnF = await time(fwd);
  ffnFB = await time(fwdbwd);
  await profile('MoE-LoRA FFN forward', fwd);
  await profile('MoE-LoRA FFN forward+backward', fwdbwd);
  // Useful FLOPs of our formulation (base + shared + top-k experts + router), forward; backward about 2x (no base dW).
  const siteFlop = (din: number, dout: number) => 2 * L.T * (din * dout + MOE.shared * MOE.sharedRank * (din + dout) + MOE.E * MOE.r * din + MOE.k * MOE.r * dout + MOE.E * din);
  const ffnFlop = 2 * siteFlop(L.d, L.ff) + siteFlop(L.ff, L.d);
  report(`ours  MoE-LoRA FFN layer forward (f32, fused): ${fmt(ffnF!, ffnFlop)}; ${gfmt(await gpuTime(fwd), ffnFlop)}; host records it in ${(await hostTime(fwd)).toFixed(2)} ms`);
  const fbGpu = await gpuTime(fwdbwd);
  report(`ours  MoE-LoRA FFN layer forward+backward (f32, fused): ${fmt(ffnFB!, 3 * ffnFlop)}; ${gfmt(fbGpu, 3 * ffnFlop)}; host records it in ${(await hostTime(fwdbwd)).toFixed(2)} ms`);
  targets.push({ what: 'MoE-LoRA FFN forward+backward <= 13 ms (f32 path)', ok: quick ? undefined : ffnFB! <= 13, detail: `${ffnFB!.toFixed(2)} ms wall${fbGpu ? `, ${fbGpu.toFixed(2)} ms GPU time` : ''}` });
  // The tensor-core path: each site's frozen base product x·Wᵀ (and dy·W) in f16 on subgroup matrices with f32
  // accumulation, the adapters (shared, router, routed top-k) in the fused f32 kernels. --emulate-f16: the
  // emulated spelling with the operands rounded to f16, with a tile that fits llvmpipe (exercises this section
  // and its check against the f32 path; timings mean nothing).
  if (values['emulate-f16']) {
    emulateF16('f16');
    setF16Tile(F16_EMULATION_TILES[3]!);
  }
  const sup: F16Support = values['emulate-f16'] ? { ok: true } : await probeF16(gpu.device);
  if (!sup.ok) {
    targets.push({ what: 'MoE-LoRA FFN forward+backward <= 6.5 ms (tensor-core path)', ok: undefined, detail: `not run: ${sup.why}` });
  } else {
    const tc = { ...opts, base: 'f16' as const };
    const layerTC = layerWith(tc);
    const fwdTC = () => tf.tidy(() => layerTC(x, sites));
    const fwdbwdTC = () =>
      tf.tidy(() => {
        const { grads } = tf.engine().gradients(() => layerTC(x, sites), [x, ...trained], dy, true);
        return grads.map((g) => tf.keep(g));
      });
    tf.dispose(fwdbwdTC());
    // Checked against the f32 path token by token. The down projection routes on h = SwiGLU(gate, up), whose
    // f16 base products differ from f32's in the last bits: a token whose 2nd and 3rd router probabilities
    // nearly tie can pick another expert, a legitimate divergence of a top-k model under reduced precision,
    // not an error. Those tokens (top-k sets that differ) are counted and left out; every other token must
    // agree to 1e-2 of the output's scale.
    const check = tf.tidy(() => {
      const run = (o: typeof opts & { base?: 'fused' | 'f16' | 'f32' }) => {
        const [gy, uy] = moeLoraLinearPair(x, [sites[0]!, sites[1]!], o);
        const r = moeLoraLinear(swiglu(gy.y, uy.y), sites[2]!, o);
        return { y: r.y, picked: tf.cast(tf.greater(r.gates!, 0), 'float32') };
      };
      const t16 = run(tc);
      const t32 = run(opts);
      const same = tf.equal(tf.sum(tf.abs(tf.sub(t16.picked, t32.picked)), 1), 0); // [T]
      const rowErr = tf.max(tf.abs(tf.sub(t16.y, t32.y)), 1); // [T]
      const scale = tf.max(tf.abs(t32.y));
      return tf.stack([tf.div(tf.max(tf.where(same, rowErr, tf.zerosLike(rowErr))), scale), tf.sub(L.T, tf.sum(tf.cast(same, 'float32'))), tf.div(tf.max(rowErr), scale)]);
    });
    const [eTC, flipped, eAll] = Array.from(await check.data()) as [number, number, number];
    check.dispose();
    report(`check MoE-LoRA FFN layer, tensor-core path vs the f32 path: max rel error ${eTC.toExponential(2)} over the ${L.T - flipped} tokens routed alike (${flipped} of ${L.T} picked other down-projection experts; with them ${eAll.toExponential(2)}): ${eTC < 1e-2 && flipped <= L.T / 100 ? 'ok' : 'WRONG'}`);
    if (eTC < 1e-2 && flipped <= L.T / 100) {
      const tF = await time(fwdTC);
      const tFB = await time(fwdbwdTC);
      const gFB = await gpuTime(fwdbwdTC);
      report(`ours  MoE-LoRA FFN layer forward (tensor-core base, f32 adapters): ${fmt(tF, ffnFlop)}; ${gfmt(await gpuTime(fwdTC), ffnFlop)}; host records it in ${(await hostTime(fwdTC)).toFixed(2)} ms`);
      report(`ours  MoE-LoRA FFN layer forward+backward (tensor-core base, f32 adapters): ${fmt(tFB, 3 * ffnFlop)}; ${gfmt(gFB, 3 * ffnFlop)}; host records it in ${(await hostTime(fwdbwdTC)).toFixed(2)} ms`);
      targets.push({ what: 'MoE-LoRA FFN forward+backward <= 6.5 ms (tensor-core path)', ok: quick ? undefined : tFB <= 6.5, detail: `${tFB.toFixed(2)} ms wall${gFB ? `, ${gFB.toFixed(2)} ms GPU time` : ''}` });
    } else {
      targets.push({ what: 'MoE-LoRA FFN forward+backward <= 6.5 ms (tensor-core path)', ok: false, detail: `wrong result (max rel error ${eTC.toExponential(2)}, ${flipped} tokens routed otherwise)` });
    }
  }
  tf.dispose([x, dy, ...sites.flatMap((s) => Object.values(s) as Tensor[])]);
});

// A training step of the tiny pipeline (MedCare stage 1 on the demo base's shape, random weights), through
// the stage runner on this device: the WGSL kernel table, one-dispatch AdamW.
if (parts.has('step')) await section('training step', async () => {
  // The -O1 plan, the same without route-expert-down (the routed A projections inside concat_linear, as
  // before that pass: on the CPU the pass pays; on a GPU, where this small step is host-bound, its extra
  // kernels may cost), without concat-shared-input (q/k/v and gate/up as separate GEMMs: no time measured
  // on the CPU; on a GPU it removes launches) and without fold-trainable-lora (the LoRA's own products instead
  // of the merged weight: 1.15x on the CPU at 8x256; on a GPU its dW' products may cost more than the launches
  // it saves). Steps alternate between the runners.
  const variants = [
    { name: '', ...medcarePlan(1) },
    { name: ' (without route-expert-down)', ...medcarePlan(1, undefined, defaultPasses.filter((p) => p !== routeExpertDown)) },
    { name: ' (without concat-shared-input)', ...medcarePlan(1, undefined, defaultPasses.filter((p) => p !== concatSharedInput)) },
    { name: ' (without fold-trainable-lora)', ...medcarePlan(1, undefined, defaultPasses.filter((p) => p.name !== 'fold-trainable-lora')) },
  ];
  const stage = variants[0]!.plan.stages[0]!;
  const rows = stage.settings.microBatch;
  const seqLen = quick ? 64 : 224;
  const mbs = [syntheticBatch(rows, seqLen, 1), syntheticBatch(rows, seqLen, 2)];
  const runners: StageRunner[] = [];
  for (const v of variants) {
    const runner = await createStageRunner(v.plan, stage.name, { backend: 'webgpu', root: v.dir, totalSteps: 1000 });
    await runner.step(mbs);
    await tunePending();
    runners.push(runner);
  }
  const steps: number[][] = variants.map(() => []);
  for (let i = 0; i < (quick ? 2 : 5); i++)
    for (const [k, runner] of runners.entries()) {
      const t0 = performance.now();
      await runner.step(mbs);
      steps[k]!.push(performance.now() - t0);
    }
  await profile('training step', async () => {
    await runners[0]!.step(mbs);
    return [];
  });
  runners.forEach((r) => r.dispose());
  const tokens = mbs.length * rows * seqLen;
  variants.forEach((v, k) => {
    const ms = median(steps[k]!);
    report(`ours  training step${v.name}, MedCare stage ${stage.name} on the demo base (${tokens} tokens: ${mbs.length} x ${rows} x ${seqLen}): ${ms.toFixed(1)} ms, ${Math.round(tokens / (ms / 1000))} tok/s (PyTorch's figure for this step: the --target torch program's tok/s)`);
  });
});

// The f16 path in training: the same stage, the same batches and initial weights, trained with every linear
// product in f16 on tensor cores (f32 accumulation and master weights) and in f32; both loss curves.
if (parts.has('curve')) await section('f16 training curve', async () => {
  // --emulate-f16: the f16 GEMM in its emulated spelling with the operands rounded to f16 (the tensor cores'
  // arithmetic on any adapter; exercises this section on llvmpipe, the curves meaningful, the timings not).
  const emulate = !!values['emulate-f16'];
  const sup: F16Support = emulate ? { ok: true } : await probeF16(gpu.device);
  if (!sup.ok) {
    report(`f16 training curve: not run (${sup.why})`);
    return;
  }
  const { plan, dir } = medcarePlan(1);
  const stage = plan.stages[0]!;
  const rows = stage.settings.microBatch;
  const seqLen = quick ? 64 : 224;
  const steps = quick ? 4 : 20;
  const batches = [1, 2, 3, 4].map((k) => syntheticBatch(rows, seqLen, 10 + k));
  const curve = async (f16: boolean) => {
    if (f16 && emulate) useF16MatmulEmulated(true);
    const matmul = emulate ? (f16 ? 'keep' : 'f32') : f16 ? 'f16' : 'f32';
    const runner = await createStageRunner(plan, stage.name, { backend: 'webgpu', root: dir, totalSteps: steps, matmul });
    const losses: number[] = [];
    const t0 = performance.now();
    for (let i = 0; i < steps; i++) losses.push((await runner.step([batches[(2 * i) % 4]!, batches[(2 * i + 1) % 4]!])).loss);
    const ms = (performance.now() - t0) / steps;
    runner.dispose();
    const products = f16MatmulCount();
    if (emulate) useF16MatmulEmulated(false);
    else useF16Matmul(false);
    return { losses, ms, products };
  };
  const a = await curve(false);
  const b = await curve(true);
  let worst = 0;
  for (let i = 0; i < steps; i++) worst = Math.max(worst, Math.abs(a.losses[i]! - b.losses[i]!) / Math.abs(a.losses[i]!));
  report(`f16 training curve, stage ${stage.name}, ${steps} steps: f32 ${a.losses.map((x) => x.toFixed(4)).join(' ')}`);
  report(`f16 training curve, stage ${stage.name}, ${steps} steps: f16 ${b.losses.map((x) => x.toFixed(4)).join(' ')} (${b.products} products on tensor cores)`);
  report(`f16 training curve: max relative loss difference ${worst.toExponential(2)}; f32 first->last ${a.losses[0]!.toFixed(4)}->${a.losses[steps - 1]!.toFixed(4)}, f16 ${b.losses[0]!.toFixed(4)}->${b.losses[steps - 1]!.toFixed(4)}; ${a.ms.toFixed(1)} vs ${b.ms.toFixed(1)} ms/step`);
  targets.push({ what: 'f16 path loss curve within 2% of f32 (tiny pipeline stage 1)', ok: quick ? undefined : worst <= 0.02 && b.products > 0, detail: `max rel diff ${worst.toExponential(2)}` });
});

if (!('error' in t)) {
  const r = (theirs: unknown, ours: number | undefined) => (ours ? `${(Number(theirs) / ours).toFixed(2)}x` : 'n/a');
  report(`ratio torch/ours (above 1: ours faster): f32 GEMM ${r(t.f32, f32ms)}, f16 GEMM ${r(t.f16, f16ms)}, FFN forward ${r(t.ffn_fwd, ffnF)}, FFN forward+backward ${r(t.ffn_fwdbwd, ffnFB)}`);
}
for (const g of targets) console.log(`target ${g.what}: ${g.ok === undefined ? 'NOT MEASURED' : g.ok ? 'PASS' : 'FAIL'} (${g.detail})`);
