/**
 * src/runtime/switches.ts: the registry of MCPC_* switches covers every one the code reads, and
 * `checkSwitches` rejects values a switch does not take and names that are no switch.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { checkSwitches, SWITCHES } from '../../src/runtime/switches.js';

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((f) => {
    const p = join(dir, f);
    return statSync(p).isDirectory() ? files(p) : p.endsWith('.ts') ? [p] : [];
  });
}

describe('MCPC_* switches', () => {
  it('every MCPC_* name in src/ and bench/ is in the registry (code that reads a switch the check does not know fails here)', () => {
    const known = new Set(SWITCHES.map((s) => s.name));
    const seen = new Set<string>();
    for (const f of [...files('src'), ...files('bench')]) {
      if (f.endsWith('switches.ts')) continue;
      for (const m of readFileSync(f, 'utf8').matchAll(/MCPC_[A-Z][A-Z0-9_]*/g)) seen.add(m[0]);
    }
    expect(seen.size).toBeGreaterThan(8);
    expect([...seen].filter((n) => !known.has(n))).toEqual([]);
  });

  it('accepts the values each switch takes and lists what is set', () => {
    const r = checkSwitches({ MCPC_FUSED_WASM: '0', MCPC_THREADS: '2', MCPC_KERNELS: 'reference', MCPC_DEBUG: 'ir', MCPC_DAWN_FEATURES: 'a,b', MCPC_GEMM_WGSL: '', PATH: '/bin' });
    expect(r.errors).toEqual([]);
    expect(r.warnings).toEqual([]);
    expect(r.set).toEqual(['MCPC_KERNELS=reference', 'MCPC_FUSED_WASM=0', 'MCPC_THREADS=2', 'MCPC_DAWN_FEATURES=a,b', 'MCPC_DEBUG=ir']);
  });

  it.each([
    ['MCPC_FUSED_WASM', 'off', "MCPC_FUSED_WASM takes 0 or 1 (got 'off')"],
    ['MCPC_FUSED_KEEP', 'no', "MCPC_FUSED_KEEP takes 0 or 1 (got 'no')"],
    ['MCPC_XENT_SAVE', 'false', "MCPC_XENT_SAVE takes 0 or 1 (got 'false')"],
    ['MCPC_THREADS', 'two', "MCPC_THREADS takes a whole number from 1 to 256 (got 'two')"],
    ['MCPC_THREADS', '0', "MCPC_THREADS takes a whole number from 1 to 256 (got '0')"],
    ['MCPC_THREADS', '1.5', "MCPC_THREADS takes a whole number from 1 to 256 (got '1.5')"],
    ['MCPC_KERNELS', 'fast', "MCPC_KERNELS takes fused or reference (got 'fast')"],
    ['MCPC_DEBUG', 'ir,plan', "MCPC_DEBUG takes a comma-separated list of ir (got 'plan')"],
  ])('%s=%s is an error', (name, value, message) => {
    expect(checkSwitches({ [name]: value }).errors).toEqual([message]);
  });

  it('an unknown MCPC_* name is a warning with the nearest switch', () => {
    const r = checkSwitches({ MCPC_FUSED_WASAM: '0', MCPC_SOMETHING_ELSE: '1' });
    expect(r.errors).toEqual([]);
    expect(r.warnings).toEqual(['MCPC_FUSED_WASAM is not an mcpc switch and does nothing; did you mean MCPC_FUSED_WASM?', 'MCPC_SOMETHING_ELSE is not an mcpc switch and does nothing']);
  });
});
