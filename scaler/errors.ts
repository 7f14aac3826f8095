/** What the scaler could not do: act on a directive, or read a source. */
export type ScaleErrorCode = 'EDGE_DIRECTIVE_INVALID' | 'EDGE_SOURCE_UNAVAILABLE';

/**
 * The only error the scaler throws. Its code names what failed, never an HTTP status: the one
 * switch in `proxy/errors.ts` maps it to the catalogue error of the same code.
 */
export class ScaleError extends Error {
  override name = 'ScaleError';
  readonly code: ScaleErrorCode;

  constructor(code: ScaleErrorCode, message: string, options?: ErrorOptions) {
    super(message, options);
    this.code = code;
  }
}
