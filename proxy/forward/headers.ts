import type { IncomingMessage } from 'node:http';
import {
  API_REQUEST_HEADER,
  DETECT_CONTENT_TYPE_HEADER,
  MULTIPART_FIELDS_HEADER,
  PROXY_START_HEADER,
  SEND_DATA_HEADER,
  SENDFILE_HEADER,
  SENDFILE_TYPE_HEADER,
  WORKHORSE_HEADER,
} from '../../protocol/headers.js';

/** The protocol's header names lower-cased, as Node and undici see them. */
export const SEND_DATA = SEND_DATA_HEADER.toLowerCase();
export const SENDFILE = SENDFILE_HEADER.toLowerCase();
export const DETECT_CONTENT_TYPE = DETECT_CONTENT_TYPE_HEADER.toLowerCase();
export const MULTIPART_FIELDS = MULTIPART_FIELDS_HEADER.toLowerCase();
export const API_REQUEST = API_REQUEST_HEADER.toLowerCase();
export const WORKHORSE = WORKHORSE_HEADER.toLowerCase();
export const PROXY_START = PROXY_START_HEADER.toLowerCase();
export const SENDFILE_TYPE = SENDFILE_TYPE_HEADER.toLowerCase();
export const REQUEST_ID = 'x-request-id';
export const FORWARDED_FOR = 'x-forwarded-for';

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
  // HTTP/2's upgrade settings (RFC 7540 §3.2.1): for one connection only.
  'http2-settings',
]);

/**
 * Request headers the client may not set: the ones Outrider sets itself (the backend trusts them),
 * the rewritten-upload fields header, and `Expect` (a 100-continue is Outrider's to handle: the
 * upload stage answers it, or `continue.ts` sends its own to the backend).
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

export function withoutNamed(headers: string[], names: readonly string[]): string[] {
  if (names.length === 0) return headers;
  const out: string[] = [];
  for (let i = 0; i < headers.length; i += 2) {
    if (!names.includes((headers[i] as string).toLowerCase())) out.push(headers[i] as string, headers[i + 1] as string);
  }
  return out;
}

/** The first value of `lowerName` in a flat [name, value, …] list, or undefined. */
export function headerValue(headers: readonly string[], lowerName: string): string | undefined {
  for (let i = 0; i < headers.length; i += 2) {
    if ((headers[i] as string).toLowerCase() === lowerName) return headers[i + 1] as string;
  }
  return undefined;
}
