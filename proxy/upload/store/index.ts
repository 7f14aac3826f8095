import { addAbortSignal, type Readable } from 'node:stream';
import { writeLocal } from './disk.js';
import { StoreError } from './errors.js';
import { feed, Meter } from './meter.js';
import { putMultipart } from './multipart.js';
import { putSingle } from './presigned.js';
import type { RemoteDestination, StoredFile, StoreOptions } from './types.js';

export type { Destination, StoredFile, StoreOptions } from './types.js';

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
    if (dest.kind === 'local') path = await writeLocal(input, meter, dest.dir, opts);
    else await putRemote(input, meter, dest, opts);
  } catch (err) {
    // A 'too-large' raised while the bytes were being sent surfaces as the sender's error: the cause wins.
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
 * Sends the metered stream to object storage, as one presigned PUT or as a presigned multipart
 * upload when the backend gave part URLs; the object is deleted (`DeleteURL`) when the request ends.
 */
async function putRemote(input: Readable, meter: Meter, dest: RemoteDestination, opts: StoreOptions): Promise<void> {
  const signal = AbortSignal.any([opts.signal, AbortSignal.timeout(dest.timeoutMs)]);
  if (dest.deleteUrl !== undefined) opts.stash.remoteObject(dest.deleteUrl);
  // The metered stream is what is sent: the input's errors reach it, the client leaving or the
  // timeout ends it, and its own errors ('too-large') surface through whoever reads it.
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
