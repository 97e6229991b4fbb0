/**
 * Checker for exports: what is exported must exist after the last stage, and no two exports may write
 * the same thing or the same place.
 *
 * `export peft` with no list writes every adapter the trained model is made of that PEFT can hold: the plain
 * LoRAs alive at the end, those merged into the base during the pipeline (MedCare's `attn`: the later adapters
 * were trained on top of it, so the model source plus the folders reproduces the trained model only with it),
 * and mixtures whose routed experts were dropped (their shared experts are one LoRA). Named, a merged adapter
 * or such a mixture is accepted too; a mixture with a live router is not a LoRA.
 */
import { resolve } from 'node:path';
import type * as A from '../1-parse/ast.js';
import { didYouMean } from '../util/suggest.js';
import type { CheckedAdapter, CheckedExport } from './checked.js';
import type { Ctx } from './context.js';

const formats = ['peft', 'merged', 'safetensors'] as const;

export function checkExports(ctx: Ctx, exports: A.Export[]): CheckedExport[] {
  const out: CheckedExport[] = [];
  const byPath = new Map<string, A.Export>();
  const byContent = new Map<string, A.Export>();
  for (const e of exports) {
    if (!e.format.name || !e.path) continue;
    const format = e.format.name as (typeof formats)[number];
    if (!formats.includes(format)) {
      ctx.diags.report('invalid_value', e.format.span, `\`${e.format.name}\` is not an export format`, { hint: didYouMean(e.format.name, formats) ?? `formats: ${formats.join(', ')}` });
      continue;
    }
    const abs = ctx.checkPath({ path: e.path.value, span: e.path.span }, { mustExist: false, what: 'export path' });

    const names: string[] = [];
    let ok = true;
    if (format === 'merged' && e.adapters.length) {
      ctx.diags.report('invalid_value', e.adapters[0].span, '`export merged` writes the whole model with every surviving plain LoRA folded in; it takes no adapter list', { hint: 'write `export merged "path"`' });
      ok = false;
    }
    for (const id of format === 'merged' ? [] : e.adapters) {
      if (!ctx.lookup(id, ['adapter'], 'adapter')) {
        ok = false;
        continue;
      }
      ctx.used.add(id.name);
      const st = ctx.status.get(id.name);
      // A merged adapter's factors live on (the runtime keeps them): PEFT and mcpc's layout can write them.
      if (st && (st.status === 'dropped' || st.status === 'merged')) {
        if (st.status === 'merged' && format !== 'merged') {
          names.push(id.name);
          continue;
        }
        ctx.diags.report('unreachable_export', id.span, `adapter \`${id.name}\` no longer exists at the end of the pipeline: it was ${st.status}`, {
          notes: st.span ? [{ message: `${st.status} here`, span: st.span }] : [],
          hint: st.status === 'merged' ? 'its weights are in the base now: `export merged "path"` writes them' : 'export it from a pipeline that keeps it, or do not drop it',
        });
        ok = false;
        continue;
      }
      const a = ctx.adapters.get(id.name);
      if (format === 'peft' && a?.type === 'moe_lora' && !sharedOnly(ctx, a)) {
        ctx.diags.report('invalid_value', id.span, `\`${id.name}\` is a mixture of experts; PEFT's LoRA format cannot hold a router`, {
          hint: a.shared > 0 ? `use \`export safetensors ${id.name} "path"\`, or drop its routed experts first (\`drop ${id.name}.experts\`): its shared experts are a LoRA` : `use \`export safetensors ${id.name} "path"\``,
        });
        ok = false;
        continue;
      }
      names.push(id.name);
    }
    if (!ok) continue;

    if (format !== 'merged' && !e.adapters.length) {
      const chosen = [...ctx.adapters.values()].filter((a) => {
        const s = ctx.status.get(a.name)?.status;
        if (s === 'dropped') return false;
        if (format === 'safetensors') return s !== 'merged';
        return a.type === 'lora' || sharedOnly(ctx, a);
      });
      if (!chosen.length) {
        const peft = format === 'peft';
        ctx.diags.report('unreachable_export', e.span, `nothing to export as ${format}: ${peft ? 'no adapter is a LoRA at the end of the pipeline (each was dropped, or is a mixture with a router)' : 'every adapter was merged or dropped by the end of the pipeline'}`, {
          hint: peft ? '`export safetensors "path"` writes mixtures; `export merged "path"` the whole model' : 'export merged "path" writes the model with merged adapters',
        });
        continue;
      }
      names.push(...chosen.map((a) => a.name));
    }

    const key = abs ?? resolve(ctx.host.root, e.path.value);
    const prevPath = byPath.get(key);
    if (prevPath) {
      ctx.diags.report('duplicate_export', e.path.span, `\`${e.path.value}\` is already an export destination`, { notes: [{ message: 'first exported here', span: prevPath.span }] });
      continue;
    }
    byPath.set(key, e);
    const content = `${format}:${[...names].sort().join(',')}`;
    const prevContent = byContent.get(content);
    if (prevContent) {
      ctx.diags.report('duplicate_export', e.span, `the same ${format} export${names.length ? ` of ${names.join(', ')}` : ''} is written twice`, { notes: [{ message: 'first exported here', span: prevContent.span }] });
      continue;
    }
    byContent.set(content, e);
    out.push({ format, adapters: names, path: e.path.value, span: e.span });
  }
  return out;
}

/** A mixture whose routed experts were dropped and that has shared experts: one LoRA of rank r · shared. */
function sharedOnly(ctx: Ctx, a: CheckedAdapter): boolean {
  return a.type === 'moe_lora' && a.shared > 0 && ctx.routedDropped.has(a.name);
}
