/**
 * Assemble the runtime's hand-written WebAssembly (src/runtime/tfjs/*.wat) into the .wasm files beside
 * them, which are committed (the runtime loads them; wabt is only a development dependency).
 *
 *   npx tsx scripts/build-wasm.ts            write the .wasm files
 *   npx tsx scripts/build-wasm.ts --check    exit 1 if a committed .wasm differs from its .wat
 *
 * gemm.wat is assembled twice: gemm.wasm with its own memory, and gemm-shared.wasm importing a shared memory
 * (env.memory, up to 2 GiB) so that worker threads can run row blocks of one product (src/runtime/tfjs/gemm.ts).
 */
import { readFileSync, readdirSync, writeFileSync, existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import wabtInit from 'wabt';

const dir = fileURLToPath(new URL('../src/runtime/tfjs/', import.meta.url));

/** The variants assembled beside a .wat's own .wasm: output name and the edit of the source. */
const variants: Record<string, { out: string; edit: (src: string) => string }[]> = {
  'gemm.wat': [{ out: 'gemm-shared.wasm', edit: (src) => swap(src, '(memory (export "memory") 1)', '(import "env" "memory" (memory 1 32768 shared))') }],
};

function swap(src: string, from: string, to: string): string {
  if (!src.includes(from)) throw new Error(`build-wasm: '${from}' not found`);
  return src.replace(from, to);
}

export async function assemble(file: string, edit: (src: string) => string = (s) => s): Promise<Uint8Array> {
  const wabt = await wabtInit();
  const features = { simd: true, threads: true };
  const mod = wabt.parseWat(file, edit(readFileSync(file, 'utf8')), features);
  (mod.validate as (f?: typeof features) => void)(features); // the typings omit validate's feature argument
  const { buffer } = mod.toBinary({ log: false, write_debug_names: false });
  mod.destroy();
  return buffer;
}

async function main(): Promise<void> {
  const check = process.argv.includes('--check');
  let stale = 0;
  const jobs = readdirSync(dir)
    .filter((f) => f.endsWith('.wat'))
    .flatMap((name) => [{ name, out: name.replace(/\.wat$/, '.wasm'), edit: undefined as ((s: string) => string) | undefined }, ...(variants[name] ?? []).map((v) => ({ name, ...v }))]);
  for (const { name, out: outName, edit } of jobs) {
    const wat = join(dir, name);
    const out = join(dir, outName);
    const bytes = await assemble(wat, edit);
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
