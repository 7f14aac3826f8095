export type ScaleErrorCode = 'EDGE_DIRECTIVE_INVALID' | 'EDGE_SOURCE_UNAVAILABLE';

/** The only error the scaler throws: a directive it cannot act on, or a source it cannot read. */
export class ScaleError extends Error {
  override name = 'ScaleError';
  readonly code: ScaleErrorCode;

  constructor(code: ScaleErrorCode, message: string, options?: ErrorOptions) {
    super(message, options);
    this.code = code;
  }
}
