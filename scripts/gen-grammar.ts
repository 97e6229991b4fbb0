/**
 * `npm run grammar`: writes grammar/mcp.ebnf from the parser (see src/compiler/1-parse/ebnf.ts).
 * With `--check`, writes nothing and exits 1 when the file is out of date.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { generateEbnf } from '../src/compiler/1-parse/ebnf.js';

const target = fileURLToPath(new URL('../grammar/mcp.ebnf', import.meta.url));
const text = generateEbnf();
let current: string | undefined;
try {
  current = readFileSync(target, 'utf8');
} catch {
  current = undefined;
}

if (process.argv.includes('--check')) {
  if (current !== text) {
    console.error('grammar/mcp.ebnf is out of date: run `npm run grammar`');
    process.exit(1);
  }
  console.log('grammar/mcp.ebnf is up to date');
} else if (current === text) {
  console.log('grammar/mcp.ebnf is up to date');
} else {
  writeFileSync(target, text);
  console.log(`wrote grammar/mcp.ebnf (${text.split('\n').length - 1} lines)`);
}
