import sharp, { type Metadata, type Sharp } from 'sharp';
import type { OutputFormat } from './limits.js';

// One libvips thread per image: Outrider already runs max_scaler_procs images in parallel, and
// more threads per small image only add contention. libvips' operation cache is for repeated
// file operations; inputs here are buffers, so it would only hold memory.
sharp.concurrency(1);
sharp.cache(false);

/**
 * Names the output settings below: part of every cache key, so changing them is a cache miss.
 * WebP and AVIF were chosen by measurement on 16–256 px avatars (README, "Image formats"): at
 * 64 px each is at most ipx's size (sharp's defaults: WebP q80 effort 4, AVIF q50 effort 4 4:4:4);
 * WebP q78 costs what q80 does, and AVIF effort 3 a third to a half of effort 4's time.
 */
export const RENDER_SETTINGS = 'v2;png:palette,q90,effort3,c9;jpeg:q82,baseline,420;webp:q78,effort4;avif:q45,effort3,420;autoOrient';

export interface Rendered {
  body: Buffer;
  width: number;
  height: number;
}

export type Inspection =
  | {
      kind: 'ok';
      width: number;
      height: number;
      /** The EXIF orientation is other than upright (2 to 8): the image must be turned as it is scaled. */
      rotated: boolean;
    }
  | { kind: 'too-many-pixels' | 'not-larger' | 'unreadable' };

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
  return { kind: 'ok', width, height, rotated: meta.orientation !== undefined && meta.orientation > 1 };
}

/**
 * Scales to `width` keeping the aspect ratio, encoded as `format` (the source's own, or the WebP
 * or AVIF the client accepts), turned upright by its EXIF orientation when `rotated` (from
 * `inspect`), metadata stripped (sharp's default). Shrink-on-load applies to JPEG automatically.
 */
export async function render(
  input: Buffer,
  format: OutputFormat,
  width: number,
  limitInputPixels: number,
  rotated = true,
): Promise<Rendered> {
  // Turning upright costs a third of a millisecond or more per image even when there is nothing
  // to turn (libvips reads the orientation and copies the pipeline): asked only when needed.
  const pipeline = sharp(input, { limitInputPixels, failOn: 'warning', autoOrient: rotated }).resize({ width, withoutEnlargement: true });
  const { data, info } = await encode(pipeline, format).toBuffer({ resolveWithObject: true });
  return { body: data, width: info.width, height: info.height };
}

function encode(pipeline: Sharp, format: OutputFormat): Sharp {
  switch (format) {
    case 'png':
      return pipeline.png({ palette: true, quality: 90, effort: 3, compressionLevel: 9 });
    case 'jpeg':
      return pipeline.jpeg({ quality: 82, mozjpeg: false, progressive: false, chromaSubsampling: '4:2:0' });
    case 'webp':
      return pipeline.webp({ quality: 78, effort: 4 });
    case 'avif':
      return pipeline.avif({ quality: 45, effort: 3, chromaSubsampling: '4:2:0' });
  }
}
