/** Stage settings: the defaults every stage gets, and how written settings override them. */
import { describe, expect, it } from 'vitest';
import type { StageSettings } from '../../../src/compiler/2-check/checked.js';
import { checkText, pipeline } from './helpers.js';

function settingsOf(lines: string) {
  const r = checkText(pipeline(`adapter a = lora(r: 4) at layers[*].attn.q\nstage s {\n  train a on d\n${lines}\n}`));
  return { settings: r.pipeline?.stages[0].settings, codes: r.codes, diagnostics: r.diagnostics };
}

describe('stage settings', () => {
  it('fills every default when a stage sets nothing', () => {
    const r = settingsOf('');
    expect(r.codes).toEqual([]);
    expect(r.settings).toEqual({
      epochs: 1,
      lr: 2e-4,
      schedule: { kind: 'cosine', warmup: { percent: 3 }, minLr: 0 },
      batch: 8,
      microBatch: 8,
      maxLen: 512,
      weightDecay: 0,
      optimizer: { kind: 'adamw', beta1: 0.9, beta2: 0.999, eps: 1e-8 },
      gradClip: 1,
      seed: 42,
      precision: 'f32',
      checkpointEvery: 0,
      packing: false,
      loss: 'response',
      recompute: false,
      maxBadSteps: 5,
      shuffle: true,
    } satisfies StageSettings);
  });

  it('takes written values over the defaults', () => {
    const r = settingsOf('  epochs 3\n  steps 200\n  lr 1e-4\n  batch 32\n  micro_batch 8\n  max_len 256\n  weight_decay 0.01\n  precision bf16\n  memory 8GB\n  seed 7\n  packing true\n  loss all');
    expect(r.codes).toEqual([]);
    expect(r.settings).toMatchObject({ epochs: 3, steps: 200, lr: 1e-4, batch: 32, microBatch: 8, maxLen: 256, weightDecay: 0.01, precision: 'bf16', memoryBytes: 8e9, seed: 7, packing: true, loss: 'all' });
  });

  it('micro_batch defaults to the whole batch', () => {
    expect(settingsOf('  batch 16').settings).toMatchObject({ batch: 16, microBatch: 16 });
  });

  it('a schedule named bare, or called without a warmup, has no warmup', () => {
    expect(settingsOf('  schedule cosine').settings?.schedule).toEqual({ kind: 'cosine', warmup: { steps: 0 }, minLr: 0 });
    expect(settingsOf('  schedule linear(min_lr: 1e-5)').settings?.schedule).toEqual({ kind: 'linear', warmup: { steps: 0 }, minLr: 1e-5 });
    expect(settingsOf('  schedule constant(5%)').settings?.schedule).toEqual({ kind: 'constant', warmup: { percent: 5 }, minLr: 0 });
  });

  it('`warmup` overrides the default schedule\'s warmup: a number is steps, a percentage a share', () => {
    expect(settingsOf('  warmup 10').settings?.schedule.warmup).toEqual({ steps: 10 });
    expect(settingsOf('  schedule linear\n  warmup 5%').settings?.schedule).toEqual({ kind: 'linear', warmup: { percent: 5 }, minLr: 0 });
  });

  it('a rejected warmup in the schedule is reported once and leaves no warmup', () => {
    const r = settingsOf('  schedule cosine(warmup: fast)');
    expect(r.codes).toEqual(['invalid_value']);
  });

  it('reads optimizers', () => {
    expect(settingsOf('  optimizer sgd(momentum: 0.9)').settings?.optimizer).toEqual({ kind: 'sgd', momentum: 0.9 });
    expect(settingsOf('  optimizer adamw(beta2: 0.95)').settings?.optimizer).toEqual({ kind: 'adamw', beta1: 0.9, beta2: 0.95, eps: 1e-8 });
  });

  it('reports unknown, duplicate, conflicting and out-of-range settings', () => {
    const unknown = settingsOf('  num_train_epochs 3');
    expect(unknown.codes).toEqual(['unknown_hyperparameter']);
    expect(unknown.diagnostics[0].hint).toBe('mcpc calls it `epochs`');
    expect(settingsOf('  epoch 3').diagnostics[0].hint).toBe('did you mean `epochs`?');
    expect(settingsOf('  lr 2e-4\n  lr 1e-4').codes).toEqual(['duplicate_setting']);
    expect(settingsOf('  schedule cosine(warmup: 3%)\n  warmup 5%').codes).toEqual(['stage_setting_conflict']);
    expect(settingsOf('  lr 0').codes).toEqual(['lr_out_of_range']);
    expect(settingsOf('  schedule cosine(warmup: 150%)').codes).toEqual(['warmup_out_of_range']);
    expect(settingsOf('  steps 10\n  warmup 20').codes).toEqual(['warmup_out_of_range']);
    expect(settingsOf('  batch 8\n  micro_batch 16').codes).toEqual(['batch_not_divisible']);
    expect(settingsOf('  max_len 4096').diagnostics.map((d) => d.message)).toEqual(["max_len 4096 exceeds the model's 1024 positions"]);
  });
});
