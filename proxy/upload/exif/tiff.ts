import { randomUUID } from 'node:crypto';
import { type FileHandle, open, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { malformed, unsupported } from './errors.js';
import { type ByteOrder, type IfdEntry, parseEntry, TYPE, tiffByteOrder } from './ifd.js';
import type { ByteReader } from './reader.js';

/** IFDs in the main chain before the file counts as malformed (real multi-page TIFFs have a few). */
const MAX_IFDS = 64;
/** Sub-IFDs (Exif, GPS, Interoperability…) followed to zero their contents. */
const MAX_SUB_IFDS = 16;
/** Strips or tiles per IFD held in memory to protect their data; more is `unsupported`. */
const MAX_STRIPS = 1 << 20;
const CHUNK = 64 * 1024;
const ZEROS = Buffer.alloc(CHUNK);

/**
 * Tags a TIFF keeps: what decoding needs (TIFF 6.0 baseline and extensions), resolution,
 * orientation, the ICC profile and the copyright. Everything else goes: Exif, GPS and
 * Interoperability IFD pointers, XMP (700), IPTC (33723), Photoshop (34377, 37724), MakerNote,
 * ImageDescription, Make, Model, Software, DateTime, Artist, HostComputer, DocumentName,
 * PageName and every other private tag.
 */
const KEPT = new Set([
  254, // NewSubfileType
  255, // SubfileType
  256, // ImageWidth
  257, // ImageLength
  258, // BitsPerSample
  259, // Compression
  262, // PhotometricInterpretation
  263, // Threshholding
  264, // CellWidth
  265, // CellLength
  266, // FillOrder
  273, // StripOffsets
  274, // Orientation
  277, // SamplesPerPixel
  278, // RowsPerStrip
  279, // StripByteCounts
  280, // MinSampleValue
  281, // MaxSampleValue
  282, // XResolution
  283, // YResolution
  284, // PlanarConfiguration
  290, // GrayResponseUnit
  291, // GrayResponseCurve
  292, // T4Options
  293, // T6Options
  296, // ResolutionUnit
  297, // PageNumber
  301, // TransferFunction
  317, // Predictor
  318, // WhitePoint
  319, // PrimaryChromaticities
  320, // ColorMap
  321, // HalftoneHints
  322, // TileWidth
  323, // TileLength
  324, // TileOffsets
  325, // TileByteCounts
  332, // InkSet
  334, // NumberOfInks
  336, // DotRange
  338, // ExtraSamples
  339, // SampleFormat
  340, // SMinSampleValue
  341, // SMaxSampleValue
  347, // JPEGTables
  529, // YCbCrCoefficients
  530, // YCbCrSubSampling
  531, // YCbCrPositioning
  532, // ReferenceBlackWhite
  33432, // Copyright
  34675, // ICC profile
]);

/** Pointers to IFDs of metadata whose contents are zeroed along with the pointer: Exif, GPS, Interoperability. */
const METADATA_IFDS = new Set([34665, 34853, 40965]);

/**
 * Tags that mean the TIFF is a container of further images Outrider does not clean (SubIFDs: DNG
 * and NEF raw data, previews) or a raw format whose private tags decoding needs (DNGVersion):
 * stripping them to baseline would silently throw the picture away, so they are `unsupported`.
 */
const REFUSED: ReadonlyMap<number, string> = new Map([
  [330, 'SubIFDs (a raw or multi-resolution TIFF)'],
  [50706, 'a DNG raw file'],
]);

type Range = readonly [start: number, end: number];

interface Ifd {
  at: number;
  entries: IfdEntry[];
  /** The 4 bytes after the entries: the next IFD's offset, as stored. */
  nextRaw: Buffer;
}

/**
 * A classic TIFF with its metadata removed. TIFF offsets can point anywhere, so the file is
 * spooled to a scratch file in `tempDir`, cleaned in place without moving or touching image
 * data, streamed out, and deleted however the generator ends.
 *
 * Each IFD in the main chain keeps only the `KEPT` entries: its table is rewritten in place with
 * fewer entries (same offset, next-IFD offset kept). The out-of-line values of the removed entries,
 * and the Exif, GPS and Interoperability IFDs they point to (their tables, values and MakerNote),
 * are overwritten with zeros, except where they overlap an IFD table, a kept value or strip/tile
 * data. Offsets past the end, a loop in the chain or more than 64 IFDs are `malformed`.
 */
export async function* stripTiff(input: ByteReader, tempDir: string): AsyncGenerator<Buffer> {
  const path = join(tempDir, `outrider-exif-${randomUUID()}.tif`);
  const file = await open(path, 'wx+', 0o600);
  try {
    let size = 0;
    for await (const chunk of input.rest()) {
      await writeAll(file, chunk, size);
      size += chunk.length;
    }
    await cleanTiff(file, size);
    for (let pos = 0; pos < size; ) {
      const buf = Buffer.allocUnsafe(Math.min(CHUNK, size - pos));
      const { bytesRead } = await file.read(buf, 0, buf.length, pos);
      if (bytesRead === 0) throw new Error('the TIFF scratch file is shorter than what was written');
      pos += bytesRead;
      yield buf.subarray(0, bytesRead);
    }
  } finally {
    await file.close().catch(() => {});
    await rm(path, { force: true });
  }
}

async function writeAll(file: FileHandle, chunk: Buffer, position: number): Promise<void> {
  for (let done = 0; done < chunk.length; ) {
    const { bytesWritten } = await file.write(chunk, done, chunk.length - done, position + done);
    done += bytesWritten;
  }
}

/** Reads exactly `length` bytes at `at`, or fails as `malformed` when they are not all in the file. */
async function readAt(file: FileHandle, size: number, at: number, length: number, what: string): Promise<Buffer> {
  if (at < 0 || length < 0 || at + length > size) throw malformed(`${what} points past the end of the TIFF`);
  const buf = Buffer.alloc(length);
  for (let done = 0; done < length; ) {
    const { bytesRead } = await file.read(buf, done, length - done, at + done);
    if (bytesRead === 0) throw malformed(`${what} points past the end of the TIFF`);
    done += bytesRead;
  }
  return buf;
}

async function readIfd(file: FileHandle, size: number, order: ByteOrder, at: number, what: string): Promise<Ifd> {
  if (at < 8) throw malformed(`${what} points into the TIFF header`);
  const count = order.u16(await readAt(file, size, at, 2, what), 0);
  const table = await readAt(file, size, at + 2, 12 * count + 4, what);
  const entries: IfdEntry[] = [];
  for (let i = 0; i < count; i++) entries.push(parseEntry(order, table.subarray(12 * i, 12 * i + 12), at + 2 + 12 * i));
  return { at, entries, nextRaw: table.subarray(12 * count) };
}

const tableRange = (ifd: Ifd): Range => [ifd.at, ifd.at + 2 + 12 * ifd.entries.length + 4];

async function cleanTiff(file: FileHandle, size: number): Promise<void> {
  const header = await readAt(file, size, 0, 8, 'the TIFF header');
  const order = tiffByteOrder(header);
  if (order === undefined) throw malformed('the TIFF header is not II*\\0 or MM\\0*');

  const chain: Ifd[] = [];
  const seen = new Set<number>();
  for (let next = order.u32(header, 4); next !== 0; ) {
    if (chain.length === MAX_IFDS) throw malformed(`a TIFF with more than ${MAX_IFDS} IFDs`);
    if (seen.has(next)) throw malformed('the TIFF IFD chain loops');
    seen.add(next);
    const ifd = await readIfd(file, size, order, next, 'an IFD offset');
    chain.push(ifd);
    next = order.u32(ifd.nextRaw, 0);
  }
  if (chain.length === 0) throw malformed('a TIFF without an IFD');

  const keep: Range[] = [[0, 8]];
  const wipe: Range[] = [];
  const subIfds: number[] = [];
  for (const ifd of chain) {
    keep.push(tableRange(ifd));
    for (const entry of ifd.entries) {
      const refused = REFUSED.get(entry.tag);
      if (refused !== undefined) throw unsupported(`a TIFF with ${refused}`);
      const kept = KEPT.has(entry.tag);
      if (entry.size === undefined) {
        if (kept) throw malformed(`TIFF tag ${entry.tag} has an unknown type ${entry.type}`);
        continue; // removed; its extent is unknown, so there is nothing we can zero
      }
      if (entry.outOfLine && entry.valueAt + entry.size > size) throw malformed(`TIFF tag ${entry.tag} points past the end`);
      const range: Range = [entry.valueAt, entry.valueAt + entry.size];
      if (kept) {
        if (entry.outOfLine) keep.push(range);
        continue;
      }
      if (entry.outOfLine) wipe.push(range);
      if (METADATA_IFDS.has(entry.tag) || entry.type === TYPE.ifd) append(subIfds, await pointers(file, size, order, entry));
    }
    // A loop, not a spread: a TIFF may have a million strips, past what a call's arguments can hold.
    append(keep, await imageData(file, size, order, ifd, 273, 279));
    append(keep, await imageData(file, size, order, ifd, 324, 325));
  }
  append(wipe, await metadataIfds(file, size, order, subIfds, seen));

  const protectedRanges = merge(keep);
  for (const range of wipe) for (const [start, end] of subtract(range, protectedRanges)) await writeZeros(file, start, end);
  for (const ifd of chain) await rewriteTable(file, order, ifd);
}

/** The IFD offsets a pointer entry (LONG or IFD type) holds. */
async function pointers(file: FileHandle, size: number, order: ByteOrder, entry: IfdEntry): Promise<number[]> {
  if ((entry.type !== TYPE.long && entry.type !== TYPE.ifd) || entry.count === 0 || entry.count > MAX_SUB_IFDS) return [];
  const raw = entry.outOfLine ? await readAt(file, size, entry.valueAt, 4 * entry.count, `TIFF tag ${entry.tag}`) : entry.raw.subarray(8);
  return Array.from({ length: entry.count }, (_, i) => order.u32(raw, 4 * i));
}

/**
 * The byte ranges of the metadata IFDs at `offsets` and of everything they hold: their tables,
 * their out-of-line values (the MakerNote among them) and the IFDs they point to in turn
 * (Interoperability inside Exif). Best effort, as exiftool's own deletion: an IFD or value that
 * cannot be read within the file is left out, since the pointer to it is removed anyway.
 */
async function metadataIfds(file: FileHandle, size: number, order: ByteOrder, offsets: number[], seen: Set<number>): Promise<Range[]> {
  const ranges: Range[] = [];
  const queue = [...offsets];
  let followed = 0;
  while (queue.length > 0 && followed < MAX_SUB_IFDS) {
    const at = queue.shift() as number;
    if (seen.has(at)) continue;
    seen.add(at);
    followed++;
    let ifd: Ifd;
    try {
      ifd = await readIfd(file, size, order, at, 'a metadata IFD');
    } catch {
      continue;
    }
    ranges.push(tableRange(ifd));
    for (const entry of ifd.entries) {
      if (entry.size !== undefined && entry.outOfLine && entry.valueAt + entry.size <= size)
        ranges.push([entry.valueAt, entry.valueAt + entry.size]);
      if (METADATA_IFDS.has(entry.tag) || entry.type === TYPE.ifd) append(queue, await pointers(file, size, order, entry).catch(() => []));
    }
  }
  return ranges;
}

/** The byte ranges of an IFD's strips or tiles (offsets tag, byte counts tag), which cleaning must never touch. */
async function imageData(
  file: FileHandle,
  size: number,
  order: ByteOrder,
  ifd: Ifd,
  offsetsTag: number,
  countsTag: number,
): Promise<Range[]> {
  const offsets = ifd.entries.find((e) => e.tag === offsetsTag);
  const counts = ifd.entries.find((e) => e.tag === countsTag);
  if (offsets === undefined || counts === undefined) return [];
  const starts = await readNumbers(file, size, order, offsets);
  const lengths = await readNumbers(file, size, order, counts);
  if (starts.length !== lengths.length) throw malformed(`TIFF tags ${offsetsTag} and ${countsTag} differ in count`);
  return starts.map((start, i) => {
    const end = start + (lengths[i] as number);
    if (end > size) throw malformed('TIFF image data lies past the end of the file');
    return [start, end] as const;
  });
}

async function readNumbers(file: FileHandle, size: number, order: ByteOrder, entry: IfdEntry): Promise<number[]> {
  if (entry.type !== TYPE.short && entry.type !== TYPE.long) throw malformed(`TIFF tag ${entry.tag} is neither SHORT nor LONG`);
  if (entry.count > MAX_STRIPS) throw unsupported(`a TIFF with more than ${MAX_STRIPS} strips or tiles`);
  const raw = entry.outOfLine
    ? await readAt(file, size, entry.valueAt, entry.size as number, `TIFF tag ${entry.tag}`)
    : entry.raw.subarray(8);
  const width = entry.type === TYPE.short ? 2 : 4;
  return Array.from({ length: entry.count }, (_, i) => (width === 2 ? order.u16(raw, 2 * i) : order.u32(raw, 4 * i)));
}

/** Sorted, non-overlapping ranges covering `ranges`. */
function merge(ranges: Range[]): Range[] {
  const sorted = [...ranges].filter(([s, e]) => e > s).sort((a, b) => a[0] - b[0]);
  const out: [number, number][] = [];
  for (const [start, end] of sorted) {
    const last = out[out.length - 1];
    if (last !== undefined && start <= last[1]) last[1] = Math.max(last[1], end);
    else out.push([start, end]);
  }
  return out;
}

function append<T>(to: T[], items: readonly T[]): void {
  for (const item of items) to.push(item);
}

/** The parts of `range` outside every one of the sorted, disjoint `holes` (found by binary search: a TIFF may have a million strips). */
function subtract([start, end]: Range, holes: Range[]): Range[] {
  const out: Range[] = [];
  let at = start;
  let lo = 0;
  let hi = holes.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if ((holes[mid] as Range)[1] <= start) lo = mid + 1;
    else hi = mid;
  }
  for (let i = lo; i < holes.length; i++) {
    const [s, e] = holes[i] as Range;
    if (e <= at) continue;
    if (s >= end) break;
    if (s > at) out.push([at, s]);
    at = Math.max(at, e);
  }
  if (at < end) out.push([at, end]);
  return out;
}

async function writeZeros(file: FileHandle, start: number, end: number): Promise<void> {
  for (let at = start; at < end; at += CHUNK) await writeAll(file, ZEROS.subarray(0, Math.min(CHUNK, end - at)), at);
}

/** The IFD table with only the kept entries, in their order, the next-IFD offset after them and zeros where removed entries were. */
async function rewriteTable(file: FileHandle, order: ByteOrder, ifd: Ifd): Promise<void> {
  const kept = ifd.entries.filter((e) => KEPT.has(e.tag));
  if (kept.length === ifd.entries.length) return;
  const table = Buffer.alloc(2 + 12 * ifd.entries.length + 4);
  order.writeU16(table, kept.length, 0);
  kept.forEach((entry, i) => {
    entry.raw.copy(table, 2 + 12 * i);
  });
  ifd.nextRaw.copy(table, 2 + 12 * kept.length);
  await writeAll(file, table, ifd.at);
}
