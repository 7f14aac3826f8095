/**
 * Last-Modified and If-Modified-Since at whole-second precision (Workhorse
 * `image_resizer_caching.go`: `modtime.Truncate(time.Second)`), decided before any image byte is read.
 */

const IMF_FIXDATE = /^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d{2}:\d{2}:\d{2} GMT$/;
const RFC850 =
  /^(Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), \d{2}-(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)-\d{2} \d{2}:\d{2}:\d{2} GMT$/;
const ASCTIME = /^(Mon|Tue|Wed|Thu|Fri|Sat|Sun) (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [ \d]\d \d{2}:\d{2}:\d{2} \d{4}$/;

/**
 * Parses an HTTP date in the three forms HTTP allows (RFC 9110 §5.6.7), as Go's `http.ParseTime`
 * does; anything else (`"0"`, garbage) is `undefined`, so the request is answered normally.
 * (`Date.parse` alone is far more lenient: it reads `"0"` as the year 2000.)
 */
export function parseHttpDate(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  // Revalidations of one page repeat the same date: the last answer is kept.
  if (text === lastParsed.text) return lastParsed.ms;
  const ms = parse(text);
  lastParsed = { text, ms };
  return ms;
}

let lastParsed: { text: string; ms: number | undefined } = { text: '', ms: undefined };
let lastFormatted = { second: Number.NaN, text: '' };

function parse(text: string): number | undefined {
  const t = text.trim();
  let ms: number;
  if (IMF_FIXDATE.test(t) || RFC850.test(t)) ms = Date.parse(t);
  else if (ASCTIME.test(t)) ms = Date.parse(`${t} GMT`);
  else return undefined;
  return Number.isNaN(ms) ? undefined : ms;
}

/** The Last-Modified value for a modification time, or undefined for an unknown (zero/epoch) time. */
export function lastModified(mtimeMs: number): string | undefined {
  if (!Number.isFinite(mtimeMs) || mtimeMs <= 0) return undefined;
  const second = Math.floor(mtimeMs / 1000);
  if (second !== lastFormatted.second) lastFormatted = { second, text: new Date(second * 1000).toUTCString() };
  return lastFormatted.text;
}

/** True when the client's copy is current: If-Modified-Since is at or after the mtime, truncated to seconds. */
export function isNotModified(ifModifiedSince: string | undefined, mtimeMs: number): boolean {
  const since = parseHttpDate(ifModifiedSince);
  if (since === undefined || !Number.isFinite(mtimeMs) || mtimeMs <= 0) return false;
  return Math.floor(mtimeMs / 1000) * 1000 <= since;
}
