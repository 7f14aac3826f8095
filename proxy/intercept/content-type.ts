/**
 * Content sniffing as Workhorse does it, with no I/O: Go's `http.DetectContentType`, Workhorse's
 * `internal/utils/svg` and `internal/headers/content_headers.go`. Every function takes the first
 * bytes of a body and nothing else, so the same bytes give the same answer as in Workhorse.
 */

import { headerValue, withoutNamed } from '../forward/headers.js';

/** Workhorse's headers.MaxDetectSize */
export const MAX_DETECT_SIZE = 4096;

/** Go's `sniffLen`: DetectContentType looks at no more than this. */
const SNIFF_LEN = 512;

const TEXT_PLAIN = 'text/plain; charset=utf-8';
/** The headers `withSafeContentHeaders` decides. */
const CONTENT_HEADERS = ['content-type', 'content-disposition'];
const SVG = 'image/svg+xml';

/** One row of Go's `sniffSignatures`: the type it names, or undefined when the data does not match. */
type Signature = (data: Uint8Array, firstNonWS: number) => string | undefined;

/** The bytes of a string written with `\xNN` escapes (one char, one byte). */
function bytes(text: string): Uint8Array {
  return Uint8Array.from(text, (c) => c.charCodeAt(0));
}

/** Go's `exactSig`: the data starts with `sig`. */
function exact(sig: string, type: string): Signature {
  const pattern = bytes(sig);
  return (data) => {
    if (data.length < pattern.length) return undefined;
    for (let i = 0; i < pattern.length; i++) if (data[i] !== pattern[i]) return undefined;
    return type;
  };
}

/** Go's `maskedSig`: each data byte ANDed with the mask equals the pattern; `skipWS` starts after leading whitespace. */
function masked(mask: string, pat: string, type: string, skipWS = false): Signature {
  const m = bytes(mask);
  const p = bytes(pat);
  return (data, firstNonWS) => {
    const d = skipWS ? data.subarray(firstNonWS) : data;
    if (d.length < p.length) return undefined;
    for (let i = 0; i < p.length; i++) if (((d[i] as number) & (m[i] as number)) !== p[i]) return undefined;
    return type;
  };
}

/** Go's `htmlSig`: after leading whitespace, the tag in any case, then a space or `>`. */
function html(tag: string): Signature {
  const pattern = bytes(tag);
  return (data, firstNonWS) => {
    const d = data.subarray(firstNonWS);
    if (d.length < pattern.length + 1) return undefined;
    for (let i = 0; i < pattern.length; i++) {
      const b = pattern[i] as number;
      let db = d[i] as number;
      // Upper-case letters in the pattern match either case.
      if (b >= 0x41 && b <= 0x5a) db &= 0xdf;
      if (db !== b) return undefined;
    }
    const next = d[pattern.length];
    return next === 0x20 || next === 0x3e ? 'text/html; charset=utf-8' : undefined;
  };
}

/** Go's `mp4Sig` (WHATWG mimesniff "signature for MP4"): an `ftyp` box naming an `mp4` brand. */
const mp4: Signature = (data) => {
  if (data.length < 12) return undefined;
  const boxSize = (((data[0] as number) << 24) | ((data[1] as number) << 16) | ((data[2] as number) << 8) | (data[3] as number)) >>> 0;
  if (data.length < boxSize || boxSize % 4 !== 0) return undefined;
  if (data[4] !== 0x66 || data[5] !== 0x74 || data[6] !== 0x79 || data[7] !== 0x70) return undefined; // "ftyp"
  for (let st = 8; st < boxSize; st += 4) {
    // The four bytes at 12 are the major brand's version number.
    if (st === 12) continue;
    if (data[st] === 0x6d && data[st + 1] === 0x70 && data[st + 2] === 0x34) return 'video/mp4'; // "mp4"
  }
  return undefined;
};

/** Go's `textSig`, last: no binary control byte after the leading whitespace. */
const text: Signature = (data, firstNonWS) => {
  for (let i = firstNonWS; i < data.length; i++) {
    const b = data[i] as number;
    if (b <= 0x08 || b === 0x0b || (b >= 0x0e && b <= 0x1a) || (b >= 0x1c && b <= 0x1f)) return undefined;
  }
  return TEXT_PLAIN;
};

