import type { IncomingMessage } from 'node:http';

/** Header names, lower-case as Node and undici see them. */

export const SEND_DATA = 'gitlab-workhorse-send-data';
export const SENDFILE = 'x-sendfile';
export const DETECT_CONTENT_TYPE = 'gitlab-workhorse-detect-content-type';
export const MULTIPART_FIELDS = 'gitlab-workhorse-multipart-fields';
export const WORKHORSE = 'gitlab-workhorse';
export const PROXY_START = 'gitlab-workhorse-proxy-start';
export const SENDFILE_TYPE = 'x-sendfile-type';
export const REQUEST_ID = 'x-request-id';
export const FORWARDED_FOR = 'x-forwarded-for';
export const API_CONTENT_TYPE = 'application/vnd.gitlab-workhorse+json';

/** RFC 9110 §7.6.1 hop-by-hop headers, plus the legacy Proxy-Connection. Dropped both ways. */
export const HOP_BY_HOP: ReadonlySet<string> = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
]);

/**
 * Request headers the client may not set: the ones Outrider sets itself (the backend trusts them),
 * the rewritten-upload fields header, and `Expect` (Node answers 100-continue itself).
 */
export const REQUEST_STRIPPED: ReadonlySet<string> = new Set([
  ...HOP_BY_HOP,
  MULTIPART_FIELDS,
  WORKHORSE,
  PROXY_START,
  SENDFILE_TYPE,
  REQUEST_ID,
  FORWARDED_FOR,
  'expect',
]);

/** Response headers that are instructions to Outrider and never reach a client. */
export const RESPONSE_STRIPPED: ReadonlySet<string> = new Set([...HOP_BY_HOP, SEND_DATA, SENDFILE, DETECT_CONTENT_TYPE]);

/**
 * The first value of the request header `lowerName`, as `req.headers[lowerName]` gives it for
 * single-valued headers, read from the raw list: asking `req.headers` builds an object of every
 * header first.
 */
export function rawHeader(req: IncomingMessage, lowerName: string): string | undefined {
  const raw = req.rawHeaders;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as string;
    if (name.length === lowerName.length && name.toLowerCase() === lowerName) return raw[i + 1];
  }
  return undefined;
}

/** Header names listed in a Connection header value (RFC 9110 §7.6.1), lower-case. */
export function connectionTokens(value: string): string[] {
  const out: string[] = [];
  if (value.length <= 10) {
    const v = value.toLowerCase();
    if (v === 'keep-alive' || v === 'close') return out;
  }
  for (const token of value.split(',')) {
    const t = token.trim().toLowerCase();
    if (t !== '' && t !== 'close' && t !== 'keep-alive') out.push(t);
  }
  return out;
}
