/**
 * Writes the MedCare demo data set (educational demo data, not medical advice) into data/medcare/, or
 * checks that the committed files are what the generator produces.
 *
 *   npx tsx scripts/make-medcare-data.ts [--out DIR] [--check]
 *
 * The contents come from scripts/medcare/generate.ts (deterministic: seeded PRNG, no clock).
 */

import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { MEDCARE_FILES, generateMedcareData } from './medcare/generate.js';

export { MEDCARE_FILES, generateMedcareData } from './medcare/generate.js';

const USAGE = 'usage: npx tsx scripts/make-medcare-data.ts [--out DIR] [--check]\n';

/** The repository root (this file lives in scripts/). */
const ROOT = resolve(fileURLToPath(new URL('..', import.meta.url)));

/** Runs the command; returns the exit code (0 ok, 1 --check found differences, 2 usage). */
export function main(argv: readonly string[]): number {
  let out = join(ROOT, 'data', 'medcare');
  let check = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--check') check = true;
    else if (arg === '--out' || arg.startsWith('--out=')) {
      const value = arg === '--out' ? argv[++i] : arg.slice('--out='.length);
      if (!value) {
        process.stderr.write(`--out needs a folder\n${USAGE}`);
        return 2;
      }
      out = resolve(value);
    } else if (arg === '--help' || arg === '-h') {
      process.stdout.write(USAGE);
      return 0;
    } else {
      process.stderr.write(`unknown argument ${JSON.stringify(arg)}\n${USAGE}`);
      return 2;
    }
  }

  const files = generateMedcareData();
  if (check) {
    const stale: string[] = [];
    for (const name of MEDCARE_FILES) {
      let onDisk: string | undefined;
      try {
        onDisk = readFileSync(join(out, name), 'utf8');
      } catch {
        onDisk = undefined;
      }
      if (onDisk !== files[name]) stale.push(`${join(out, name)}${onDisk === undefined ? ' (missing)' : ''}`);
    }
    if (stale.length > 0) {
      process.stderr.write(
        `MedCare data differs from what the generator produces:\n${stale.map((s) => `  ${s}\n`).join('')}` +
          'Regenerate with: npx tsx scripts/make-medcare-data.ts\n',
      );
      return 1;
    }
    process.stdout.write(`MedCare data in ${out} is up to date (${MEDCARE_FILES.length} files).\n`);
    return 0;
  }

  mkdirSync(out, { recursive: true });
  for (const name of MEDCARE_FILES) {
    // Write beside the target and rename, so an interrupted run never leaves a half-written file.
    const target = join(out, name);
    writeFileSync(`${target}.tmp`, files[name]);
    renameSync(`${target}.tmp`, target);
    const text = files[name];
    process.stdout.write(`${target}: ${text.split('\n').length - 1} lines, ${Buffer.byteLength(text)} bytes\n`);
  }
  return 0;
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  process.exitCode = main(process.argv.slice(2));
}
