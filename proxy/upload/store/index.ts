import { createHash, type Hash, randomUUID } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { type FileHandle, mkdir, open, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { addAbortSignal, finished, type Readable, Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { UploadHash } from '../../../protocol/upload-fields.js';
import type { Outbound } from '../../outbound/client.js';

/** Where the backend said a file goes (the authorize answer), or `temp_dir` for routes without one. */
export type Destination =
  | { kind: 'local'; dir: string }
  | {
      kind: 'remote';
      /** Where the backend reads the object (`<f>.remote_url`) and its id (`<f>.remote_id`). */
      getUrl: string;
      id: string;
      storeUrl: string;
      deleteUrl: string | undefined;
      putHeaders: Record<string, string>;
      timeoutMs: number;
      multipart: { partSize: number; partUrls: string[]; completeUrl: string; abortUrl: string | undefined } | undefined;
    };

export interface StoredFile {
  path: string;
  remoteUrl: string;
  remoteId: string;
  size: number;
  hashes: Partial<Record<UploadHash, string>>;
  durationS: number;
}

/**
 * Why an upload could not be stored: the body is too large or malformed (the client's doing), the
 * store did not answer in time, the local disk failed (Outrider's own fault), or object storage
 * failed (an upstream's). It names what failed, never an HTTP status: `proxy/errors.ts` maps it.
 */
export type StoreFailure = 'too-large' | 'invalid' | 'timeout' | 'disk' | 'object-storage';

export class StoreError extends Error {
  override name = 'StoreError';
  readonly reason: StoreFailure;
  constructor(reason: StoreFailure, message: string, options?: ErrorOptions) {
    super(message, options);
    this.reason = reason;
  }
}

/**
 * Counts and hashes the bytes going through in the same pass (md5, sha1, sha256, sha512, or the
 * backend's `UploadHashFunctions`), and fails with a 413 past `maxSize` (0: no limit): the file is
 * refused as soon as it is too large, never after it was stored whole.
 */
export class Meter extends Transform {
  size = 0;
  private readonly hashes: [UploadHash, Hash][];
  private readonly maxSize: number;

  constructor(hashes: readonly UploadHash[], maxSize: number) {
    super();
    this.hashes = hashes.map((name) => [name, createHash(name)]);
    this.maxSize = maxSize;
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.size += chunk.length;
    if (this.maxSize > 0 && this.size > this.maxSize) {
      callback(new StoreError('too-large', `the file is larger than the ${this.maxSize} bytes allowed`));
      return;
    }
    for (const [, hash] of this.hashes) hash.update(chunk);
    callback(null, chunk);
  }

  digests(): Partial<Record<UploadHash, string>> {
    return Object.fromEntries(this.hashes.map(([name, hash]) => [name, hash.digest('hex')]));
  }
}

/** Everything one request stored, removed when the request is over, whatever way it ends. */
export class Stash {
  private readonly files: string[] = [];
  private readonly remote: string[] = [];
  private readonly outbound: Outbound;

  constructor(outbound: Outbound) {
    this.outbound = outbound;
  }

  /** A new file name inside `dir`, never derived from the client's file name. */
  newFile(dir: string): string {
    const path = join(dir, `outrider-upload-${randomUUID()}`);
    this.files.push(path);
    return path;
  }

  /** A remote temporary object to delete (`DeleteURL`) when the request ends. */
  remoteObject(deleteUrl: string): void {
    this.remote.push(deleteUrl);
  }

  private readonly pending: Promise<unknown>[] = [];
  private cleared = false;

  /**
   * A store in progress: clearing waits for it, so a file it is still creating is removed too; one
   * that starts after the request ended (a late authorize answer) is cleared when it settles.
   */
  track(work: Promise<unknown>): void {
    this.pending.push(work);
    if (this.cleared) void work.catch(() => undefined).finally(() => void this.clear());
  }

  /** Removes every file and remote object; failures are returned for the log, never thrown. */
  async clear(): Promise<unknown[]> {
    this.cleared = true;
    // Stores stop at once when the request is aborted; the bound only guards against one that does not.
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.allSettled(this.pending.splice(0)),
      new Promise((resolve) => {
        timer = setTimeout(resolve, 30_000);
      }),
    ]);
    clearTimeout(timer);
    const errors: unknown[] = [];
    const files = this.files.splice(0);
    const remote = this.remote.splice(0);
    await Promise.all([
      ...files.map((f) => rm(f, { force: true }).catch((err: unknown) => errors.push(err))),
      ...remote.map(async (url) => {
        try {
          const res = await this.outbound.request(url, { method: 'DELETE', signal: AbortSignal.timeout(30_000) });
          await res.body.dump({ limit: 1 });
        } catch (err) {
          errors.push(err);
        }
      }),
    ]);
    return errors;
  }
}

