import type { IncomingMessage, ServerResponse } from 'node:http';
import { join } from 'node:path';
import send from '@fastify/send';
import type { FastifyBaseLogger, FastifyPluginCallback } from 'fastify';
import { EdgeInternal, EdgeStaticMissing, writeError } from '../errors.js';
import { sendBody, whenOpen } from '../forward/body.js';
import type { Metrics } from '../observe/metrics/catalogue.js';

/** The route, and the `route` metric label, of static assets. */
export const ASSETS_ROUTE = '/assets/*';
const PREFIX = '/assets';

/** A year, the longest max-age HTTP caches honour (RFC 9111 §5.2.2.1). */
const ONE_YEAR_MS = 365 * 24 * 60 * 60 * 1000;

/** Precompressed siblings, by Content-Encoding. */
const SIBLINGS = { br: '.br', gzip: '.gz' } as const;
type Coding = keyof typeof SIBLINGS;

export interface StaticOptions {
  /** `document_root`: assets are the files under `<document_root>/assets/`. */
  root: string;
  metrics: Metrics | undefined;
  log: FastifyBaseLogger;
}

/**
 * `GET|HEAD /assets/…` served from `<document_root>/assets/` without the backend (Workhorse
 * `ServeExisting` on `^/assets/`): a `.br` or `.gz` sibling when the client accepts it, fingerprinted
 * files cached for a year as immutable, ETag and Last-Modified answered with 304, one byte range
 * (206, 416). A missing asset is a 404 from Outrider. Other methods go to the backend.
 */
export const staticPlugin: FastifyPluginCallback<StaticOptions> = (app, opts, done) => {
  const root = join(opts.root, 'assets');
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', (_request, _payload, next) => next(null));
  app.get(ASSETS_ROUTE, (request, reply) => {
    reply.hijack();
    opts.metrics?.begin(request.raw, reply.raw, ASSETS_ROUTE);
    serveAsset(request.raw, reply.raw, root, opts.log).catch((err: unknown) => {
      opts.log.error({ err, subsystem: 'static', requestId: request.id }, 'static file failed');
      writeError(reply.raw, new EdgeInternal({ cause: err }));
    });
  });
  done();
};

async function serveAsset(req: IncomingMessage, res: ServerResponse, root: string, log: FastifyBaseLogger): Promise<void> {
  const url = req.url as string;
  const q = url.indexOf('?');
  const path = (q === -1 ? url : url.slice(0, q)).slice(PREFIX.length);
  if (!isSafe(path)) {
    writeError(res, new EdgeStaticMissing());
    return;
  }
  const type = contentTypeOf(path);
  for (const coding of [...accepted(req.headers['accept-encoding']), undefined]) {
    const result = await send(req, coding === undefined ? path : `${path}${SIBLINGS[coding]}`, {
      root,
      dotfiles: 'ignore',
      index: false,
      etag: true,
      lastModified: true,
      cacheControl: true,
      maxAge: ONE_YEAR_MS,
      immutable: true,
      acceptRanges: true,
      contentType: false,
    });
    if (result.type !== 'file') {
      result.stream.destroy();
      // No such sibling: try the next one, then the file itself.
      if (coding !== undefined && (result.type === 'directory' || result.statusCode === 404)) continue;
      if (result.statusCode === 412 || result.statusCode === 416) {
        const range = result.headers['Content-Range'];
        res.writeHead(result.statusCode, range === undefined ? { 'content-length': 0 } : { 'content-range': range, 'content-length': 0 });
        res.end();
        return;
      }
      if (result.statusCode >= 500) {
        log.warn({ subsystem: 'static', path, status: result.statusCode }, 'static file cannot be read');
        writeError(res, new EdgeInternal());
        return;
      }
      writeError(res, new EdgeStaticMissing());
      return;
    }
    try {
      await whenOpen(result.stream);
    } catch {
      // Gone between its stat and its opening.
      result.stream.destroy();
      writeError(res, new EdgeStaticMissing());
      return;
    }
    const headers: Record<string, string | number> = { ...result.headers, Vary: 'Accept-Encoding' };
    if (result.statusCode !== 304) {
      headers['Content-Type'] = type;
      if (coding !== undefined) headers['Content-Encoding'] = coding;
    }
    const length = Number(result.headers['Content-Length'] ?? 0);
    const sent = await sendBody(result.stream, res, req.method === 'HEAD' || result.statusCode === 304 ? 0 : length, () =>
      res.writeHead(result.statusCode, headers),
    );
    if (!sent.complete && !sent.started) {
      // Shrunk or unreadable between its stat and its first read: nothing was sent yet.
      log.warn({ err: sent.err, subsystem: 'static', path }, 'static file cannot be read');
      writeError(res, new EdgeInternal());
    }
    return;
  }
}

/**
 * A path that stays inside the assets directory: decodable, no NUL, no `..` segment and no dotfile
 * (`/assets/.env`, `/assets/x/../../secret`, their percent-encoded forms and backslash variants).
 * @fastify/send checks again against its root.
 */
function isSafe(path: string): boolean {
  if (path === '' || path.charCodeAt(0) !== 47) return false;
  let decoded: string;
  try {
    decoded = decodeURIComponent(path);
  } catch {
    return false;
  }
  if (decoded.includes('\0')) return false;
  for (const segment of decoded.split(/[/\\]/)) if (segment.startsWith('.')) return false;
  return true;
}

function contentTypeOf(path: string): string {
  const type = send.mime.getType(path) ?? 'application/octet-stream';
  return send.isUtf8MimeType(type) ? `${type}; charset=utf-8` : type;
}

/**
 * The precompressed codings the client accepts, most preferred first (RFC 9110 §12.5.3): `br`
 * before `gzip` unless gzip has the higher q; `*` covers whichever is not named; q=0 refuses.
 */
export function accepted(header: string | undefined): Coding[] {
  if (header === undefined || header === '') return [];
  let br = -1;
  let gzip = -1;
  let star = -1;
  for (const part of header.split(',')) {
    const [token = '', ...params] = part.split(';');
    const name = token.trim().toLowerCase();
    let q = 1;
    for (const param of params) {
      const m = /^\s*q\s*=\s*([0-9.]+)\s*$/i.exec(param);
      if (m !== null) q = Number(m[1]);
    }
    if (!(q >= 0 && q <= 1)) q = 0;
    if (name === 'br') br = Math.max(br, q);
    else if (name === 'gzip' || name === 'x-gzip') gzip = Math.max(gzip, q);
    else if (name === '*') star = q;
  }
  if (br < 0) br = Math.max(star, 0);
  if (gzip < 0) gzip = Math.max(star, 0);
  const out: Coding[] = [];
  if (br > 0 && br >= gzip) out.push('br');
  if (gzip > 0) out.push('gzip');
  if (br > 0 && br < gzip) out.push('br');
  return out;
}
