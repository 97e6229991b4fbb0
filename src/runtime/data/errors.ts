/**
 * The one error the data pipeline throws on bad input. It names the file and the 1-based line, says what is
 * wrong and, where it can, what to do. With `skipBadRecords` the same objects are returned as warnings.
 */

export class DataError extends Error {
  constructor(
    /** The file as the user named it (relative to the project root when it is inside). */
    readonly file: string,
    /** 1-based line; 0 when the problem is the file as a whole (missing, unreadable). */
    readonly line: number,
    /** What is wrong, without the location. */
    readonly problem: string,
  ) {
    super(line > 0 ? `${file}:${line}: ${problem}` : `${file}: ${problem}`);
    this.name = 'DataError';
  }
}
