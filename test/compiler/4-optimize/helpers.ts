/** Shared by the optimization-pass tests: compiling real and inline pipelines with a chosen pass list. */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { compileFile, nodeHost } from '../../../src/compiler/index.js';
import { batchExperts } from '../../../src/compiler/4-optimize/passes/batch-experts.js';
import { batchOrthogonality } from '../../../src/compiler/4-optimize/passes/batch-orthogonality.js';
import { concatBaseAdapter } from '../../../src/compiler/4-optimize/passes/concat-base-adapter.js';
import { concatSharedInput } from '../../../src/compiler/4-optimize/passes/concat-shared-input.js';
import { eliminateDeadAdapters } from '../../../src/compiler/4-optimize/passes/eliminate-dead-adapters.js';
import { expandSites } from '../../../src/compiler/4-optimize/passes/expand-sites.js';
import { foldFrozenLora } from '../../../src/compiler/4-optimize/passes/fold-frozen-lora.js';
import { foldTrainableLora } from '../../../src/compiler/4-optimize/passes/fold-trainable-lora.js';
import { routeExpertDown } from '../../../src/compiler/4-optimize/passes/route-expert-down.js';
import type { Pass } from '../../../src/compiler/4-optimize/pass.js';
import type { IR, Node, StageIR } from '../../../src/compiler/ir/types.js';
import type { Plan, PlanStage } from '../../../src/plan/types.js';

export const root = fileURLToPath(new URL('../../../', import.meta.url));

export const base: Pass[] = [expandSites, eliminateDeadAdapters];
export const P = { expandSites, eliminateDeadAdapters, foldFrozenLora, foldTrainableLora, batchExperts, routeExpertDown, concatBaseAdapter, concatSharedInput, batchOrthogonality };

export interface Compiled {
  ir: IR;
  plan: Plan;
  changes: Record<string, number>;
  stage(name: string): { ir: StageIR; plan: PlanStage };
}

/** Compile `path` (root-relative, or absolute with `dir` as the root) with exactly `passes`, verifying after each. */
export function compile(path: string, passes: Pass[], opts: { optLevel?: 0 | 1; dir?: string } = {}): Compiled {
  const dir = opts.dir ?? root;
  const res = compileFile(path, nodeHost(dir, dir), {}, { optLevel: opts.optLevel ?? 1, verify: true, passes });
  if (!res.plan || !res.ir) throw new Error(`${path} did not compile: ${res.diagnostics.map((d) => d.message).join('; ')}`);
  const ir = res.ir;
  const plan = res.plan;
  return {
    ir,
    plan,
    changes: Object.fromEntries(res.passes!.map((p) => [p.name, p.changes])),
    stage: (name) => ({ ir: ir.stages.find((s) => s.name === name)!, plan: plan.stages.find((s) => s.name === name)! }),
  };
}

/** Write an inline pipeline (built-in model, one small data file) to a fresh folder; returns its path and folder. */
export function inline(text: string): { path: string; dir: string } {
  const dir = mkdtempSync(join(tmpdir(), 'mcpc-opt-'));
  writeFileSync(join(dir, 'd.jsonl'), '{"prompt": "q", "response": "a"}\n');
  writeFileSync(join(dir, 'p.mcp'), text);
  return { path: join(dir, 'p.mcp'), dir };
}

export const nodesOf = (st: StageIR, op: Node['op']) => st.graph.nodes.filter((n) => n.op === op);

/** Sum of forward FLOPs per micro-batch of the plan steps matching `pred`. */
export const forwardFlops = (st: PlanStage, pred: (s: PlanStage['forward'][number]) => boolean) => st.forward.filter(pred).reduce((s, f) => s + f.flops, 0);

/** Sum of backward FLOPs per micro-batch of the plan steps whose node matches `pred`. */
export function backwardFlops(st: PlanStage, pred: (s: PlanStage['forward'][number]) => boolean): number {
  const nodes = new Set(st.forward.filter(pred).map((f) => f.node));
  return st.backward.filter((b) => nodes.has(b.node)).reduce((s, b) => s + b.flops, 0);
}

/** The GEMM-like ops that read an activation directly. */
export const gemmOps = new Set<Node['op']>(['linear', 'lora_down', 'expert_down', 'router', 'moe_down_batched', 'concat_linear']);

/** The concat_linear holding a part of `site` (its own site, or a part's when concat-shared-input merged sites). */
export function concatAt(st: StageIR, site: string): Node | undefined {
  return st.graph.nodes.find((n) => n.op === 'concat_linear' && (n.site === site || (n.attrs.parts as { site?: string }[]).some((p) => p.site === site)));
}

/** The kinds of the parts of `n` that belong to `site`. */
export const partKindsAt = (n: Node, site: string): string[] => (n.attrs.parts as { kind: string; site?: string }[]).filter((p) => (p.site ?? n.site) === site).map((p) => p.kind);
