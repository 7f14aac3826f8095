/** What the first bytes of a file say it is, as far as metadata goes. */
type Sniffed =
  | { kind: 'jpeg' | 'png' | 'tiff' | 'webp' | 'other' }
  | { kind: 'unsupported'; why: string }
  | { kind: 'malformed'; why: string };

/** How many leading bytes `sniff` looks at (an ISO-BMFF `ftyp` box's brand list fits). */
export const SNIFF_LENGTH = 64;

/** ISO-BMFF brands of image formats that keep Exif and XMP as items in a `meta` box: HEIF/HEIC, AVIF and Canon CR3. */
const HEIF_BRANDS = new Set([
  'heic',
  'heix',
  'heim',
  'heis',
  'hevc',
  'hevx',
  'hevm',
  'hevs',
  'mif1',
  'mif2',
  'msf1',
  'avif',
  'avis',
  'avio',
  'crx ',
]);

const at = (head: Buffer, offset: number, text: string) => head.toString('latin1', offset, offset + text.length) === text;

/** Decides the format from the magic numbers in `head` (up to `SNIFF_LENGTH` bytes), never from a name. */
export function sniff(head: Buffer): Sniffed {
  if (head[0] === 0xff && head[1] === 0xd8) return { kind: 'jpeg' };
  if (
    head[0] === 0xff &&
    (head[1] === 0xe0 || head[1] === 0xe1) &&
    (at(head, 4, 'JFIF\0') || at(head, 4, 'Exif\0') || at(head, 4, 'http://ns.adobe.com/xap/'))
  ) {
    return { kind: 'malformed', why: 'a JPEG without its SOI marker' };
  }
  if (at(head, 0, '\x89PNG')) return { kind: 'png' };
  if (at(head, 0, 'II*\0') || at(head, 0, 'MM\0*')) {
    return at(head, 8, 'CR') ? { kind: 'unsupported', why: 'Canon CR2 raw (TIFF-based)' } : { kind: 'tiff' };
  }
  if (at(head, 0, 'II+\0') || at(head, 0, 'MM\0+')) return { kind: 'unsupported', why: 'BigTIFF' };
  if (at(head, 0, 'IIRO') || at(head, 0, 'IIRS') || at(head, 0, 'MMOR') || at(head, 0, 'IIU\0')) {
    return { kind: 'unsupported', why: 'a TIFF-based raw format (ORF/RW2)' };
  }
  if (at(head, 0, 'RIFF') && at(head, 8, 'WEBP')) return { kind: 'webp' };
  if (at(head, 0, '\0\0\0\x0cJXL \r\n\x87\n')) return { kind: 'unsupported', why: 'JPEG XL in its container (Exif and XMP boxes)' };
  if (at(head, 0, '\0\0\0\x0cjP  \r\n\x87\n')) return { kind: 'unsupported', why: 'JPEG 2000 (Exif and XMP in uuid boxes)' };
  if (at(head, 4, 'ftyp')) {
    const brand = heifBrand(head);
    if (brand !== undefined) return { kind: 'unsupported', why: `ISO-BMFF image (brand ${brand.trim()})` };
  }
  // A bare JPEG XL codestream (FF 0A) cannot carry Exif; GIF, PDF, zip, text… are not ours to change.
  return { kind: 'other' };
}

/** The first HEIF-family brand among the `ftyp` box's major and compatible brands. */
function heifBrand(head: Buffer): string | undefined {
  if (head.length < 12) return undefined;
  const end = Math.min(head.readUInt32BE(0), head.length);
  const brands = [head.toString('latin1', 8, 12)];
  for (let i = 16; i + 4 <= end; i += 4) brands.push(head.toString('latin1', i, i + 4));
  return brands.find((b) => HEIF_BRANDS.has(b));
}
