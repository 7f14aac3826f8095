import type { Readable } from 'node:stream';
import { type CachedImage, cacheKey, ScaledCache } from './cache.js';
import { isNotModified, lastModified } from './conditional.js';
import type { ImageLocation, ScaleDirective } from './directive.js';
import { ScaleError } from './errors.js';
import { createGate, type Gate } from './gate.js';
import { type ImageFormat, MAGIC_LENGTH, type ModernFormat, OUTPUT_TYPES, type OutputType, precheck, sniffFormat } from './limits.js';
import type { ScaleOutcomeName } from './outcomes.js';
import { Prefix } from './prefix.js';
import { inspect, RENDER_SETTINGS, render } from './scale.js';
import type { SharedCache } from './shared-cache.js';

export type { ImageLocation, ScaleDirective } from './directive.js';
export { parseDirective } from './directive.js';
export { ScaleError, type ScaleErrorCode } from './errors.js';
export type { ModernFormat, OutputFormat, OutputType } from './limits.js';
export { IMAGE_RESIZE_STATUS, type ImageResizeStatus, SCALE_OUTCOMES, type ScaleOutcomeName } from './outcomes.js';
export { createSharedCache, type SharedCache, type SharedCacheEvents, type SharedCacheOptions } from './shared-cache.js';

/** An opened original image: what is known before reading it, and its bytes once. */
export interface OpenedImage {
  /** Bytes, when known up front (a file's size, a Content-Length). */
  size: number | undefined;
  /** Modification time in ms (0 when unknown). */
  mtimeMs: number;
  /** The whole original, from its first byte; called at most once, and only when it is needed. */
  body(): Readable;
  /** Releases the source without reading it (not modified, client gone). */
  discard(): void;
  /**
   * What identifies these exact bytes (a path with its inode, mtime, ctime and size; a URL with its
   * validators), or undefined when nothing does: then the result is neither cached nor shared.
   */
  identity: string | undefined;
}

/** Whose leaving cancels the work: its `signal` is read only when scaling or a fetch needs it. */
export interface ClientSignal {
  readonly signal: AbortSignal;
}

/** Opens originals; throws `ScaleError('EDGE_SOURCE_UNAVAILABLE')` when it cannot. */
export interface ImageSource {
  /** `client.signal` is read only when a cancellable operation needs it (a fetch); a file never does. */
  open(location: ImageLocation, client: ClientSignal): Promise<OpenedImage>;
}

export interface ScalerOptions {
  maxScalerProcs: number;
  maxScalerWaitMs: number;
  /** Requests that may wait for a slot at once (`max_scaler_queue`); more get the original at once. */
  maxScalerQueue: number;
  maxFilesize: number;
  limitInputPixels: number;
  /** Bytes of scaled images kept in memory (`cache_max_bytes`); 0 keeps none. */
  cacheMaxBytes: number;
}

export interface ScaleRequest {
  directive: ScaleDirective;
  /** The format the client accepts in place of the source's own; undefined keeps the source's. */
  format?: ModernFormat | undefined;
  ifModifiedSince: string | undefined;
  /**
   * Its signal is aborted when the client goes away. Read only when scaling (for its slot) or a
   * fetch needs it, so a caller may make it on demand: a 304 or a cache hit from a file never asks.
   */
  client: ClientSignal;
}

export type OriginalReason =
  | 'too-large'
  | 'too-small'
  | 'unsupported-format'
  | 'too-many-pixels'
  | 'not-larger'
  | 'busy'
  | 'scaling-failed';

/** What the scaler did, named by its outcome (`outcomes.ts`): the log line and the metrics use the same name. */
export type ScaleOutcome =
  | { outcome: 'not-modified'; lastModified: string | undefined }
  | {
      /** Scaled for this request, taken from the cache, or shared with a concurrent identical request. */
      outcome: Extract<ScaleOutcomeName, 'scaled' | 'cache-hit' | 'shared-hit' | 'coalesced'>;
      body: Buffer;
      contentType: OutputType;
      width: number;
      originalBytes: number;
      lastModified: string | undefined;
    }
  | {
      outcome: 'served-original';
      reason: OriginalReason;
      body: Buffer | Readable;
      /** Known when the whole original is in `body` as a Buffer or its size was known. */
      size: number | undefined;
      /** From the magic bytes; undefined when the original was not read (too large to look at). */
      contentType: string | undefined;
      lastModified: string | undefined;
      error?: unknown;
    };

