/**
 * What a killed writer leaves (io/checkpoint.ts removeLeftovers, io/atomic.ts removeStaleTempFiles) and pruning
 * with pinned steps (a run's stage-end checkpoints): leftovers of gone processes are removed, a live writer's
 * are left alone, pinned checkpoints are kept and not counted.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { removeStaleTempFiles, writerGone } from '../../../src/runtime/io/atomic.js';
import { listCheckpoints, pruneCheckpoints, removeLeftovers, writeCheckpoint } from '../../../src/runtime/io/checkpoint.js';
import { removeTempDirs, tempDir } from './helpers.js';

afterAll(removeTempDirs);

const files = (step: number) => ({ 'weights.bin': Buffer.from(`weights of step ${step}`) });
const steps = (root: string) => listCheckpoints(root).map((c) => c.step).sort((a, b) => a - b);
/** A pid no process has: a child that has exited. */
const deadPid = () => Number(spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))']).stdout.toString());

describe('writerGone', () => {
  it('a live process (the parent) is not gone; an exited one is; this process counts as gone (no write in flight)', () => {
    expect(writerGone(process.ppid)).toBe(false);
    expect(writerGone(deadPid())).toBe(true);
    expect(writerGone(process.pid)).toBe(true);
  });
});

describe('removeLeftovers', () => {
  it('removes trash folders and the staging folders of gone writers, with their sizes; reports a live writer\'s', () => {
    const root = tempDir();
    writeCheckpoint(root, 1, files(1));
    const dead = `.tmp-step-000002.${deadPid()}.abcd1234`;
    mkdirSync(join(root, dead));
    writeFileSync(join(root, dead, 'weights.bin'), Buffer.alloc(1000));
    const mine = `.tmp-step-000003.${process.pid}.00ff00ff`;
    mkdirSync(join(root, mine));
    const live = `.tmp-step-000004.${process.ppid}.deadbeef`;
    mkdirSync(join(root, live));
    mkdirSync(join(root, '.trash-step-000000.0123abcd'));
    const r = removeLeftovers(root);
    expect(r.removed).toEqual([
      { name: '.trash-step-000000.0123abcd', bytes: 0, kind: 'trash' },
      { name: dead, bytes: 1000, kind: 'staging' },
      { name: mine, bytes: 0, kind: 'staging' },
    ].sort((a, b) => (a.name < b.name ? -1 : 1)));
    expect(r.inUse).toEqual([{ name: live, pid: process.ppid }]);
    expect(readdirSync(root).sort()).toEqual([live, 'step-000001']);
    expect(removeLeftovers(join(root, 'missing'))).toEqual({ removed: [], inUse: [] });
  });

  it('pruning removes a gone writer\'s staging folder but not a live one\'s', () => {
    const root = tempDir();
    const dead = `.tmp-step-000009.${deadPid()}.abcd1234`;
    const live = `.tmp-step-000008.${process.ppid}.deadbeef`;
    mkdirSync(join(root, dead));
    mkdirSync(join(root, live));
    writeCheckpoint(root, 1, files(1), { keepLast: 2 });
    expect(readdirSync(root).sort()).toEqual([live, 'step-000001']);
  });
});

describe('pruneCheckpoints with pinned steps', () => {
  it('keeps pinned checkpoints without counting them toward keepLast', () => {
    const root = tempDir();
    for (let s = 1; s <= 6; s++) writeCheckpoint(root, s, files(s));
    const removed = pruneCheckpoints(root, 2, 6, { pinned: [1, 3, 5] });
    // 6 (just written) and 4 are the two kept; 1, 3, 5 are pinned; only 2 goes.
    expect(removed).toEqual(['step-000002']);
    expect(steps(root)).toEqual([1, 3, 4, 5, 6]);
    // No trash folder is left behind by the removal (renamed to trash, then deleted).
    expect(readdirSync(root).filter((n) => n.startsWith('.'))).toEqual([]);
  });

  it('a pinned step that is the one just written counts toward keepLast', () => {
    const root = tempDir();
    for (let s = 1; s <= 4; s++) writeCheckpoint(root, s, files(s));
    pruneCheckpoints(root, 2, 4, { pinned: [4] });
    expect(steps(root)).toEqual([3, 4]);
  });
});

describe('removeStaleTempFiles', () => {
  it('removes writeFileAtomicSync temp files of gone processes only', () => {
    const dir = tempDir();
    const gone = `.tmp-metrics.jsonl.${deadPid()}.0123456789ab`;
    const live = `.tmp-metrics.jsonl.${process.ppid}.0123456789ab`;
    writeFileSync(join(dir, gone), 'x');
    writeFileSync(join(dir, live), 'x');
    writeFileSync(join(dir, '.tmp-notours'), 'x');
    mkdirSync(join(dir, `.tmp-folder.${deadPid()}.0123456789ab`));
    writeFileSync(join(dir, 'metrics.jsonl'), 'x');
    expect(removeStaleTempFiles(dir)).toEqual([gone]);
    expect(existsSync(join(dir, gone))).toBe(false);
    expect(readdirSync(dir).length).toBe(4);
    expect(removeStaleTempFiles(join(dir, 'missing'))).toEqual([]);
  });
});
