/**
 * Phase 4: the passes, in order. Each is its own module with a file-head comment stating its contract;
 * the IR is verified after every pass in tests and with MCPC_DEBUG=ir (which also dumps it).
 */
import { verifyIR } from '../ir/verify.js';
import type { IR } from '../ir/types.js';
import type { Pass, PassContext } from './pass.js';
import { batchExperts } from './passes/batch-experts.js';
import { batchOrthogonality } from './passes/batch-orthogonality.js';
import { concatBaseAdapter } from './passes/concat-base-adapter.js';
import { concatSharedInput } from './passes/concat-shared-input.js';
import { eliminateDeadAdapters } from './passes/eliminate-dead-adapters.js';
import { expandSites } from './passes/expand-sites.js';
import { foldFrozenLora } from './passes/fold-frozen-lora.js';
import { foldTrainableLora } from './passes/fold-trainable-lora.js';
import { fuseElementwise } from './passes/fuse-elementwise.js';
import { fuseOptimizer } from './passes/fuse-optimizer.js';
import { planMemory } from './passes/plan-memory.js';
import { routeExpertDown } from './passes/route-expert-down.js';

export const passes: Pass[] = [
  expandSites, //            adapted linears -> base GEMM + LoRA + mixture ops (required)
  eliminateDeadAdapters, //  adapters with zero output in a stage leave its graph
  foldFrozenLora, //         frozen plain LoRA -> stage copy of the base weight (W + s·B·A at entry)
  foldTrainableLora, //      trained plain LoRA -> W + s·B·A every step where one base GEMM's dW costs less
  batchExperts, //           per mixture site: one A GEMM, one top-k grouped B GEMM
  routeExpertDown, //        routed-only mixture sites: the experts' A for each token's top-k only
  concatBaseAdapter, //      base GEMM + adapter down-projections on the same x -> one concat GEMM
  concatSharedInput, //      the GEMMs of different sites on the same x (q, k, v; gate, up) -> one concat GEMM
  batchOrthogonality, //     every orthogonality term of a stage in one weighted penalty node
  fuseElementwise, //        adds, RMSNorm, SwiGLU chains -> generated WGSL kernels with generated backward
  fuseOptimizer, //          one optimizer dispatch per stage over flat buffers of all trainable tensors
  planMemory, //             liveness, buffer reuse, micro-batch / recompute under the memory budget (last)
];

export interface PassReport {
  name: string;
  description: string;
  required: boolean;
  ran: boolean;
  changes: number;
  notes: string[];
}

export interface OptimizeOptions extends PassContext {
  /** Verify the IR after every pass (tests, MCPC_DEBUG=ir). */
  verify: boolean;
  /** Called with the IR after each pass (MCPC_DEBUG=ir dumps it). */
  onPass?: (pass: string, ir: IR) => void;
}

export function optimize(ir: IR, opts: OptimizeOptions, list: Pass[] = passes): PassReport[] {
  if (opts.verify) verifyIR(ir, 'lowering', { expanded: false });
  const reports: PassReport[] = [];
  let expanded = false;
  for (const p of list) {
    const run = p.required || opts.optLevel > 0;
    const res = run ? p.run(ir, opts) : { changes: 0, notes: [] };
    if (p === expandSites) expanded = true;
    if (run && opts.verify) verifyIR(ir, p.name, { expanded });
    if (run) opts.onPass?.(p.name, ir);
    reports.push({ name: p.name, description: p.description, required: !!p.required, ran: run, changes: res.changes, notes: res.notes });
  }
  return reports;
}
