import { open } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { isAbsolute } from 'node:path';
import type { Readable } from 'node:stream';
import send from '@fastify/send';
import { lastModified, parseHttpDate } from '../../scaler/conditional.js';
import { EdgeDirectiveInvalid, EdgeSendfileMissing, EdgeSourceUnavailable } from '../errors.js';
import { sendBody, whenOpen } from '../forward/body.js';
import { headerValue, rawHeader, withoutNamed } from '../forward/headers.js';
import { detectContentType, MAX_DETECT_SIZE, withSafeContentHeaders } from './content-type.js';
import type { Interceptor, ResponseHead } from './types.js';

/** Headers of the backend's own response that describe its (discarded) body, not the file. */
const BODY_HEADERS = ['content-length', 'content-range', 'accept-ranges', 'last-modified'];

/** What a 304 leaves out besides those: it describes no body (RFC 9110 §15.4.5; Go's `writeNotModified`). */
const NOT_MODIFIED_DROPS = [...BODY_HEADERS, 'content-type', 'content-encoding'];

/**
 * X-Sendfile (Workhorse `internal/sendfile`): a 200 carrying `X-Sendfile: <absolute path>` makes
 * Outrider serve that file itself, as Go's `http.ServeContent(w, r, "", mtime, file)` does.
 *
 * Preconditions are evaluated here, from the file's stat and the backend's `ETag`, in RFC 9110
 * §13.2.2's order and whatever the request's Cache-Control says (`preconditions` below);
 * @fastify/send then sees only the Range it should honour and answers 200, 206 or 416 from the
 * file's size. Last-Modified is the file's mtime. The backend's Content-Type, Content-Disposition,
 * ETag, Cache-Control and other headers are kept; with no Content-Type, the type is sniffed from the
 * file's first bytes, and with `Gitlab-Workhorse-Detect-Content-Type: true` both Content-Type and
 * Content-Disposition come from `safeContentHeaders` on the file's first 4096 bytes. A file that
 * cannot be opened, or a directory, is a 404, as in Workhorse; the path only goes to the log.
 */
