import type { Readable } from 'node:stream';
import { StoreError } from './errors.js';
import type { RemoteDestination, StoreOptions } from './types.js';

/** One presigned PUT of the whole stream (chunked when its length is not known in advance). */
export async function putSingle(body: Readable, dest: RemoteDestination, opts: StoreOptions, signal: AbortSignal) {
  const headers = { ...dest.putHeaders };
  if (opts.size !== undefined) headers['content-length'] = String(opts.size);
  const res = await opts.outbound.request(dest.storeUrl, { method: 'PUT', headers, body, signal });
  await res.body.dump({ limit: 64 * 1024 }).catch(() => undefined);
  if (body.errored) throw body.errored;
  if (res.statusCode < 200 || res.statusCode > 299)
    throw new StoreError('object-storage', `object storage answered ${res.statusCode} to the upload`);
}
