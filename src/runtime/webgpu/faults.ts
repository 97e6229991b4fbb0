/**
 * What the GPU device reports outside any error scope: Dawn's uncaptured errors (out of memory, validation,
 * internal) and the loss of the device. tfjs-backend-webgpu looks at neither: a buffer whose allocation failed
 * is an invalid buffer, every kernel that binds it fails validation, and the step goes on with whatever its
 * reads return, so without a watch an out-of-memory error trains on garbage without a word; after a device loss
 * a read rejects with an empty `AbortError`. `watchDevice` (called by ./device.ts on the device it opens)
 * records them here, and the run (../run.ts) asks after every optimizer step, before every checkpoint and on
 * any exception: a fault stops the run with what the device said, nothing computed after it is saved.
 *
 * Dawn raises an uncaptured error synchronously inside the API call that caused it, so a check after a step
 * sees every error of that step; a device loss settles asynchronously (`settleGpuFaults` waits for it briefly).
 */

/* eslint-disable @typescript-eslint/no-explicit-any -- WebGPU types come from the optional native package. */

export type GpuFaultKind = 'out-of-memory' | 'validation' | 'internal' | 'lost' | 'error';

export interface GpuFault {
  kind: GpuFaultKind;
  /** What the device said, first line only (Dawn appends the call chain on the lines after it). */
  message: string;
  /** Faults recorded after this one (usually the same failure cascading through later kernels). */
  more: number;
}

/** Faults in the order they came; a run reads those after its mark. */
const faults: { kind: GpuFaultKind; message: string }[] = [];
/**
 * Faults beyond the ones kept: a failing kernel in a loop reports one per call; the first 10,000 of a process
 * are kept (a few MB at most), so every run in a long-lived process still finds the first fault after its mark.
 */
let dropped = 0;
const KEEP = 10_000;
/** The `lost` promises of watched devices not lost yet (a lost one leaves the set). */
const pendingLost = new Set<Promise<unknown>>();
const watched = new WeakSet<object>();
/** While above 0, a consumer reports the faults itself (a run): Dawn's own stderr print of each is taken. */
let taken = 0;

/** The kind of a WebGPU error object, and its first line. */
export function classifyGpuError(error: unknown): { kind: GpuFaultKind; message: string } {
  const name = String((error as any)?.constructor?.name ?? (error as any)?.name ?? '');
  const kind: GpuFaultKind = /OutOfMemory/i.test(name) ? 'out-of-memory' : /Validation/i.test(name) ? 'validation' : /Internal/i.test(name) ? 'internal' : 'error';
  const text = String((error as any)?.message ?? error ?? '').trim();
  return { kind, message: text.split('\n')[0]!.trim() || `(${name || 'an error'} without a message)` };
}

function record(f: { kind: GpuFaultKind; message: string }): void {
  if (faults.length < KEEP) faults.push(f);
  else dropped++;
}

/**
 * Watch `device` (idempotent): its uncaptured errors and its loss are recorded. Dawn still prints each
 * uncaptured error on stderr unless a consumer has taken them (`takeGpuErrors`).
 */
export function watchDevice(device: any): void {
  if (!device || watched.has(device)) return;
  watched.add(device);
  const onError = (ev: any) => {
    if (taken > 0) ev?.preventDefault?.();
    record(classifyGpuError(ev?.error));
  };
  device.addEventListener('uncapturederror', onError);
  if (device.lost && typeof device.lost.then === 'function') {
    const p: Promise<unknown> = device.lost.then((info: any) => {
      const reason = String(info?.reason ?? 'unknown');
      const msg = String(info?.message ?? '').split('\n')[0]!.trim();
      record({ kind: 'lost', message: `reason ${reason}${msg ? `: ${msg}` : ''}` });
      pendingLost.delete(p);
    });
    pendingLost.add(p);
  }
}

/**
 * Until the returned function is called, uncaptured errors are not printed by Dawn (every one of a cascade,
 * call chain included): the caller reports the first and how many followed (../run.ts does, for a run).
 */
export function takeGpuErrors(): () => void {
  taken++;
  let done = false;
  return () => {
    if (!done) taken--;
    done = true;
  };
}

/** A mark: `gpuFaultSince(mark)` reports only faults recorded after it. */
export function gpuFaultMark(): number {
  return faults.length + dropped;
}

/** The first fault recorded since `mark` (with how many came after it), or undefined. */
export function gpuFaultSince(mark = 0): GpuFault | undefined {
  const total = faults.length + dropped;
  if (total <= mark) return undefined;
  if (mark >= faults.length) return { kind: 'error', message: `${total - mark} GPU error${total - mark === 1 ? '' : 's'} (not kept: more than ${KEEP} in this process)`, more: 0 };
  const first = faults[mark]!;
  return { ...first, more: total - mark - 1 };
}

/**
 * Give a device loss that is under way time to be recorded (a read that failed because the device was lost
 * can reject before the `lost` promise settles), then the first fault since `mark`.
 */
export async function settleGpuFaults(mark = 0, ms = 100): Promise<GpuFault | undefined> {
  if (!gpuFaultSince(mark) && pendingLost.size) {
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([...pendingLost, new Promise<void>((r) => (timer = setTimeout(r, ms)))]);
    clearTimeout(timer);
  }
  return gpuFaultSince(mark);
}

/**
 * `f` inside error scopes for validation, out-of-memory and internal errors: what the device raised during it
 * (the first, as classifyGpuError reads it) is returned, not left uncaptured (so not recorded as a fault),
 * beside f's value. For trials that may fail on some device: a GEMM tile the tuner times, a probe kernel. An
 * exception from `f` is rethrown once the scopes are popped. Without error scopes (not a WebGPU device) it
 * just runs `f`.
 */
export async function withErrorScopes<T>(device: any, f: () => T | Promise<T>): Promise<{ value?: T; error?: { kind: GpuFaultKind; message: string } }> {
  if (typeof device?.pushErrorScope !== 'function') return { value: await f() };
  const kinds = ['validation', 'out-of-memory', 'internal'] as const;
  for (const k of kinds) device.pushErrorScope(k);
  let value: T | undefined;
  let thrown: { e: unknown } | undefined;
  try {
    value = await f();
  } catch (e) {
    thrown = { e };
  }
  let error: { kind: GpuFaultKind; message: string } | undefined;
  // Popped innermost first: internal, out-of-memory, validation; the first error in that order is kept.
  for (let i = 0; i < kinds.length; i++) {
    const e = await device.popErrorScope();
    if (e && !error) error = classifyGpuError(e);
  }
  if (thrown) throw thrown.e;
  return error ? { value, error } : { value };
}
