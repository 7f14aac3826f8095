import { deflateSync } from 'node:zlib';
import sharp from 'sharp';
import { describe, expect, it } from 'vitest';
import { base, expectNoSecrets, expectRefused, pixels, pngChunk, pngChunks, SECRET_EXIF, SECRETS, strip, withChunks } from './helpers.js';

const DROPPED = ['eXIf', 'tEXt', 'zTXt', 'iTXt', 'tIME'];

/** A PNG with Exif (eXIf), text chunks of every kind, a modification time, a pixel density (pHYs) and an ICC profile (iCCP). */
async function taggedPng(): Promise<Buffer> {
  const png = await base().png().withExif(SECRET_EXIF).withMetadata({ density: 300 }).toBuffer();
  return withChunks(
    png,
    pngChunk('tEXt', 'Author\0SecretTextAuthor'),
    pngChunk('zTXt', Buffer.concat([Buffer.from('Comment\0\0'), deflateSync('SecretCompressed')])),
    pngChunk('iTXt', 'XML:com.adobe.xmp\0\0\0\0\0<x:xmpmeta>SecretXmpCreator</x:xmpmeta>'),
    pngChunk('tIME', Buffer.from([0x07, 0xe5, 4, 5, 6, 7, 8])),
  );
}

describe('stripping a PNG', () => {
  it('drops the eXIf, tEXt, zTXt, iTXt and tIME chunks', async () => {
    const input = await taggedPng();
    const types = (png: Buffer) => pngChunks(png).map((c) => c.type);
    for (const type of DROPPED) expect(types(input)).toContain(type);
    const out = await strip(input);
    for (const type of DROPPED) expect(types(out)).not.toContain(type);
    expectNoSecrets(out, [...SECRETS, 'SecretTextAuthor', 'SecretXmpCreator', 'Copyright Jane Doe']);
    expect((await sharp(out).metadata()).exif).toBeUndefined();
  });

  it('keeps every other chunk byte for byte, pHYs and iCCP included, so pixels, density and colours are unchanged', async () => {
    const input = await taggedPng();
    const out = await strip(input);
    const kept = pngChunks(input).filter((c) => !DROPPED.includes(c.type));
    expect(kept.map((c) => c.type)).toEqual(expect.arrayContaining(['IHDR', 'pHYs', 'iCCP', 'IDAT', 'IEND']));
    expect(pngChunks(out)).toEqual(kept);
    expect(out.subarray(0, 8)).toEqual(input.subarray(0, 8));
    expect(await pixels(out)).toEqual(await pixels(input));
    expect((await sharp(out).metadata()).density).toBe(300);
  });

  it('gives the same bytes when fed one byte at a time', async () => {
    const input = await taggedPng();
    expect(await strip(input, 1)).toEqual(await strip(input));
  });

  it('passes whatever follows IEND through byte for byte', async () => {
    const out = await strip(Buffer.concat([await taggedPng(), Buffer.from('after-the-end')]));
    expect(out.subarray(-13).toString()).toBe('after-the-end');
  });

  it('refuses a PNG whose signature was mangled (CRLF turned into LF) as malformed', async () => {
    const input = await taggedPng();
    await expectRefused(Buffer.concat([Buffer.from('\x89PNG\n\x1a\n', 'latin1'), input.subarray(8)]), 'malformed');
  });

  it('refuses a PNG cut short inside a chunk, or without IEND, as malformed', async () => {
    const input = await taggedPng();
    const idat = pngChunks(input).find((c) => c.type === 'IDAT') as { bytes: Buffer };
    const idatAt = input.indexOf(idat.bytes);
    await expectRefused(input.subarray(0, idatAt + 20), 'malformed');
    await expectRefused(input.subarray(0, idatAt + 20), 'malformed', 1);
    await expectRefused(input.subarray(0, input.length - 12), 'malformed');
    await expectRefused(input.subarray(0, input.length - 5), 'malformed');
  });
});
