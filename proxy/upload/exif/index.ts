import { Readable } from 'node:stream';
import { ensureDirectory } from '../store/disk.js';
import { StoreError } from '../store/errors.js';
import { feed, Meter } from '../store/meter.js';
import { MetadataError } from './errors.js';
import { stripJpeg } from './jpeg.js';
import { stripPng } from './png.js';
import { type ByteReader, byteReader } from './reader.js';
import { SNIFF_LENGTH, sniff } from './sniff.js';
import { stripTiff } from './tiff.js';
import { checkWebp } from './webp.js';

export { MetadataError } from './errors.js';

export interface StripOptions {
  /** An existing directory for scratch files (formats that cannot be rewritten while streaming); every scratch file is removed when the returned stream ends, errors or is destroyed. */
  tempDir: string;
}

/** Bytes the returned stream holds before it stops pulling from the source. */
const HIGH_WATER_MARK = 64 * 1024;

/**
 * The file's bytes with metadata removed, done in-process: Workhorse runs `exiftool -all=` on
 * uploads named *.jpg, *.jpeg and *.tiff, which is how GitLab got CVE-2021-22204. The format comes
 * from the first 64 bytes (magic numbers; the first output waits for them or the end), never the name:
 * - JPEG: streamed and lossless, see `stripJpeg` (minimal Exif, ICC, JFIF and Adobe kept).
 * - PNG: streamed, eXIf, tEXt, zTXt, iTXt and tIME chunks dropped, see `stripPng`.
 * - TIFF: spooled to a scratch file in `tempDir` and cleaned in place, see `stripTiff`.
 * - WebP: passed unchanged unless it carries EXIF or XMP, see `checkWebp`.
 * - HEIF/HEIC, AVIF, CR3, JPEG XL and JPEG 2000 containers, BigTIFF and TIFF-based raw formats:
 *   `MetadataError('unsupported')`: they can carry Exif that cannot be removed while streaming.
 * - Anything else (GIF, PDF, zip, text…): passed through unchanged.
 * Bytes that contradict their format fail with `MetadataError('malformed')`. Errors from `source`
 * propagate as they are. Back-pressure holds end to end, and destroying the returned stream
 * destroys `source` and removes scratch files before it emits 'close'.
 */
export function stripMetadata(source: Readable, opts: StripOptions): Readable {
  let resume: (() => void) | undefined;
  let stopped = false;
  const wake = () => {
    const r = resume;
    resume = undefined;
    r?.();
  };
  let pumped: Promise<void> = Promise.resolve();
  const out = new Readable({
    highWaterMark: HIGH_WATER_MARK,
    read: wake,
    destroy(err, callback) {
      stopped = true;
      if (!source.destroyed) source.destroy();
      wake();
      // 'close' waits for the pump, so a scratch file is gone by the time anyone hears of it.
      pumped.then(() => callback(err));
    },
  });
  pumped = (async () => {
    try {
      for await (const chunk of strip(byteReader(source), opts)) {
        if (stopped) break;
        if (!out.push(chunk)) await new Promise<void>((r) => (resume = r));
        if (stopped) break;
      }
      if (!stopped) out.push(null);
    } catch (err) {
      if (!stopped) out.destroy(err as Error);
    }
  })();
  return out;
}

async function* strip(input: ByteReader, opts: StripOptions): AsyncGenerator<Buffer> {
  const format = sniff(await input.peek(SNIFF_LENGTH));
  switch (format.kind) {
    case 'jpeg':
      return yield* stripJpeg(input);
    case 'png':
      return yield* stripPng(input);
    case 'tiff':
      return yield* stripTiff(input, opts.tempDir);
    case 'webp':
      return yield* checkWebp(input);
    case 'other':
      return yield* input.rest();
    default:
      throw new MetadataError(format.kind, `${format.why}: metadata cannot be removed`);
  }
}

export interface SaveStrippedOptions extends StripOptions {
  /** `MaximumSize`; 0: no limit. */
  maxSize: number;
  /** `[uploads] file_mode`, for a scratch directory made here. */
  fileMode?: number | undefined;
}

/**
 * Stores `input` with its metadata removed: `save` gets the stripped stream. A file whose
 * metadata cannot be removed fails with its MetadataError, and one whose input passes `maxSize`
 * (what the stripped file may be: a TIFF is spooled whole before anything comes out) with a
 * StoreError('too-large'), whatever `save` made of the failure; the stripped stream (with any
 * scratch file) is gone before this settles. `input` itself is never destroyed: it may be the
 * client's request, still to be answered.
 */
export async function saveStripped<T>(input: Readable, opts: SaveStrippedOptions, save: (stripped: Readable) => Promise<T>): Promise<T> {
  await ensureDirectory(opts.tempDir, opts.fileMode);
  // The store's own meter, hashing nothing: it refuses the input past MaximumSize, and `feed`
  // never destroys the input.
  const counted = new Meter([], opts.maxSize);
  const stop = feed(input, counted);
  const stripped = stripMetadata(counted, opts);
  let failure: Error | undefined;
  stripped.on('error', (err) => {
    if (err instanceof MetadataError || err instanceof StoreError) failure ??= err;
  });
  try {
    return await save(stripped);
  } catch (err) {
    throw failure ?? err;
  } finally {
    stop();
    if (!stripped.closed) {
      const closed = new Promise((resolve) => stripped.once('close', resolve));
      stripped.destroy();
      await closed;
    }
  }
}
