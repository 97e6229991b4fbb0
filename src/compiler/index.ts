/**
 * The compiler's public entry points. Each reads like the chain of phases it runs:
 *   checkFile: 1-parse (text -> AST) -> 2-check (AST -> CheckedPipeline)
 *   compileFile: checkFile -> 3-lower (-> IR) -> 4-optimize (the pass list) -> 5-emit (-> plan)
 * Nothing here throws on user input; every problem is a diagnostic.
 */
export { checkFile, type CheckFileResult } from './check-file.js';
export { compileFile, type CompileOptions, type CompileResult } from './compile.js';
export { check } from './2-check/index.js';
export { nodeHost, type CheckHost } from './2-check/host.js';
export { parse } from './1-parse/index.js';
export type { CheckedPipeline } from './2-check/checked.js';
export type { Diagnostic } from './diagnostics/diagnostic.js';

