import { isAbsolute } from 'node:path';
import { DETECT_CONTENT_TYPE_HEADER, SEND_DATA_HEADER, SENDFILE_HEADER } from '../protocol/headers.js';
import { encodeSendData, SCALED_IMG_PREFIX, SEND_URL_PREFIX } from '../protocol/send-data.js';

/** A response header that hands work to Outrider: set it on a 200 with an empty body. */
export interface OutriderHeader {
  readonly name: string;
  readonly value: string;
}

export { DETECT_CONTENT_TYPE_HEADER, SEND_DATA_HEADER, SENDFILE_HEADER };

export interface ScaledImageOptions {
  /** An absolute path, or an `http(s)://` URL Outrider fetches (through its `[outbound]` network policy). */
  location: string;
  /**
   * The width to scale to, an integer from 1 to Outrider's `[image_resizer] max_width` (4096 by
   * default). Above it the directive is invalid and Outrider answers 502, as Workhorse fails an
   * invalid directive. At or above the original's own width the original is served as it is.
   */
  width: number;
  /** The image's type, as Workhorse requires it: `image/png` or `image/jpeg`. */
  contentType: string;
  /**
   * Keep the source's format (PNG stays PNG) whatever the client accepts: for an image that is
   * downloaded or processed further. Default false: Outrider may answer in WebP or AVIF when the
   * request's Accept asks for it and `[image_resizer] formats` allows it, with `Vary: Accept`.
   */
  keepFormat?: boolean;
}

/**
 * `Gitlab-Workhorse-Send-Data: send-scaled-img:…`: Outrider scales the image at `location` to
 * `width` (or serves the original when scaling would not help) and answers revalidations with 304.
 */
export function sendScaledImage({ location, width, contentType, keepFormat = false }: ScaledImageOptions): OutriderHeader {
  if (!isAbsolute(location) && !/^https?:\/\//i.test(location)) {
    throw new TypeError(`sendScaledImage: location must be an absolute path or an http(s) URL, got ${JSON.stringify(location)}`);
  }
  if (!Number.isInteger(width) || width < 1) throw new RangeError(`sendScaledImage: width must be an integer of at least 1, got ${width}`);
  if (contentType === '') throw new TypeError('sendScaledImage: contentType must be set');
  if (typeof keepFormat !== 'boolean')
    throw new TypeError(`sendScaledImage: keepFormat must be true or false, got ${JSON.stringify(keepFormat)}`);
  // Workhorse's three keys, and Outrider's own only when it is set, so the header stays Workhorse's.
  const fields: Record<string, unknown> = { Location: location, Width: width, ContentType: contentType };
  if (keepFormat) fields.KeepFormat = true;
  return sendData(SCALED_IMG_PREFIX, fields);
}

/** `X-Sendfile: <path>`: Outrider serves the file (ranges, `If-Modified-Since`), the backend's Content-Type kept. */
export function sendFile(path: string): OutriderHeader {
  if (!isAbsolute(path)) throw new TypeError(`sendFile: the path must be absolute, got ${JSON.stringify(path)}`);
  return { name: SENDFILE_HEADER, value: path };
}

export interface SendUrlOptions {
  /** Follow the origin's redirects. Default false, as Workhorse. */
  allowRedirects?: boolean;
  /** The request's method; default GET. */
  method?: string;
  /** The request's body (a string, as Rails sends it). */
  body?: string;
  /** Request headers for the origin (its `Authorization`, for example). */
  headers?: Record<string, string | string[]>;
  /** Headers set on the client's answer, replacing the origin's of the same names. */
  responseHeaders?: Record<string, string | string[]>;
  /** Seconds to connect (`open`) and to wait for the origin's headers (`read`), as Rails' `timeouts:`. */
  timeouts?: { open?: number; read?: number };
  /** The status to answer when the origin cannot be reached (`error`) or does not answer in time (`timeout`). */
  responseStatuses?: { error?: number; timeout?: number };
  /** Refuse internal addresses for this URL (besides what Outrider's `[outbound]` refuses). */
  ssrfFilter?: boolean;
  /** false: refuse loopback for this URL. Default true, as Rails. */
  allowLocalhost?: boolean;
  /** URLs whose hosts `ssrfFilter` lets through (when `[outbound]` does too). */
  allowedUris?: string[];
}

/**
 * `Gitlab-Workhorse-Send-Data: send-url:…`: Outrider sends the request to `url` and streams the
 * answer to the client, with the same keys as Rails' `Gitlab::Workhorse.send_url`.
 */
