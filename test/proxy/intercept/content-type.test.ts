import sharp from 'sharp';
import { describe, expect, it } from 'vitest';
import { detectContentType, isSvg, MAX_DETECT_SIZE, safeContentHeaders } from '../../../proxy/intercept/content-type.js';

/** Bytes from a string written with `\xNN` escapes, one char a byte. */
const b = (text: string) => Buffer.from(text, 'latin1');

describe('detectContentType, as Go’s http.DetectContentType', () => {
  it.each([
    ['empty input', '', 'text/plain; charset=utf-8'],
    ['whitespace only', ' \t\r\n\f', 'text/plain; charset=utf-8'],
    ['binary', '\x01\x02\x03', 'application/octet-stream'],
    ['a control byte deep in text', 'hello\x01world', 'application/octet-stream'],
    ['0x1B is text (escape sequences)', 'colour \x1b[31mred', 'text/plain; charset=utf-8'],
    ['plain ASCII', 'This is not HTML.', 'text/plain; charset=utf-8'],
    ['UTF-8 text', 'It has \xe2\x98\x83 though.', 'text/plain; charset=utf-8'],

    ['mixed-case HTML', '<HtMl><bOdY>blah blah blah</body></html>', 'text/html; charset=utf-8'],
    ['upper-case HTML', '<HTML></HTML>', 'text/html; charset=utf-8'],
    ['a doctype after leading spaces', '   <!DOCTYPE HTML>...', 'text/html; charset=utf-8'],
    ['a lower-case doctype', '<!doctype html>', 'text/html; charset=utf-8'],
    ['HTML after CRLF', '\r\n<html>...', 'text/html; charset=utf-8'],
    ['a script tag', '<script>alert(1)</script>', 'text/html; charset=utf-8'],
    ['a script tag with attributes', '<SCRIPT src="x.js">', 'text/html; charset=utf-8'],
    ['an iframe', '<iframe src="https://example.com">', 'text/html; charset=utf-8'],
    ['a paragraph', '<p>hi</p>', 'text/html; charset=utf-8'],
    ['a bold tag', '<b>hi</b>', 'text/html; charset=utf-8'],
    ['an HTML comment', '<!-- note -->', 'text/html; charset=utf-8'],
    ['a tag with no terminator after it', '<html', 'text/plain; charset=utf-8'],
    ['a tag followed by a letter', '<htmlx>', 'text/plain; charset=utf-8'],
    ['a tag ended by a tab (only space and > terminate)', '<html\t>', 'text/plain; charset=utf-8'],
    ['an unknown tag', '<section>', 'text/plain; charset=utf-8'],

    ['an XML declaration after whitespace', '\n<?xml!', 'text/xml; charset=utf-8'],
    ['an XML declaration in upper case (the mask is exact)', '<?XML version="1.0"?>', 'text/plain; charset=utf-8'],

    ['PDF', '%PDF-1.7\n', 'application/pdf'],
    ['PDF after whitespace (exact signatures do not skip it)', ' %PDF-1.7', 'text/plain; charset=utf-8'],
    ['PostScript', '%!PS-Adobe-3.0', 'application/postscript'],

    ['a UTF-16BE BOM', '\xFE\xFF\x00h', 'text/plain; charset=utf-16be'],
    ['a UTF-16LE BOM', '\xFF\xFEh\x00', 'text/plain; charset=utf-16le'],
    ['a UTF-8 BOM', '\xEF\xBB\xBFhello', 'text/plain; charset=utf-8'],
    ['a UTF-16 BOM alone (the masks need four bytes)', '\xFE\xFF', 'text/plain; charset=utf-8'],

    ['GIF87a', 'GIF87a', 'image/gif'],
    ['GIF89a', 'GIF89a...', 'image/gif'],
    ['PNG', '\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR', 'image/png'],
    ['JPEG', '\xFF\xD8\xFF\xE0\x00\x10JFIF', 'image/jpeg'],
    ['WebP', 'RIFF\x24\x00\x00\x00WEBPVP8 ', 'image/webp'],
    ['BMP', 'BM\x36\x00\x00\x00', 'image/bmp'],
    ['an icon', '\x00\x00\x01\x00\x01\x00', 'image/x-icon'],
    ['a cursor', '\x00\x00\x02\x00\x01\x00', 'image/x-icon'],

    ['AIFF', 'FORM\x00\x00\x00\x00AIFFCOMM', 'audio/aiff'],
    ['MP3 with an ID3 tag', 'ID3\x03\x00\x00\x00\x00\x0f', 'audio/mpeg'],
    ['OGG', 'OggS\x00\x02\x00\x00', 'application/ogg'],
    ['MIDI', 'MThd\x00\x00\x00\x06\x00\x01', 'audio/midi'],
    ['AVI', 'RIFF,O\n\x00AVI LIST', 'video/avi'],
    ['WAV', 'RIFF,\x00\x00\x00WAVEfmt \x12\x00\x00\x00\x06', 'audio/wave'],
    ['MP4 with an mp4 compatible brand', '\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom<\x06t\xbfmdat', 'video/mp4'],
    ['an ftyp box whose brands are not mp4', '\x00\x00\x00\x14ftypqt  \x00\x00\x00\x00qt  ', 'application/octet-stream'],
    ['an ftyp box longer than the data', '\x00\x00\x01\x04ftypmp42\x00\x00\x00\x00', 'application/octet-stream'],
    ['WebM', '\x1A\x45\xDF\xA3\x9f\x42\x86\x81', 'video/webm'],

    ['Embedded OpenType', `${'\x01'.repeat(34)}LP`, 'application/vnd.ms-fontobject'],
    ['TrueType', '\x00\x01\x00\x00\x00\x10', 'font/ttf'],
    ['OpenType', 'OTTO\x00\x0b', 'font/otf'],
    ['a font collection', 'ttcf\x00\x01', 'font/collection'],
    ['WOFF', 'wOFF\x00\x01\x00\x00', 'font/woff'],
    ['WOFF2', 'wOF2\x00\x01\x00\x00', 'font/woff2'],

    ['gzip', '\x1F\x8B\x08\x00\x00\x00', 'application/x-gzip'],
    ['ZIP', 'PK\x03\x04\x14\x00', 'application/zip'],
    ['RAR 4', 'Rar!\x1A\x07\x00\xcf', 'application/x-rar-compressed'],
    ['RAR 5', 'Rar!\x1A\x07\x01\x00', 'application/x-rar-compressed'],
    ['WebAssembly', '\x00asm\x01\x00\x00\x00', 'application/wasm'],
  ])('%s', (_name, data, expected) => {
    expect(detectContentType(b(data))).toBe(expected);
  });

  it('looks at the first 512 bytes only, as Go does', () => {
    const text = Buffer.alloc(512, 'a');
    expect(detectContentType(Buffer.concat([text, b('\x00\x01\x02')]))).toBe('text/plain; charset=utf-8');
    expect(detectContentType(Buffer.concat([text.subarray(1), b('\x00')]))).toBe('application/octet-stream');
    // HTML whose tag ends only past 512 bytes of leading whitespace is not HTML.
    expect(detectContentType(Buffer.concat([Buffer.alloc(508, ' '), b('<html>')]))).toBe('text/plain; charset=utf-8');
  });

  it('recognises real images made by sharp', async () => {
    const red = () => sharp({ create: { width: 4, height: 4, channels: 3, background: '#f00' } });
    const images = await Promise.all([red().png(), red().jpeg(), red().webp(), red().gif()].map((s) => s.toBuffer()));
    expect(images.map((img) => detectContentType(img))).toEqual(['image/png', 'image/jpeg', 'image/webp', 'image/gif']);
  });
});

