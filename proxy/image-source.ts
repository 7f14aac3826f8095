import { open } from 'node:fs/promises';
import { type ImageSource, ScaleError } from '../scaler/index.js';
import type { Outbound } from './outbound.js';

/**
 * Where the scaler's originals come from: a local file (size and mtime from fstat), or an
 * object-storage URL fetched through the outbound client (size from Content-Length, mtime from
 * Last-Modified, or now when absent, as in Workhorse). Anything but a readable regular file or a
 * 200 is EDGE_SOURCE_UNAVAILABLE.
 */
export function createImageSource(outbound: Outbound): ImageSource {
  return {
    async open(location, signal) {
      if (location.kind === 'file') {
        let handle: Awaited<ReturnType<typeof open>>;
        try {
          handle = await open(location.path, 'r');
        } catch (err) {
          throw new ScaleError('EDGE_SOURCE_UNAVAILABLE', 'the image file cannot be opened', { cause: err });
        }
        const stat = await handle.stat().catch(async (err: unknown) => {
          await handle.close();
          throw new ScaleError('EDGE_SOURCE_UNAVAILABLE', 'the image file cannot be read', { cause: err });
        });
        if (!stat.isFile()) {
          await handle.close();
          throw new ScaleError('EDGE_SOURCE_UNAVAILABLE', 'the image location is not a file');
        }
        const body = handle.createReadStream();
        return { size: stat.size, mtimeMs: stat.mtimeMs, body, discard: () => body.destroy() };
      }
      let res: Awaited<ReturnType<Outbound['request']>>;
      try {
        res = await outbound.request(location.url, { signal });
      } catch (err) {
        throw new ScaleError('EDGE_SOURCE_UNAVAILABLE', 'the image URL cannot be fetched', { cause: err });
      }
      // undici's body reports an error when destroyed outright; dump() discards it quietly.
      const discard = () => void res.body.dump({ limit: 0 }).catch(() => undefined);
      if (res.statusCode !== 200) {
        discard();
        throw new ScaleError('EDGE_SOURCE_UNAVAILABLE', `the image URL answered ${res.statusCode}`);
      }
      const length = Number(res.headers['content-length']);
      const modified = Date.parse(String(res.headers['last-modified'] ?? ''));
      return {
        size: Number.isInteger(length) && length >= 0 ? length : undefined,
        mtimeMs: Number.isNaN(modified) ? Date.now() : modified,
        body: res.body,
        discard,
      };
    },
  };
}
