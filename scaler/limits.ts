/** The formats Outrider scales from: PNG and JPEG, as Workhorse. */
export type ImageFormat = 'png' | 'jpeg';

/** The formats it may convert to besides the source's own, when the client accepts them. */
export type ModernFormat = 'avif' | 'webp';

/** A scaled image's format: the source's own or a modern one. */
export type OutputFormat = ImageFormat | ModernFormat;

export const OUTPUT_TYPES = {
  png: 'image/png',
  jpeg: 'image/jpeg',
  webp: 'image/webp',
  avif: 'image/avif',
} as const satisfies Record<OutputFormat, string>;
export type OutputType = (typeof OUTPUT_TYPES)[OutputFormat];

const PNG_MAGIC = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

/** Bytes needed to tell PNG from JPEG (Workhorse `maxMagicLen`); smaller files are never scaled. */
export const MAGIC_LENGTH = 8;

/** PNG or JPEG by magic bytes, whatever the directive's ContentType claims; undefined otherwise. */
export function sniffFormat(head: Buffer): ImageFormat | undefined {
  if (head.length < MAGIC_LENGTH) return undefined;
  if (head.subarray(0, 8).equals(PNG_MAGIC)) return 'png';
  if (head[0] === 0xff && head[1] === 0xd8 && head[2] === 0xff) return 'jpeg';
  return undefined;
}

export type OriginalReason = 'too-large' | 'too-small' | 'unsupported-format';

/**
 * Workhorse's pre-checks, in its order: a file over `maxFilesize`, or under the magic length, or
 * neither PNG nor JPEG, is served as it is. An unknown size (a remote object without
 * Content-Length) is judged when its bytes arrive, not refused up front.
 */
export function precheck(size: number | undefined, head: Buffer, maxFilesize: number): OriginalReason | ImageFormat {
  if (size !== undefined && size > maxFilesize) return 'too-large';
  if (head.length < MAGIC_LENGTH) return 'too-small';
  return sniffFormat(head) ?? 'unsupported-format';
}
