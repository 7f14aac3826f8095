import { once } from 'node:events';
import { readdirSync } from 'node:fs';
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { MetadataError, stripMetadata } from '../../../../proxy/upload/exif/index.js';
import { base, collect, jpegSegments, SECRET_EXIF, scratchDir } from './helpers.js';

/** A source that gives `bytes`, then either waits forever or fails with `error`. */
function openEnded(bytes: Buffer, error?: Error): Readable {
  let sent = false;
  return new Readable({
    read() {
      if (!sent) {
        sent = true;
        this.push(bytes);
      } else if (error !== undefined) this.destroy(error);
    },
  });
}

async function until(condition: () => boolean): Promise<void> {
  for (let i = 0; i < 200 && !condition(); i++) await sleep(5);
  expect(condition()).toBe(true);
}

describe('the stripped stream', () => {
  it('destroys the source and removes the TIFF scratch file before it closes, when destroyed while spooling', async () => {
    const dir = scratchDir();
    const tiff = await base().tiff().toBuffer();
    const source = openEnded(tiff);
    const out = stripMetadata(source, { tempDir: dir });
    out.resume();
    await until(() => readdirSync(dir).length === 1);
    out.destroy();
    await once(out, 'close');
    expect(source.destroyed).toBe(true);
    expect(readdirSync(dir)).toEqual([]);
  });

  it('removes the TIFF scratch file before it closes, when destroyed while the cleaned file streams out', async () => {
    const dir = scratchDir();
    const tiff = await base(1024, 512).tiff({ compression: 'none' }).toBuffer();
    const out = stripMetadata(Readable.from([tiff]), { tempDir: dir });
    await once(out, 'readable');
    expect(out.read(1024)).not.toBeNull();
    expect(readdirSync(dir)).toHaveLength(1);
    out.destroy();
    await once(out, 'close');
    expect(readdirSync(dir)).toEqual([]);
  });

  it('removes the TIFF scratch file when it ends, and when the TIFF is malformed', async () => {
    const dir = scratchDir();
    const tiff = await base().tiff().toBuffer();
    await collect(stripMetadata(Readable.from([tiff]), { tempDir: dir }));
    expect(readdirSync(dir)).toEqual([]);
    const broken = stripMetadata(Readable.from([tiff.subarray(0, 8), Buffer.from('cut')]), { tempDir: dir });
    await expect(collect(broken)).rejects.toBeInstanceOf(MetadataError);
    expect(readdirSync(dir)).toEqual([]);
  });

  it("passes on the source's own error, unchanged, and removes the scratch file", async () => {
    const dir = scratchDir();
    const tiff = await base().tiff().toBuffer();
    const failure = new Error('client went away');
    await expect(collect(stripMetadata(openEnded(tiff, failure), { tempDir: dir }))).rejects.toBe(failure);
    expect(readdirSync(dir)).toEqual([]);
    const jpeg = await base().jpeg().toBuffer();
    await expect(collect(stripMetadata(openEnded(jpeg.subarray(0, 400), failure), { tempDir: dir }))).rejects.toBe(failure);
  });

  it('destroys the source when the file is refused, instead of reading the rest', async () => {
    // More than the 64 bytes the format is sniffed from, then a source that would wait forever.
    const source = openEnded(Buffer.from(`\xff\xd8 not a JPEG${' '.repeat(64)}`, 'latin1'));
    const out = stripMetadata(source, { tempDir: scratchDir() });
    const err = await collect(out).catch((e: unknown) => e);
    expect((err as MetadataError).reason).toBe('malformed');
    expect(source.destroyed).toBe(true);
  });

  it('destroys the source when destroyed while waiting for it mid-JPEG', async () => {
    const jpeg = await base().jpeg().withExif(SECRET_EXIF).toBuffer();
    const source = openEnded(jpeg.subarray(0, jpegSegments(jpeg).sos - 10));
    const out = stripMetadata(source, { tempDir: scratchDir() });
    out.resume();
    await sleep(20);
    out.destroy();
    await once(out, 'close');
    expect(source.destroyed).toBe(true);
  });
});
