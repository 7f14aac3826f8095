import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { base, expectRefused, SECRET_EXIF, strip } from './helpers.js';

/** The byte offset of a RIFF chunk in a WebP, or -1. */
const riffChunk = (webp: Buffer, fourcc: string) => webp.indexOf(Buffer.from(fourcc, 'latin1'), 12);

function ftyp(major: string, ...compatible: string[]): Buffer {
  const box = Buffer.alloc(16 + 4 * compatible.length);
  box.writeUInt32BE(box.length, 0);
  box.write(`ftyp${major}`, 4, 'latin1');
  compatible.forEach((brand, i) => {
    box.write(brand, 16 + 4 * i, 'latin1');
  });
  return Buffer.concat([box, Buffer.from('\0\0\0\x08free')]);
}

describe('choosing by magic number, never by name', () => {
  it('refuses a WebP carrying Exif or XMP as unsupported', async () => {
    await expectRefused(await base().webp().withExif(SECRET_EXIF).toBuffer(), 'unsupported');
    await expectRefused(await base().webp().withXmp('<x:xmpmeta>Secret</x:xmpmeta>').toBuffer(), 'unsupported', 1);
  });

  it('refuses a WebP with an EXIF chunk even when its VP8X flags deny having one', async () => {
    const webp = await base().webp().withExif(SECRET_EXIF).toBuffer();
    const vp8x = riffChunk(webp, 'VP8X');
    expect(vp8x).toBe(12);
    webp[vp8x + 8] = (webp[vp8x + 8] as number) & ~0x0c;
    await expectRefused(webp, 'unsupported');
  });

  it('passes a WebP without metadata unchanged, simple or extended (alpha)', async () => {
    const simple = await base().webp().toBuffer();
    expect(await strip(simple)).toEqual(simple);
    const alpha = await base().ensureAlpha(0.5).webp().withIccProfile('p3').toBuffer();
    expect(riffChunk(alpha, 'VP8X')).toBe(12);
    expect(await strip(alpha, 3)).toEqual(alpha);
  });

  it('refuses HEIF/HEIC, AVIF and Canon CR3 (ISO-BMFF with Exif items) as unsupported', async () => {
    await expectRefused(await base().avif({ effort: 0 }).withExif(SECRET_EXIF).toBuffer(), 'unsupported');
    await expectRefused(ftyp('heic', 'mif1', 'heic'), 'unsupported');
    await expectRefused(ftyp('isom', 'mif1'), 'unsupported', 1);
    await expectRefused(ftyp('crx ', 'isom'), 'unsupported');
  });

  it('refuses JPEG XL and JPEG 2000 containers, BigTIFF and TIFF-based raw formats as unsupported', async () => {
    await expectRefused(Buffer.from('\0\0\0\x0cJXL \r\n\x87\n\0\0\0\x14ftypjxl ', 'latin1'), 'unsupported');
    await expectRefused(Buffer.from('\0\0\0\x0cjP  \r\n\x87\n\0\0\0\x14ftypjp2 ', 'latin1'), 'unsupported');
    await expectRefused(Buffer.from('II+\0\x08\0\0\0\x10\0\0\0\0\0\0\0', 'latin1'), 'unsupported');
    await expectRefused(Buffer.from('MM\0+\0\x08\0\0\0\0\0\0\0\0\0\x10', 'latin1'), 'unsupported');
    await expectRefused(Buffer.from('IIRO\x08\0\0\0', 'latin1'), 'unsupported');
  });

  it('passes what cannot carry Exif, or is not an image, through unchanged: GIF, PDF, MP4, bare JPEG XL, text, random bytes, nothing', async () => {
    const inputs = [
      await base().gif().toBuffer(),
      Buffer.from('%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n'),
      ftyp('isom', 'iso2', 'mp41'),
      Buffer.from([0xff, 0x0a, 0xfa, 0x1f, 0x42, 0x03]),
      Buffer.from('Make: SecretMakeCo\n'),
      Buffer.concat([Buffer.from('RND'), randomBytes(20_000)]),
      Buffer.alloc(0),
      Buffer.from('II'),
    ];
    for (const input of inputs) {
      expect(await strip(input)).toEqual(input);
      expect(await strip(input, 1)).toEqual(input);
    }
  });
});
