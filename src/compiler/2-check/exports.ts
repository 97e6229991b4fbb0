/**
 * Checker for exports: what is exported must exist after the last stage, and no two exports may write
 * the same thing or the same place.
 */
import { resolve } from 'node:path';
import type * as A from '../1-parse/ast.js';
import { didYouMean } from '../util/suggest.js';
import type { CheckedExport } from './checked.js';
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
      if (st && (st.status === 'dropped' || st.status === 'merged')) {
        ctx.diags.report('unreachable_export', id.span, `adapter \`${id.name}\` no longer exists at the end of the pipeline: it was ${st.status}`, {
          notes: st.span ? [{ message: `${st.status} here`, span: st.span }] : [],
          hint: st.status === 'merged' ? 'its weights are in the base now: `export merged "path"` writes them' : 'export it from a pipeline that keeps it, or do not drop it',
        });
        ok = false;
        continue;
      }
      const a = ctx.adapters.get(id.name);
      if (format === 'peft' && a?.type === 'moe_lora') {
        ctx.diags.report('invalid_value', id.span, `\`${id.name}\` is a mixture of experts; PEFT's LoRA format cannot hold a router`, { hint: `use \`export safetensors ${id.name} "path"\`` });
        ok = false;
        continue;
      }
      names.push(id.name);
    }
    if (!ok) continue;

    if (format !== 'merged' && !e.adapters.length) {
      const alive = [...ctx.adapters.values()].filter((a) => {
        const s = ctx.status.get(a.name)?.status;
        return s !== 'dropped' && s !== 'merged' && (format === 'safetensors' || a.type === 'lora');
      });
      if (!alive.length) {
        ctx.diags.report('unreachable_export', e.span, `nothing to export as ${format}: every ${format === 'peft' ? 'plain LoRA ' : ''}adapter was merged or dropped by the end of the pipeline`, {
          hint: 'export merged "path" writes the model with merged adapters',
        });
        continue;
      }
      names.push(...alive.map((a) => a.name));
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
