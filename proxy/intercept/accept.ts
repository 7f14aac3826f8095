import type { ModernFormat } from '../../scaler/index.js';

/** The media type of each format Outrider may convert to. */
const MEDIA_TYPES: Record<ModernFormat, string> = { avif: 'image/avif', webp: 'image/webp' };

/** Distinct Accept values remembered: browsers send a handful, so most requests are one lookup. */
const MEMO_SIZE = 256;

/**
 * Chooses a scaled image's format from the request's `Accept`, collapsed to at most three
 * variants: one of `formats` (the modern formats the config allows, in order of preference), or
 * undefined for the source's own format. Only the request headers are read, so the choice is
 * made before the original is opened (a 304 costs what it did).
 *
 * - A modern format is chosen only when Accept names it exactly (`image/avif`, `image/webp`):
 *   `*` and `image/*` do not promise a decoder for it (curl, old browsers and HTTP libraries send
 *   them), while the source's PNG or JPEG is what they have always received.
 * - q-values count (RFC 9110 §12.5.1): the most specific range that matches a type gives its
 *   weight; a modern format is chosen when its weight is at least the source's, the earlier one
 *   in `formats` winning a tie; `q=0` refuses it.
 * - No Accept at all, or one that accepts nothing on offer: the source's format, as Workhorse sends.
 */
export function createFormatChooser(
  formats: readonly ModernFormat[],
): (accept: string | undefined, sourceType: string) => ModernFormat | undefined {
  if (formats.length === 0) return () => undefined;
  // By source type, then by Accept value: a lookup builds no key string.
  const memos = new Map<string, Map<string, ModernFormat | undefined>>();
  return (accept, sourceType) => {
    if (accept === undefined || accept === '') return undefined;
    let memo = memos.get(sourceType);
    if (memo === undefined) {
      if (memos.size >= MEMO_SIZE) memos.clear();
      memo = new Map();
      memos.set(sourceType, memo);
    }
    const known = memo.get(accept);
    if (known !== undefined || memo.has(accept)) return known;
    const ranges = parseAccept(accept);
    const sourceWeight = weightOf(ranges, sourceType.toLowerCase(), true);
    let chosen: ModernFormat | undefined;
    let best = sourceWeight;
    for (const format of formats) {
      const weight = weightOf(ranges, MEDIA_TYPES[format], false);
      // Strictly above the best so far, except against the source, which a modern format ties.
      if (weight > 0 && (weight > best || (chosen === undefined && weight === best))) {
        chosen = format;
        best = weight;
      }
    }
    if (memo.size >= MEMO_SIZE) memo.clear();
    memo.set(accept, chosen);
    return chosen;
  };
}

interface MediaRange {
  type: string;
  subtype: string;
  q: number;
}

/** Accept's media ranges with their weights; a malformed range or weight is skipped. */
function parseAccept(accept: string): MediaRange[] {
  const ranges: MediaRange[] = [];
  for (const part of accept.split(',')) {
    const [range = '', ...params] = part.split(';');
    const slash = range.indexOf('/');
    if (slash <= 0) continue;
    const type = range.slice(0, slash).trim().toLowerCase();
    const subtype = range
      .slice(slash + 1)
      .trim()
      .toLowerCase();
    if (type === '' || subtype === '') continue;
    let q = 1;
    let valid = true;
    for (const param of params) {
      const eq = param.indexOf('=');
      if (eq < 0 || param.slice(0, eq).trim().toLowerCase() !== 'q') continue;
      const value = param.slice(eq + 1).trim();
      // qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )
      if (!/^(0(\.\d{0,3})?|1(\.0{0,3})?)$/.test(value)) valid = false;
      else q = Number(value);
    }
    if (valid) ranges.push({ type, subtype, q });
  }
  return ranges;
}

/**
 * The weight Accept gives `mediaType`: from the most specific range that matches it (exact, then
 * `type/*`, then `*\/*`); 0 when none does. `wildcards` false counts only an exact match.
 */
function weightOf(ranges: readonly MediaRange[], mediaType: string, wildcards: boolean): number {
  const slash = mediaType.indexOf('/');
  const type = mediaType.slice(0, slash);
  const subtype = mediaType.slice(slash + 1);
  let specificity = -1;
  let weight = 0;
  for (const r of ranges) {
    let s: number;
    if (r.type === type && r.subtype === subtype) s = 2;
    else if (!wildcards) continue;
    else if (r.type === type && r.subtype === '*') s = 1;
    else if (r.type === '*' && r.subtype === '*') s = 0;
    else continue;
    // The most specific range decides; among equally specific ones, the highest weight.
    if (s > specificity || (s === specificity && r.q > weight)) {
      specificity = s;
      weight = r.q;
    }
  }
  return weight;
}

/** `Vary` with `Accept` added to the backend's own list (kept as it is when it has it, or `*`). */
export function varyWithAccept(existing: string | undefined): string {
  if (existing === undefined || existing.trim() === '') return 'Accept';
  const names = existing.split(',').map((n) => n.trim().toLowerCase());
  if (names.includes('accept') || names.includes('*')) return existing;
  return `${existing}, Accept`;
}
