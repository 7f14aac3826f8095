import sharp, { type Metadata } from 'sharp';
import type { ImageFormat } from './limits.js';

// One libvips thread per image: Outrider already runs max_scaler_procs images in parallel, and
// more threads per small image only add contention. libvips' operation cache is for repeated
// file operations; inputs here are buffers, so it would only hold memory.
sharp.concurrency(1);
sharp.cache(false);

/** Names the output settings below: part of every cache key, so changing them is a cache miss. */
export const RENDER_SETTINGS = 'v1;png:palette,q90,effort3,c9;jpeg:q82,baseline,420;autoOrient';

export interface Rendered {
  body: Buffer;
  width: number;
  height: number;
}

export type Inspection = { kind: 'ok'; width: number; height: number } | { kind: 'too-many-pixels' | 'not-larger' | 'unreadable' };

/** Reads only the image header: dimensions, before anything is decoded. */
export async function inspect(input: Buffer, requestedWidth: number, limitInputPixels: number): Promise<Inspection> {
  let meta: Metadata;
  try {
    meta = await sharp(input, { limitInputPixels: false }).metadata();
  } catch {
    return { kind: 'unreadable' };
  }
  // The width as displayed: an EXIF orientation of 5 to 8 swaps width and height.
  const { width, height } = meta.autoOrient ?? meta;
  if (width === undefined || height === undefined) return { kind: 'unreadable' };
  if (width * height > limitInputPixels) return { kind: 'too-many-pixels' };
  if (requestedWidth >= width) return { kind: 'not-larger' };
  return { kind: 'ok', width, height };
}

/**
 * Scales to `width` keeping the aspect ratio, in the input's own format (PNG stays PNG, JPEG stays
 * JPEG), turned upright by its EXIF orientation, metadata stripped (sharp's default).
 * Shrink-on-load applies to JPEG automatically.
 */
export async function render(input: Buffer, format: ImageFormat, width: number, limitInputPixels: number): Promise<Rendered> {
  const pipeline = sharp(input, { limitInputPixels, failOn: 'warning', autoOrient: true }).resize({ width, withoutEnlargement: true });
  const encoded =
    format === 'png'
      ? pipeline.png({ palette: true, quality: 90, effort: 3, compressionLevel: 9 })
      : pipeline.jpeg({ quality: 82, mozjpeg: false, progressive: false, chromaSubsampling: '4:2:0' });
  const { data, info } = await encoded.toBuffer({ resolveWithObject: true });
  return { body: data, width: info.width, height: info.height };
}
