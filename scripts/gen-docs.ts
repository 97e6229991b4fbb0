// Writes docs/reference.md from the schema tables and the diagnostic catalogue. `--check`: exit 1 if stale.
import { readFileSync, writeFileSync } from 'node:fs';
import { generateReference } from '../src/compiler/reference.js';

const path = new URL('../docs/reference.md', import.meta.url);
const text = generateReference();
if (process.argv.includes('--check')) {
  let old = '';
  try {
    old = readFileSync(path, 'utf8');
  } catch {}
  if (old !== text) {
    console.error('docs/reference.md is out of date: run `npm run docs`');
    process.exit(1);
  }
  console.log('docs/reference.md is up to date');
} else {
  writeFileSync(path, text);
  console.log('wrote docs/reference.md');
}