/** Go's `sniffSignatures`, in its order: the first match wins. */
const SIGNATURES: Signature[] = [
  html('<!DOCTYPE HTML'),
  html('<HTML'),
  html('<HEAD'),
  html('<SCRIPT'),
  html('<IFRAME'),
  html('<H1'),
  html('<DIV'),
  html('<FONT'),
  html('<TABLE'),
  html('<A'),
  html('<STYLE'),
  html('<TITLE'),
  html('<B'),
  html('<BODY'),
  html('<BR'),
  html('<P'),
  html('<!--'),
  masked('\xFF\xFF\xFF\xFF\xFF', '<?xml', 'text/xml; charset=utf-8', true),
  exact('%PDF-', 'application/pdf'),
  exact('%!PS-Adobe-', 'application/postscript'),

  // UTF BOMs: the masks still ask for four bytes.
  masked('\xFF\xFF\x00\x00', '\xFE\xFF\x00\x00', 'text/plain; charset=utf-16be'),
  masked('\xFF\xFF\x00\x00', '\xFF\xFE\x00\x00', 'text/plain; charset=utf-16le'),
  masked('\xFF\xFF\xFF\x00', '\xEF\xBB\xBF\x00', TEXT_PLAIN),

  // Images.
  exact('\x00\x00\x01\x00', 'image/x-icon'),
  exact('\x00\x00\x02\x00', 'image/x-icon'),
  exact('BM', 'image/bmp'),
  exact('GIF87a', 'image/gif'),
  exact('GIF89a', 'image/gif'),
  masked('\xFF\xFF\xFF\xFF\x00\x00\x00\x00\xFF\xFF\xFF\xFF\xFF\xFF', 'RIFF\x00\x00\x00\x00WEBPVP', 'image/webp'),
  exact('\x89PNG\x0D\x0A\x1A\x0A', 'image/png'),
  exact('\xFF\xD8\xFF', 'image/jpeg'),

  // Audio and video, in the order mimesniff prescribes.
  masked('\xFF\xFF\xFF\xFF\x00\x00\x00\x00\xFF\xFF\xFF\xFF', 'FORM\x00\x00\x00\x00AIFF', 'audio/aiff'),
  masked('\xFF\xFF\xFF', 'ID3', 'audio/mpeg'),
  masked('\xFF\xFF\xFF\xFF\xFF', 'OggS\x00', 'application/ogg'),
  masked('\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF', 'MThd\x00\x00\x00\x06', 'audio/midi'),
  masked('\xFF\xFF\xFF\xFF\x00\x00\x00\x00\xFF\xFF\xFF\xFF', 'RIFF\x00\x00\x00\x00AVI ', 'video/avi'),
  masked('\xFF\xFF\xFF\xFF\x00\x00\x00\x00\xFF\xFF\xFF\xFF', 'RIFF\x00\x00\x00\x00WAVE', 'audio/wave'),
  mp4,
  exact('\x1A\x45\xDF\xA3', 'video/webm'),

  // Fonts: Embedded OpenType is 34 bytes of anything, then "LP".
  masked(`${'\x00'.repeat(34)}\xFF\xFF`, `${'\x00'.repeat(34)}LP`, 'application/vnd.ms-fontobject'),
  exact('\x00\x01\x00\x00', 'font/ttf'),
  exact('OTTO', 'font/otf'),
  exact('ttcf', 'font/collection'),
  exact('wOFF', 'font/woff'),
  exact('wOF2', 'font/woff2'),

  // Archives (RAR as RAR Labs defines it, as Go does).
  exact('\x1F\x8B\x08', 'application/x-gzip'),
  exact('PK\x03\x04', 'application/zip'),
  exact('Rar!\x1A\x07\x00', 'application/x-rar-compressed'),
  exact('Rar!\x1A\x07\x01\x00', 'application/x-rar-compressed'),

  exact('\x00\x61\x73\x6D', 'application/wasm'),

  text,
];

/** mimesniff's whitespace bytes (0xWS): tab, line feed, form feed, carriage return, space. */
function isWS(b: number): boolean {
  return b === 0x09 || b === 0x0a || b === 0x0c || b === 0x0d || b === 0x20;
}

/** A faithful port of Go's net/http DetectContentType (the WHATWG MIME sniffing subset Go implements, same signatures, same order, same results incl. "text/html; charset=utf-8", "text/plain; charset=utf-16be", "application/octet-stream" fallback; only the first 512 bytes are considered, as in Go). */
export function detectContentType(data: Uint8Array): string {
  const d = data.length > SNIFF_LEN ? data.subarray(0, SNIFF_LEN) : data;
  let firstNonWS = 0;
  while (firstNonWS < d.length && isWS(d[firstNonWS] as number)) firstNonWS++;
  for (const signature of SIGNATURES) {
    const type = signature(d, firstNonWS);
    if (type !== undefined) return type;
  }
  return 'application/octet-stream';
}

