import { Readable } from 'node:stream';
import type { FastifyBaseLogger } from 'fastify';
import { decodeSendData, SCALED_IMG_PREFIX } from '../../protocol/send-data.js';
import { type ModernFormat, parseDirective, type ScaleDirective, type ScaleOutcomeName, type Scaler } from '../../scaler/index.js';
import { EdgeSourceUnavailable } from '../errors.js';
import { sendBody } from '../forward/body.js';
import { rawHeader, withoutNamed } from '../forward/headers.js';
import { createDirectLine, type DirectLine, jsonString, msSince } from '../observe/log/direct-line.js';
import type { Metrics } from '../observe/metrics/catalogue.js';
import { createFormatChooser, varyWithAccept } from './accept.js';
import type { InterceptContext, Interceptor } from './types.js';

const SAFE_TYPES = new Set(['image/png', 'image/jpeg']);

/** The backend's headers that describe its own (empty) body, replaced by what Outrider sends. */
const REPLACED = ['content-length', 'content-type', 'last-modified', 'etag', 'content-range', 'accept-ranges'];
/** The same, and Vary, which a negotiated answer sends with Accept added. */
const REPLACED_AND_VARY = [...REPLACED, 'vary'];

/** Every Vary the backend sent, as one list. */
function backendVary(headers: readonly string[]): string | undefined {
  let vary: string | undefined;
  for (let i = 0; i < headers.length; i += 2) {
    if ((headers[i] as string).toLowerCase() === 'vary')
      vary = vary === undefined ? (headers[i + 1] as string) : `${vary}, ${headers[i + 1]}`;
  }
  return vary;
}

/**
 * `send-scaled-img:{"Location","Width","ContentType"}` (Workhorse `internal/imageresizer`): the
 * backend's body is discarded and the image at Location is served scaled to Width, or as it is
 * when the scaler decides so (outcome `served-original`, logged at warn). The backend's other
 * headers (Cache-Control, Content-Disposition…) are kept; Content-Type and Content-Length match
 * what is sent. One log line per outcome.
 *
 * With `formats` set and no `KeepFormat` in the directive, the scaled image's format is chosen
 * from the request's Accept (`accept.ts`), and every answer, 304 and original included, carries
 * `Vary: Accept`: a cache that stored one answer without it would serve WebP to a client that
 * never asked for it, or pin PNG for everyone.
 */
export function createScaledImg(
  scaler: Scaler,
  opts: { maxWidth: number; formats?: readonly ModernFormat[]; log?: FastifyBaseLogger | undefined; metrics?: Metrics | undefined },
): Interceptor {
  const metrics = opts.metrics;
  const negotiates = (opts.formats ?? []).length > 0;
  const chooseFormat = createFormatChooser(opts.formats ?? []);
  const directives = new Memo(512, (value: string) => parseDirective(decodeSendData(value, SCALED_IMG_PREFIX), opts));
  const outcomeLine = opts.log === undefined ? undefined : createDirectLine(opts.log, 'scaler', OUTCOME_FIELDS);
  return {
    name: 'send-scaled-img',
    match(head) {
      return head.statusCode === 200 && head.sendData?.startsWith(SCALED_IMG_PREFIX) === true;
    },
    async serve(ctx) {
      const { req, res, head } = ctx;
      const started = performance.now();
      let directive: ScaleDirective;
      try {
        directive = directives.get(head.sendData as string);
      } catch (err) {
        ctx.log.error({ err, subsystem: 'scaler', outcome: FAILED }, 'invalid send-scaled-img instruction');
        metrics?.imageResize(FAILED);
        ctx.fail(err);
        return;
      }
      const negotiated = negotiates && !directive.keepFormat;
      // Chosen from the request's headers alone, before the original is opened.
      const format = negotiated ? chooseFormat(rawHeader(req, 'accept'), directive.contentType) : undefined;
      // Every answer to a negotiated instruction, errors included, varies by Accept.
      const vary = negotiated ? varyWithAccept(backendVary(head.headers)) : undefined;
      try {
        // The call's signal is made only if scaling or a fetch asks for it: never for a hit or a 304.
        const outcome = await scaler.scale({ directive, format, ifModifiedSince: rawHeader(req, 'if-modified-since'), client: ctx });
        if (ctx.clientGone) {
          if (outcome.outcome === 'served-original' && outcome.body instanceof Readable) outcome.body.destroy();
          return;
        }
        const headers = withoutNamed(head.headers, vary === undefined ? REPLACED : REPLACED_AND_VARY);
        if (vary !== undefined) headers.push('Vary', vary);
        if (outcome.lastModified !== undefined) headers.push('Last-Modified', outcome.lastModified);
        headers.push('X-Accel-Buffering', 'no');
        if (outcome.outcome === 'not-modified') {
          res.writeHead(304, headers).end();
          logOutcome(ctx, outcomeLine, directive, format, outcome.outcome, msSince(started, 100));
          metrics?.imageResize(outcome.outcome);
          metrics?.imageResizeDuration(directive.contentType, directive.width, (performance.now() - started) / 1000);
          return;
        }
        if (outcome.outcome !== 'served-original') {
          headers.push('Content-Type', outcome.contentType, 'Content-Length', String(outcome.body.length));
          res.writeHead(200, headers).end(outcome.body);
          // 'scaled' ran a sharp job; 'cache-hit' and 'coalesced' (shared a concurrent job) did not.
          logOutcome(ctx, outcomeLine, directive, format, outcome.outcome, msSince(started, 100), {
            bytesWritten: outcome.body.length,
            originalBytes: outcome.originalBytes,
          });
          metrics?.imageResize(outcome.outcome);
          metrics?.imageResizeDuration(outcome.contentType, directive.width, (performance.now() - started) / 1000);
          return;
        }
        // Served as it is. An unrecognised format (SVG, GIF…) is never labelled as an image it is not;
        // an original too large to look at keeps the directive's type when that is PNG or JPEG.
        const type = outcome.contentType ?? (SAFE_TYPES.has(directive.contentType) ? directive.contentType : 'application/octet-stream');
        headers.push('Content-Type', type, 'X-Content-Type-Options', 'nosniff');
        if (outcome.size !== undefined) headers.push('Content-Length', String(outcome.size));
        ctx.log.warn(
          {
            ...outcomeFields(directive, format),
            outcome: outcome.outcome,
            reason: outcome.reason,
            originalBytes: outcome.size,
            err: outcome.error,
          },
          'scaler served the original',
        );
        metrics?.imageResize(outcome.outcome);
        if (outcome.reason === 'busy') metrics?.imageResizeLimitExceeded();
        if (Buffer.isBuffer(outcome.body)) res.writeHead(200, headers).end(outcome.body);
        else {
          const sent = await sendBody(outcome.body, res, outcome.size, () => res.writeHead(200, headers));
          if (!sent.complete && !ctx.clientGone) {
            if (sent.started) ctx.log.warn({ err: sent.err, subsystem: 'scaler' }, 'original image transfer cut');
            else {
              // The original failed before its first byte: nothing was sent, so the client is told.
              ctx.log.warn({ err: sent.err, subsystem: 'scaler' }, 'original image could not be read');
              if (vary !== undefined) res.setHeader('Vary', vary);
              ctx.fail(new EdgeSourceUnavailable());
            }
          }
        }
      } catch (err) {
        if (ctx.clientGone) return;
        ctx.log.error({ err, subsystem: 'scaler', outcome: FAILED, durationMs: Math.round(performance.now() - started) }, 'scaler failed');
        metrics?.imageResize(FAILED);
        // The scaler throws only ScaleError: an invalid directive (502 as invalid) or an unreadable source.
        // Its answer varies by Accept too, as every answer to a negotiated instruction does.
        if (vary !== undefined && !res.headersSent) res.setHeader('Vary', vary);
        ctx.fail(err);
      }
    },
  };
}

