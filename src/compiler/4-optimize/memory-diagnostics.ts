/**
 * `memory_budget_exceeded`: after plan-memory has run, a stage whose estimated peak is still above its
 * budget (it has already fallen back to micro-batch 1 with recompute) is a warning at the stage's `memory`
 * setting, or at the stage's name when the budget comes from mcpc.yaml. Nothing is reported at -O0 (no
 * memory plan) or for stages without a budget.
 */
import type { Composed } from '../2-check/compose.js';
import type { Diagnostics } from '../diagnostics/diagnostic.js';
import type { IR } from '../ir/types.js';
import { fmtBytes } from '../../plan/units.js';

export function reportMemoryBudgets(ir: IR, composed: Composed, diags: Diagnostics): void {
  for (const st of ir.stages) {
    const m = st.memory;
    if (!m || m.budget === undefined || m.bytes.peak <= m.budget) continue;
    const ast = composed.stages.find((s) => s.name.name === st.name);
    if (!ast) continue;
    const setting = ast.items.find((i) => i.kind === 'setting' && i.name.name === 'memory');
    const own = st.settings.memoryBytes !== undefined && setting?.kind === 'setting';
    const span = own ? (setting.value?.span ?? setting.span) : ast.name.span;
    const state = m.bytes.params + m.bytes.grads + m.bytes.optimizer;
    const written = own && setting.value?.kind === 'size' ? setting.value.text : undefined;
    const budget = own ? `its memory budget of ${written ? `${written} (${fmtBytes(m.budget)})` : fmtBytes(m.budget)}` : `the memory budget of ${fmtBytes(m.budget)} set in mcpc.yaml`;
    diags.report(
      'memory_budget_exceeded',
      span,
      `stage \`${st.name}\` needs about ${fmtBytes(m.bytes.peak)}, more than ${budget}, even with micro_batch 1 and activation recompute`,
      {
        hint:
          state > m.budget
            ? `the weights, gradients and optimizer state alone take ${fmtBytes(state)}: raise \`memory\` or train a smaller model`
            : `activations take ${fmtBytes(m.bytes.activations)} at micro_batch 1: raise \`memory\` or lower \`max_len\` (${st.settings.maxLen})`,
      },
    );
  }
}
