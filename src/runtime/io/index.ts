/** File formats of the runtime: safetensors, atomic writes, checkpoint folders, strict JSON. */
export * from './safetensors.js';
export * from './atomic.js';
export * from './checkpoint.js';
export * from './strict-json.js';
export * from './float16.js';
