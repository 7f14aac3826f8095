import { addAbortSignal, type Readable } from 'node:stream';
import { DirectiveError } from '../../../protocol/send-data.js';
import { writeLocal } from './disk.js';
import { StoreError } from './errors.js';
import { feed, Meter } from './meter.js';
import { putMultipart } from './multipart.js';
import { putSingle } from './presigned.js';
import type { RemoteDestination, StoredFile, StoreOptions } from './types.js';

export { createObjectStorage, type ObjectStorage } from './client.js';
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
    if (err instanceof StoreError || err instanceof DirectiveError) throw err;
    if (opts.signal.aborted) throw err;
    const name = (err as Error).name;
    if (name === 'TimeoutError') throw new StoreError('timeout', 'object storage did not answer in time', { cause: err });
    // A local disk that fails is Outrider's own fault; object storage is an upstream.
    throw new StoreError(dest.kind === 'local' ? 'disk' : 'object-storage', 'the file could not be stored', { cause: err });
  };
  const remote = dest.kind === 'remote' ? remoteCleanup(dest, opts) : undefined;
  let path = '';
  try {
    if (dest.kind === 'local') path = await writeLocal(input, meter, dest.dir, opts);
    else await putRemote(input, meter, dest, opts, () => remote?.stored());
    if (opts.size !== undefined && meter.size !== opts.size) {
      throw new StoreError('invalid', `the body ended after ${meter.size} of ${opts.size} bytes`);
    }
  } catch (err) {
    remote?.failed();
    // A 'too-large' raised while the bytes were being sent surfaces as the sender's error: the cause wins.
    fail(meter.errored instanceof StoreError ? meter.errored : err);
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
 * When the temporary object goes (Workhorse `uploader.consume`). Without SkipDelete it is deleted
 * when the request ends, whatever happened: the backend copied it or refused it. With SkipDelete
 * (the object is at its final path) it is kept once stored, even when the backend then refuses the
 * request, and deleted only when storing it failed. The own client deletes only an object it
 * stored (Workhorse `S3v2Object.Delete`); a presigned DeleteURL is called either way.
 */
function remoteCleanup(dest: RemoteDestination, opts: StoreOptions): { stored(): void; failed(): void } {
  const client = dest.client;
  const storage = opts.objectStorage;
  const remove =
    client !== undefined
      ? storage === undefined
        ? undefined
        : () => opts.stash.onClear(() => storage.remove(client))
      : dest.deleteUrl === undefined
        ? undefined
        : () => opts.stash.remoteObject(dest.deleteUrl as string);
  let uploaded = false;
  let registered = false;
  const schedule = () => {
    if (remove === undefined || registered) return;
    registered = true;
    remove();
  };
  // Workhorse starts the presigned delete with the upload: it runs when the request ends.
  if (!dest.skipDelete && client === undefined) schedule();
  return {
    stored() {
      uploaded = true;
      if (!dest.skipDelete) schedule();
    },
    failed() {
      if (client === undefined || uploaded) schedule();
    },
  };
}

/**
 * Sends the metered stream to object storage: with the own client (`UseWorkhorseClient`), as a
 * presigned multipart upload when the backend gave part URLs, or as one presigned PUT.
 */
async function putRemote(input: Readable, meter: Meter, dest: RemoteDestination, opts: StoreOptions, stored: () => void): Promise<void> {
  const client = dest.client;
  if (client !== undefined && opts.objectStorage === undefined) {
    // Nothing was read or sent: the backend asked for a client this Outrider was not given.
    throw new DirectiveError(
      "the authorize answer asks for Outrider's own object storage client (RemoteObject.UseWorkhorseClient), but [object_storage] is not configured",
    );
  }
  const signal = AbortSignal.any([opts.signal, AbortSignal.timeout(dest.timeoutMs)]);
  // The metered stream is what is sent: the input's errors reach it, the client leaving or the
  // timeout ends it, and its own errors ('too-large') surface through whoever reads it.
  meter.on('error', () => undefined);
  addAbortSignal(signal, meter);
  const stop = feed(input, meter);
  try {
    if (client !== undefined) {
      await opts.objectStorage?.put(meter, client, { size: opts.size, maxSize: opts.maxSize, putHeaders: dest.putHeaders, signal });
    } else if (dest.multipart !== undefined && dest.multipart.partSize > 0) {
      await putMultipart(meter, dest.multipart, dest.putHeaders, { ...opts, signal });
    } else {
      await putSingle(meter, dest, opts, signal);
    }
    if (meter.errored) throw meter.errored;
    stored();
  } finally {
    // Whatever way it ended, nothing is left flowing.
    stop();
    if (!meter.readableEnded) meter.destroy();
  }
}
