import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { parseDuration } from '../../config/duration.js';
import { DirectiveError, decodeSendData, SEND_URL_PREFIX } from '../../protocol/send-data.js';
import { errorCode, failureWithStatus } from '../errors.js';
import { HOP_BY_HOP, SEND_DATA, withoutNamed } from '../forward/headers.js';
import { type Outbound, OutboundRefusedError, type OutboundRequest } from '../outbound/client.js';
import type { Narrowing } from '../outbound/policy.js';
import { MAX_DETECT_SIZE, withSafeContentHeaders } from './content-type.js';
import type { Interceptor } from './types.js';

/** Client headers passed on to the origin, so it can answer ranges and revalidations itself. */
const FORWARDED_REQUEST_HEADERS = ['range', 'if-range', 'if-match', 'if-none-match', 'if-modified-since', 'if-unmodified-since'];

/** The backend's caching headers win over the origin's (Workhorse `sendurl.go`). */
const BACKEND_WINS = new Set(['cache-control', 'expires', 'date', 'pragma']);

/** Instruction headers undici computes itself or refuses to send. */
const NOT_SENT = new Set([...HOP_BY_HOP, 'content-length', 'expect']);

type Response = Awaited<ReturnType<Outbound['request']>>;

/** What a `send-url:` instruction asks for, read and checked before anything is fetched. */
interface SendUrl {
  url: string;
  request: OutboundRequest;
  responseHeaders: [string, string[]][];
  errorStatus: number | undefined;
  timeoutStatus: number | undefined;
}

/**
 * `send-url:` (Workhorse `internal/sendurl`, Rails `Gitlab::Workhorse.send_url`): Outrider sends
 * the instruction's `Method`, `Body` and `Header` to `URL` through the outbound client, with the
 * client's Range and conditional headers, and streams the answer to the client, whatever its
 * status, as Workhorse relays it. Headers come from the origin, except the backend's
 * Cache-Control, Expires, Date and Pragma, which win; the backend's other headers are kept where
 * the origin has none of the same name, and `ResponseHeaders` replace both. `AllowRedirects`,
 * `DialTimeout` and `ResponseHeaderTimeout` shape the request; `SSRFFilter`, `AllowLocalhost` and
 * `AllowedURIs` can only narrow `[outbound]`'s policy. A failure before any byte is sent is answered
 * with `TimeoutResponseStatus` (a timeout) or `ErrorResponseStatus` when the instruction gives
 * them, else 502 (504 for an origin that accepted and then did not answer in time); the reason
 * goes to the log, never to the client.
 */
