/** `malformed`: the bytes contradict their own format. `unsupported`: a format that can carry metadata Outrider cannot remove. */
export type MetadataFailure = 'malformed' | 'unsupported';

/**
 * Why a file cannot be stored with its metadata removed: the upload is refused (HTTP 422, as
 * Workhorse answers "Failed to process image" when exiftool fails). It names what failed, never an
 * HTTP status: `proxy/errors.ts` maps it.
 */
export class MetadataError extends Error {
  override name = 'MetadataError';
  readonly code = 'EDGE_METADATA_UNREMOVABLE';
  readonly reason: MetadataFailure;
  constructor(reason: MetadataFailure, message: string, options?: ErrorOptions) {
    super(message, options);
    this.reason = reason;
  }
}

export const malformed = (message: string) => new MetadataError('malformed', message);
export const unsupported = (message: string) => new MetadataError('unsupported', message);
