/**
 * Shared helpers for the metadata-stripping tests: feeding bytes in chosen chunk sizes, reading
 * the result, and taking JPEG, PNG and TIFF files apart (or adding metadata sharp cannot write).
 */
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { crc32 } from 'node:zlib';
import sharp from 'sharp';
import { expect, onTestFinished } from 'vitest';
import { MetadataError, stripMetadata } from '../../../../proxy/upload/exif/index.js';

/** A fresh scratch directory for this test, checked empty when the test ends (every scratch file gone), then removed. */
export function scratchDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'outrider-exif-test-'));
  onTestFinished(() => {
    try {
      expect(readdirSync(dir)).toEqual([]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
  return dir;
}

/** `bytes` as a byte stream cut into `size`-byte chunks. */
export function chunked(bytes: Buffer, size = 64 * 1024): Readable {
  function* pieces() {
    for (let i = 0; i < bytes.length; i += size) yield bytes.subarray(i, i + size);
  }
  return Readable.from(pieces(), { objectMode: false });
}

export async function collect(stream: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const chunk of stream) parts.push(chunk as Buffer);
  return Buffer.concat(parts);
}

/** `input` with its metadata removed, fed `chunk` bytes at a time. */
export function strip(input: Buffer, chunk?: number, tempDir = scratchDir()): Promise<Buffer> {
  return collect(stripMetadata(chunked(input, chunk), { tempDir }));
}

/** Asserts that stripping `input` fails with a MetadataError for `reason`. */
export async function expectRefused(input: Buffer, reason: 'malformed' | 'unsupported', chunk?: number): Promise<MetadataError> {
  const err = await strip(input, chunk).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(MetadataError);
  const metadataError = err as MetadataError;
  expect(metadataError.reason).toBe(reason);
  expect(metadataError.code).toBe('EDGE_METADATA_UNREMOVABLE');
  return metadataError;
}

export const pixels = (image: Buffer) => sharp(image).raw().toBuffer();

/** A small photo-like base image (noise, so the JPEG scan is not trivial). */
export function base(width = 64, height = 48) {
  return sharp({ create: { width, height, channels: 3, background: '#000', noise: { type: 'gaussian', mean: 128, sigma: 40 } } });
}

/** Tags that sharp writes into Exif and that must not survive (Make, Model, a serial number, GPS). */
export const SECRET_EXIF = {
  IFD0: {
    Copyright: 'Copyright Jane Doe',
    Make: 'SecretMakeCo',
    Model: 'SecretModel9',
    Software: 'SecretSoftware',
    Artist: 'SecretArtist',
    ImageDescription: 'SecretDescription',
  },
  IFD2: { BodySerialNumber: 'SERIAL-98765', DateTimeOriginal: '2021:04:05 06:07:08' },
  IFD3: { GPSLatitudeRef: 'N', GPSLatitude: '51/1 30/1 0/1', GPSLongitudeRef: 'W', GPSLongitude: '0/1 7/1 39/1' },
};

export const SECRETS = [
  'SecretMakeCo',
  'SecretModel9',
  'SecretSoftware',
  'SecretArtist',
  'SecretDescription',
  'SERIAL-98765',
  '2021:04:05',
];

export function expectNoSecrets(bytes: Buffer, secrets: readonly string[] = SECRETS): void {
  const text = bytes.toString('latin1');
  for (const secret of secrets) expect(text.includes(secret), secret).toBe(false);
}

// ---- JPEG ----

export interface JpegSegment {
  marker: number;
  /** Where the segment's 0xFF starts. */
  at: number;
  /** The whole segment, marker and length included. */
  bytes: Buffer;
}

/** The segments before the first SOS, and where the SOS marker starts. */
export function jpegSegments(jpeg: Buffer): { segments: JpegSegment[]; sos: number } {
  const segments: JpegSegment[] = [];
  let at = 2;
  for (;;) {
    const marker = jpeg[at + 1] as number;
    if (jpeg[at] !== 0xff) throw new Error(`no marker at ${at}`);
    if (marker === 0xda) return { segments, sos: at };
    const length = jpeg.readUInt16BE(at + 2);
    segments.push({ marker, at, bytes: jpeg.subarray(at, at + 2 + length) });
    at += 2 + length;
  }
}

export function segment(marker: number, payload: Buffer | string): Buffer {
  const body = typeof payload === 'string' ? Buffer.from(payload, 'latin1') : payload;
  const head = Buffer.from([0xff, marker, 0, 0]);
  head.writeUInt16BE(body.length + 2, 2);
  return Buffer.concat([head, body]);
}

/** `jpeg` with `segments` inserted right after SOI. */
export function withSegments(jpeg: Buffer, ...segments: Buffer[]): Buffer {
  return Buffer.concat([jpeg.subarray(0, 2), ...segments, jpeg.subarray(2)]);
}

// ---- PNG ----

export interface PngChunk {
  type: string;
  bytes: Buffer;
}

export function pngChunks(png: Buffer): PngChunk[] {
  const chunks: PngChunk[] = [];
  for (let at = 8; at < png.length; ) {
    const length = png.readUInt32BE(at);
    chunks.push({ type: png.toString('latin1', at + 4, at + 8), bytes: png.subarray(at, at + 12 + length) });
    at += 12 + length;
  }
  return chunks;
}

export function pngChunk(type: string, data: Buffer | string): Buffer {
  const body = Buffer.concat([Buffer.from(type, 'latin1'), typeof data === 'string' ? Buffer.from(data, 'latin1') : data]);
  const out = Buffer.alloc(body.length + 8);
  out.writeUInt32BE(body.length - 4, 0);
  body.copy(out, 4);
  out.writeUInt32BE(crc32(body), out.length - 4);
  return out;
}

/** `png` with `chunks` inserted after IHDR. */
export function withChunks(png: Buffer, ...chunks: Buffer[]): Buffer {
  const ihdrEnd = 8 + 12 + png.readUInt32BE(8);
  return Buffer.concat([png.subarray(0, ihdrEnd), ...chunks, png.subarray(ihdrEnd)]);
}

// ---- TIFF structures (a TIFF file, or the Exif block of a JPEG) ----

export interface Tag {
  tag: number;
  type: number;
  count: number;
  /** The value's bytes in the structure's byte order. */
  value: Buffer;
}

const u16 = (le: boolean, n: number) => {
  const b = Buffer.alloc(2);
  le ? b.writeUInt16LE(n) : b.writeUInt16BE(n);
  return b;
};
const u32 = (le: boolean, n: number) => {
  const b = Buffer.alloc(4);
  le ? b.writeUInt32LE(n) : b.writeUInt32BE(n);
  return b;
};

export const tags = {
  ascii: (tag: number, text: string): Tag => ({ tag, type: 2, count: text.length + 1, value: Buffer.from(`${text}\0`, 'latin1') }),
  short: (le: boolean, tag: number, n: number): Tag => ({ tag, type: 3, count: 1, value: u16(le, n) }),
  long: (le: boolean, tag: number, n: number): Tag => ({ tag, type: 4, count: 1, value: u32(le, n) }),
  rationals: (le: boolean, tag: number, values: [number, number][]): Tag => ({
    tag,
    type: 5,
    count: values.length,
    value: Buffer.concat(values.flatMap(([n, d]) => [u32(le, n), u32(le, d)])),
  }),
  bytes: (tag: number, type: 1 | 7, data: Buffer | string): Tag => {
    const value = typeof data === 'string' ? Buffer.from(data, 'latin1') : data;
    return { tag, type, count: value.length, value };
  },
};

/** An IFD placed at `at`: its table (entries sorted by tag), the next-IFD offset, then the values that do not fit in 4 bytes. */
export function encodeIfd(le: boolean, entries: Tag[], at: number, next = 0): Buffer {
  const sorted = [...entries].sort((a, b) => a.tag - b.tag);
  const tableLength = 2 + 12 * sorted.length + 4;
  const parts: Buffer[] = [u16(le, sorted.length)];
  const values: Buffer[] = [];
  let valueAt = at + tableLength;
  for (const e of sorted) {
    const field = Buffer.alloc(4);
    if (e.value.length <= 4) e.value.copy(field);
    else {
      field.set(u32(le, valueAt));
      const padded = e.value.length % 2 === 1 ? Buffer.concat([e.value, Buffer.alloc(1)]) : e.value;
      values.push(padded);
      valueAt += padded.length;
    }
    parts.push(u16(le, e.tag), u16(le, e.type), u32(le, e.count), field);
  }
  return Buffer.concat([...parts, u32(le, next), ...values]);
}

export interface ReadTag {
  tag: number;
  type: number;
  count: number;
  value: Buffer;
}

/** The tags of every IFD in a TIFF structure's main chain, with their values. */
export function readIfds(tiff: Buffer): { le: boolean; ifds: Map<number, ReadTag>[]; offsets: number[] } {
  const le = tiff.toString('latin1', 0, 2) === 'II';
  const r16 = (at: number) => (le ? tiff.readUInt16LE(at) : tiff.readUInt16BE(at));
  const r32 = (at: number) => (le ? tiff.readUInt32LE(at) : tiff.readUInt32BE(at));
  const sizes: Record<number, number> = { 1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4 };
  const ifds: Map<number, ReadTag>[] = [];
  const offsets: number[] = [];
  for (let at = r32(4); at !== 0 && ifds.length < 100; ) {
    offsets.push(at);
    const ifd = new Map<number, ReadTag>();
    const count = r16(at);
    for (let i = 0; i < count; i++) {
      const e = at + 2 + 12 * i;
      const type = r16(e + 2);
      const n = r32(e + 4);
      const size = (sizes[type] ?? 0) * n;
      const valueAt = size > 4 ? r32(e + 8) : e + 8;
      ifd.set(r16(e), { tag: r16(e), type, count: n, value: tiff.subarray(valueAt, valueAt + size) });
    }
    ifds.push(ifd);
    at = r32(at + 2 + 12 * count);
  }
  return { le, ifds, offsets };
}

/** The TIFF structure inside an Exif APP1 segment's payload or sharp's `metadata().exif` ("Exif\0\0" first). */
export const exifTiff = (exif: Buffer) => exif.subarray(6);

/**
 * A copy of the TIFF `tiff` whose IFD0 also has `extra` tags, plus an Exif IFD with `exif` tags
 * (and an Interoperability IFD with `interop` tags) and a GPS IFD with `gps` tags: what a camera
 * TIFF carries, which sharp cannot write. The new IFD0 goes at the end and the header points to it;
 * the old IFD0 table stays where it was, unreferenced.
 */
export function withTiffMetadata(tiff: Buffer, extra: { ifd0: Tag[]; exif: Tag[]; interop: Tag[]; gps: Tag[] }): Buffer {
  const { le, offsets } = readIfds(tiff);
  const ifd0At = offsets[0] as number;
  const r16 = (at: number) => (le ? tiff.readUInt16LE(at) : tiff.readUInt16BE(at));
  const r32 = (at: number) => (le ? tiff.readUInt32LE(at) : tiff.readUInt32BE(at));
  const count = r16(ifd0At);
  const next = r32(ifd0At + 2 + 12 * count);
  const original = Array.from({ length: count }, (_, i) => tiff.subarray(ifd0At + 2 + 12 * i, ifd0At + 14 + 12 * i));

  let at = tiff.length + (tiff.length % 2);
  const blocks: Buffer[] = [Buffer.alloc(at - tiff.length)];
  const place = (entries: Tag[]) => {
    const block = encodeIfd(le, entries, at);
    const placedAt = at;
    blocks.push(block);
    at += block.length + (block.length % 2);
    if (block.length % 2 === 1) blocks.push(Buffer.alloc(1));
    return placedAt;
  };
  const interopAt = place(extra.interop);
  const exifAt = place([...extra.exif, tags.long(le, 0xa005, interopAt)]);
  const gpsAt = place(extra.gps);
  // IFD0: the original 12-byte entries as they are, plus the new ones, sorted.
  const added = [...extra.ifd0, tags.long(le, 34665, exifAt), tags.long(le, 34853, gpsAt)];
  const addedIfd = encodeIfd(le, added, 0); // only to get the entries' encodings; values re-placed below
  const tableLength = 2 + 12 * (count + added.length) + 4;
  const valuesAt = at + tableLength;
  const valueBlocks: Buffer[] = [];
  let valueAt = valuesAt;
  const addedEntries = added
    .sort((a, b) => a.tag - b.tag)
    .map((e, i) => {
      const raw = Buffer.from(addedIfd.subarray(2 + 12 * i, 14 + 12 * i));
      if (e.value.length > 4) {
        raw.set(u32(le, valueAt), 8);
        const padded = e.value.length % 2 === 1 ? Buffer.concat([e.value, Buffer.alloc(1)]) : e.value;
        valueBlocks.push(padded);
        valueAt += padded.length;
      }
      return raw;
    });
  const all = [...original, ...addedEntries].sort((a, b) => r16At(le, a) - r16At(le, b));
  const table = Buffer.concat([u16(le, all.length), ...all, u32(le, next)]);
  const out = Buffer.concat([tiff, ...blocks, table, ...valueBlocks]);
  out.set(u32(le, at), 4);
  return out;
}

const r16At = (le: boolean, raw: Buffer) => (le ? raw.readUInt16LE(0) : raw.readUInt16BE(0));
