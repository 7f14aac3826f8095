import { crc32, deflateSync } from 'node:zlib';
import sharp from 'sharp';

/** A photo-like image (a gradient with noise) so encoders have real work, as PNG or JPEG. */
export async function photo(width: number, height: number, format: 'png' | 'jpeg'): Promise<Buffer> {
  const noise = await sharp({
    create: { width, height, channels: 3, background: '#000', noise: { type: 'gaussian', mean: 128, sigma: 12 } },
  })
    .blur(2)
    .png()
    .toBuffer();
  const base = sharp({
    create: { width, height, channels: 3, background: { r: 40, g: 120, b: 200 } },
  }).composite([{ input: noise, blend: 'overlay' }]);
  return format === 'png' ? base.png().toBuffer() : base.jpeg({ quality: 90 }).toBuffer();
}

export const TINY_PNG = Buffer.from('PNG');
export const SVG = Buffer.from('<svg xmlns="http://www.w3.org/2000/svg" width="100" height="100"><circle cx="50" cy="50" r="40"/></svg>');

export async function gif(width = 100, height = 100): Promise<Buffer> {
  return sharp({ create: { width, height, channels: 3, background: '#0a0' } })
    .gif()
    .toBuffer();
}

/** A valid PNG signature and header whose data stops half way. */
export async function truncatedPng(): Promise<Buffer> {
  const full = await photo(300, 300, 'png');
  return full.subarray(0, Math.floor(full.length / 2));
}

function chunk(type: string, data: Buffer): Buffer {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const body = Buffer.concat([Buffer.from(type, 'latin1'), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(body));
  return Buffer.concat([len, body, crc]);
}

/**
 * A 1-bit greyscale PNG of `size`×`size` pixels: a few tens of KB on disk, hundreds of millions of
 * pixels decoded. Built by hand so making it costs no decode.
 */
export function pixelBomb(size = 20_000): Buffer {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(size, 0);
  ihdr.writeUInt32BE(size, 4);
  ihdr[8] = 1; // bit depth
  ihdr[9] = 0; // greyscale
  const row = Math.ceil(size / 8) + 1; // filter byte + packed bits
  const raw = Buffer.alloc(row * size); // all zero: filter 0, black pixels
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', deflateSync(raw, { level: 9 })),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}
