import sharp from 'sharp';
import { describe, expect, it } from 'vitest';
import {
  base,
  encodeIfd,
  exifTiff,
  expectNoSecrets,
  jpegSegments,
  pixels,
  readIfds,
  SECRET_EXIF,
  SECRETS,
  segment,
  strip,
  tags,
  withSegments,
} from './helpers.js';

const XMP =
  '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">SecretXmpCreator</rdf:RDF></x:xmpmeta>';

/** A JFIF APP0 with a 2×1 thumbnail whose pixels spell "THUMBS". */
const JFIF_WITH_THUMBNAIL = segment(
  0xe0,
  Buffer.concat([Buffer.from('JFIF\0\x01\x02\x01\x00\x48\x00\x48\x02\x01', 'latin1'), Buffer.from('THUMBS')]),
);

/** A camera-like JPEG: Exif with Make, Model, serial, GPS, Orientation 6 and Copyright, XMP, an ICC profile, plus segments sharp does not write. */
async function cameraJpeg(options: { progressive?: boolean } = {}): Promise<Buffer> {
  const jpeg = await base()
    .jpeg({ quality: 90, progressive: options.progressive ?? false })
    .withExif(SECRET_EXIF)
    .withMetadata({ orientation: 6 })
    .withXmp(XMP)
    .toBuffer();
  return withSegments(
    jpeg,
    JFIF_WITH_THUMBNAIL,
    segment(0xe0, 'JFXX\0\x10SecretJfxxThumbnail'),
    segment(0xed, 'Photoshop 3.0\x008BIM\x04\x04\0\0\0\0\0\x10SecretIptcByline'),
    segment(0xe2, 'MPF\0SecretMpfIndex'),
    segment(0xeb, 'JP\0\0SecretJumbfC2pa'),
    segment(0xfe, 'SecretComment'),
  );
}

const ALL_SECRETS = [
  'SecretXmpCreator',
  'THUMBS',
  'SecretJfxxThumbnail',
  'SecretIptcByline',
  'SecretMpfIndex',
  'SecretJumbfC2pa',
  'SecretComment',
];

