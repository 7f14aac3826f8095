import { describe, expect, it } from 'vitest';
import { base, expectRefused, jpegSegments, SECRET_EXIF, segment, strip, withSegments } from './helpers.js';

const jpeg = () => base().jpeg().withExif(SECRET_EXIF).toBuffer();

describe('a JPEG that contradicts itself is refused as malformed', () => {
  it('is refused when the file ends inside the Exif segment, however it is cut', async () => {
    const input = await jpeg();
    const exif = jpegSegments(input).segments.find((s) => s.marker === 0xe1) as { at: number };
    await expectRefused(input.subarray(0, exif.at + 40), 'malformed');
    await expectRefused(input.subarray(0, exif.at + 40), 'malformed', 1);
  });

  it('is refused when a segment claims more bytes than the file has', async () => {
    const head = Buffer.from([0xff, 0xd8, 0xff, 0xfe, 0x10, 0x00, 0x41, 0x42]);
    await expectRefused(head, 'malformed');
  });

  it('is refused when the file ends inside a segment header or a marker', async () => {
    await expectRefused(Buffer.from([0xff, 0xd8, 0xff, 0xdb, 0x00]), 'malformed');
    await expectRefused(Buffer.from([0xff, 0xd8, 0xff]), 'malformed');
    await expectRefused(Buffer.from([0xff, 0xd8]), 'malformed');
  });

  it('is refused when the SOI marker is missing before the Exif segment', async () => {
    const input = await jpeg();
    await expectRefused(input.subarray(2), 'malformed');
  });

  it('is refused when SOI is followed by something other than a marker', async () => {
    await expectRefused(Buffer.from('\xff\xd8 not a segment', 'latin1'), 'malformed');
  });

  it('is refused when a segment length is below 2', async () => {
    const input = await jpeg();
    await expectRefused(withSegments(input, Buffer.from([0xff, 0xe5, 0x00, 0x01])), 'malformed');
  });

  it('is refused when EOI or a second SOI comes before any scan', async () => {
    await expectRefused(Buffer.from([0xff, 0xd8, 0xff, 0xd9]), 'malformed');
    await expectRefused(withSegments(await jpeg(), Buffer.from([0xff, 0xd8])), 'malformed');
  });

  it('is refused when the file ends before any scan', async () => {
    const input = await jpeg();
    await expectRefused(input.subarray(0, jpegSegments(input).sos), 'malformed');
  });

  it('accepts fill bytes (0xFF) before a marker, as T.81 allows', async () => {
    const original = await jpeg();
    const out = await strip(withSegments(original, Buffer.from([0xff, 0xff]), segment(0xfe, 'hi').subarray(1)));
    expect(out.subarray(jpegSegments(out).sos)).toEqual(original.subarray(jpegSegments(original).sos));
  });
});
