import { isAbsolute } from 'node:path';
import send from '@fastify/send';
import { EdgeDirectiveInvalid, EdgeSendfileMissing, EdgeSourceUnavailable } from '../errors.js';
import { sendBody, whenOpen } from '../forward/body.js';
import type { Interceptor } from './types.js';

/** Headers of the backend's own response that describe its (discarded) body, not the file. */
const BODY_HEADERS = new Set(['content-length', 'content-range', 'accept-ranges', 'last-modified', 'etag']);

/**
 * X-Sendfile (Workhorse `internal/sendfile`): a 200 carrying `X-Sendfile: <absolute path>` makes
 * Outrider serve that file itself. Range (206, 416), If-Modified-Since and If-Unmodified-Since are
 * answered from the file's size and mtime by @fastify/send; the backend's Content-Type,
 * Content-Disposition, Cache-Control and other headers are kept. A file that cannot be opened,
 * or a directory, is a 404, as in Workhorse; the path only goes to the log.
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
    const result = await send(req, toUrlPath(file), {
      root: '/',
      dotfiles: 'allow',
      index: false,
      etag: false,
      cacheControl: false,
      acceptRanges: true,
      lastModified: true,
      contentType: head.contentType === undefined,
    });
    if (result.type === 'error' && (result.statusCode === 416 || result.statusCode === 412)) {
      // A range past the end, or a failed If-Unmodified-Since: the file exists, the precondition does not hold.
      result.stream.destroy();
      const range = result.headers['Content-Range'];
      res.writeHead(result.statusCode, range === undefined ? { 'content-length': 0 } : { 'content-range': range, 'content-length': 0 });
      res.end();
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
    const headers: string[] = [];
    for (let i = 0; i < head.headers.length; i += 2) {
      const name = head.headers[i] as string;
      if (!BODY_HEADERS.has(name.toLowerCase())) headers.push(name, head.headers[i + 1] as string);
    }
    for (const [name, value] of Object.entries(result.headers)) {
      if (name.toLowerCase() === 'content-type' && head.contentType !== undefined) continue;
      headers.push(name, value);
    }
    headers.push('X-Accel-Buffering', 'no');
    if (result.statusCode === 304) {
      // A 304 describes no body: no Content-Type or Content-Length (RFC 9110 §15.4.5).
      for (let i = headers.length - 2; i >= 0; i -= 2) {
        const lower = (headers[i] as string).toLowerCase();
        if (lower === 'content-type' || lower === 'content-length') headers.splice(i, 2);
      }
    }
    const length = req.method === 'HEAD' || result.statusCode === 304 ? 0 : Number(result.headers['Content-Length'] ?? 0);
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

/** @fastify/send takes a URL path: each segment of the file path, percent-encoded. */
function toUrlPath(file: string): string {
  return file
    .split('/')
    .map((segment) => encodeURIComponent(segment))
    .join('/');
}
