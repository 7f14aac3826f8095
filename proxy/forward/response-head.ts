import type { ResponseHead } from '../intercept/types.js';
import { connectionTokens, DETECT_CONTENT_TYPE, RESPONSE_STRIPPED, SEND_DATA, SENDFILE, withoutNamed } from './headers.js';

/** Copies the backend's response head, dropping hop-by-hop headers and setting instruction headers apart. */
export function readHead(statusCode: number, raw: Buffer[], statusMessage: string): ResponseHead {
  const head: ResponseHead = {
    statusCode,
    statusMessage,
    headers: [],
    contentType: undefined,
    sendData: undefined,
    sendfile: undefined,
    detectContentType: false,
    hasLength: false,
  };
  let connection: string | undefined;
  for (let i = 0; i < raw.length; i += 2) {
    const name = (raw[i] as Buffer).toString('latin1');
    const value = (raw[i + 1] as Buffer).toString('latin1');
    const lower = name.toLowerCase();
    if (RESPONSE_STRIPPED.has(lower)) {
      if (lower === SEND_DATA) head.sendData = value;
      else if (lower === SENDFILE) head.sendfile = value;
      else if (lower === DETECT_CONTENT_TYPE) head.detectContentType = value.toLowerCase() === 'true';
      else if (lower === 'connection') connection = connection === undefined ? value : `${connection}, ${value}`;
      continue;
    }
    // The first Content-Type is the one that counts (as Go's Header.Get in Workhorse).
    if (lower === 'content-type' && head.contentType === undefined) head.contentType = value;
    else if (lower === 'content-length') head.hasLength = true;
    head.headers.push(name, value);
  }
  if (connection !== undefined) head.headers = withoutNamed(head.headers, connectionTokens(connection));
  return head;
}