describe('isSvg, as Workhorse’s internal/utils/svg', () => {
  it.each([
    ['a bare svg root', '<svg width="100" height="100"></svg>'],
    ['an upper-case root', '<SVG></SVG>'],
    ['leading whitespace', ' \n\t<svg/>'],
    ['a leading comment', '<!-- This is a comment --><svg width="100" height="100"></svg>'],
    ['comments around the declaration', '<!-- a --><?xml version="1.0"?><!-- b\n--><svg/>'],
    ['an XML declaration', '<?xml version="1.0" encoding="utf-8"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>'],
    [
      'a declaration and a doctype',
      '<?xml version="1.0" encoding="utf-8"?>\n\t\t\t<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1 Basic//EN" "http://www.w3.org/Graphics/SVG/1.1/DTD/svg11-basic.dtd">\n\t\t\t<svg version="1.1" baseProfile="basic" id="svg2" viewBox="0 0 900 900">\n<path d="M184.013,144.428"/>\n</svg>',
    ],
    ['a script inside', '<svg xmlns="http://www.w3.org/2000/svg"><script>alert(document.domain)</script></svg>'],
    ['a root with no attributes nor end', '<svg'],
  ])('is true for %s', (_name, data) => {
    expect(isSvg(b(data))).toBe(true);
  });

  it.each([
    ['HTML', '<html><body><h1>Hello, World!</h1></body></html>'],
    ['random text', 'random binary data'],
    ['a single NUL', '\x00'],
    ['low control bytes', '\x00\x01\x03\x04'],
    ['an svg root after other markup', '<div><svg/></div>'],
    ['an svg root after text', 'hello <svg/>'],
    ['an HTML doctype before the root', '<!DOCTYPE html><svg/>'],
    ['an unclosed comment before the root', '<!-- never closed <svg/>'],
    ['a vertical tab before the root (Go’s \\s has none)', '\x0b<svg/>'],
    ['a no-break space before the root (Go’s \\s is ASCII)', '\xc2\xa0<svg/>'],
    ['a UTF-8 byte order mark before the root (kept, as Go keeps it)', '\xEF\xBB\xBF<svg/>'],
    ['a control byte among the first 24 bytes', '<svg xmlns="a"       \x08 />'],
  ])('is false for %s', (_name, data) => {
    expect(isSvg(b(data))).toBe(false);
  });

  it('only counts control bytes among the first 24 bytes, and only when there are 24', () => {
    expect(isSvg(b('<svg/>\x00'))).toBe(true);
    expect(isSvg(b(`<svg xmlns="a">${' '.repeat(20)}\x01</svg>`))).toBe(true);
  });

  it('folds case as Go’s (?i) does: a long s (U+017F) matches s', () => {
    expect(isSvg(Buffer.from('<ſvg/>', 'utf8'))).toBe(true);
  });

  it('strips every closed comment, and stays fast on many unclosed ones', () => {
    expect(isSvg(b('<!----><!-- x --><svg/>'))).toBe(true);
    const hostile = b('<!--'.repeat(MAX_DETECT_SIZE / 4));
    const started = performance.now();
    expect(isSvg(hostile)).toBe(false);
    expect(performance.now() - started).toBeLessThan(100);
  });
});

