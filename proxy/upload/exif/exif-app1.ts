import { type ByteOrder, type IfdEntry, parseEntry, TYPE, tiffByteOrder } from './ifd.js';

const EXIF_ID = Buffer.from('Exif\0\0', 'latin1');

/**
 * The IFD0 tags a stripped JPEG keeps: the ones Workhorse copies back with `-tagsFromFile @`
 * and that live in IFD0 of a JPEG's Exif (ImageWidth, BitsPerSample and the like come from the
 * JPEG's SOF header, not from Exif). Each with the only type and count that make sense for it,
 * so nothing else can ride along under a kept tag number. Ascending, as TIFF requires.
 */
const KEPT: readonly { tag: number; type: number; count?: number }[] = [
  { tag: 0x0112, type: TYPE.short, count: 1 }, // Orientation
  { tag: 0x011a, type: TYPE.rational, count: 1 }, // XResolution
  { tag: 0x011b, type: TYPE.rational, count: 1 }, // YResolution
  { tag: 0x0128, type: TYPE.short, count: 1 }, // ResolutionUnit
  { tag: 0x0213, type: TYPE.short, count: 1 }, // YCbCrPositioning
  { tag: 0x8298, type: TYPE.ascii }, // Copyright
];

/**
 * The payload of an APP1 segment (after its length) with the identifier `Exif\0\0`: the start of a
 * TIFF structure. True for `Exif\0` followed by any byte, as some writers pad with 0xFF.
 */
export function isExif(payloadStart: Buffer): boolean {
  return payloadStart.length >= 6 && payloadStart.subarray(0, 5).equals(EXIF_ID.subarray(0, 5));
}

/**
 * A new, minimal Exif APP1 segment (marker included) holding only the kept IFD0 tags of `payload`,
 * in the same byte order: no Exif sub-IFD, no GPS IFD, no Interoperability IFD, no thumbnail IFD1,
 * no MakerNote. Undefined when nothing is kept, and when the Exif block cannot be read (then the
 * whole segment is dropped: the image loses nothing it needs to decode).
 */
export function minimalExif(payload: Buffer): Buffer | undefined {
  const tiff = payload.subarray(EXIF_ID.length);
  const order = tiffByteOrder(tiff);
  if (order === undefined) return undefined;
  const ifd0 = order.u32(tiff, 4);
  if (ifd0 < 8 || ifd0 + 2 > tiff.length) return undefined;
  const count = order.u16(tiff, ifd0);
  const kept: { entry: IfdEntry; value: Buffer }[] = [];
  for (let i = 0; i < count; i++) {
    const at = ifd0 + 2 + 12 * i;
    if (at + 12 > tiff.length) break;
    const entry = parseEntry(order, tiff.subarray(at, at + 12), at);
    const rule = KEPT.find((k) => k.tag === entry.tag);
    if (rule === undefined || entry.type !== rule.type || entry.size === undefined || entry.count === 0) continue;
    if (rule.count !== undefined && entry.count !== rule.count) continue;
    if (entry.valueAt + entry.size > tiff.length || kept.some((k) => k.entry.tag === entry.tag)) continue;
    kept.push({ entry, value: tiff.subarray(entry.valueAt, entry.valueAt + entry.size) });
  }
  if (kept.length === 0) return undefined;
  kept.sort((a, b) => a.entry.tag - b.entry.tag);
  return buildSegment(order, kept);
}

function buildSegment(order: ByteOrder, kept: { entry: IfdEntry; value: Buffer }[]): Buffer | undefined {
  const tableEnd = 8 + 2 + 12 * kept.length + 4;
  const outOfLine = kept.reduce((sum, k) => sum + (k.value.length > 4 ? k.value.length + (k.value.length & 1) : 0), 0);
  const tiff = Buffer.alloc(tableEnd + outOfLine);
  tiff.write(order.littleEndian ? 'II' : 'MM', 0, 'latin1');
  order.writeU16(tiff, 42, 2);
  order.writeU32(tiff, 8, 4);
  order.writeU16(tiff, kept.length, 8);
  let data = tableEnd;
  kept.forEach(({ entry, value }, i) => {
    const at = 10 + 12 * i;
    order.writeU16(tiff, entry.tag, at);
    order.writeU16(tiff, entry.type, at + 2);
    order.writeU32(tiff, entry.count, at + 4);
    if (value.length <= 4) value.copy(tiff, at + 8);
    else {
      order.writeU32(tiff, data, at + 8);
      value.copy(tiff, data);
      data += value.length + (value.length & 1); // values start on a word boundary (TIFF 6.0 §2)
    }
  });
  // The next-IFD offset after the table stays 0: no IFD1, so no thumbnail.
  const length = 2 + EXIF_ID.length + tiff.length;
  if (length > 0xffff) return undefined;
  const header = Buffer.from([0xff, 0xe1, 0, 0]);
  header.writeUInt16BE(length, 2);
  return Buffer.concat([header, EXIF_ID, tiff]);
}
