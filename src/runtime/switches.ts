/**
 * The runtime's environment switches (MCPC_*), in one registry: what each does and which values it takes.
 * The code that honours a switch reads `process.env` where it acts (so a test or a bench may flip it per
 * call); this module lets `mcpc run` check them all once at start-up, before any training, and report:
 *   - a value the switch does not take (MCPC_THREADS=two, MCPC_FUSED_WASM=off) as an error, where the
 *     reading site would otherwise fail mid-run or, for an on/off switch, quietly treat it as on;
 *   - an MCPC_* name no switch has (a typo such as MCPC_FUSED_WASAM=0 would otherwise do nothing) as a
 *     warning, with the nearest known name.
 * A test (test/runtime/switches.test.ts) scans src/ and keeps every `process.env.MCPC_*` read in this list.
 */

export type SwitchKind = { kind: 'flag' } | { kind: 'int'; min: number; max: number } | { kind: 'enum'; values: readonly string[] } | { kind: 'list'; values?: readonly string[] };

export interface Switch {
  name: string;
  /** What it does, one line (`mcpc run --help`, README). */
  what: string;
  take: SwitchKind;
}

const flag = { kind: 'flag' } as const;

export const SWITCHES: readonly Switch[] = [
  { name: 'MCPC_KERNELS', what: 'kernel table on the CPU backends: fused (the wasm default) or reference', take: { kind: 'enum', values: ['fused', 'reference'] } },
  { name: 'MCPC_FUSED_WASM', what: '0: fused elementwise kernels in JavaScript instead of WebAssembly SIMD', take: flag },
  { name: 'MCPC_FUSED_GRAD_ONEPASS', what: "0: a fused elementwise kernel's gradient computes each input's slot when asked for, not those of the later inputs with it in one pass", take: flag },
  { name: 'MCPC_ATTENTION_WASM', what: '0: attention on the CPU through the reference ops instead of the WebAssembly kernel', take: flag },
  { name: 'MCPC_ATTENTION_SAVE_P', what: "0: the CPU attention kernel's backward recomputes P instead of taking the forward's", take: flag },
  { name: 'MCPC_ROPE_WASM', what: '0: the rotary embedding on the CPU in JavaScript instead of WebAssembly SIMD', take: flag },
  { name: 'MCPC_MOE_TOPK', what: "0: routed experts' products dense (all experts) on the CPU instead of each token's top-k", take: flag },
  { name: 'MCPC_MOE_DOWN_TOPK', what: "0: the routed experts' A side dense on the CPU (moe_down_routed through the reference)", take: flag },
  { name: 'MCPC_ADAMW_WASM', what: "0: the fused optimizer's AdamW on the CPU in JavaScript instead of WebAssembly SIMD", take: flag },
  { name: 'MCPC_XENT_WASM', what: "0: the loss's softmax rows on the CPU in JavaScript instead of WebAssembly SIMD", take: flag },
  { name: 'MCPC_FUSED_KEEP', what: "0: a fused kernel's backward computes its sigmoid again instead of taking the one its forward kept (SwiGLU)", take: flag },
  { name: 'MCPC_XENT_SAVE', what: "0: the CPU loss kernel's backward forms the logits again instead of taking the dlogits its forward kept", take: flag },
  { name: 'MCPC_XENT_COMPACT', what: "0: the CPU loss kernel forms every row's logits, those outside the loss (mask 0) too, as the reference does", take: flag },
  { name: 'MCPC_THREADS', what: 'threads for the CPU matrix products (default 1)', take: { kind: 'int', min: 1, max: 256 } },
  { name: 'MCPC_FUSED_WGSL', what: "0: on webgpu, the plan's fused elementwise groups as plain tfjs ops", take: flag },
  { name: 'MCPC_GEMM_WGSL', what: "0: on webgpu, the plan's products as plain tfjs ops instead of mcpc's WGSL GEMMs", take: flag },
  { name: 'MCPC_GEMM_TUNE', what: '0: on webgpu, no GEMM tile tuning (the default tiles)', take: flag },
  { name: 'MCPC_F16_MATMUL', what: '0: on webgpu, bf16/f16 stages keep f32 products', take: flag },
  { name: 'MCPC_DAWN_ROBUSTNESS', what: "1: keep Dawn's bounds checks and workgroup zeroing on a hardware adapter", take: flag },
  { name: 'MCPC_DAWN_FEATURES', what: 'extra Dawn toggles, comma-separated (experiments)', take: { kind: 'list' } },
  { name: 'MCPC_DEBUG', what: 'ir: verify the IR after every pass and dump it (mcpc compile)', take: { kind: 'list', values: ['ir'] } },
];

export interface SwitchReport {
  /** Switches set to a value they do not take. */
  errors: string[];
  /** MCPC_* variables that are no switch. */
  warnings: string[];
  /** The switches set (to a non-empty value), `NAME=value`, in registry order. */
  set: string[];
}

function check(s: Switch, v: string): string | undefined {
  const t = s.take;
  switch (t.kind) {
    case 'flag':
      return v === '0' || v === '1' ? undefined : `${s.name} takes 0 or 1 (got '${v}')`;
    case 'int': {
      const n = Number(v);
      return /^\d+$/.test(v) && n >= t.min && n <= t.max ? undefined : `${s.name} takes a whole number from ${t.min} to ${t.max} (got '${v}')`;
    }
    case 'enum':
      return t.values.includes(v) ? undefined : `${s.name} takes ${t.values.join(' or ')} (got '${v}')`;
    case 'list': {
      if (!t.values) return undefined;
      const bad = v.split(',').filter((x) => x && !t.values!.includes(x));
      return bad.length ? `${s.name} takes a comma-separated list of ${t.values.join(', ')} (got '${bad.join(',')}')` : undefined;
    }
  }
}

/** Edit distance, for "did you mean" (names are short). */
function distance(a: string, b: string): number {
  const d = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let prev = d[0]!;
    d[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const cur = d[j]!;
      d[j] = Math.min(d[j]! + 1, d[j - 1]! + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = cur;
    }
  }
  return d[b.length]!;
}

/** Checks every MCPC_* variable of `env` against the registry. */
export function checkSwitches(env: Record<string, string | undefined>): SwitchReport {
  const byName = new Map(SWITCHES.map((s) => [s.name, s]));
  const report: SwitchReport = { errors: [], warnings: [], set: [] };
  for (const s of SWITCHES) {
    const v = env[s.name];
    if (v === undefined || v === '') continue;
    report.set.push(`${s.name}=${v}`);
    const err = check(s, v);
    if (err) report.errors.push(err);
  }
  for (const name of Object.keys(env).sort()) {
    if (!name.startsWith('MCPC_') || byName.has(name)) continue;
    const near = SWITCHES.map((s) => ({ s, d: distance(name, s.name) })).sort((a, b) => a.d - b.d)[0];
    const hint = near && near.d <= 3 ? `; did you mean ${near.s.name}?` : '';
    report.warnings.push(`${name} is not an mcpc switch and does nothing${hint}`);
  }
  return report;
}
