import { createHash, type Hash } from 'node:crypto';
import { finished, type Readable, Transform, type TransformCallback } from 'node:stream';
import type { UploadHash } from '../../../protocol/upload-fields.js';
import { StoreError } from './errors.js';

/**
 * Counts and hashes the bytes going through in the same pass (md5, sha1, sha256, sha512, or the
 * backend's `UploadHashFunctions`), and fails with `StoreError('too-large')` past `maxSize` (0: no
 * limit): the file is refused as soon as it is too large, never after it was stored whole.
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

/**
 * Pipes `input` into `meter` without tying their fates: the input's failure or premature end
 * fails the meter, but a store that fails (too large past MaximumSize) leaves the input as it is. The
 * input may be the client's request itself (a body upload): destroying it would close the
 * connection before the client is answered. Returns a function that detaches the two.
 */
export function feed(input: Readable, meter: Meter): () => void {
  const detach = finished(input, { writable: false }, (err) => {
    if (err) meter.destroy(err);
  });
  input.pipe(meter);
  return () => {
    detach();
    input.unpipe(meter);
  };
}
