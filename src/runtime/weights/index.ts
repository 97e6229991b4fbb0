/**
 * Weights: initialisation, Hugging Face checkpoints, LoRA merge math, and the exports (PEFT, mcpc's adapter
 * layout, merged models). Parameters travel as `Map<planParamId, Float32Array>` (row-major float32).
 */
export * from './errors.js';
export * from './init.js';
export * from './merge.js';
export * from './hf.js';
export * from './peft.js';
export * from './adapter-file.js';
export * from './export.js';
export * from './params.js';