export interface StoreOptions {
  destination: Destination;
  hashes: readonly UploadHash[];
  /** Bytes allowed (`MaximumSize`); 0: no limit. */
  maxSize: number;
  /** The exact size when the client declared it (a body upload's Content-Length). */
  size?: number;
  stash: Stash;
  outbound: Outbound;
  /** Scratch space for object-storage multipart parts. */
  tempDir: string;
  signal: AbortSignal;
}

/** Stores one file stream at its destination, hashing it on the way; backpressure all along. */
export function storeFile(input: Readable, opts: StoreOptions): Promise<StoredFile> {
  const work = store(input, opts);
  opts.stash.track(work);
  return work;
}

async function store(input: Readable, opts: StoreOptions): Promise<StoredFile> {
  const started = performance.now();
  const meter = new Meter(opts.hashes, opts.maxSize);
  const dest = opts.destination;
  const fail = (err: unknown): never => {
    if (err instanceof StoreError) throw err;
    if (opts.signal.aborted) throw err;
    const name = (err as Error).name;
    if (name === 'TimeoutError') throw new StoreError('timeout', 'object storage did not answer in time', { cause: err });
    // A local disk that fails is Outrider's own fault; object storage is an upstream.
    throw new StoreError(dest.kind === 'local' ? 'disk' : 'object-storage', 'the file could not be stored', { cause: err });
  };
  let path = '';
  try {
    if (dest.kind === 'local') {
      await mkdir(dest.dir, { recursive: true, mode: 0o700 });
      path = opts.stash.newFile(dest.dir);
      const stop = feed(input, meter);
      try {
        await pipeline(meter, createWriteStream(path, { flags: 'wx', mode: 0o600 }), { signal: opts.signal });
      } finally {
        stop();
      }
    } else {
      const signal = AbortSignal.any([opts.signal, AbortSignal.timeout(dest.timeoutMs)]);
      if (dest.deleteUrl !== undefined) opts.stash.remoteObject(dest.deleteUrl);
      // The metered stream is what is sent: the input's errors reach it, the client leaving or the
      // timeout ends it, and its own errors (a 413) surface through whoever reads it.
      meter.on('error', () => undefined);
      addAbortSignal(signal, meter);
      const stop = feed(input, meter);
      try {
        if (dest.multipart !== undefined && dest.multipart.partSize > 0) await putMultipart(meter, dest.multipart, { ...opts, signal });
        else await putSingle(meter, dest, opts, signal);
      } finally {
        // Whatever way it ended, nothing is left flowing.
        stop();
        if (!meter.readableEnded) meter.destroy();
      }
    }
  } catch (err) {
    // A 413 raised while the bytes were being sent surfaces as the sender's error: the cause wins.
    fail(meter.errored instanceof StoreError ? meter.errored : err);
  }
  if (opts.size !== undefined && meter.size !== opts.size) {
    throw new StoreError('invalid', `the body ended after ${meter.size} of ${opts.size} bytes`);
  }
  return {
    path,
    remoteUrl: dest.kind === 'remote' ? dest.getUrl : '',
    remoteId: dest.kind === 'remote' ? dest.id : '',
    size: meter.size,
    hashes: meter.digests(),
    durationS: Math.round(performance.now() - started) / 1000,
  };
}

/**
 * Pipes `input` into `meter` without tying their fates: the input's failure or premature end
 * fails the meter, but a store that fails (a 413 past MaximumSize) leaves the input as it is. The
 * input may be the client's request itself (a body upload): destroying it would close the
 * connection before the client is answered. Returns a function that detaches the two.
 */
function feed(input: Readable, meter: Meter): () => void {
  const detach = finished(input, { writable: false }, (err) => {
    if (err) meter.destroy(err);
  });
  input.pipe(meter);
  return () => {
    detach();
    input.unpipe(meter);
  };
}

/** One presigned PUT of the whole stream (chunked when its length is not known in advance). */
async function putSingle(body: Readable, dest: Extract<Destination, { kind: 'remote' }>, opts: StoreOptions, signal: AbortSignal) {
  const headers = { ...dest.putHeaders };
  if (opts.size !== undefined) headers['content-length'] = String(opts.size);
  const res = await opts.outbound.request(dest.storeUrl, { method: 'PUT', headers, body, signal });
  await res.body.dump({ limit: 64 * 1024 }).catch(() => undefined);
  if (body.errored) throw body.errored;
  if (res.statusCode < 200 || res.statusCode > 299)
    throw new StoreError('object-storage', `object storage answered ${res.statusCode} to the upload`);
}

