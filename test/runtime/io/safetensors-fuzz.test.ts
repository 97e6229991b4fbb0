/**
 * Fuzzing the safetensors reader: on any input it either returns a header whose every tensor is in
 * bounds with the right size, or throws a SafetensorsError; never any other exception, never a hang,
 * and never a read (the only place it allocates in proportion to the file) beyond the file's size.
 *
 * Allocation guard: all bytes come through a counting ByteSource. The reader asks for the 8-byte
 * prefix, then (after checking N <= 100 MB and N <= size - 8) for the N header bytes, then only for
 * tensor ranges that validation proved lie inside the file. The test checks every request is inside
 * the file and that the total requested never exceeds the file size.
 *
 * MCPC_FUZZ_RUNS sets the inputs per property (default 4000, 4 properties); MCPC_FUZZ_REPORT=1
 * prints how many inputs ended in each error code.
 */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import {
  SafetensorsError,
  SafetensorsReader,
  dtypeSize,
  encodeSafetensors,
  type ByteSource,
} from '../../../src/runtime/io/safetensors.js';
import { makeFilesArb } from './helpers.js';
import { INTERESTING_U64, applyEdits, editArb, mutate, mutationArb, withPrefix } from './fuzz-gen.js';

/** Small tensors: the fuzzing is about headers; data only needs to exist. */
const filesArb = makeFilesArb(3, 3, 6);

export const FUZZ_RUNS = Number(process.env.MCPC_FUZZ_RUNS ?? 4000);

interface Outcome {
  ok: boolean;
  code?: string;
}

function countingSource(bytes: Uint8Array): ByteSource & { requested: number } {
  const src = {
    name: 'fuzz.safetensors',
    size: bytes.length,
    requested: 0,
    read(offset: number, length: number): Uint8Array {
      if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > bytes.length) {
        throw new Error(`read outside the file: offset ${offset}, length ${length}, size ${bytes.length}`);
      }
      src.requested += length;
      if (src.requested > bytes.length) throw new Error(`requested ${src.requested} bytes from a ${bytes.length}-byte file`);
      // a copy, as a file read would allocate one
      return bytes.slice(offset, offset + length);
    },
  };
  return src;
}

/** Runs the reader on `bytes`; throws (fails the test) on anything but a SafetensorsError. */
function probe(bytes: Uint8Array): Outcome {
  const src = countingSource(bytes);
  let r: SafetensorsReader;
  try {
    r = SafetensorsReader.fromSource(src);
  } catch (e) {
    if (e instanceof SafetensorsError) {
      if (!e.message.startsWith('fuzz.safetensors: ')) throw new Error(`message does not name the file: ${e.message}`);
      return { ok: false, code: e.code };
    }
    throw e;
  }
  // Accepted: every invariant must hold, and reading every tensor stays inside the file.
  let covered = 0;
  for (const t of r.header.tensors) {
    const raw = r.readRaw(t.name);
    const numel = t.shape.reduce((a, b) => a * b, 1);
    if (raw.data.length !== numel * dtypeSize(t.dtype)) throw new Error(`size invariant broken for ${t.name}`);
    if (t.begin !== covered) throw new Error('contiguity invariant broken');
    covered = t.end;
  }
  if (r.header.dataStart + covered !== bytes.length) throw new Error('coverage invariant broken');
  if (src.requested > bytes.length) throw new Error('over-read');
  return { ok: true };
}

describe('fuzz: the reader only ever throws SafetensorsError and never reads past the file', () => {
  const tally = new Map<string, number>();
  const record = (o: Outcome) => tally.set(o.ok ? 'accepted' : o.code!, (tally.get(o.ok ? 'accepted' : o.code!) ?? 0) + 1);

  it('random bytes', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 300 }), (b) => { record(probe(b)); }), { numRuns: FUZZ_RUNS });
  });

  it('a plausible length prefix and JSON-ish random text', () => {
    const jsonish = fc.string({ unit: fc.constantFrom(...'{}[]":,0123456789 -.eEaFUIB_\\u'.split('')), maxLength: 120 });
    fc.assert(
      fc.property(jsonish, fc.uint8Array({ maxLength: 64 }), fc.option(fc.constantFrom(...INTERESTING_U64)), (text, data, n) => {
        const h = Buffer.from(text, 'utf8');
        record(probe(withPrefix(h, data, n ?? BigInt(h.length))));
      }),
      { numRuns: FUZZ_RUNS },
    );
  });

  it('byte-level mutations of valid files', () => {
    fc.assert(
      fc.property(filesArb, fc.array(mutationArb, { minLength: 1, maxLength: 4 }), ({ tensors, metadata }, muts) => {
        const valid = encodeSafetensors(new Map(tensors), metadata);
        expect(probe(valid).ok).toBe(true);
        record(probe(mutate(valid, muts)));
      }),
      { numRuns: FUZZ_RUNS },
    );
  });

  it('structural mutations of valid headers (still JSON)', () => {
    fc.assert(
      fc.property(filesArb, fc.array(editArb, { minLength: 1, maxLength: 3 }), ({ tensors, metadata }, edits) => {
        const valid = encodeSafetensors(new Map(tensors), metadata);
        record(probe(applyEdits(valid, edits)));
      }),
      { numRuns: FUZZ_RUNS },
    );
  });

  it('reached the deep checks, not just the first ones', () => {
    // Each of these codes must have come up at least once among the inputs above.
    for (const code of ['accepted', 'FILE_TOO_SMALL', 'HEADER_TOO_LARGE', 'TRUNCATED', 'INVALID_JSON', 'DUPLICATE_NAME',
      'FORBIDDEN_NAME', 'UNKNOWN_DTYPE', 'INVALID_SHAPE', 'OUT_OF_BOUNDS', 'SIZE_MISMATCH', 'OVERLAP', 'GAP', 'INVALID_METADATA', 'INVALID_ENTRY']) {
      expect(tally.get(code) ?? 0, `${code} never reached; tally: ${JSON.stringify(Object.fromEntries(tally))}`).toBeGreaterThan(0);
    }
    if (process.env.MCPC_FUZZ_REPORT) console.log(JSON.stringify(Object.fromEntries([...tally].sort())));
  });
});