describe('safeContentHeaders, as Workhorse’s headers.SafeContentHeaders', () => {
  const svg = b('<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>');

  it.each([
    ['HTML becomes plain text, inline', '<!DOCTYPE html><script>alert(1)</script>', undefined, 'text/plain; charset=utf-8', 'inline'],
    [
      'XML becomes plain text, inline',
      '<?xml version="1.0"?><a/>',
      'inline; filename=test.xml',
      'text/plain; charset=utf-8',
      'inline; filename=test.xml',
    ],
    ['text keeps an inline disposition', 'a text file', 'inline', 'text/plain; charset=utf-8', 'inline'],
    ['text with no disposition is inline', 'a text file', '', 'text/plain; charset=utf-8', 'inline'],
    [
      'an attachment stays an attachment',
      'a text file',
      'attachment; filename="a.txt"',
      'text/plain; charset=utf-8',
      'attachment; filename="a.txt"',
    ],
    ['UTF-16 text is plain UTF-8 text', '\xFE\xFF\x00h\x00i', undefined, 'text/plain; charset=utf-8', 'inline'],
    ['PDF is inline', '%PDF-1.4', 'attachment', 'application/pdf', 'attachment'],
    ['PDF with no disposition', '%PDF-1.4', undefined, 'application/pdf', 'inline'],
    ['video is inline', '\x1A\x45\xDF\xA3', undefined, 'video/webm', 'inline'],
    ['audio is an attachment', 'ID3\x03\x00', undefined, 'audio/mpeg', 'attachment'],
    [
      'an inline archive becomes an attachment, parameters kept',
      'PK\x03\x04',
      'inline; filename="a.zip"',
      'application/zip',
      'attachment; filename="a.zip"',
    ],
    ['unknown bytes are an attachment', '\x00\x01\x02', undefined, 'application/octet-stream', 'attachment'],
    [
      'a disposition of another kind is kept for inline types',
      'text',
      'form-data; name="x"',
      'text/plain; charset=utf-8',
      'form-data; name="x"',
    ],
    [
      'a disposition of another kind is kept for attachments',
      '\x00\x01',
      'form-data; name="x"',
      'application/octet-stream',
      'form-data; name="x"',
    ],
    ['only a lower-case leading keyword is recognised', '\x00\x01', 'Inline', 'application/octet-stream', 'Inline'],
  ])('%s', (_name, data, disposition, type, expectedDisposition) => {
    expect(safeContentHeaders(b(data), disposition)).toEqual({ contentType: type, contentDisposition: expectedDisposition });
  });

  it('names SVG image/svg+xml and never lets it inline', () => {
    expect(safeContentHeaders(svg, undefined)).toEqual({ contentType: 'image/svg+xml', contentDisposition: 'attachment' });
    expect(safeContentHeaders(svg, 'inline; filename=xml.svg')).toEqual({
      contentType: 'image/svg+xml',
      contentDisposition: 'attachment; filename=xml.svg',
    });
    expect(safeContentHeaders(svg, 'attachment; filename="a.svg"')).toEqual({
      contentType: 'image/svg+xml',
      contentDisposition: 'attachment; filename="a.svg"',
    });
  });

  it('keeps images inline, swapping a leading attachment for inline only when there is none', async () => {
    const png = await sharp({ create: { width: 2, height: 2, channels: 3, background: '#00f' } })
      .png()
      .toBuffer();
    expect(safeContentHeaders(png, 'inline')).toEqual({ contentType: 'image/png', contentDisposition: 'inline' });
    expect(safeContentHeaders(png, '')).toEqual({ contentType: 'image/png', contentDisposition: 'inline' });
  });

  it('reads SVG past the 512 bytes DetectContentType sees, up to what it is given', () => {
    const late = b(`<!--${' '.repeat(1000)}--><svg/>`);
    expect(detectContentType(late)).toBe('text/html; charset=utf-8');
    expect(safeContentHeaders(late, undefined).contentType).toBe('image/svg+xml');
  });
});
