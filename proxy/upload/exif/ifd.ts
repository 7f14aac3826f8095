/**
 * The parts of TIFF's structure that both the Exif block of a JPEG (a TIFF inside an APP1 segment)
 * and a TIFF file share: byte order, field types and the 12-byte IFD entry.
 */

/** Bytes per value of each TIFF field type (TIFF 6.0 §2, plus IFD = 13 from TIFF Tech Note 1). */
const TYPE_SIZES: Readonly<Record<number, number>> = { 1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4 };

export const TYPE = { ascii: 2, short: 3, long: 4, rational: 5, ifd: 13 } as const;

export interface ByteOrder {
  littleEndian: boolean;
  u16(buf: Buffer, at: number): number;
  u32(buf: Buffer, at: number): number;
  writeU16(buf: Buffer, value: number, at: number): void;
  writeU32(buf: Buffer, value: number, at: number): void;
}

const LITTLE: ByteOrder = {
  littleEndian: true,
  u16: (buf, at) => buf.readUInt16LE(at),
  u32: (buf, at) => buf.readUInt32LE(at),
  writeU16: (buf, value, at) => buf.writeUInt16LE(value, at),
  writeU32: (buf, value, at) => buf.writeUInt32LE(value, at),
};

const BIG: ByteOrder = {
  littleEndian: false,
  u16: (buf, at) => buf.readUInt16BE(at),
  u32: (buf, at) => buf.readUInt32BE(at),
  writeU16: (buf, value, at) => buf.writeUInt16BE(value, at),
  writeU32: (buf, value, at) => buf.writeUInt32BE(value, at),
};

/** The byte order a TIFF header (`II*\0` or `MM\0*`) declares, or undefined when it is not one. */
export function tiffByteOrder(header: Buffer): ByteOrder | undefined {
  if (header.length < 8) return undefined;
  const order = header[0] === 0x49 && header[1] === 0x49 ? LITTLE : header[0] === 0x4d && header[1] === 0x4d ? BIG : undefined;
  return order !== undefined && order.u16(header, 2) === 42 ? order : undefined;
}

export interface IfdEntry {
  tag: number;
  type: number;
  count: number;
  /** Where the 12-byte entry itself starts. */
  at: number;
  /** The entry's 12 bytes, as stored. */
  raw: Buffer;
  /** Bytes the value takes, or undefined for a type TIFF does not define. */
  size: number | undefined;
  /** Where the value starts: inside the entry when it fits in 4 bytes, else the offset it holds. */
  valueAt: number;
  /** True when the value lives outside the entry (more than 4 bytes). */
  outOfLine: boolean;
}

/** Decodes the 12-byte entry `raw` found at `at`. */
export function parseEntry(order: ByteOrder, raw: Buffer, at: number): IfdEntry {
  const tag = order.u16(raw, 0);
  const type = order.u16(raw, 2);
  const count = order.u32(raw, 4);
  const unit = TYPE_SIZES[type];
  const size = unit === undefined ? undefined : unit * count;
  const outOfLine = size !== undefined && size > 4;
  return { tag, type, count, at, raw, size, valueAt: outOfLine ? order.u32(raw, 8) : at + 8, outOfLine };
}
