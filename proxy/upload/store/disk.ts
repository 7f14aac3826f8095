import { createWriteStream } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { feed, type Meter } from './meter.js';
import type { StoreOptions } from './types.js';

/**
 * Writes the metered stream to a new file in `dir` (created 0700 if missing; the file 0600, never an
 * existing one) and returns its path. The stash owns the file from the moment it is named.
 */
export async function writeLocal(
  input: Readable,
  meter: Meter,
  dir: string,
  opts: Pick<StoreOptions, 'stash' | 'signal'>,
): Promise<string> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const path = opts.stash.newFile(dir);
  const stop = feed(input, meter);
  try {
    await pipeline(meter, createWriteStream(path, { flags: 'wx', mode: 0o600 }), { signal: opts.signal });
  } finally {
    stop();
  }
  return path;
}
