import { afterAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  COMPLETE_MARKER,
  CheckpointError,
  findLatestCheckpoint,
  listCheckpoints,
  parseManifest,
  pruneCheckpoints,
  readCheckpointFile,
  stepDirName,
  verifyCheckpoint,
  writeCheckpoint,
} from '../../../src/runtime/io/checkpoint.js';
import { SafetensorsReader, tensorFromFloat32, layoutSafetensors } from '../../../src/runtime/io/safetensors.js';
import { contentFor } from './fixtures/checkpoint-content.js';
import { removeTempDirs, tempDir } from './helpers.js';

afterAll(removeTempDirs);

const files = (step: number) => ({
  'weights.bin': Buffer.from(`weights of step ${step}`),
  'state.json': JSON.stringify({ step }),
});

function steps(root: string): number[] {
  return listCheckpoints(root).map((c) => c.step).sort((a, b) => a - b);
}

describe('writeCheckpoint', () => {
  it('writes every file, then a COMPLETE manifest with sizes and sha256', () => {
    const root = tempDir();
    const ck = writeCheckpoint(root, 123, files(123));
    expect(ck.dir).toBe(join(root, 'step-000123'));
    expect(readdirSync(ck.dir).sort()).toEqual([COMPLETE_MARKER, 'state.json', 'weights.bin']);
    const manifest = JSON.parse(readFileSync(join(ck.dir, COMPLETE_MARKER), 'utf8'));
    expect(manifest).toEqual({
      format: 'mcpc-checkpoint',
      version: 1,
      step: 123,
      files: [
        { name: 'state.json', bytes: 12, sha256: expect.stringMatching(/^[0-9a-f]{64}$/) },
        { name: 'weights.bin', bytes: 19, sha256: createHash('sha256').update('weights of step 123').digest('hex') },
      ],
    });
    expect(readdirSync(root)).toEqual(['step-000123']); // no staging folder left
    expect(verifyCheckpoint(ck.dir).step).toBe(123);
  });

  it('holds a safetensors file written from chunks (no copy of the tensor data)', () => {
    const root = tempDir();
    const { head, chunks } = layoutSafetensors({ w: tensorFromFloat32([1, 2, 3], [3]) });
    const ck = writeCheckpoint(root, 1, { 'model.safetensors': [head, ...chunks] });
    const r = SafetensorsReader.open(join(ck.dir, 'model.safetensors'));
    expect(Array.from(r.readFloat32('w'))).toEqual([1, 2, 3]);
    r.close();
  });

  it('step folder names sort as numbers and grow past 6 digits', () => {
    expect(stepDirName(0)).toBe('step-000000');
    expect(stepDirName(1234567)).toBe('step-1234567');
    expect(() => stepDirName(-1)).toThrowError(CheckpointError);
    expect(() => stepDirName(1.5)).toThrowError(CheckpointError);
  });

  it('rejects unsafe file names', () => {
    const root = tempDir();
    for (const bad of ['../x', 'a/b', '.hidden', COMPLETE_MARKER, '', '-x', 'a\0b']) {
      expect(() => writeCheckpoint(root, 1, { [bad]: 'x' }), bad).toThrow(/is not allowed/);
    }
    expect(readdirSync(root)).toEqual([]);
  });

  it('never overwrites a complete checkpoint; replaces an incomplete one', () => {
    const root = tempDir();
    writeCheckpoint(root, 5, files(5));
    expect(() => writeCheckpoint(root, 5, files(5))).toThrow(/already exists/);
    // crash remnant: folder with files but no marker
    const remnant = join(root, stepDirName(6));
    mkdirSync(remnant);
    writeFileSync(join(remnant, 'weights.bin'), 'half');
    const ck = writeCheckpoint(root, 6, files(6));
    expect(readFileSync(join(ck.dir, 'weights.bin'), 'utf8')).toBe('weights of step 6');
  });

  it('a failure while writing leaves no step folder and every older checkpoint intact', () => {
    const root = tempDir();
    writeCheckpoint(root, 1, files(1));
    writeCheckpoint(root, 2, files(2));
    function* failing() {
      yield Buffer.from('some bytes');
      throw new Error('out of space');
    }
    expect(() => writeCheckpoint(root, 3, { 'a.bin': 'ok', 'b.bin': failing() }, { keepLast: 1 })).toThrow(/out of space/);
    expect(readdirSync(root).sort()).toEqual(['step-000001', 'step-000002']);
    expect(findLatestCheckpoint(root).latest!.step).toBe(2);
  });
});

