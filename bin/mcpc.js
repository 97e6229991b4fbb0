#!/usr/bin/env node
// The mcpc command. Sources are TypeScript, loaded through tsx's ESM hooks so `npm ci` needs no build step.
import { register } from 'tsx/esm/api';

register();
const { main } = await import('../src/cli/main.ts');
process.exitCode = await main(process.argv.slice(2));
