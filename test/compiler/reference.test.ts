import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { codes } from '../../src/compiler/diagnostics/catalogue.js';
import { generateReference } from '../../src/compiler/reference.js';
import { constructors, settings } from '../../src/compiler/2-check/schema.js';

describe('docs/reference.md', () => {
  const committed = readFileSync(new URL('../../docs/reference.md', import.meta.url), 'utf8');

  it('is what the schema and catalogue generate (run `npm run docs` when this fails)', () => {
    expect(committed).toBe(generateReference());
  });

  it('documents every constructor, setting and diagnostic code', () => {
    for (const fam of Object.values(constructors)) for (const c of fam) expect(committed).toContain(`### \`${c.name}\``);
    for (const s of settings) expect(committed).toContain(`| \`${s.name}\``);
    for (const c of codes) expect(committed).toContain(`| \`${c}\` |`);
  });
});