/**
 * go-is-svg's root test, for the text left once comments are gone: optional whitespace, an XML
 * declaration, an SVG doctype, then `<svg`. Go's `\s` is ASCII `[\t\n\f\r ]` (JavaScript's is
 * wider), and `u` makes `i` fold as Go's `(?i)` does.
 */
const SVG_ROOT = /^[\t\n\f\r ]*(?:<\?xml[^>]*>[\t\n\f\r ]*)?(?:<!doctype svg[^>]*>[\t\n\f\r ]*)?<svg/iu;

/** Go's regexp reads invalid UTF-8 as U+FFFD and leaves a byte order mark in place: so does this. */
const UTF8 = new TextDecoder('utf-8', { ignoreBOM: true });

/** Workhorse's internal/utils/svg Is(): true when the bytes are an SVG document (after an optional XML declaration, comments, doctype), as Workhorse detects it. */
export function isSvg(data: Uint8Array): boolean {
  return !isBinary(data) && SVG_ROOT.test(withoutComments(UTF8.decode(data)));
}

/**
 * go-is-svg's `isBinary`: a control byte up to 0x08 among the first 24 bytes; shorter data is never
 * binary. (Go decodes `string(buf[i])`, the byte taken as a code point, so the U+FFFD test there never fires.)
 */
function isBinary(data: Uint8Array): boolean {
  if (data.length < 24) return false;
  for (let i = 0; i < 24; i++) if ((data[i] as number) <= 0x08) return true;
  return false;
}

/**
 * `<!--([\s\S]*?)-->` replaced by nothing, without a regular expression's backtracking: once an
 * opening has no closing after it, no later opening can have one either.
 */
function withoutComments(textValue: string): string {
  let out = '';
  let from = 0;
  for (;;) {
    const open = textValue.indexOf('<!--', from);
    if (open === -1) break;
    const close = textValue.indexOf('-->', open + 4);
    if (close === -1) break;
    out += textValue.slice(from, open);
    from = close + 3;
  }
  return from === 0 ? textValue : out + textValue.slice(from);
}

/** Workhorse's headers.SafeContentHeaders(data, contentDisposition): returns the Content-Type and Content-Disposition to send. */
export function safeContentHeaders(
  data: Uint8Array,
  contentDisposition: string | undefined,
): { contentType: string; contentDisposition: string } {
  const contentType = safeContentType(data);
  return { contentType, contentDisposition: safeContentDisposition(contentType, contentDisposition ?? '') };
}

/** SVG is named as such (DetectContentType calls it text); any text, HTML and JavaScript included, becomes plain text. */
function safeContentType(data: Uint8Array): string {
  if (isSvg(data)) return SVG;
  const type = detectContentType(data);
  // Workhorse also maps `*/javascript`, which DetectContentType never names. Its `^text/*` (and `^image/*`, `^video/*` below): the name starts with the word.
  if (type.startsWith('text')) return TEXT_PLAIN;
  return type;
}

/**
 * An `attachment` from the backend stays (Rails forcing a download); SVG is never inline; images,
 * text, video and PDF are inline; anything else is an attachment. Only a leading, lower-case
 * `inline`/`attachment` is recognised and swapped, the parameters kept.
 */
function safeContentDisposition(contentType: string, disposition: string): string {
  if (disposition.startsWith('attachment')) return disposition;
  if (contentType === SVG) return attachment(disposition);
  if (
    contentType.startsWith('image') ||
    contentType.startsWith('text') ||
    contentType.startsWith('video') ||
    contentType.includes('application/pdf')
  ) {
    return inline(disposition);
  }
  return attachment(disposition);
}

function attachment(disposition: string): string {
  if (disposition === '') return 'attachment';
  if (disposition.startsWith('inline')) return `attachment${disposition.slice('inline'.length)}`;
  return disposition;
}

function inline(disposition: string): string {
  if (disposition === '') return 'inline';
  if (disposition.startsWith('attachment')) return `inline${disposition.slice('attachment'.length)}`;
  return disposition;
}

/**
 * A flat [name, value, …] header list with Content-Type and Content-Disposition set from `data`
 * (the body's first bytes) by `safeContentHeaders`, the backend's first Content-Disposition taken
 * into account. Empty `data` leaves the list as it is, as Workhorse's contentprocessor does.
 */
export function withSafeContentHeaders(headers: string[], data: Uint8Array): string[] {
  if (data.length === 0) return headers;
  const safe = safeContentHeaders(data.subarray(0, MAX_DETECT_SIZE), headerValue(headers, 'content-disposition'));
  const kept = withoutNamed(headers, CONTENT_HEADERS);
  kept.push('Content-Type', safe.contentType, 'Content-Disposition', safe.contentDisposition);
  return kept;
}
