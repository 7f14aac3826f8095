import { malformed } from './errors.js';
import type { ByteReader } from './reader.js';

const SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

/** Chunks that say who, where or when: Exif, the three text chunks (XMP and IPTC ride in iTXt/zTXt) and the modification time. */
const DROPPED = new Set(['eXIf', 'tEXt', 'zTXt', 'iTXt', 'tIME']);

/**
 * A PNG without its metadata chunks. Every other chunk (IHDR, PLTE, IDAT, pHYs resolution, iCCP,
 * gAMA, acTL/fcTL/fdAT…) passes through byte for byte, CRC included, and so does whatever follows
 * IEND. A bad signature, a chunk cut short or a missing IEND is `malformed`.
 */
export async function* stripPng(input: ByteReader): AsyncGenerator<Buffer> {
  const signature = await input.read(SIGNATURE.length, 'the PNG signature');
  if (!signature.equals(SIGNATURE)) throw malformed('the PNG signature is wrong (was the file converted as text?)');
  yield signature;
  for (;;) {
    const header = await input.read(8, 'a PNG chunk header (no IEND)');
    const length = header.readUInt32BE(0);
    if (length > 0x7fffffff) throw malformed('a PNG chunk is longer than 2^31 - 1 bytes');
    const type = header.toString('latin1', 4, 8);
    if (!/^[A-Za-z]{4}$/.test(type)) throw malformed('a PNG chunk type is not four letters');
    if (DROPPED.has(type)) await input.skip(length + 4, 'a PNG chunk');
    else {
      yield header;
      yield* input.pass(length + 4, 'a PNG chunk');
    }
    if (type === 'IEND') {
      yield* input.rest();
      return;
    }
  }
}
