/**
 * `Gitlab-Workhorse-Send-Data: <prefix><base64 JSON>` (Workhorse `senddata`): the backend hands
 * the proxy a job named by the prefix, its parameters in the JSON.
 */

/** Fetch a URL and stream the answer (Workhorse `sendurl`): `{"URL","AllowRedirects"}`. */
export const SEND_URL_PREFIX = 'send-url:';
/** Scale an image (Workhorse `imageresizer`): `{"Location","Width","ContentType"}`. */
export const SCALED_IMG_PREFIX = 'send-scaled-img:';

/** A `Gitlab-Workhorse-Send-Data` value that cannot be decoded, or lacks what its injecter needs. */
export class DirectiveError extends Error {
  override name = 'DirectiveError';
  readonly code = 'EDGE_DIRECTIVE_INVALID';
}

/** `<prefix>` + base64 of the JSON, URL-safe alphabet with padding: what Rails writes and Go's strict decoder wants. */
export function encodeSendData(prefix: string, params: Record<string, unknown>): string {
  const encoded = Buffer.from(JSON.stringify(params)).toString('base64').replace(/\+/g, '-').replace(/\//g, '_');
  return `${prefix}${encoded}`;
}

const BASE64 = /^[A-Za-z0-9+/_-]*={0,2}$/;

/**
 * Decodes `<prefix><base64 JSON>` (Workhorse `senddata.Prefix.Unpack`). Rails writes the URL-safe
 * alphabet with padding; the standard alphabet and missing padding are accepted too. Keys are
 * matched case-insensitively, as Go's JSON decoding does: the result maps lower-cased keys.
 */
export function decodeSendData(value: string, prefix: string): Map<string, unknown> {
  const encoded = value.slice(prefix.length).trim();
  if (!BASE64.test(encoded) || encoded.length === 0) throw new DirectiveError(`${prefix} payload is not base64`);
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.from(encoded, 'base64').toString('utf8'));
  } catch {
    throw new DirectiveError(`${prefix} payload is not JSON`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed))
    throw new DirectiveError(`${prefix} payload is not a JSON object`);
  return new Map(Object.entries(parsed).map(([k, v]) => [k.toLowerCase(), v]));
}

/** The injecter name for logs and metrics: the prefix without its colon (Workhorse `Prefix.Name`). */
export const injecterName = (prefix: string): string => prefix.replace(/:$/, '');