describe('findLatestCheckpoint', () => {
  it('no root or no checkpoints: null', () => {
    expect(findLatestCheckpoint(join(tempDir(), 'missing')).latest).toBeNull();
    expect(findLatestCheckpoint(tempDir()).latest).toBeNull();
  });

  it('simulated crash: files written but no marker; the folder is ignored', () => {
    const root = tempDir();
    writeCheckpoint(root, 1, files(1));
    writeCheckpoint(root, 2, files(2));
    const crashed = join(root, stepDirName(3));
    mkdirSync(crashed);
    writeFileSync(join(crashed, 'weights.bin'), 'weights of step 3');
    writeFileSync(join(crashed, 'state.json'), '{"step":3}');
    // and a staging folder and a temp file from a killed writer
    mkdirSync(join(root, '.tmp-step-000004.999.abcd'));
    writeFileSync(join(root, '.tmp-step-000004.999.abcd', 'weights.bin'), 'x');
    const { latest, rejected } = findLatestCheckpoint(root);
    expect(latest!.step).toBe(2);
    expect(rejected.map((r) => [r.step, r.error.code])).toEqual([[3, 'NO_MARKER']]);
    expect(rejected[0].error.message).toMatch(/step-000003\/COMPLETE: no completion marker/);
  });

  it('a file corrupted after the marker was written is caught by sha256; the previous checkpoint is used', () => {
    const root = tempDir();
    writeCheckpoint(root, 1, files(1));
    const ck2 = writeCheckpoint(root, 2, files(2));
    const p = join(ck2.dir, 'weights.bin');
    const b = readFileSync(p);
    b[3] ^= 0x01; // same size, one bit flipped
    writeFileSync(p, b);
    const { latest, rejected } = findLatestCheckpoint(root);
    expect(latest!.step).toBe(1);
    expect(rejected[0].error.code).toBe('HASH_MISMATCH');
    expect(rejected[0].error.fileName).toBe('weights.bin');
    expect(rejected[0].error.message).toMatch(/step-000002\/weights.bin: sha256 [0-9a-f]{64} differs/);
    // a size-only check does not see a same-size corruption; that is the documented trade-off
    expect(findLatestCheckpoint(root, { verify: 'size' }).latest!.step).toBe(2);
    expect(() => readCheckpointFile(ck2, 'weights.bin')).toThrow(/differs from the manifest/);
    expect(readCheckpointFile(findLatestCheckpoint(root).latest!, 'weights.bin').toString()).toBe('weights of step 1');
  });

  it('truncated, missing and extra files; bad manifests', () => {
    const root = tempDir();
    writeCheckpoint(root, 1, files(1));
    const c2 = writeCheckpoint(root, 2, files(2)).dir;
    const c3 = writeCheckpoint(root, 3, files(3)).dir;
    const c4 = writeCheckpoint(root, 4, files(4)).dir;
    const c5 = writeCheckpoint(root, 5, files(5)).dir;
    truncateSync(join(c2, 'weights.bin'), 5);
    rmSync(join(c3, 'state.json'));
    writeFileSync(join(c4, COMPLETE_MARKER), '{"format":"mcpc-checkpoint","version":1,"step":4,"files":[');
    writeFileSync(join(c5, COMPLETE_MARKER), readFileSync(join(c5, COMPLETE_MARKER), 'utf8').replace('"step": 5', '"step": 6'));
    const { latest, rejected } = findLatestCheckpoint(root);
    expect(latest!.step).toBe(1);
    expect(rejected.map((r) => [r.step, r.error.code])).toEqual([
      [5, 'INVALID_MANIFEST'],
      [4, 'INVALID_MANIFEST'],
      [3, 'MISSING_FILE'],
      [2, 'SIZE_MISMATCH'],
    ]);
  });

  it('manifest parsing is strict', () => {
    const ok = { format: 'mcpc-checkpoint', version: 1, step: 1, files: [{ name: 'a', bytes: 1, sha256: 'a'.repeat(64) }] };
    expect(parseManifest(JSON.stringify(ok), 'd').files).toHaveLength(1);
    const bad = (text: string) => expect(() => parseManifest(text, 'd')).toThrowError(CheckpointError);
    bad('{"format":"mcpc-checkpoint","version":1,"step":1,"files":[],"step":2}'); // duplicate key
    bad(JSON.stringify({ ...ok, version: 2 }));
    bad(JSON.stringify({ ...ok, step: -1 }));
    bad(JSON.stringify({ ...ok, files: [{ name: '../x', bytes: 1, sha256: 'a'.repeat(64) }] }));
    bad(JSON.stringify({ ...ok, files: [ok.files[0], ok.files[0]] }));
    bad(JSON.stringify({ ...ok, files: [{ name: 'a', bytes: 1.5, sha256: 'a'.repeat(64) }] }));
    bad(JSON.stringify({ ...ok, files: [{ name: 'a', bytes: 1, sha256: 'A'.repeat(64) }] }));
    bad('{"__proto__":{}}');
    bad('');
  });

  it('ignores folders that only look like checkpoints', () => {
    const root = tempDir();
    writeCheckpoint(root, 1, files(1));
    mkdirSync(join(root, 'step-12')); // not canonical (6 digits)
    mkdirSync(join(root, 'step-000099x'));
    writeFileSync(join(root, 'step-000050'), 'a file, not a folder');
    expect(steps(root)).toEqual([1]);
    expect(findLatestCheckpoint(root).latest!.step).toBe(1);
  });
});

