/** Why a token or an upload's fields were refused. */
export type VerificationCode =
  /** The header or field is not there (the request did not come through Outrider). */
  | 'EDGE_VERIFY_MISSING'
  /** The request came through Outrider, but no file was sent in a field that needs one (an empty file input). */
  | 'EDGE_VERIFY_NO_FILE'
  /** Not a three-part HS256 JWT, claims that are not an object, or a claim of the wrong type. */
  | 'EDGE_VERIFY_MALFORMED'
  /** The signature does not match: tampered with, or signed with another secret. */
  | 'EDGE_VERIFY_SIGNATURE'
  /** Signed, but `iss` is not "gitlab-workhorse". */
  | 'EDGE_VERIFY_ISSUER'
  /** `iat` is missing, older than the allowed age or too far in the future. */
  | 'EDGE_VERIFY_EXPIRED'
  /** A plain field differs from its signed value, or is there twice. */
  | 'EDGE_VERIFY_MISMATCH'
  /** A file path is not inside the `tempPath` the backend handed out. */
  | 'EDGE_VERIFY_OUTSIDE'
  /** The form is larger than `readFields` allows. */
  | 'EDGE_VERIFY_TOO_LARGE';

/**
 * A request that does not prove it came through Outrider. `statusCode` is what to answer:
 * 401 for `verifyApiRequest`, 400 for upload fields, 413 for a form over `readFields`' limit.
 * The message names what is wrong, never a secret or a token.
 */
export class OutriderVerificationError extends Error {
  override name = 'OutriderVerificationError';
  readonly code: VerificationCode;
  readonly statusCode: number;

  constructor(code: VerificationCode, message: string, options: { statusCode?: number; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.statusCode = options.statusCode ?? 400;
  }
}

/** Why a secret file cannot be used. */
export type SecretCode = 'EDGE_SECRET_UNREADABLE' | 'EDGE_SECRET_INVALID';

/** A secret file that cannot be read, or is not the base64 of 32 bytes. The secret never appears in the message. */
export class OutriderSecretError extends Error {
  override name = 'OutriderSecretError';
  readonly code: SecretCode;

  constructor(code: SecretCode, message: string, options: { cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
  }
}