/**
 * The presigned multipart upload: the stream is cut into `PartSize` parts, each written to a
 * scratch file first (a part needs its exact length, and memory stays flat whatever PartSize is),
 * PUT to its own URL, then the list of ETags is POSTed to CompleteURL. Any failure aborts the
 * upload at AbortURL. More parts than URLs means the file is too large.
 */
async function putMultipart(
  stream: Readable,
  mp: NonNullable<Extract<Destination, { kind: 'remote' }>['multipart']>,
  opts: StoreOptions,
): Promise<void> {
  const etags: string[] = [];
  await mkdir(opts.tempDir, { recursive: true, mode: 0o700 });
  let part: { path: string; file: FileHandle; size: number } | undefined;
  const startPart = async () => {
    const path = opts.stash.newFile(opts.tempDir);
    part = { path, file: await open(path, 'wx', 0o600), size: 0 };
    return part;
  };
  const sendPart = async () => {
    const current = part as NonNullable<typeof part>;
    part = undefined;
    await current.file.close();
    const index = etags.length;
    const url = mp.partUrls[index];
    if (url === undefined) throw new StoreError('too-large', `the file needs more than the ${mp.partUrls.length} parts allowed`);
    const body = createReadStream(current.path);
    let res: Awaited<ReturnType<Outbound['request']>>;
    try {
      res = await opts.outbound.request(url, {
        method: 'PUT',
        headers: { 'content-length': String(current.size) },
        body,
        signal: opts.signal,
      });
    } finally {
      body.destroy();
    }
    await res.body.dump({ limit: 64 * 1024 }).catch(() => undefined);
    await rm(current.path, { force: true });
    const etag = res.headers.etag;
    if (res.statusCode < 200 || res.statusCode > 299 || typeof etag !== 'string') {
      throw new StoreError('object-storage', `object storage answered ${res.statusCode} to part ${index + 1}`);
    }
    etags.push(etag);
  };
  try {
    for await (const chunk of stream) {
      let data = chunk as Buffer;
      while (data.length > 0) {
        const current = part ?? (await startPart());
        const slice = data.subarray(0, Math.min(data.length, mp.partSize - current.size));
        data = data.subarray(slice.length);
        for (let written = 0; written < slice.length; ) {
          written += (await current.file.write(slice, written, slice.length - written)).bytesWritten;
        }
        current.size += slice.length;
        if (current.size === mp.partSize) await sendPart();
      }
    }
    // The last, short part; an empty file is still one (empty) part.
    if (part !== undefined || etags.length === 0) {
      if (part === undefined) await startPart();
      await sendPart();
    }
    const xml = `<CompleteMultipartUpload>${etags.map((etag, i) => `<Part><PartNumber>${i + 1}</PartNumber><ETag>${escapeXml(etag)}</ETag></Part>`).join('')}</CompleteMultipartUpload>`;
    const done = await opts.outbound.request(mp.completeUrl, {
      method: 'POST',
      headers: { 'content-type': 'application/xml', 'content-length': String(Buffer.byteLength(xml)) },
      body: xml,
      signal: opts.signal,
    });
    // S3 may answer 200 and put an <Error> in the body: the first bytes tell.
    let head = '';
    for await (const chunk of done.body) {
      head += (chunk as Buffer).toString('utf8');
      if (head.length > 4096) break;
    }
    done.body.destroy();
    if (done.statusCode < 200 || done.statusCode > 299 || head.includes('<Error>')) {
      throw new StoreError('object-storage', `object storage answered ${done.statusCode} to completing the upload`);
    }
  } catch (err) {
    if (mp.abortUrl !== undefined) {
      await opts.outbound
        .request(mp.abortUrl, { method: 'DELETE', signal: AbortSignal.timeout(30_000) })
        .then((res) => res.body.dump({ limit: 1 }))
        .catch(() => undefined);
    }
    throw err;
  } finally {
    // A part being written when it failed: its descriptor is closed here, its file by the stash.
    await (part as { file: FileHandle } | undefined)?.file.close().catch(() => undefined);
  }
}

function escapeXml(text: string): string {
  return text.replace(/[<>&'"]/g, (c) => `&#${c.charCodeAt(0)};`);
}