export const sendfile: Interceptor = {
  name: 'sendfile',
  match(head) {
    return head.statusCode === 200 && head.sendfile !== undefined && head.sendfile !== '';
  },
  async serve(ctx) {
    const { req, res, head, log } = ctx;
    const file = head.sendfile as string;
    if (!isAbsolute(file) || file.includes('\0')) {
      log.error({ subsystem: 'sendfile', file }, 'the backend sent an X-Sendfile path that is not absolute');
      ctx.fail(new EdgeDirectiveInvalid());
      return;
    }
    const method = req.method ?? 'GET';
    const etag = headerValue(head.headers, 'etag')?.trim();
    let modified: string | undefined;
    // What @fastify/send reads of a request is its method and headers: it gets the Range to honour and
    // nothing else, so its own conditional handling (which answers 200 to `Cache-Control: no-cache`) never runs.
    const forSend: { method: string; headers: { range?: string } } = { method, headers: {} };
    let result: send.SendResult;
    try {
      result = await send(forSend as unknown as Readable, toUrlPath(file), {
        root: '/',
        dotfiles: 'allow',
        index: false,
        etag: false,
        cacheControl: false,
        lastModified: false,
        contentType: false,
        acceptRanges: true,
        // Called once the file is found and stat'd, before anything is opened: a precondition that
        // decides the answer stops @fastify/send here (a rejection it documents as aborting).
        onFile(_path, stat) {
          modified = lastModified(stat.mtimeMs);
          const outcome = preconditions(method, req, etag, modified === undefined ? undefined : Math.floor(stat.mtimeMs / 1000) * 1000);
          if (outcome === 304 || outcome === 412) throw new PreconditionAnswer(outcome);
          // An empty file is served whole rather than refused with 416, as Go's ServeContent does.
          if (outcome !== undefined && stat.size > 0) forSend.headers.range = outcome;
        },
      });
    } catch (err) {
      if (!(err instanceof PreconditionAnswer)) throw err;
      answerWithoutBody(res, err.status, err.status === 304 ? notModifiedHeaders(head, modified) : []);
      log.info({ subsystem: 'sendfile', file, status: err.status, bytes: 0 }, 'send file');
      return;
    }
    if (result.type === 'error' && result.statusCode === 416) {
      // A range past the end: the file exists, the range does not.
      result.stream.destroy();
      answerWithoutBody(res, 416, ['Content-Range', result.headers['Content-Range'] as string]);
      log.info({ subsystem: 'sendfile', file, status: 416, bytes: 0 }, 'send file');
      return;
    }
    let openError: unknown;
    if (result.type === 'file') {
      try {
        await whenOpen(result.stream);
      } catch (err) {
        openError = err;
      }
    }
    if (result.type !== 'file' || openError !== undefined) {
      // Missing, a directory, or gone between its stat and its opening: nothing was sent yet.
      result.stream.destroy();
      log.warn({ subsystem: 'sendfile', file, status: result.statusCode, err: openError }, 'X-Sendfile file cannot be served');
      ctx.fail(new EdgeSendfileMissing());
      return;
    }

    // The file's first bytes, read only when they decide a header.
    let first: Buffer | undefined;
    if (head.detectContentType || head.contentType === undefined) {
      try {
        first = await readFirstBytes(result.metadata.path, MAX_DETECT_SIZE);
      } catch (err) {
        result.stream.destroy();
        log.warn({ subsystem: 'sendfile', file, err }, 'X-Sendfile file cannot be served');
        ctx.fail(new EdgeSendfileMissing());
        return;
      }
    }

    let headers = withoutNamed(head.headers, BODY_HEADERS);
    if (first !== undefined) {
      if (head.detectContentType) headers = withSafeContentHeaders(headers, first);
      else headers.push('Content-Type', detectContentType(first));
    }
    for (const [name, value] of Object.entries(result.headers)) headers.push(name, String(value));
    if (modified !== undefined) headers.push('Last-Modified', modified);
    headers.push('X-Accel-Buffering', 'no');

    const length = method === 'HEAD' ? 0 : Number(result.headers['Content-Length'] ?? 0);
    const sent = await sendBody(result.stream, res, length, () => res.writeHead(result.statusCode, headers));
    if (!sent.complete && !sent.started) {
      // Gone or shrunk between its stat and its first read: nothing was sent, so the client can still be told.
      log.warn({ err: sent.err, subsystem: 'sendfile', file }, 'X-Sendfile file could not be read');
      ctx.fail(new EdgeSourceUnavailable());
      return;
    }
    log.info({ subsystem: 'sendfile', file, status: result.statusCode, bytes: length }, 'send file');
    // The client left, or the file could not be read to the end: the connection was cut either way.
    if (!sent.complete && (sent.err as NodeJS.ErrnoException | undefined)?.code !== 'ERR_STREAM_PREMATURE_CLOSE') {
      log.warn({ err: sent.err, subsystem: 'sendfile', file }, 'X-Sendfile transfer failed');
    }
  },
};

/** Thrown from `onFile` when a precondition decided the answer: carries it out of @fastify/send. */
class PreconditionAnswer extends Error {
  readonly status: 304 | 412;
  constructor(status: 304 | 412) {
    super(`precondition answered ${status}`);
    this.status = status;
  }
}

/**
 * RFC 9110 §13.2.2, step by step, as Go's `checkPreconditions` (`net/http/fs.go`) does it: 412 or
 * 304 when a condition decides the answer, else the Range to honour (undefined for the whole file).
 * `modified` is the file's Last-Modified in whole-second milliseconds, undefined when its mtime is
 * unknown (zero): then the date conditions are ignored, as RFC 9110 §13.1.3-4 ask. Cache-Control
 * plays no part.
 */
function preconditions(
  method: string,
  req: IncomingMessage,
  etag: string | undefined,
  modified: number | undefined,
): 304 | 412 | string | undefined {
  const field = (name: string) => rawHeader(req, name) || undefined;
  const getOrHead = method === 'GET' || method === 'HEAD';
  // 1-2. If-Match (strong); If-Unmodified-Since only without it.
  const ifMatch = field('if-match');
  if (ifMatch !== undefined) {
    if (!listMatches(ifMatch, etag, strongMatch)) return 412;
  } else if (modified !== undefined) {
    const since = parseHttpDate(field('if-unmodified-since'));
    if (since !== undefined && modified > since) return 412;
  }
  // 3-4. If-None-Match (weak); If-Modified-Since only without it, and only for GET and HEAD.
  const ifNoneMatch = field('if-none-match');
  if (ifNoneMatch !== undefined) {
    if (listMatches(ifNoneMatch, etag, weakMatch)) return getOrHead ? 304 : 412;
  } else if (getOrHead && modified !== undefined) {
    const since = parseHttpDate(field('if-modified-since'));
    if (since !== undefined && modified <= since) return 304;
  }
  // 5. Range, for GET (and HEAD, which answers as GET would: RFC 9110 §9.3.2), unless If-Range fails.
  const range = field('range');
  if (range === undefined || !getOrHead) return undefined;
  const ifRange = field('if-range');
  if (ifRange === undefined) return range;
  const [tag] = scanETag(ifRange);
  if (tag !== '') return etag !== undefined && strongMatch(tag, etag) ? range : undefined;
  // A date: it must be the Last-Modified exactly (RFC 9110 §13.1.5), to the second.
  const date = parseHttpDate(ifRange);
  return date !== undefined && modified !== undefined && date === modified ? range : undefined;
}

