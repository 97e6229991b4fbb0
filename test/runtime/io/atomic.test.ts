import { afterAll, describe, expect, it } from 'vitest';
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { AtomicWriteError, isTempName, writeFileAtomicSync } from '../../../src/runtime/io/atomic.js';
import { removeTempDirs, tempDir } from './helpers.js';

afterAll(removeTempDirs);

describe('writeFileAtomicSync', () => {
  it('writes strings, typed arrays and chunk lists; leaves no temp file', () => {
    const dir = tempDir();
    writeFileAtomicSync(join(dir, 'a.txt'), 'héllo');
    writeFileAtomicSync(join(dir, 'b.bin'), Float32Array.from([1, 2]));
    writeFileAtomicSync(join(dir, 'c.bin'), [Uint8Array.from([1, 2]), new Uint8Array(0), Uint8Array.from([3])]);
    expect(readFileSync(join(dir, 'a.txt'), 'utf8')).toBe('héllo');
    expect([...readFileSync(join(dir, 'b.bin'))]).toEqual([0, 0, 0x80, 0x3f, 0, 0, 0, 0x40]);
    expect([...readFileSync(join(dir, 'c.bin'))]).toEqual([1, 2, 3]);
    expect(readdirSync(dir).sort()).toEqual(['a.txt', 'b.bin', 'c.bin']);
  });

  it('replaces an existing file', () => {
    const dir = tempDir();
    const p = join(dir, 'f');
    writeFileSync(p, 'old');
    writeFileAtomicSync(p, 'new');
    expect(readFileSync(p, 'utf8')).toBe('new');
  });

  it('a failure midway (simulated crash in the writer) keeps the old file and removes the temp file', () => {
    const dir = tempDir();
    const p = join(dir, 'f');
    writeFileSync(p, 'old content');
    function* failing() {
      yield Buffer.from('partial new content');
      throw new Error('disk on fire');
    }
    expect(() => writeFileAtomicSync(p, failing())).toThrowError(AtomicWriteError);
    expect(() => writeFileAtomicSync(p, failing())).toThrow(/disk on fire/);
    expect(readFileSync(p, 'utf8')).toBe('old content');
    expect(readdirSync(dir)).toEqual(['f']);
  });

  it('a missing folder is an AtomicWriteError naming the file', () => {
    const dir = tempDir();
    const p = join(dir, 'no', 'such', 'f');
    expect(() => writeFileAtomicSync(p, 'x')).toThrow(new RegExp(`^${p.replace(/[/\\.]/g, '\\$&')}: atomic write failed`));
  });

  it('the target being a folder fails cleanly', () => {
    const dir = tempDir();
    mkdirSync(join(dir, 'd'));
    writeFileSync(join(dir, 'd', 'keep'), 'x');
    expect(() => writeFileAtomicSync(join(dir, 'd'), 'x')).toThrowError(AtomicWriteError);
    expect(existsSync(join(dir, 'd', 'keep'))).toBe(true);
    expect(readdirSync(dir).filter(isTempName)).toEqual([]);
  });
});