describe('keep-last-N', () => {
  it('keeps the newest N', () => {
    const root = tempDir();
    for (let s = 1; s <= 6; s++) writeCheckpoint(root, s * 10, files(s), { keepLast: 2 });
    expect(steps(root)).toEqual([50, 60]);
    expect(readdirSync(root).sort()).toEqual(['step-000050', 'step-000060']);
  });

  it('a broken checkpoint does not count toward N, so a good older one survives', () => {
    const root = tempDir();
    writeCheckpoint(root, 1, files(1));
    writeCheckpoint(root, 2, files(2));
    const c3 = writeCheckpoint(root, 3, files(3)).dir;
    truncateSync(join(c3, 'weights.bin'), 1);
    writeCheckpoint(root, 4, files(4), { keepLast: 2 });
    // kept: 4 (just written) and 2 (newest valid before it); 3 is newer than 2 and left alone; 1 removed
    expect(steps(root)).toEqual([2, 3, 4]);
  });

  it('never removes the only complete checkpoint, and never the one just written', () => {
    const root = tempDir();
    writeCheckpoint(root, 7, files(7));
    const crashed = join(root, stepDirName(8));
    mkdirSync(crashed); // incomplete and newer
    expect(pruneCheckpoints(root, 1)).toEqual([]);
    expect(steps(root)).toEqual([7, 8]);
    // writing an older step than the newest (a restart from scratch) keeps what was written
    writeCheckpoint(root, 3, files(3), { keepLast: 1 });
    expect(findLatestCheckpoint(root).latest!.step).toBe(7);
    expect(existsSync(join(root, stepDirName(3)))).toBe(true);
  });

  it('cleans trash and stale staging folders left by a crash', () => {
    const root = tempDir();
    writeCheckpoint(root, 1, files(1));
    mkdirSync(join(root, '.trash-step-000000.dead'));
    mkdirSync(join(root, '.tmp-step-000002.999999.beef'));
    writeCheckpoint(root, 2, files(2), { keepLast: 5 });
    expect(readdirSync(root).sort()).toEqual(['step-000001', 'step-000002']);
  });

  it('keepLast must be >= 1', () => {
    expect(() => writeCheckpoint(tempDir(), 1, files(1), { keepLast: 0 })).toThrow(/keepLast/);
  });
});

describe('kill -9 while writing checkpoints', () => {
  const writer = fileURLToPath(new URL('./fixtures/checkpoint-writer.ts', import.meta.url));

  /** Starts the writer, waits until it has finished `afterDone` checkpoints plus a random delay, kills it. */
  function runAndKill(root: string, from: number, afterDone: number, delayMs: number): Promise<number> {
    return new Promise((resolve, reject) => {
      const child = spawn(process.execPath, ['--import', 'tsx', writer, root, String(from)], { stdio: ['ignore', 'pipe', 'pipe'] });
      let lastDone = from - 1;
      let killed = false;
      let stderr = '';
      child.stderr.on('data', (d) => (stderr += d));
      child.stdout.on('data', (d: Buffer) => {
        for (const m of d.toString().matchAll(/done (\d+)/g)) lastDone = Number(m[1]);
        if (!killed && lastDone >= from - 1 + afterDone) {
          killed = true;
          setTimeout(() => child.kill('SIGKILL'), delayMs);
        }
      });
      child.on('exit', (code, signal) => {
        if (signal === 'SIGKILL') resolve(lastDone);
        else reject(new Error(`writer exited with ${code}: ${stderr}`));
      });
    });
  }

  it('after each kill the newest complete checkpoint is intact and no half-written step folder exists', async () => {
    const root = tempDir();
    let from = 1;
    const delays = [0, 5, 13, 29, 41];
    for (const delay of delays) {
      const lastDone = await runAndKill(root, from, 1, delay);
      const { latest, rejected } = findLatestCheckpoint(root);
      expect(rejected).toEqual([]); // the folder rename is atomic: no step-N without a valid marker
      expect(latest).not.toBeNull();
      expect(latest!.step).toBeGreaterThanOrEqual(lastDone);
      expect(readCheckpointFile(latest!, 'model.safetensors').equals(Buffer.from(contentFor(latest!.step, 0)))).toBe(true);
      const opt = readCheckpointFile(latest!, 'optimizer.bin');
      expect(opt.equals(Buffer.concat([contentFor(latest!.step, 1), contentFor(latest!.step, 2)]))).toBe(true);
      expect(JSON.parse(readCheckpointFile(latest!, 'state.json').toString())).toEqual({ step: latest!.step, cursor: latest!.step * 3 });
      // keepLast 3 is honoured (the kill may land between the rename and the prune: one extra)
      expect(listCheckpoints(root).length).toBeLessThanOrEqual(4);
      from = latest!.step + 1; // resume after the newest complete checkpoint
    }
  }, 120_000);
});
