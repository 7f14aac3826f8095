import { malformed } from './errors.js';
import { isExif, minimalExif } from './exif-app1.js';
import type { ByteReader } from './reader.js';

const SOI = 0xd8;
const EOI = 0xd9;
const SOS = 0xda;
const APP0 = 0xe0;
const APP1 = 0xe1;
const APP2 = 0xe2;
const APP14 = 0xee;
const COM = 0xfe;

/** How many payload bytes name an APPn segment's kind ("ICC_PROFILE\0" is the longest we check). */
const ID_LENGTH = 14;

/**
 * A JPEG with its metadata segments removed, losslessly: only the segments before the first scan
 * (SOS) are examined; from SOS on every byte (entropy-coded data, RSTn, the further DHT/SOS of a
 * progressive JPEG) passes through as it arrives, up to the EOI that ends the image. What follows
 * EOI is dropped: phones append further images there (MPF previews, HDR gain maps), each with an
 * Exif block of its own, GPS included.
 *
 * Kept: every non-APPn segment (SOFn, DHT, DQT, DRI, DAC, JPGn…), APP0 JFIF (its optional
 * thumbnail cut off), APP1 Exif rebuilt by `minimalExif` (the first one only), APP2 ICC_PROFILE and
 * APP14 Adobe (whose colour transform flag decoding needs). Removed: every other APPn (XMP and
 * extended XMP in APP1, MPF and FlashPix in APP2, APP13 Photoshop IRB / IPTC, JPEG XT / JUMBF in
 * APP11, APP0 JFXX which only holds a thumbnail…) and COM comments.
 */
export async function* stripJpeg(input: ByteReader): AsyncGenerator<Buffer> {
  const soi = await input.read(2, 'the JPEG start marker');
  if (soi[0] !== 0xff || soi[1] !== SOI) throw malformed('a JPEG must start with SOI');
  yield soi;
  let exifSeen = false;
  for (;;) {
    const marker = await readMarker(input);
    if (marker === SOS) {
      yield Buffer.from([0xff, SOS]);
      yield* toEndOfImage(input.rest());
      return;
    }
    if (marker === EOI || marker === SOI) throw malformed('a JPEG marker is out of place before the first scan');
    if (marker === 0x01 || (marker >= 0xd0 && marker <= 0xd7)) {
      yield Buffer.from([0xff, marker]); // TEM and RSTn stand alone, without a length
      continue;
    }
    const lengthBytes = await input.read(2, 'a JPEG segment header');
    const length = lengthBytes.readUInt16BE(0);
    if (length < 2) throw malformed('a JPEG segment length is below 2');
    const isApp = marker >= APP0 && marker <= 0xef;
    if (!isApp && marker !== COM) {
      yield Buffer.from([0xff, marker, lengthBytes[0] as number, lengthBytes[1] as number]);
      yield* input.pass(length - 2, 'a JPEG segment');
      continue;
    }
    const id = await input.read(Math.min(ID_LENGTH, length - 2), 'a JPEG segment');
    const rest = length - 2 - id.length;
    const kind = isApp ? appKind(marker, id) : 'drop';
    if (kind === 'keep') {
      yield Buffer.concat([Buffer.from([0xff, marker]), lengthBytes, id]);
      yield* input.pass(rest, 'a JPEG segment');
    } else if (kind === 'jfif') {
      await input.skip(rest, 'a JPEG segment');
      yield jfifWithoutThumbnail(id);
    } else if (kind === 'exif' && !exifSeen) {
      exifSeen = true;
      const payload = Buffer.concat([id, await input.read(rest, 'a JPEG Exif segment')]);
      const exif = minimalExif(payload);
      if (exif !== undefined) yield exif;
    } else {
      await input.skip(rest, 'a JPEG segment');
    }
  }
}

/** The next marker's code, after its 0xFF and any fill bytes (0xFF) before it (T.81 B.1.1.2). */
async function readMarker(input: ByteReader): Promise<number> {
  const bytes = await input.read(2, 'a JPEG marker (the image has no scan)');
  if (bytes[0] !== 0xff) throw malformed('a JPEG segment is followed by something other than a marker');
  let code = bytes[1] as number;
  while (code === 0xff) code = (await input.read(1, 'a JPEG marker'))[0] as number;
  if (code === 0x00) throw malformed('a JPEG marker is 0xFF00');
  return code;
}

