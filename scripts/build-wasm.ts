/**
 * Assemble the runtime's hand-written WebAssembly (src/runtime/tfjs/*.wat) into the .wasm files beside
 * them, which are committed (the runtime loads them; wabt is only a development dependency).
 *
 *   npx tsx scripts/build-wasm.ts            write the .wasm files
 *   npx tsx scripts/build-wasm.ts --check    exit 1 if a committed .wasm differs from its .wat
 */
import { readFileSync, readdirSync, writeFileSync, existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import wabtInit from 'wabt';

const dir = fileURLToPath(new URL('../src/runtime/tfjs/', import.meta.url));

export async function assemble(file: string): Promise<Uint8Array> {
  const wabt = await wabtInit();
  const mod = wabt.parseWat(file, readFileSync(file, 'utf8'), { simd: true });
  mod.validate();
  const { buffer } = mod.toBinary({ log: false, write_debug_names: false });
  mod.destroy();
  return buffer;
}

async function main(): Promise<void> {
  const check = process.argv.includes('--check');
  let stale = 0;
  for (const name of readdirSync(dir).filter((f) => f.endsWith('.wat'))) {
    const wat = join(dir, name);
    const out = wat.replace(/\.wat$/, '.wasm');
    const bytes = await assemble(wat);
    if (check) {
      if (!existsSync(out) || !Buffer.from(readFileSync(out)).equals(Buffer.from(bytes))) {
        console.error(`${out} is stale: run npx tsx scripts/build-wasm.ts`);
        stale++;
      }
    } else {
      writeFileSync(out, bytes);
      console.log(`wrote ${out} (${bytes.length} bytes)`);
    }
  }
  process.exitCode = stale ? 1 : 0;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) await main();