export interface Scaler {
  scale(req: ScaleRequest): Promise<ScaleOutcome>;
  readonly gate: Gate;
  readonly cache: ScaledCache;
}

/**
 * The last cache key made for each directive and format, with the identity it was made from: a
 * directive asked again for unchanged bytes reuses its key, and with it the hash V8 keeps in the
 * string. Directives come from a memo of the instruction header, so the same avatar is the same object.
 */
type KeySlot = ModernFormat | 'source';
const lastKeys = new WeakMap<ScaleDirective, Partial<Record<KeySlot, { identity: string; key: string }>>>();
function keyFor(directive: ScaleDirective, format: ModernFormat | undefined, identity: string): string {
  const slot: KeySlot = format ?? 'source';
  let keys = lastKeys.get(directive);
  const last = keys?.[slot];
  if (last !== undefined && last.identity === identity) return last.key;
  const key = cacheKey(identity, directive.width, slot, RENDER_SETTINGS);
  if (keys === undefined) {
    keys = {};
    lastKeys.set(directive, keys);
  }
  keys[slot] = { identity, key };
  return key;
}

/**
 * The image scaler, Workhorse's order of checks: Last-Modified and 304 before any byte is read;
 * then the original is served as it is when it is too large, too small, not PNG/JPEG, all slots
 * are busy, it has too many pixels, or it is not wider than asked; otherwise sharp scales it.
 * Outside a scaling slot only the first chunk is read (the magic bytes); an original is read whole,
 * up to `maxFilesize`, only inside a slot, so memory is bounded by slots × `maxFilesize`. Originals
 * served as they are stream from the source. A sharp failure happens before any byte is sent, so
 * the original is served instead.
 */
