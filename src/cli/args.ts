/** Command-line parsing on node:util's parseArgs, with errors turned into usage errors (exit 2). */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { UsageError } from './io.js';

export function parse<T extends NonNullable<ParseArgsConfig['options']>>(argv: string[], options: T) {
  try {
    return parseArgs({ args: argv, options, allowPositionals: true, strict: true });
  } catch (err) {
    throw new UsageError((err as Error).message.replace(/^TypeError \[\w+\]: /, ''));
  }
}

/** The most a whole-number flag takes unless it says otherwise (larger numbers lose digits in JavaScript). */
export const MAX_INT_OPTION = Number.MAX_SAFE_INTEGER;

/**
 * A whole-number flag, `min` to `max` inclusive (default 0 to 2^53 - 1); anything else is a usage error that
 * names the flag, the range and what was given.
 */
export function intOption(value: string | undefined, name: string, range: { min?: number; max?: number } = {}): number | undefined {
  if (value === undefined) return undefined;
  const min = range.min ?? 0;
  const max = range.max ?? MAX_INT_OPTION;
  const between = max === MAX_INT_OPTION ? `${min} or more` : `from ${min} to ${max}`;
  const shown = value.length > 40 ? `${value.slice(0, 40)}...` : value;
  const n = Number(value);
  if (!/^\d+$/.test(value) || n < min || n > max) throw new UsageError(`${name} takes a whole number ${between} (got '${shown}')`);
  return n;
}
