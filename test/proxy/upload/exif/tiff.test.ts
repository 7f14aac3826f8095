import sharp, { type TiffOptions } from 'sharp';
import { describe, expect, it } from 'vitest';
import { base, encodeIfd, expectNoSecrets, expectRefused, pixels, readIfds, strip, type Tag, tags, withTiffMetadata } from './helpers.js';
import { ALL_SECRETS, cameraTiff, latitudeBytes, le } from './tiff-camera.js';

/** Where the 12-byte entry for `tag` starts in IFD number `index`. */
function entryAt(tiff: Buffer, tag: number, index = 0): number {
  const { ifds, offsets } = readIfds(tiff);
  const position = [...(ifds[index]?.keys() ?? [])].indexOf(tag);
  if (position === -1) throw new Error(`no tag ${tag}`);
  return (offsets[index] as number) + 2 + 12 * position;
}

describe('stripping a TIFF', () => {
  it('removes Make, Model, Software, dates, XMP, IPTC, Photoshop data, private tags and the Exif, GPS and Interoperability IFDs', async () => {
    const input = await cameraTiff();
    for (const secret of ALL_SECRETS) expect(input.toString('latin1')).toContain(secret);
    expect(input.indexOf(latitudeBytes)).toBeGreaterThan(0);
    const out = await strip(input);
    expectNoSecrets(out, ALL_SECRETS);
    expect(out.indexOf(latitudeBytes)).toBe(-1);
    const ifd0 = readIfds(out).ifds[0] as Map<number, unknown>;
    for (const tag of [269, 270, 271, 272, 285, 305, 306, 315, 316, 700, 33723, 34377, 34665, 34853, 37724, 40000])
      expect(ifd0.has(tag), `tag ${tag}`).toBe(false);
  });

  it('keeps the pixels, the orientation, the copyright, the resolution and the ICC profile', async () => {
    const input = await cameraTiff();
    const out = await strip(input);
    expect(await pixels(out)).toEqual(await pixels(input));
    const [before, after] = [await sharp(input).metadata(), await sharp(out).metadata()];
    expect(after.orientation).toBe(6);
    expect(after.icc).toEqual(before.icc);
    expect(after.density).toBe(before.density);
    const ifd0 = readIfds(out).ifds[0];
    expect(ifd0?.get(33432)?.value.toString('latin1')).toBe('Copyright Jane Doe\0');
    expect([...(ifd0?.keys() ?? [])]).toEqual(
      [...(readIfds(input).ifds[0]?.keys() ?? [])].filter((t) =>
        t < 32768 ? ![269, 270, 271, 272, 285, 305, 306, 315, 316, 700].includes(t) : [33432, 34675].includes(t),
      ),
    );
  });

  it('works in place: same length, same IFD offset, image data untouched', async () => {
    const input = await cameraTiff();
    const out = await strip(input);
    expect(out.length).toBe(input.length);
    expect(readIfds(out).offsets).toEqual(readIfds(input).offsets);
    const ifd0 = readIfds(input).ifds[0];
    const start = ifd0?.get(273)?.value.readUInt32LE(0) as number;
    const length = ifd0?.get(279)?.value.readUInt32LE(0) as number;
    expect(out.subarray(start, start + length)).toEqual(input.subarray(start, start + length));
  });

  it('handles deflate with a predictor, LZW tiles and JPEG compression with its tables', async () => {
    for (const options of [
      { compression: 'deflate', predictor: 'horizontal' },
      { tile: true, tileWidth: 16, tileHeight: 16, compression: 'lzw' },
      {},
    ] as TiffOptions[]) {
      const input = await cameraTiff(options);
      const out = await strip(input);
      expectNoSecrets(out, ALL_SECRETS);
      expect(await pixels(out)).toEqual(await pixels(input));
    }
  });

  it('gives the same bytes when fed one byte at a time', async () => {
    const input = await cameraTiff({ compression: 'deflate' });
    expect(await strip(input, 1)).toEqual(await strip(input));
  });

  it('cleans every IFD in the chain, not just the first', async () => {
    const input = await cameraTiff({ compression: 'deflate' });
    const secondAt = input.length + (input.length % 2);
    const second = encodeIfd(le, [tags.short(le, 256, 1), tags.short(le, 257, 1), tags.ascii(271, 'SecondPageMake')], secondAt);
    const chained = Buffer.concat([input, Buffer.alloc(secondAt - input.length), second]);
    const { offsets, ifds } = readIfds(chained);
    chained.writeUInt32LE(secondAt, (offsets[0] as number) + 2 + 12 * (ifds[0]?.size ?? 0));
    expect(readIfds(chained).ifds).toHaveLength(2);
    const out = await strip(chained);
    const after = readIfds(out).ifds;
    expect(after).toHaveLength(2);
    expect([...(after[1]?.keys() ?? [])]).toEqual([256, 257]);
    expectNoSecrets(out, ['SecondPageMake']);
  });

  it('never zeroes image data, even when a removed tag points into it', async () => {
    const input = await cameraTiff({ compression: 'deflate' });
    const before = await pixels(input); // libtiff warns about the patched description below, so decode first
    const ifd0 = readIfds(input).ifds[0];
    const stripAt = ifd0?.get(273)?.value.readUInt32LE(0) as number;
    const description = entryAt(input, 270);
    input.writeUInt32LE(64, description + 4); // count
    input.writeUInt32LE(stripAt, description + 8); // offset: the strip
    const out = await strip(input);
    expect(out.subarray(stripAt, stripAt + 64)).toEqual(input.subarray(stripAt, stripAt + 64));
    expect(await pixels(out)).toEqual(before);
  });
});

