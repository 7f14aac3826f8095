import { createHmac, timingSafeEqual } from 'node:crypto';
import { OutriderVerificationError } from './errors.js';

/** The issuer of every token Outrider (and GitLab Workhorse) signs: Workhorse's `DefaultClaims`. */
export const ISSUER = 'gitlab-workhorse';

const HEADER = Buffer.from(JSON.stringify({ alg: 'HS256', typ: 'JWT' })).toString('base64url');

/** Signs `claims` as an HS256 JSON Web Token (RFC 7519) with the shared 32-byte secret. */
export function signJwt(claims: Record<string, unknown>, secret: Buffer): string {
  const body = `${HEADER}.${Buffer.from(JSON.stringify(claims)).toString('base64url')}`;
  return `${body}.${createHmac('sha256', secret).update(body).digest('base64url')}`;
}

export interface VerifyJwtOptions {
  /** The `iss` the claims must carry; `null` skips the check. Default "gitlab-workhorse". */
  issuer?: string | null;
  /** The status a refusal suggests (`OutriderVerificationError.statusCode`). Default 400. */
  statusCode?: number;
}

/**
 * Checks an HS256 token's signature in constant time and returns its claims. Only HS256 is
 * accepted (never `none`, never another algorithm), and the signature is compared as canonical
 * base64url text: base64url decoding is lenient (padding, trailing bits), the canonical form is not.
 * Throws `OutriderVerificationError` (`EDGE_VERIFY_MALFORMED`, `EDGE_VERIFY_SIGNATURE`, `EDGE_VERIFY_ISSUER`).
 */
export function verifyJwt(token: string, secret: Buffer, options: VerifyJwtOptions = {}): Record<string, unknown> {
  const statusCode = options.statusCode ?? 400;
  const refuse = (code: 'EDGE_VERIFY_MALFORMED' | 'EDGE_VERIFY_SIGNATURE' | 'EDGE_VERIFY_ISSUER', message: string) =>
    new OutriderVerificationError(code, message, { statusCode });
  const parts = token.split('.');
  if (parts.length !== 3) throw refuse('EDGE_VERIFY_MALFORMED', 'not a JWT');
  const [header, payload, signature] = parts as [string, string, string];
  // The signature first: nothing of a token is read before it is known to come from a secret holder.
  const expected = Buffer.from(createHmac('sha256', secret).update(`${header}.${payload}`).digest('base64url'));
  const given = Buffer.from(signature);
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
    throw refuse('EDGE_VERIFY_SIGNATURE', 'bad signature: tampered with, or signed with another secret');
  }
  let alg: unknown;
  let claims: unknown;
  try {
    alg = (JSON.parse(Buffer.from(header, 'base64url').toString('utf8')) as { alg?: unknown }).alg;
    claims = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8'));
  } catch {
    throw refuse('EDGE_VERIFY_MALFORMED', 'not a JWT');
  }
  if (alg !== 'HS256') throw refuse('EDGE_VERIFY_MALFORMED', 'not an HS256 token');
  if (typeof claims !== 'object' || claims === null || Array.isArray(claims))
    throw refuse('EDGE_VERIFY_MALFORMED', 'claims are not an object');
  const issuer = options.issuer === undefined ? ISSUER : options.issuer;
  if (issuer !== null && (claims as { iss?: unknown }).iss !== issuer)
    throw refuse('EDGE_VERIFY_ISSUER', `the token was not issued by "${issuer}"`);
  return claims as Record<string, unknown>;
}