export function createSendUrl(outbound: Outbound): Interceptor {
  return {
    name: 'send-url',
    match(head) {
      return head.statusCode === 200 && head.sendData?.startsWith(SEND_URL_PREFIX) === true;
    },
    async serve(ctx) {
      const { req, res, head, log } = ctx;
      let directive: SendUrl;
      try {
        directive = readDirective(head.sendData as string);
      } catch (err) {
        log.error({ err, subsystem: 'send-url', status: 'invalid-data' }, 'invalid send-url instruction');
        ctx.fail(err);
        return;
      }
      const { url, request, responseHeaders } = directive;
      const headers = request.headers as Record<string, string | string[]>;
      for (const name of FORWARDED_REQUEST_HEADERS) {
        const value = req.headers[name];
        if (typeof value === 'string') headers[name] = addTo(headers[name], [value]);
      }
      const started = performance.now();
      let upstream: Response;
      try {
        upstream = await outbound.request(url, { ...request, signal: ctx.signal });
      } catch (err) {
        if (ctx.clientGone) return;
        const refused = err instanceof OutboundRefusedError;
        log.warn(
          { err, subsystem: 'send-url', url: redact(url), status: refused ? 'refused' : 'request-failed', reason: (err as Error).message },
          refused ? 'send-url refused by the outbound policy' : 'send-url request failed',
        );
        const chosen = TIMEOUTS.has(errorCode(err)) ? (directive.timeoutStatus ?? directive.errorStatus) : directive.errorStatus;
        ctx.fail(chosen === undefined ? err : failureWithStatus(chosen, err));
        return;
      }

      const out: string[] = [];
      const fromOrigin = new Set<string>();
      for (const [name, value] of Object.entries(upstream.headers)) {
        const lower = name.toLowerCase();
        if (HOP_BY_HOP.has(lower) || BACKEND_WINS.has(lower) || lower === SEND_DATA || value === undefined) continue;
        fromOrigin.add(lower);
        for (const v of Array.isArray(value) ? value : [value]) out.push(name, v);
      }
      for (let i = 0; i < head.headers.length; i += 2) {
        const lower = (head.headers[i] as string).toLowerCase();
        // The backend's own Content-Length described its empty body, never the origin's.
        if (lower === 'content-length' || (fromOrigin.has(lower) && !BACKEND_WINS.has(lower))) continue;
        out.push(head.headers[i] as string, head.headers[i + 1] as string);
      }
      let answer = responseHeaders.length === 0 ? out : replaceHeaders(out, responseHeaders);
      let body: Readable = upstream.body;
      // A HEAD answer has no body: the origin's is not read (it may be gigabytes).
      const headOnly = req.method === 'HEAD';
      if (headOnly) upstream.body.dump({ limit: 1 }).catch(() => undefined);
      else if (head.detectContentType && upstream.statusCode !== 304) {
        const sniffed = await sniff(upstream.body, answer);
        if (sniffed === undefined) {
          // The origin failed within its first bytes: nothing was sent, so the client can be told.
          if (ctx.clientGone) return;
          log.warn({ subsystem: 'send-url', url: redact(url), status: 'request-failed' }, 'send-url origin failed before its first 4 KiB');
          const err = new Error('the origin body failed before its first 4 KiB');
          ctx.fail(directive.errorStatus === undefined ? err : failureWithStatus(directive.errorStatus, err));
          return;
        }
        ({ headers: answer, body } = sniffed);
      }
      answer.push('X-Accel-Buffering', 'no');
      res.writeHead(upstream.statusCode, answer);
      let bytes = 0;
      // Whether the client had left when the body failed, taken then: on Node 24 the pipeline settles
      // only once the response it destroyed has closed, and by then that closing counts as leaving.
      let goneAtFailure: boolean | undefined;
      try {
        if (headOnly) res.end();
        else {
          body.on('data', (chunk: Buffer) => {
            bytes += chunk.length;
          });
          body.once('error', () => {
            goneAtFailure ??= ctx.clientGone;
          });
          await pipeline(body, res);
        }
        log.info(
          {
            subsystem: 'send-url',
            url: redact(url),
            method: request.method,
            status: upstream.statusCode,
            bytes,
            durationMs: Math.round(performance.now() - started),
          },
          'send-url succeeded',
        );
      } catch (err) {
        if (!(goneAtFailure ?? ctx.clientGone)) {
          const tooLarge = errorCode(err) === 'UND_ERR_RES_EXCEEDED_MAX_SIZE';
          log.warn(
            { err, subsystem: 'send-url', url: redact(url), bytes, status: tooLarge ? 'too-large' : 'request-failed' },
            tooLarge ? 'send-url answer grew past [outbound] max_response_bytes: cut off' : 'send-url transfer cut off',
          );
        }
        res.destroy();
      }
    },
  };
}

/** Reads and checks every key Rails sends; anything malformed is the backend's fault, a 502. */
function readDirective(sendData: string): SendUrl {
  const data = decodeSendData(sendData, SEND_URL_PREFIX);
  const url = data.get('url');
  if (typeof url !== 'string' || url === '') throw new DirectiveError("send-url: 'URL' not set");
  const method = optional(data, 'method', 'string', 'GET') as string;
  if (!/^[A-Za-z]+$/.test(method) || method.toUpperCase() === 'CONNECT')
    throw new DirectiveError(`send-url: 'Method' ${method} is not allowed`);
  const body = optional(data, 'body', 'string', '') as string;
  const upper = method.toUpperCase();
  const request: OutboundRequest = {
    method: upper,
    headers: Object.fromEntries(headerMap(data, 'header').filter(([name]) => !NOT_SENT.has(name.toLowerCase()))),
    allowRedirects: optional(data, 'allowredirects', 'boolean', false) as boolean,
    body: body !== '' || upper === 'POST' || upper === 'PUT' || upper === 'PATCH' ? body : undefined,
    connectTimeoutMs: timeout(data, 'dialtimeout'),
    headersTimeoutMs: timeout(data, 'responseheadertimeout'),
    narrowing: narrowing(data),
  };
  return {
    url,
    request,
    responseHeaders: headerMap(data, 'responseheaders'),
    errorStatus: status(data, 'errorresponsestatus'),
    timeoutStatus: status(data, 'timeoutresponsestatus'),
  };
}

function optional(data: Map<string, unknown>, key: string, type: 'string' | 'boolean', fallback: unknown): unknown {
  const value = data.get(key);
  if (value === undefined || value === null) return fallback;
  if (typeof value !== type) throw new DirectiveError(`send-url: '${key}' must be a ${type}`);
  return value;
}

/** `{"Name": ["v1", "v2"]}` (Go's http.Header), a single string accepted for a value list. */
function headerMap(data: Map<string, unknown>, key: string): [string, string[]][] {
  const value = data.get(key);
  if (value === undefined || value === null) return [];
  if (typeof value !== 'object' || Array.isArray(value)) throw new DirectiveError(`send-url: '${key}' must be an object of header lists`);
  return Object.entries(value).map(([name, values]) => {
    const list = typeof values === 'string' ? [values] : values;
    if (
      !/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(name) ||
      !Array.isArray(list) ||
      // Values Node can send: no control character but tab, nothing past Latin-1.
      !list.every((v) => typeof v === 'string' && /^[\t\x20-\x7e\x80-\xff]*$/.test(v))
    ) {
      throw new DirectiveError(`send-url: '${key}' has an invalid header ${JSON.stringify(name)}`);
    }
    return [name, list as string[]];
  });
}