/** `*` or a list of entity-tags, read as Go's `checkIfMatch`/`checkIfNoneMatch` read them: true when one matches. */
function listMatches(list: string, etag: string | undefined, matches: (a: string, b: string) => boolean): boolean {
  let rest = list;
  for (;;) {
    rest = trimOWS(rest);
    if (rest === '') return false;
    if (rest[0] === ',') {
      rest = rest.slice(1);
      continue;
    }
    if (rest[0] === '*') return true;
    const [tag, remain] = scanETag(rest);
    if (tag === '') return false;
    if (etag !== undefined && matches(tag, etag)) return true;
    rest = remain;
  }
}

/** Go's `scanETag`: the entity-tag (`"…"` or `W/"…"`) at the start of `s` and what follows it, or `['', '']`. */
function scanETag(s: string): [string, string] {
  const t = trimOWS(s);
  const start = t.startsWith('W/') ? 2 : 0;
  if (t.length - start < 2 || t[start] !== '"') return ['', ''];
  for (let i = start + 1; i < t.length; i++) {
    const c = t.charCodeAt(i);
    if (c === 0x22) return [t.slice(0, i + 1), t.slice(i + 1)];
    // etagc: %x21 / %x23-7E / obs-text
    if (!(c === 0x21 || (c >= 0x23 && c <= 0x7e) || c >= 0x80)) return ['', ''];
  }
  return ['', ''];
}

/** RFC 9110 §8.8.3.2 strong comparison: both strong and identical. */
function strongMatch(a: string, b: string): boolean {
  return a === b && a.startsWith('"');
}

/** Weak comparison: identical once `W/` is set aside. */
function weakMatch(a: string, b: string): boolean {
  return a.replace(/^W\//, '') === b.replace(/^W\//, '');
}

/** Go's `textproto.TrimString`: ASCII space, tab, CR and LF off both ends. */
function trimOWS(s: string): string {
  return s.replace(/^[ \t\r\n]+|[ \t\r\n]+$/g, '');
}

/** The backend's headers a 304 keeps (ETag, Cache-Control, Content-Disposition, …), then Last-Modified. */
function notModifiedHeaders(head: ResponseHead, modified: string | undefined): string[] {
  const headers = withoutNamed(head.headers, NOT_MODIFIED_DROPS);
  if (modified !== undefined) headers.push('Last-Modified', modified);
  headers.push('X-Accel-Buffering', 'no');
  return headers;
}

/** 304, 412 or 416: a head and no body (a 304 with no Content-Length either). */
function answerWithoutBody(res: ServerResponse, status: 304 | 412 | 416, headers: string[]): void {
  res.writeHead(status, status === 304 ? headers : [...headers, 'Content-Length', '0']);
  res.end();
}

/**
 * Up to `max` bytes from the start of a file (fewer when it is shorter). Its own open: for HEAD,
 * @fastify/send opens nothing, and the type is still to be named.
 */
async function readFirstBytes(path: string, max: number): Promise<Buffer> {
  const handle = await open(path, 'r');
  try {
    const buffer = Buffer.alloc(max);
    let filled = 0;
    while (filled < max) {
      const { bytesRead } = await handle.read(buffer, filled, max - filled, filled);
      if (bytesRead === 0) break;
      filled += bytesRead;
    }
    return buffer.subarray(0, filled);
  } finally {
    await handle.close();
  }
}

/** @fastify/send takes a URL path: each segment of the file path, percent-encoded. */
function toUrlPath(file: string): string {
  return file
    .split('/')
    .map((segment) => encodeURIComponent(segment))
    .join('/');
}
