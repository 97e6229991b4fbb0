/**
 * The adapters' statuses walked through the stages: pending -> trainable when trained, then what each
 * then-block does (merge, drop, freeze, unfreeze), and the lint rules that read them.
 */
import { describe, expect, it } from 'vitest';
import { checkText, pipeline } from './helpers.js';

const attn = 'adapter a = lora(r: 4) at layers[*].attn.q';
const mlp = 'adapter b = lora(r: 4) at layers[*].mlp.gate';
const moe = 'adapter m = moe_lora(experts: 4, top_k: 2, r: 4) at layers[*].mlp.up';
const moeShared = 'adapter m = moe_lora(experts: 4, shared: 1, top_k: 2, r: 4) at layers[*].mlp.up';

describe('adapter status walk', () => {
  it('freeze, then unfreeze, then train again is fine', () => {
    const r = checkText(pipeline(`${attn}\n${mlp}
stage one { train a, b on d; then { freeze a } }
stage two { train b on d; then { unfreeze a } }
stage three { train a on d }
export peft "out/x"`));
    expect(r.codes).toEqual([]);
    const p = r.pipeline!;
    expect(p.stages.map((s) => s.entry)).toEqual([
      { a: 'pending', b: 'pending' },
      { a: 'frozen', b: 'trainable' },
      { a: 'trainable', b: 'trainable' },
    ]);
    expect(p.stages[2].train).toEqual(['a']);
    expect(p.final).toEqual({ a: 'trainable', b: 'trainable' });
    expect(p.exports).toEqual([expect.objectContaining({ format: 'peft', adapters: ['a', 'b'] })]);
  });

  it('training a frozen adapter is an error that points at the freeze', () => {
    const r = checkText(pipeline(`${attn}\nstage one { train a on d; then { freeze a } }\nstage two { train a on d }`));
    expect(r.codes).toEqual(['train_frozen_adapter']);
    expect(r.diagnostics[0].notes.map((n) => [n.message, n.span?.start.line])).toEqual([['frozen here', 5]]);
  });

  it('merge, then export peft of the merged adapter: its factors are exported (the later adapters trained on top of it)', () => {
    const r = checkText(pipeline(`${attn}\n${mlp}\nstage one { train a, b on d; then { merge a into base } }\nexport peft a "out/a"\nexport peft b "out/b"`));
    expect(r.codes).toEqual([]);
    expect(r.pipeline?.exports.map((e) => e.adapters)).toEqual([['a'], ['b']]);
    expect(r.pipeline?.final).toEqual({ a: 'merged', b: 'trainable' });
    const dropped = checkText(pipeline(`${attn}\n${mlp}\nstage one { train a, b on d; then { drop a } }\nexport peft a "out/a"\nexport peft b "out/b"`));
    expect(dropped.codes).toEqual(['unreachable_export']);
    expect(dropped.diagnostics[0].message).toBe('adapter `a` no longer exists at the end of the pipeline: it was dropped');
  });

  it('export peft with no list takes what the trained model is made of: live and merged LoRAs, mixtures reduced to shared experts', () => {
    const some = checkText(pipeline(`${attn}\n${mlp}\n${moe}\nstage one { train a, b, m on d; then { merge a into base; drop m } }\nexport peft "out/p"`));
    expect(some.codes).toEqual([]);
    expect(some.pipeline?.exports[0].adapters).toEqual(['a', 'b']);
    const shared = checkText(pipeline(`${moeShared}\n${mlp}\nstage one { train m, b on d; then { drop m.experts } }\nexport peft "out/p"\nexport peft m "out/m"`));
    expect(shared.codes).toEqual([]);
    expect(shared.pipeline?.exports.map((e) => e.adapters)).toEqual([['m', 'b'], ['m']]);
    const routed = checkText(pipeline(`${moeShared}\nstage one { train m on d }\nexport peft m "out/m"`));
    expect(routed.codes).toEqual(['invalid_value']);
    expect(routed.diagnostics[0].hint).toMatch(/drop its routed experts first \(`drop m.experts`\)/);
    const none = checkText(pipeline(`${attn}\n${moe}\nstage one { train a, m on d; then { drop a } }\nexport peft "out/p"`));
    expect(none.codes).toEqual(['unreachable_export']);
  });

  it('uses after a drop or a merge, in later stages and later in the same then-block', () => {
    expect(checkText(pipeline(`${attn}\nstage one { train a on d; then { drop a } }\nstage two { train a on d }`)).codes).toEqual(['use_after_drop']);
    expect(checkText(pipeline(`${attn}\nstage one { train a on d; then { merge a into base; freeze a } }`)).codes).toEqual(['use_after_merge']);
    expect(checkText(pipeline(`${attn}\nstage one { train a on d; then { drop a; drop a } }`)).codes).toEqual(['use_after_drop']);
  });

  it('a routed mixture cannot be merged; its shared experts can, and dropping its routed experts keeps it', () => {
    expect(checkText(pipeline(`${moe}\nstage one { train m on d; then { merge m into base } }`)).codes).toEqual(['merge_routed_mixture']);
    const r = checkText(pipeline(`${moeShared}\nstage one { train m on d; then { drop m.experts } }\nstage two { train m on d }\nexport safetensors m "out/m"`));
    expect(r.codes).toEqual([]);
    expect(r.pipeline?.stages[0].transitions).toEqual([expect.objectContaining({ kind: 'drop', adapter: 'm', part: 'experts' })]);
    expect(r.pipeline?.final).toEqual({ m: 'trainable' });
    const merged = checkText(pipeline(`${moeShared}\nstage one { train m on d; then { merge m.shared into base } }`));
    expect(merged.codes).toEqual([]);
    expect(merged.pipeline?.stages[0].transitions).toEqual([expect.objectContaining({ kind: 'merge', adapter: 'm', part: 'shared', into: 'base' })]);
  });

  it('a conditional drop of routed experts keeps the adapter', () => {
    const r = checkText(pipeline(`${moe}\nstage one { train m on d; then { drop m.experts where load < 2% } }\nstage two { train m on d }`));
    expect(r.codes).toEqual([]);
    expect(r.pipeline?.stages[0].transitions[0]).toMatchObject({ kind: 'drop', part: 'experts', condition: { metric: 'load', op: '<', value: 0.02 } });
    expect(checkText(pipeline(`${attn}\nstage one { train a on d; then { drop a where load < 2% } }`)).codes).toEqual(['invalid_drop_condition']);
  });

  it('a stage-local adapter exists from its stage on', () => {
    const r = checkText(pipeline(`${attn}\nstage one { train a on d; then { freeze a } }\nstage two {\n  adapter c = lora(r: 4) at layers[*].attn.q\n  train c on d\n}`));
    expect(r.codes).toEqual([]);
    expect(r.pipeline?.stages.map((s) => Object.keys(s.entry))).toEqual([['a'], ['a', 'c']]);
    expect(r.pipeline?.adapters.find((x) => x.name === 'c')?.declaredIn).toBe('two');
    const early = checkText(pipeline(`stage one { train c on d }\nstage two {\n  adapter c = lora(r: 4) at layers[*].attn.q\n  train c on d\n}`));
    expect(early.diagnostics.map((d) => d.message)).toEqual(['`c` is declared in the later stage `two`']);
  });

  it('a second train statement is reported, and its adapters still count as trained', () => {
    const r = checkText(pipeline(`${attn}\n${mlp}\nstage one {\n  train a on d\n  train b on d\n}`));
    expect(r.codes).toEqual(['invalid_statement']);
    expect(r.pipeline?.stages[0].train).toEqual(['a', 'b']);
  });

  it('a misspelt adapter is reported once, without "never trained" for the one that was meant', () => {
    const r = checkText(pipeline(`${attn}\nstage one { train aa on d }`.replace('adapter a ', 'adapter attn ').replace('train aa', 'train atn')));
    expect(r.codes).toEqual(['unknown_name']);
    expect(r.diagnostics[0].hint).toBe('did you mean `attn`?');
  });
});
