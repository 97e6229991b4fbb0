/**
 * Composition: a variant `extends` a base pipeline, overrides declarations and stages in place, adds stages
 * (at the end or `after X`) and inherits the base's exports unless it declares its own.
 */
import { describe, expect, it } from 'vitest';
import { checkText } from './helpers.js';

const base = `pipeline base
model base = builtin("qwen2-micro")
data d = jsonl("data/a.jsonl")
adapter attn = lora(r: 16) at layers[*].attn.q
adapter know = lora(r: 8) at layers[*].mlp.gate
stage one { train attn, know on d; then { freeze know } }
stage two { train attn on d }
export peft "out/base/adapters"
export merged "out/base/model"
`;

const variant = (body: string) => checkText(`pipeline v extends "base.mcp"\n${body}\n`, { 'base.mcp': base }, 'v.mcp');

describe('composition', () => {
  it('inherits everything when it adds nothing', () => {
    const r = variant('');
    expect(r.codes).toEqual([]);
    expect(r.pipeline?.name).toBe('v');
    expect(r.pipeline?.files).toEqual(['v.mcp', 'base.mcp']);
    expect(r.pipeline?.stages.map((s) => s.name)).toEqual(['one', 'two']);
    expect(r.pipeline?.exports.map((e) => e.path)).toEqual(['out/base/adapters', 'out/base/model']);
  });

  it('an override replaces a declaration in place', () => {
    const r = variant('override adapter attn = lora(r: 4) at layers[0].attn.q');
    expect(r.codes).toEqual([]);
    expect(r.pipeline?.adapters.map((a) => [a.name, a.lora.r, a.sites.length])).toEqual([
      ['attn', 4, 1],
      ['know', 8, 2],
    ]);
  });

  it('an override replaces a stage in place', () => {
    const r = variant('override stage one { train attn, know on d; epochs 2; then { freeze know } }');
    expect(r.codes).toEqual([]);
    expect(r.pipeline?.stages.map((s) => [s.name, s.settings.epochs])).toEqual([
      ['one', 2],
      ['two', 1],
    ]);
  });

  it('new stages go at the end, or right after the stage `after` names', () => {
    const r = variant('stage three { train attn on d }\nstage between after one { train attn on d }\nstage last_but after two { train attn on d }');
    expect(r.codes).toEqual([]);
    expect(r.pipeline?.stages.map((s) => s.name)).toEqual(['one', 'between', 'two', 'last_but', 'three']);
  });

  it('its own exports replace the base exports', () => {
    const r = variant('export peft "out/v/adapters"');
    expect(r.codes).toEqual([]);
    expect(r.pipeline?.exports.map((e) => e.path)).toEqual(['out/v/adapters']);
  });

  it('the statuses of the base stages carry into the variant\'s', () => {
    const r = variant('stage three { train know on d }');
    expect(r.codes).toEqual(['train_frozen_adapter']);
  });

  it('reports redeclared names, overrides of nothing and unknown `after` stages', () => {
    expect(variant('adapter attn = lora(r: 4) at layers[*].attn.q').codes).toEqual(['redeclared_from_base']);
    expect(variant('stage two { train attn on d }').codes).toEqual(['redeclared_from_base']);
    expect(variant('override adapter extra = lora(r: 4) at layers[*].attn.q\nstage s { train extra on d }').codes).toEqual(['override_nothing']);
    expect(variant('override stage three { train attn on d }').codes).toEqual(['override_nothing']);
    const after = variant('stage x after ones { train attn on d }');
    expect(after.codes).toEqual(['unknown_stage']);
    expect(after.diagnostics[0].hint).toBe('did you mean `one`?');
  });

  it('override in a pipeline that extends nothing', () => {
    expect(checkText(base.replace('adapter attn', 'override adapter attn')).codes).toEqual(['override_nothing']);
  });

  it('chains of extends compose in order', () => {
    const mid = 'pipeline mid extends "base.mcp"\nstage three { train attn on d }\n';
    const r = checkText('pipeline top extends "mid.mcp"\nstage four after one { train attn on d }\n', { 'base.mcp': base, 'mid.mcp': mid }, 'top.mcp');
    expect(r.codes).toEqual([]);
    expect(r.pipeline?.files).toEqual(['top.mcp', 'mid.mcp', 'base.mcp']);
    expect(r.pipeline?.stages.map((s) => s.name)).toEqual(['one', 'four', 'two', 'three']);
  });

  it('a base that cannot be read is the only error, not the names it would have declared', () => {
    const r = checkText('pipeline v extends "nope.mcp"\nstage three { train attn on d }\n', {}, 'v.mcp');
    expect(r.diagnostics.map((d) => [d.code, d.message])).toEqual([['extends_not_found', 'cannot read `nope.mcp`: it does not exist (looked for nope.mcp)']]);
  });

  it('cycles through two files are reported with the chain', () => {
    const a = 'pipeline a extends "b.mcp"\n';
    const b = 'pipeline b extends "a.mcp"\nmodel base = builtin("qwen2-micro")\n';
    const r = checkText(a, { 'b.mcp': b }, 'a.mcp');
    expect(r.diagnostics.filter((d) => d.code === 'extends_cycle').map((d) => d.message)).toEqual(['extending `a.mcp` closes a cycle: a.mcp -> b.mcp -> a.mcp']);
  });
});