export function createScaler(opts: ScalerOptions, source: ImageSource, shared?: SharedCache): Scaler {
  const gate = createGate({ concurrency: opts.maxScalerProcs, maxWaitMs: opts.maxScalerWaitMs, maxQueue: opts.maxScalerQueue });
  const cache = new ScaledCache(opts.cacheMaxBytes);
  // Scaling jobs in progress by cache key: identical concurrent requests wait for the one job.
  const inflight = new Map<string, Promise<CachedImage | undefined>>();

  async function scale(req: ScaleRequest): Promise<ScaleOutcome> {
    const { directive } = req;
    const image = await source.open(directive.location, req.client);
    const modified = lastModified(image.mtimeMs);
    if (isNotModified(req.ifModifiedSince, image.mtimeMs)) {
      image.discard();
      return { outcome: 'not-modified', lastModified: modified };
    }
    const key = image.identity === undefined ? undefined : keyFor(directive, req.format, image.identity);
    let settle: ((image: CachedImage | undefined) => void) | undefined;
    if (key !== undefined) {
      const hit = cache.get(key);
      if (hit !== undefined) {
        image.discard();
        return {
          outcome: 'cache-hit',
          body: hit.body,
          contentType: hit.contentType,
          width: hit.width,
          originalBytes: hit.originalBytes,
          lastModified: modified,
        };
      }
      const pending = inflight.get(key);
      if (pending !== undefined) {
        // Another request is scaling these same bytes to this width: its result is this one's.
        const shared = await pending;
        if (shared !== undefined) {
          image.discard();
          return { outcome: 'coalesced', ...shared, lastModified: modified };
        }
        // It served the original instead (busy, not larger…): this request decides for itself.
      } else {
        inflight.set(key, new Promise((resolve) => (settle = resolve)));
      }
    }
    // The shared tier (Redis), after the local cache: a result any node stored, else this
    // request's lease to make it, else another node's result once it is there.
    let lease: { fill(image: CachedImage): void; release(): void } | undefined;
    try {
      // Also when a concurrent identical request here found nothing to share (its client left, it
      // served an original): each then asks Redis, so one of them takes the lease, not all scale.
      if (shared !== undefined && key !== undefined) {
        const found = await shared.lookup(key);
        let stored = found.kind === 'hit' ? found.image : undefined;
        if (found.kind === 'held') stored = await shared.wait(key, req.client.signal);
        if (found.kind === 'lease') lease = found;
        if (stored !== undefined) {
          image.discard();
          cache.set(key, stored);
          settle?.(stored);
          return { outcome: 'shared-hit', ...stored, lastModified: modified };
        }
      }
      const outcome = await scaleOpened(req, image, modified);
      if (outcome.outcome === 'scaled' && key !== undefined) {
        const scaled: CachedImage = {
          body: outcome.body,
          contentType: outcome.contentType,
          width: outcome.width,
          originalBytes: outcome.originalBytes,
        };
        cache.set(key, scaled);
        settle?.(scaled);
        lease?.fill(scaled);
      }
      return outcome;
    } finally {
      // Scaled nothing (the original was served, the client left): the lease goes, so others stop waiting.
      lease?.release();
      if (settle !== undefined && key !== undefined) {
        settle(undefined);
        inflight.delete(key);
      }
    }
  }

  async function scaleOpened(req: ScaleRequest, image: OpenedImage, modified: string | undefined): Promise<ScaleOutcome> {
    const { directive } = req;
    const original = (
      reason: OriginalReason,
      body: Buffer | Readable,
      size: number | undefined,
      format?: ImageFormat | null,
      error?: unknown,
    ): ScaleOutcome => ({
      outcome: 'served-original',
      reason,
      body,
      size,
      // From the magic bytes; null: they matched nothing; undefined: the original was not read.
      contentType: format === undefined ? undefined : format === null ? 'application/octet-stream' : OUTPUT_TYPES[format],
      // Busy is a moment's state: without a validator a browser cannot revalidate this original into
      // a 304 and keep it in place of the scaled image; it asks again next time.
      lastModified: reason === 'busy' ? undefined : modified,
      ...(error === undefined ? {} : { error }),
    });
    // The first chunk opens the source (a file that vanished fails here, before any header is
    // sent) and holds the magic bytes. Nothing more is read outside a scaling slot, so memory is
    // bounded by max_scaler_procs × max_filesize whatever the number of requests.
    const prefix = new Prefix(image.body());
    try {
      await prefix.fill(MAGIC_LENGTH);
    } catch (err) {
      prefix.release();
      throw err;
    }
    const checked = precheck(image.size ?? (prefix.total > opts.maxFilesize ? prefix.total : undefined), prefix.bytes(), opts.maxFilesize);
    const sniffed = sniffFormat(prefix.bytes()) ?? null;
    if (checked === 'too-small') return original(checked, prefix.bytes(), prefix.total, null);
    if (checked !== 'png' && checked !== 'jpeg') return original(checked, prefix.stream(), image.size, sniffed);
    const format = checked;
    const output = req.format ?? format;

    let input: Buffer | undefined;
    const result = await gate
      .run(async () => {
        input = await prefix.readAll(opts.maxFilesize);
        if (input === undefined) return 'too-large';
        const found = await inspect(input, directive.width, opts.limitInputPixels);
        if (found.kind !== 'ok') return found.kind;
        try {
          return await render(input, output, directive.width, opts.limitInputPixels, found.rotated);
        } catch (error) {
          // Corrupt data behind valid magic bytes, a truncated file: nothing was sent yet.
          return { error };
        }
      }, req.client.signal)
      .catch((err: unknown) => {
        prefix.release();
        throw err;
      });
    if (!result.admitted || result.value === 'too-large' || input === undefined) {
      return original(result.admitted ? 'too-large' : 'busy', prefix.stream(), image.size, format);
    }
    prefix.release();
    const value = result.value;
    if (value === 'too-many-pixels' || value === 'not-larger') return original(value, input, input.length, format);
    if (value === 'unreadable') return original('scaling-failed', input, input.length, format);
    if ('error' in value) return original('scaling-failed', input, input.length, format, value.error);
    return {
      outcome: 'scaled',
      body: value.body,
      contentType: OUTPUT_TYPES[output],
      width: value.width,
      originalBytes: input.length,
      lastModified: modified,
    };
  }

  return {
    gate,
    cache,
    async scale(req) {
      try {
        return await scale(req);
      } catch (err) {
        if (err instanceof ScaleError) throw err;
        throw new ScaleError('EDGE_SOURCE_UNAVAILABLE', 'the image could not be read', { cause: err });
      }
    },
  };
}
