import { malformed, unsupported } from './errors.js';
import type { ByteReader } from './reader.js';

/** VP8X flag bits (WebP container spec): the file says it has an EXIF or XMP chunk. */
const FLAG_EXIF = 0x08;
const FLAG_XMP = 0x04;

/**
 * A WebP passed through unchanged while its RIFF chunks are walked: one that carries an EXIF or
 * XMP chunk (or says it does) is `unsupported`, since removing a chunk changes the RIFF size in
 * the header, already sent. Simple (VP8/VP8L only) and metadata-free extended WebPs pass.
 */
export async function* checkWebp(input: ByteReader): AsyncGenerator<Buffer> {
  const header = await input.read(12, 'the RIFF header');
  yield header;
  const end = 8 + header.readUInt32LE(4);
  let at = 12;
  while (at < end) {
    const chunk = await input.read(8, 'a WebP chunk header');
    const fourcc = chunk.toString('latin1', 0, 4);
    const size = chunk.readUInt32LE(4);
    if (fourcc === 'EXIF' || fourcc === 'XMP ') throw unsupported(`WebP with metadata (${fourcc.trim()} chunk) cannot be stripped`);
    yield chunk;
    if (fourcc === 'VP8X') {
      if (size < 1) throw malformed('the WebP VP8X chunk is empty');
      const flags = await input.read(1, 'the WebP VP8X chunk');
      if (((flags[0] as number) & (FLAG_EXIF | FLAG_XMP)) !== 0) throw unsupported('WebP with metadata (VP8X flags) cannot be stripped');
      yield flags;
      yield* input.pass(size - 1, 'a WebP chunk');
    } else yield* input.pass(size, 'a WebP chunk');
    at += 8 + size;
    if ((size & 1) === 1) {
      const pad = await input.readUpTo(1); // writers sometimes leave out the last chunk's padding
      if (pad.length > 0) yield pad;
      at += 1;
    }
  }
  yield* input.rest();
}
