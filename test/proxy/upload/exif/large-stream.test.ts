import { createHash } from 'node:crypto';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { describe, expect, it } from 'vitest';
import { stripMetadata } from '../../../../proxy/upload/exif/index.js';
import { base, jpegSegments, SECRET_EXIF, scratchDir, strip } from './helpers.js';

const PAYLOAD = 50 * 1024 * 1024;
const CHUNK = 64 * 1024;
/** Bytes the stripper may hold between what the source gave and what the consumer took: a few chunks, never the file. */
const BOUND = 1024 * 1024;

describe('a 50 MB JPEG', () => {
  it('streams through with back-pressure: never more than 1 MB in flight to a slow consumer, bytes intact', async () => {
    const jpeg = await base().jpeg().withExif(SECRET_EXIF).toBuffer();
    const { sos } = jpegSegments(jpeg);
    const header = jpeg.subarray(0, sos + 2 + jpeg.readUInt16BE(sos + 2)); // up to the end of the SOS segment
    const expected = createHash('sha256').update(await strip(header));

    let produced = 0;
    let consumed = 0;
    let inFlight = 0;
    let sent = 0;
    let n = 0;
    const source = new Readable({
      highWaterMark: CHUNK,
      read() {
        if (sent === 0) {
          sent = header.length;
          this.push(header);
          return;
        }
        if (sent - header.length >= PAYLOAD) {
          expected.update(Buffer.from([0xff, 0xd9]));
          this.push(Buffer.from([0xff, 0xd9]));
          this.push(null);
          return;
        }
        const chunk = Buffer.alloc(CHUNK, n++ & 0xfe); // entropy-coded data never has a bare 0xFF
        expected.update(chunk);
        sent += chunk.length;
        produced += chunk.length;
        this.push(chunk);
      },
    });
    const got = createHash('sha256');
    const consumer = new Writable({
      highWaterMark: CHUNK,
      write(chunk: Buffer, _encoding, done) {
        got.update(chunk);
        consumed += chunk.length;
        inFlight = Math.max(inFlight, produced - consumed);
        setImmediate(done); // slower than the source
      },
    });
    await pipeline(stripMetadata(source, { tempDir: scratchDir() }), consumer);
    expect(consumed).toBeGreaterThan(PAYLOAD);
    expect(got.digest('hex')).toBe(expected.digest('hex'));
    expect(inFlight).toBeLessThan(BOUND);
  });
});