type AppKind = 'keep' | 'jfif' | 'exif' | 'drop';

function appKind(marker: number, id: Buffer): AppKind {
  const name = id.toString('latin1');
  switch (marker) {
    case APP0:
      // JFIF names the colour space and pixel density; JFXX (an extension APP0) holds only a thumbnail.
      return name.startsWith('JFIF\0') ? 'jfif' : 'drop';
    case APP1:
      return isExif(id) ? 'exif' : 'drop';
    case APP2:
      // exiftool -all= would remove the ICC profile too, but without it colours display wrong
      // (a Display P3 photo from a phone turns dull), and it says nothing about who took the photo.
      return name.startsWith('ICC_PROFILE\0') ? 'keep' : 'drop';
    case APP14:
      // Adobe's transform flag tells a decoder whether 3 or 4 components are YCbCr/YCCK or RGB/CMYK.
      return name.startsWith('Adobe') ? 'keep' : 'drop';
    default:
      // APP3–APP12 and APP15 are metadata (APP13 is Photoshop's IRB with IPTC: removed too).
      return 'drop';
  }
}

/**
 * The JFIF APP0 segment without its thumbnail (which can show what the image was before it was
 * cropped): identifier, version, units and density as they were, thumbnail size 0×0. A JFIF segment
 * too short to have a thumbnail is kept as it was.
 */
function jfifWithoutThumbnail(id: Buffer): Buffer {
  const head = Buffer.from([0xff, APP0, 0, 0]);
  if (id.length < ID_LENGTH) {
    head.writeUInt16BE(2 + id.length, 2);
    return Buffer.concat([head, id]);
  }
  head.writeUInt16BE(2 + ID_LENGTH, 2);
  const body = Buffer.from(id);
  body[12] = 0;
  body[13] = 0;
  return Buffer.concat([head, body]);
}

/**
 * The image data from just after the first SOS marker to its EOI, byte for byte, and nothing
 * after it. Marker segments between scans (DHT, DQT, SOS of a progressive JPEG) are skipped by
 * their length, so bytes inside them are never taken for markers; in entropy-coded data 0xFF is
 * followed by 0x00 (stuffing), RSTn or a marker. A JPEG cut short before its EOI ends where it ends.
 */
async function* toEndOfImage(chunks: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  let lengthLeft = 2; // the bytes of a segment's length still to read (the SOS header's, first)
  let lengthHigh = 0;
  let segmentLeft = 0;
  let afterFF = false;
  for await (const chunk of chunks) {
    let i = 0;
    while (i < chunk.length) {
      if (lengthLeft > 0) {
        const b = chunk[i++] as number;
        if (lengthLeft === 2) lengthHigh = b;
        else {
          segmentLeft = ((lengthHigh << 8) | b) - 2;
          if (segmentLeft < 0) throw malformed('a JPEG segment length is below 2');
        }
        lengthLeft--;
      } else if (segmentLeft > 0) {
        const n = Math.min(segmentLeft, chunk.length - i);
        i += n;
        segmentLeft -= n;
      } else if (!afterFF) {
        // Scan data: jump to the next 0xFF.
        const ff = chunk.indexOf(0xff, i);
        i = ff === -1 ? chunk.length : ff + 1;
        afterFF = ff !== -1;
      } else {
        const b = chunk[i++] as number;
        if (b !== 0xff) {
          // 0xFF 0xFF is fill; stuffing and RSTn stay in the scan; EOI ends the image; anything else is a segment.
          afterFF = false;
          if (b === EOI) {
            yield chunk.subarray(0, i);
            // The rest is read and dropped: the source (a multipart part) must reach its end.
            for await (const _ of chunks);
            return;
          }
          if (b !== 0x00 && (b < 0xd0 || b > 0xd7)) lengthLeft = 2;
        }
      }
    }
    yield chunk;
  }
}