describe('stripping a JPEG', () => {
  it('removes Make, Model, serial, dates, GPS, XMP, IPTC, comments and thumbnails', async () => {
    const input = await cameraJpeg();
    for (const secret of [...SECRETS, ...ALL_SECRETS]) expect(input.toString('latin1')).toContain(secret);
    expect(readIfds(exifTiff((await sharp(input).metadata()).exif as Buffer)).ifds[0]?.has(0x8825)).toBe(true);
    const out = await strip(input);
    expectNoSecrets(out);
    expectNoSecrets(out, ALL_SECRETS);
    const meta = await sharp(out).metadata();
    expect(meta.xmp).toBeUndefined();
  });

  it('keeps a minimal Exif: Orientation, resolution, YCbCrPositioning and Copyright from IFD0, nothing else, no IFD1', async () => {
    const out = await strip(await cameraJpeg());
    const meta = await sharp(out).metadata();
    expect(meta.orientation).toBe(6);
    const { ifds } = readIfds(exifTiff(meta.exif as Buffer));
    expect(ifds).toHaveLength(1); // no thumbnail IFD1
    const ifd0 = ifds[0] as Map<number, { value: Buffer }>;
    expect([...ifd0.keys()]).toEqual([0x0112, 0x011a, 0x011b, 0x0128, 0x0213, 0x8298]);
    expect(ifd0.get(0x8298)?.value.toString('latin1')).toBe('Copyright Jane Doe\0');
    expect(ifd0.has(0x8769)).toBe(false); // Exif sub-IFD
    expect(ifd0.has(0x8825)).toBe(false); // GPS IFD
  });

  it('keeps the ICC profile, and JFIF without its thumbnail', async () => {
    const input = await cameraJpeg();
    const out = await strip(input);
    expect((await sharp(out).metadata()).icc).toEqual((await sharp(input).metadata()).icc);
    const kept = jpegSegments(out).segments.map((s) => s.bytes.toString('latin1', 4, 9));
    expect(kept).toContain('JFIF\0');
    expect(kept).not.toContain('JFXX\0');
    const jfif = jpegSegments(out).segments.find((s) => s.bytes.toString('latin1', 4, 9) === 'JFIF\0') as { bytes: Buffer };
    expect(jfif.bytes).toEqual(Buffer.from('\xff\xe0\x00\x10JFIF\0\x01\x02\x01\x00\x48\x00\x48\x00\x00', 'latin1'));
  });

  it('passes every byte from SOS to the end through unchanged, and the pixels decode the same', async () => {
    const input = await cameraJpeg();
    const out = await strip(input);
    expect(out.subarray(jpegSegments(out).sos)).toEqual(input.subarray(jpegSegments(input).sos));
    expect(await pixels(out)).toEqual(await pixels(input));
  });

  it('keeps the quantization and Huffman tables and the frame header byte for byte', async () => {
    const input = await cameraJpeg();
    const out = await strip(input);
    const structural = (jpeg: Buffer) =>
      jpegSegments(jpeg)
        .segments.filter((s) => s.marker < 0xe0 || s.marker > 0xef)
        .filter((s) => s.marker !== 0xfe)
        .map((s) => s.bytes.toString('hex'));
    expect(structural(out)).toEqual(structural(input));
    expect(structural(out).length).toBeGreaterThan(3);
  });

  it('handles a progressive JPEG: its later tables and scans pass through after the first SOS', async () => {
    const input = await cameraJpeg({ progressive: true });
    expect((await sharp(input).metadata()).isProgressive).toBe(true);
    const out = await strip(input);
    expectNoSecrets(out);
    expect(out.subarray(jpegSegments(out).sos)).toEqual(input.subarray(jpegSegments(input).sos));
    expect(await pixels(out)).toEqual(await pixels(input));
    expect((await sharp(out).metadata()).orientation).toBe(6);
  });

  it('gives the same bytes however the input is cut: 1-byte chunks, odd sizes, one chunk', async () => {
    const input = await cameraJpeg();
    const whole = await strip(input, input.length);
    for (const size of [1, 2, 3, 7, 13, 4096]) expect(await strip(input, size), `chunks of ${size}`).toEqual(whole);
  });

  it('drops whatever follows EOI: a second image with its own Exif and GPS', async () => {
    const primary = await cameraJpeg();
    // As a phone appends an MPF preview or a gain map: a whole JPEG, Exif included.
    const appended = await cameraJpeg();
    const out = await strip(Buffer.concat([primary, appended]));
    expect(out).toEqual(await strip(primary));
    expect(out.subarray(-2)).toEqual(Buffer.from([0xff, 0xd9]));
    expectNoSecrets(out);
  });

  it('finds the EOI of a progressive JPEG past the tables between its scans, whatever the chunking', async () => {
    const input = await base(200, 150).jpeg({ progressive: true, quality: 80 }).withExif(SECRET_EXIF).toBuffer();
    const trailer = Buffer.from('after-the-end');
    const whole = await strip(Buffer.concat([input, trailer]), 1 << 20);
    expect(whole.subarray(-2)).toEqual(Buffer.from([0xff, 0xd9]));
    expect(whole.subarray(whole.indexOf(Buffer.from([0xff, 0xda])))).toEqual(input.subarray(input.indexOf(Buffer.from([0xff, 0xda]))));
    for (const size of [1, 5, 4096]) expect(await strip(Buffer.concat([input, trailer]), size), `chunks of ${size}`).toEqual(whole);
    expect(await pixels(whole)).toEqual(await pixels(input));
  });

  it('keeps the APP14 Adobe segment a CMYK JPEG needs to decode', async () => {
    const input = await base().toColourspace('cmyk').jpeg().withExif(SECRET_EXIF).toBuffer();
    const adobe = (jpeg: Buffer) => jpegSegments(jpeg).segments.find((s) => s.marker === 0xee)?.bytes;
    expect(adobe(input)?.toString('latin1', 4, 9)).toBe('Adobe');
    const out = await strip(input);
    expect(adobe(out)).toEqual(adobe(input));
    expectNoSecrets(out);
    expect(await pixels(out)).toEqual(await pixels(input));
  });

  it('reads a big-endian (Motorola) Exif block, and keeps its byte order', async () => {
    const le = false;
    const tiff = Buffer.concat([
      Buffer.from('MM\0\x2a\0\0\0\x08', 'latin1'),
      encodeIfd(
        le,
        [tags.short(le, 0x0112, 3), tags.ascii(0x010f, 'SecretMakeCo'), tags.long(le, 0x8825, 200), tags.ascii(0x8298, 'Jane')],
        8,
      ),
    ]);
    const input = withSegments(await base().jpeg().toBuffer(), segment(0xe1, Buffer.concat([Buffer.from('Exif\0\0'), tiff])));
    expect((await sharp(input).metadata()).orientation).toBe(3);
    const out = await strip(input);
    expectNoSecrets(out);
    const meta = await sharp(out).metadata();
    expect(meta.orientation).toBe(3);
    const { le: outLe, ifds } = readIfds(exifTiff(meta.exif as Buffer));
    expect(outLe).toBe(false);
    expect([...(ifds[0]?.keys() ?? [])]).toEqual([0x0112, 0x8298]);
  });

  it('drops an Exif block it cannot read, and keeps only the first Exif segment', async () => {
    const plain = await base().jpeg().toBuffer();
    const good = jpegSegments(await base().jpeg().withExif(SECRET_EXIF).toBuffer()).segments.find((s) => s.marker === 0xe1)
      ?.bytes as Buffer;
    const garbled = segment(0xe1, 'Exif\0\0XX*\0SecretMakeCo');
    const out = await strip(withSegments(plain, garbled, good));
    expect(jpegSegments(out).segments.filter((s) => s.marker === 0xe1)).toEqual([]);
    expectNoSecrets(out);
  });

  it('drops an Exif block whose only tags are ones it removes', async () => {
    const out = await strip(
      await base()
        .jpeg()
        .withExif({ IFD0: { Make: 'SecretMakeCo' } })
        .toBuffer(),
    );
    const meta = await sharp(out).metadata();
    expect(meta.exif === undefined || !readIfds(exifTiff(meta.exif)).ifds[0]?.has(0x010f)).toBe(true);
    expectNoSecrets(out);
  });
});