describe('a TIFF that cannot be cleaned', () => {
  it('is malformed when the IFD chain loops', async () => {
    const input = await cameraTiff();
    const { offsets, ifds } = readIfds(input);
    input.writeUInt32LE(offsets[0] as number, (offsets[0] as number) + 2 + 12 * (ifds[0]?.size ?? 0));
    await expectRefused(input, 'malformed');
  });

  it('is malformed when it has more than 64 IFDs', async () => {
    const input = Buffer.from('II*\0\x08\0\0\0', 'latin1');
    const ifds: Buffer[] = [];
    for (let i = 0, at = 8; i < 65; i++, at += 18) ifds.push(encodeIfd(le, [tags.short(le, 256, 1)], at, i < 64 ? at + 18 : 0));
    await expectRefused(Buffer.concat([input, ...ifds]), 'malformed');
  });

  it('is malformed when an offset points past the end', async () => {
    const input = await cameraTiff();
    const ifd0Past = Buffer.from(input);
    ifd0Past.writeUInt32LE(input.length + 10, 4);
    await expectRefused(ifd0Past, 'malformed');
    const icc = Buffer.from(input);
    icc.writeUInt32LE(input.length - 4, entryAt(input, 34675) + 8);
    await expectRefused(icc, 'malformed');
    const removedPast = Buffer.from(input);
    removedPast.writeUInt32LE(input.length, entryAt(input, 271) + 8);
    await expectRefused(removedPast, 'malformed');
  });

  it('is malformed when the file is cut short (its strips end past the end)', async () => {
    const input = await base().tiff({ compression: 'none' }).toBuffer();
    await expectRefused(input.subarray(0, input.length - 100), 'malformed');
    await expectRefused(input.subarray(0, 6), 'malformed');
  });

  it('is unsupported when it has SubIFDs or is a DNG: raw data lives in tags we would strip', async () => {
    const tiff = await base().tiff().toBuffer();
    const extra = (ifd0: Tag[]) => withTiffMetadata(tiff, { ifd0, exif: [], interop: [], gps: [] });
    await expectRefused(extra([tags.long(le, 330, 8)]), 'unsupported');
    await expectRefused(extra([tags.bytes(50706, 1, Buffer.from([1, 4, 0, 0]))]), 'unsupported');
  });

  it('is unsupported when it is a Canon CR2 raw file', async () => {
    const tiff = await base().tiff().toBuffer();
    await expectRefused(Buffer.concat([tiff.subarray(0, 8), Buffer.from('CR\x02\0'), tiff.subarray(12)]), 'unsupported');
  });
});