export function sendUrl(url: string, options: SendUrlOptions = {}): OutriderHeader {
  if (!/^https?:\/\//i.test(url)) throw new TypeError(`sendUrl: the URL must be http(s), got ${JSON.stringify(url)}`);
  const { method = 'GET', timeouts = {}, responseStatuses = {} } = options;
  if (!/^[A-Za-z]+$/.test(method)) throw new TypeError(`sendUrl: method must be an HTTP method, got ${JSON.stringify(method)}`);
  const params: Record<string, unknown> = {
    URL: url,
    AllowRedirects: options.allowRedirects === true,
    AllowLocalhost: options.allowLocalhost !== false,
    AllowedURIs: options.allowedUris ?? [],
    SSRFFilter: options.ssrfFilter === true,
    Body: options.body ?? '',
    Header: headerLists(options.headers),
    ResponseHeaders: headerLists(options.responseHeaders),
    Method: method.toUpperCase(),
  };
  for (const [key, seconds] of [
    ['DialTimeout', timeouts.open],
    ['ResponseHeaderTimeout', timeouts.read],
  ] as const) {
    if (seconds === undefined) continue;
    if (!(seconds > 0) || !Number.isFinite(seconds)) throw new RangeError(`sendUrl: timeouts must be positive seconds, got ${seconds}`);
    params[key] = `${seconds}s`;
  }
  for (const [key, status] of [
    ['ErrorResponseStatus', responseStatuses.error],
    ['TimeoutResponseStatus', responseStatuses.timeout],
  ] as const) {
    if (status === undefined) continue;
    if (!Number.isInteger(status) || status < 400 || status > 599)
      throw new RangeError(`sendUrl: response statuses must be 4xx or 5xx, got ${status}`);
    params[key] = status;
  }
  return sendData(SEND_URL_PREFIX, params);
}

/** Go's http.Header: every value a list. */
function headerLists(headers: Record<string, string | string[]> | undefined): Record<string, string[]> {
  return Object.fromEntries(Object.entries(headers ?? {}).map(([name, v]) => [name, Array.isArray(v) ? v : [v]]));
}

/**
 * `Gitlab-Workhorse-Detect-Content-Type: true`, set beside `sendFile` or `sendUrl` for files users
 * uploaded: Outrider sniffs their real type and serves what a browser would run as an attachment.
 */
export const DETECT_CONTENT_TYPE: OutriderHeader = { name: DETECT_CONTENT_TYPE_HEADER, value: 'true' };

function sendData(prefix: string, params: Record<string, unknown>): OutriderHeader {
  return { name: SEND_DATA_HEADER, value: encodeSendData(prefix, params) };
}

/** What `authorizeResponse` builds: the answer Outrider trusts at `<path>/authorize`. */
export interface OutriderAnswer {
  readonly statusCode: number;
  readonly contentType: string;
  readonly body: string;
}

/** A node:http `ServerResponse` (Express's `res` is one). */
interface NodeResponse {
  statusCode: number;
  setHeader(name: string, value: string): unknown;
  end(body?: string): unknown;
}
/** A fastify `reply`. */
interface FastifyLikeReply {
  code(statusCode: number): unknown;
  header(name: string, value: string): unknown;
  send(body?: string): unknown;
}

/**
 * Answers a request with what Outrider needs: status 200, the header (or the authorize answer's
 * content type and body), and `headers` besides (Content-Type, Cache-Control…, which Outrider
 * keeps). Works with a node:http or Express `res` and a fastify `reply`; returns it.
 */
export function respond<R extends NodeResponse | FastifyLikeReply>(
  res: R,
  answer: OutriderHeader | OutriderAnswer,
  headers: Record<string, string> = {},
): R {
  const all: [string, string][] = Object.entries(headers);
  const statusCode = 'statusCode' in answer ? answer.statusCode : 200;
  if ('name' in answer) all.push([answer.name, answer.value]);
  else all.push(['Content-Type', answer.contentType]);
  const body = 'body' in answer ? answer.body : '';
  if (isFastifyReply(res)) {
    res.code(statusCode);
    for (const [name, value] of all) res.header(name, value);
    res.send(body);
  } else {
    res.statusCode = statusCode;
    for (const [name, value] of all) res.setHeader(name, value);
    res.end(body);
  }
  return res;
}

function isFastifyReply(res: NodeResponse | FastifyLikeReply): res is FastifyLikeReply {
  return (
    'raw' in res &&
    typeof (res as Partial<FastifyLikeReply>).code === 'function' &&
    typeof (res as Partial<FastifyLikeReply>).send === 'function'
  );
}
