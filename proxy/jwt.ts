import { createHmac, timingSafeEqual } from 'node:crypto';

/** The issuer of every token Outrider signs, as Workhorse's `DefaultClaims`. */
export const ISSUER = 'gitlab-workhorse';

const HEADER = Buffer.from(JSON.stringify({ alg: 'HS256', typ: 'JWT' })).toString('base64url');

/** Signs `claims` as an HS256 JSON Web Token (RFC 7519) with the shared 32-byte secret. */
export function signJwt(claims: Record<string, unknown>, secret: Buffer): string {
  const body = `${HEADER}.${Buffer.from(JSON.stringify(claims)).toString('base64url')}`;
  return `${body}.${createHmac('sha256', secret).update(body).digest('base64url')}`;
}

/** A token that is malformed, not HS256, or whose signature does not match. */
export class JwtError extends Error {
  override name = 'JwtError';
}

/** Checks an HS256 token's signature in constant time and returns its claims. */
export function verifyJwt(token: string, secret: Buffer): Record<string, unknown> {
  const parts = token.split('.');
  if (parts.length !== 3) throw new JwtError('not a JWT');
  const [header, payload, signature] = parts as [string, string, string];
  let alg: unknown;
  let claims: unknown;
  try {
    alg = (JSON.parse(Buffer.from(header, 'base64url').toString('utf8')) as { alg?: unknown }).alg;
    claims = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8'));
  } catch {
    throw new JwtError('not a JWT');
  }
  if (alg !== 'HS256') throw new JwtError('not an HS256 token');
  // Compared as text: base64url decoding is lenient (padding, trailing bits), the canonical form is not.
  const expected = Buffer.from(createHmac('sha256', secret).update(`${header}.${payload}`).digest('base64url'));
  const given = Buffer.from(signature);
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) throw new JwtError('bad signature');
  if (typeof claims !== 'object' || claims === null || Array.isArray(claims)) throw new JwtError('claims are not an object');
  return claims as Record<string, unknown>;
}
