/**
 * Why an upload could not be stored: the body is too large or malformed (the client's doing), the
 * store did not answer in time, the local disk failed (Outrider's own fault), or object storage
 * failed (an upstream's). It names what failed, never an HTTP status: `proxy/errors.ts` maps it.
 */
export type StoreFailure = 'too-large' | 'invalid' | 'timeout' | 'disk' | 'object-storage';

export class StoreError extends Error {
  override name = 'StoreError';
  readonly reason: StoreFailure;
  constructor(reason: StoreFailure, message: string, options?: ErrorOptions) {
    super(message, options);
    this.reason = reason;
  }
}