/** A Go duration ("10s", "1m30s"); zero or absent keeps `[outbound]`'s. */
function timeout(data: Map<string, unknown>, key: string): number | undefined {
  const value = data.get(key);
  if (value === undefined || value === null || value === '' || value === 0) return undefined;
  const ms = typeof value === 'string' ? parseDuration(value) : undefined;
  if (ms === undefined || ms > 86_400_000) throw new DirectiveError(`send-url: '${key}' must be a duration like "10s"`);
  return ms === 0 ? undefined : Math.max(1, Math.round(ms));
}

function status(data: Map<string, unknown>, key: string): number | undefined {
  const value = data.get(key);
  if (value === undefined || value === null || value === 0) return undefined;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 400 || value > 599) {
    throw new DirectiveError(`send-url: '${key}' must be an HTTP error status`);
  }
  return value;
}

/**
 * Workhorse's SSRF keys. Rails sends `AllowLocalhost: true` by default; an explicit false refuses
 * loopback even without `SSRFFilter`, and with the filter an absent `AllowLocalhost` means false,
 * as Go's zero value does. Without any of them the config's policy alone decides.
 */
function narrowing(data: Map<string, unknown>): Narrowing | undefined {
  const ssrfFilter = optional(data, 'ssrffilter', 'boolean', false) as boolean;
  const allowLocalhost = data.get('allowlocalhost');
  if (allowLocalhost !== undefined && allowLocalhost !== null && typeof allowLocalhost !== 'boolean') {
    throw new DirectiveError("send-url: 'AllowLocalhost' must be a boolean");
  }
  const uris = data.get('alloweduris') ?? data.get('allowedendpoints') ?? [];
  if (!Array.isArray(uris) || !uris.every((u) => typeof u === 'string'))
    throw new DirectiveError("send-url: 'AllowedURIs' must be a list of URLs");
  if (!ssrfFilter && allowLocalhost !== false) return undefined;
  const allowedHosts = (uris as string[]).flatMap((u) => {
    try {
      const host = new URL(u).hostname.toLowerCase();
      return [host.startsWith('[') ? host.slice(1, -1) : host];
    } catch {
      throw new DirectiveError(`send-url: 'AllowedURIs' has an entry that is not a URL`);
    }
  });
  return { ssrfFilter, allowLocalhost: allowLocalhost === true || (allowLocalhost === undefined && !ssrfFilter), allowedHosts };
}

/** Timeouts as Go's os.IsTimeout sees them: connecting and waiting for the head. */
const TIMEOUTS = new Set(['UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT', 'ETIMEDOUT']);

function addTo(existing: string | string[] | undefined, values: string[]): string | string[] {
  if (existing === undefined) return values.length === 1 ? (values[0] as string) : values;
  return [...(Array.isArray(existing) ? existing : [existing]), ...values];
}

/** `ResponseHeaders`: each named header replaces every one of that name (Go's Del, then Add). */
function replaceHeaders(out: string[], replacements: [string, string[]][]): string[] {
  const kept = withoutNamed(
    out,
    replacements.map(([name]) => name.toLowerCase()),
  );
  for (const [name, values] of replacements) for (const v of values) kept.push(name, v);
  return kept;
}

/**
 * `Gitlab-Workhorse-Detect-Content-Type`: the first 4 KiB of the answer decide Content-Type and
 * Content-Disposition (Workhorse's contentprocessor). Those bytes are held, then sent ahead of the
 * rest; undefined when the origin failed before they arrived.
 */
async function sniff(source: Readable, headers: string[]): Promise<{ headers: string[]; body: Readable } | undefined> {
  const iterator = source[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  const first: Buffer[] = [];
  let length = 0;
  let ended = false;
  try {
    while (length < MAX_DETECT_SIZE) {
      const next = await iterator.next();
      if (next.done === true) {
        ended = true;
        break;
      }
      first.push(next.value);
      length += next.value.length;
    }
  } catch {
    return undefined;
  }
  const prefix = first.length === 1 ? (first[0] as Buffer) : Buffer.concat(first, length);
  async function* rest() {
    yield prefix;
    if (ended) return;
    for (;;) {
      const next = await iterator.next();
      if (next.done === true) return;
      yield next.value;
    }
  }
  return { headers: withSafeContentHeaders(headers, prefix), body: Readable.from(rest(), { objectMode: false }) };
}

/** Presigned URLs carry credentials in their query: logs get the origin and path only. */
function redact(url: string): string {
  try {
    const u = new URL(url);
    return `${u.origin}${u.pathname}`;
  } catch {
    return '(unparsable URL)';
  }
}
