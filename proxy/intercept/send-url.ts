import { type ServerResponse, STATUS_CODES } from 'node:http';
import { pipeline } from 'node:stream/promises';
import { DirectiveError, decodeSendData, SEND_URL_PREFIX } from '../../protocol/send-data.js';
import { HOP_BY_HOP, SEND_DATA } from '../forward/headers.js';
import type { Outbound } from '../outbound/client.js';
import type { Interceptor } from './types.js';

/** Client headers passed on to the origin, so it can answer ranges and revalidations itself. */
const FORWARDED_REQUEST_HEADERS = ['range', 'if-range', 'if-match', 'if-none-match', 'if-modified-since', 'if-unmodified-since'];

/** The backend's caching headers win over the origin's (Workhorse `sendurl.go`). */
const BACKEND_WINS = new Set(['cache-control', 'expires', 'date', 'pragma']);

/**
 * `send-url:{"URL", "AllowRedirects"}` (Workhorse `internal/sendurl`): Outrider fetches the URL
 * through the outbound client and streams the answer to the client. Status and headers come from
 * the origin, except the backend's Cache-Control, Expires, Date and Pragma, which win; the
 * backend's other headers are kept where the origin has none of the same name. Failures before any
 * byte is sent are a 502 (504 for a timeout) whose body names nothing internal; an origin's error
 * status is kept, its body is not.
 */
export function createSendUrl(outbound: Outbound): Interceptor {
  return {
    name: 'send-url',
    match(head) {
      return head.statusCode === 200 && head.sendData?.startsWith(SEND_URL_PREFIX) === true;
    },
    async serve(ctx) {
      const { req, res, head, log } = ctx;
      let url: string;
      let allowRedirects: boolean;
      try {
        const data = decodeSendData(head.sendData as string, SEND_URL_PREFIX);
        const u = data.get('url');
        const redirects = data.get('allowredirects') ?? false;
        if (typeof u !== 'string' || u === '') throw new DirectiveError("send-url: 'URL' not set");
        if (typeof redirects !== 'boolean') throw new DirectiveError("send-url: 'AllowRedirects' must be true or false");
        url = u;
        allowRedirects = redirects;
      } catch (err) {
        log.error({ err, subsystem: 'send-url', status: 'invalid-data' }, 'invalid send-url instruction');
        ctx.fail(err);
        return;
      }

      const headers: Record<string, string> = {};
      for (const name of FORWARDED_REQUEST_HEADERS) {
        const value = req.headers[name];
        if (typeof value === 'string') headers[name] = value;
      }
      const started = performance.now();
      let upstream: Awaited<ReturnType<Outbound['request']>>;
      try {
        upstream = await outbound.request(url, { headers, allowRedirects, signal: ctx.signal });
      } catch (err) {
        if (ctx.clientGone) return;
        log.warn({ err, subsystem: 'send-url', url: redact(url), status: 'request-failed' }, 'send-url request failed');
        ctx.fail(err);
        return;
      }

      if (upstream.statusCode >= 400) {
        sendOriginError(res, head.headers, upstream);
        log.warn({ subsystem: 'send-url', url: redact(url), status: upstream.statusCode }, 'send-url origin answered an error');
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
      out.push('X-Accel-Buffering', 'no');
      res.writeHead(upstream.statusCode, out);
      let bytes = 0;
      upstream.body.on('data', (chunk: Buffer) => {
        bytes += chunk.length;
      });
      try {
        await pipeline(upstream.body, res);
        log.info(
          {
            subsystem: 'send-url',
            url: redact(url),
            status: upstream.statusCode,
            bytes,
            durationMs: Math.round(performance.now() - started),
          },
          'send-url succeeded',
        );
      } catch (err) {
        if (!ctx.clientGone) log.warn({ err, subsystem: 'send-url', url: redact(url), bytes }, 'send-url transfer cut off');
        res.destroy();
      }
    },
  };
}

/** What describes the origin's own error body; the backend's headers of these names are dropped too. */
const CONTENT_HEADERS = new Set([
  'content-length',
  'content-type',
  'content-encoding',
  'content-range',
  'content-disposition',
  'etag',
  'last-modified',
]);

/**
 * An origin error (a 404, a 403 from an expired signature, a 5xx) keeps its status, but its body
 * and headers are the origin's internals (an object store's XML names the bucket, the key and its
 * request ids): the client gets a plain generic body instead, with the backend's other headers and,
 * for a 416, the Content-Range that makes it useful.
 */
function sendOriginError(res: ServerResponse, backendHeaders: string[], upstream: Awaited<ReturnType<Outbound['request']>>): void {
  upstream.body.dump({ limit: 1 }).catch(() => undefined);
  const out: string[] = [];
  for (let i = 0; i < backendHeaders.length; i += 2) {
    const lower = (backendHeaders[i] as string).toLowerCase();
    if (!CONTENT_HEADERS.has(lower)) out.push(backendHeaders[i] as string, backendHeaders[i + 1] as string);
  }
  const range = upstream.headers['content-range'];
  if (upstream.statusCode === 416 && typeof range === 'string') out.push('Content-Range', range);
  const body = `${STATUS_CODES[upstream.statusCode] ?? 'Error'}\n`;
  out.push(
    'Content-Type',
    'text/plain; charset=utf-8',
    'Content-Length',
    String(Buffer.byteLength(body)),
    'X-Content-Type-Options',
    'nosniff',
  );
  res.writeHead(upstream.statusCode, out).end(body);
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
