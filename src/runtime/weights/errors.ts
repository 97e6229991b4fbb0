/** Errors of weight loading, saving and export: each names the file (and the tensor when one is at fault). */

export type WeightsErrorCode =
  | 'IO'
  | 'NO_WEIGHTS'
  | 'BAD_CONFIG'
  | 'CONFIG_MISMATCH'
  | 'MISSING_TENSOR'
  | 'UNEXPECTED_TENSOR'
  | 'SHAPE_MISMATCH'
  | 'BAD_DTYPE'
  | 'MISSING_PARAMETER'
  | 'UNKNOWN_ADAPTER'
  | 'NOT_EXPORTABLE'
  | 'BAD_ADAPTER'
  | 'PLAN';

export class WeightsError extends Error {
  constructor(
    readonly code: WeightsErrorCode,
    /** The file at fault, or `(plan)` / `(parameters)` for problems of the plan or of the parameter map. */
    readonly file: string,
    readonly detail: string,
    readonly tensor?: string,
  ) {
    super(`${file}: ${tensor !== undefined ? `tensor ${JSON.stringify(tensor)}: ` : ''}${detail}`);
    this.name = 'WeightsError';
  }
}