/** The outcome of an instruction that could not be followed: an error answer. */
const FAILED: ScaleOutcomeName = 'failed';

const OUTCOME_FIELDS = ['subsystem', 'width', 'contentType', 'format', 'outcome', 'durationMs', 'bytesWritten', 'originalBytes'];

/**
 * The fields every scaler outcome line starts with (the direct line below writes the same):
 * `format` is the one chosen by Accept, `source` for the source's own.
 */
function outcomeFields(
  directive: ScaleDirective,
  format: ModernFormat | undefined,
): { subsystem: 'scaler'; width: number; contentType: string; format: ModernFormat | 'source' } {
  return { subsystem: 'scaler', width: directive.width, contentType: directive.contentType, format: format ?? 'source' };
}

/**
 * The info line of a scaled or not-modified answer, the same as
 * `ctx.log.info({ subsystem: 'scaler', width, contentType, outcome, durationMs, …sizes }, 'scaler')`:
 * written directly when it can be, so a cache hit makes no child logger.
 */
function logOutcome(
  ctx: InterceptContext,
  line: DirectLine | undefined,
  directive: ScaleDirective,
  format: ModernFormat | undefined,
  outcome: Exclude<ScaleOutcomeName, 'served-original' | 'failed'>,
  durationMs: number,
  sizes?: { bytesWritten: number; originalBytes: number },
): void {
  if (line === undefined) {
    ctx.log.info({ ...outcomeFields(directive, format), outcome, durationMs, ...sizes }, 'scaler');
    return;
  }
  if (!line.enabled()) return;
  line.write(
    ctx.requestId,
    `,"subsystem":"scaler","width":${directive.width},"contentType":${jsonString(directive.contentType)},"format":"${format ?? 'source'}","outcome":"${outcome}","durationMs":${durationMs}${sizes === undefined ? '' : `,"bytesWritten":${sizes.bytesWritten},"originalBytes":${sizes.originalBytes}`}`,
  );
}

/**
 * Recent results of a pure function of a string, at most `size`: avatars repeat, so most
 * directives are decoded and validated once. Two generations instead of an exact LRU, so a hit
 * is one lookup and moves nothing: a key asked again since the current generation began is in
 * it; one from the generation before is carried over; older ones are computed again. Failures
 * are not kept.
 */
class Memo<T> {
  private recent = new Map<string, T>();
  private older = new Map<string, T>();
  private readonly half: number;
  private readonly compute: (key: string) => T;

  constructor(size: number, compute: (key: string) => T) {
    this.half = Math.max(1, size >> 1);
    this.compute = compute;
  }

  get(key: string): T {
    let value = this.recent.get(key);
    if (value !== undefined) return value;
    value = this.older.get(key) ?? this.compute(key);
    if (this.recent.size >= this.half) {
      this.older = this.recent;
      this.recent = new Map();
    }
    this.recent.set(key, value);
    return value;
  }
}
