import type { IncomingMessage } from 'node:http';
import { SENDFILE_HEADER } from '../../protocol/headers.js';
import {
  connectionTokens,
  FORWARDED_FOR,
  PROXY_START,
  REQUEST_ID,
  REQUEST_STRIPPED,
  SENDFILE_TYPE,
  WORKHORSE,
  withoutNamed,
} from './headers.js';

/**
 * The client's headers minus hop-by-hop and spoofable ones, plus what the backend expects from
 * Workhorse; and whether a body follows, read from the same scan (Node's `req.headers` object is
 * built lazily, and never needed here).
 */
export function requestHeaders(
  req: IncomingMessage,
  peer: string,
  requestId: string,
  version: string,
): { list: string[]; hasBody: boolean; invalid: string | undefined } {
  const raw = req.rawHeaders;
  const out: string[] = [];
  let forwardedFor: string | undefined;
  let connection: string | undefined;
  let hasBody = false;
  let contentTypes = 0;
  let hosts = 0;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as string;
    const value = raw[i + 1] as string;
    const lower = name.toLowerCase();
    if (lower === 'content-type') contentTypes++;
    else if (lower === 'host') hosts++;
    if (REQUEST_STRIPPED.has(lower)) {
      if (lower === FORWARDED_FOR) forwardedFor = forwardedFor === undefined ? value : `${forwardedFor}, ${value}`;
      else if (lower === 'connection') connection = connection === undefined ? value : `${connection}, ${value}`;
      else if (lower === 'transfer-encoding') hasBody = true;
      continue;
    }
    if (lower === 'content-length' && value !== '0') hasBody = true;
    out.push(name, value);
  }
  const filtered = connection === undefined ? out : withoutNamed(out, connectionTokens(connection));
  // Lower-case names: undici validates them without lower-casing again (HTTP names are case-insensitive).
  filtered.push(
    FORWARDED_FOR,
    forwardedFor === undefined ? peer : `${forwardedFor}, ${peer}`,
    WORKHORSE,
    version,
    PROXY_START,
    `${Date.now()}000000`,
    SENDFILE_TYPE,
    SENDFILE_HEADER,
    REQUEST_ID,
    requestId,
  );
  return {
    list: filtered,
    hasBody,
    invalid: duplicated(contentTypes, hosts),
  };
}

/**
 * Headers a request may carry once only (RFC 9110 §8.3, RFC 9112 §3.2) whose copies would be read
 * differently by Outrider and the backend: Outrider judges an upload route by the first
 * Content-Type, a backend may read the last. Such a request is refused (400), as nginx does for
 * two Host headers and Workhorse's Go server for neither.
 */
export function duplicateSingleton(req: IncomingMessage): string | undefined {
  const raw = req.rawHeaders;
  let contentTypes = 0;
  let hosts = 0;
  for (let i = 0; i < raw.length; i += 2) {
    const lower = (raw[i] as string).toLowerCase();
    if (lower === 'content-type') contentTypes++;
    else if (lower === 'host') hosts++;
  }
  return duplicated(contentTypes, hosts);
}

/** What is wrong with a request that has these many Content-Type and Host headers, if anything. */
function duplicated(contentTypes: number, hosts: number): string | undefined {
  const name = contentTypes > 1 ? 'Content-Type' : hosts > 1 ? 'Host' : undefined;
  return name === undefined ? undefined : `the request has more than one ${name} header`;
}

/** What describes a request body, replaced with the body itself. */
export const BODY_HEADERS = ['content-type', 'content-length', 'content-encoding', 'content-md5'];
