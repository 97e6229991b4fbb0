import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { bundleGradients, OUT } from '../../scripts/vendor-tfjs-gradients.js';

describe('scripts/vendor-tfjs-gradients.ts', () => {
  it('src/runtime/tfjs/gradients.generated.js is the bundle of the installed tfjs-core (re-run the script after upgrading it)', async () => {
    expect(await bundleGradients()).toBe(readFileSync(OUT, 'utf8'));
  });
});
