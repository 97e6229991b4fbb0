/**
 * The plan module: what the compiler writes and the runtime reads. `types.ts` is the document, `schema.json`
 * its JSON Schema (generated from the types), `validate.ts` the validator, `pipeline.ts` overrides and the
 * runner contract. This index re-exports what needs no third-party package (the validator needs ajv, so it is
 * imported from `./validate.js` directly); the modules `mcpc compile --emit ts` writes import from here.
 */
export * from './types.js';
export * from './pipeline.js';
