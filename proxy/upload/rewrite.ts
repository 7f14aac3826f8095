/** What the backend receives instead of the client's files: a rewritten body and its signed fields (Workhorse `upload/rewrite.go`). */
import { randomBytes } from 'node:crypto';
import { ISSUER, signJwt } from '../../protocol/jwt.js';
import { REWRITTEN_FIELDS_CLAIM, SIGNED_UPLOAD_FIELD, UPLOAD_CLAIM, UPLOAD_KEYS, type UploadKey } from '../../protocol/upload-fields.js';
import type { BodyReplacement } from '../forward/forwarder.js';
import { MULTIPART_FIELDS } from '../forward/headers.js';
import type { Part } from './multipart.js';
import type { StoredFile } from './store/index.js';

/**
 * What the backend receives instead of a body upload: the file's fields, urlencoded, and the
 * signed `Gitlab-Workhorse-Multipart-Fields` naming its path; `headers` are sent as well.
 */
export function rewriteBody(stored: StoredFile, secret: Buffer, headers: string[]): BodyReplacement {
  const form = new URLSearchParams();
  for (const [name, value] of fileFields('file', '', stored, secret)) form.append(name, value);
  return {
    body: Buffer.from(form.toString()),
    contentType: 'application/x-www-form-urlencoded',
    headers: [MULTIPART_FIELDS, signJwt({ [REWRITTEN_FIELDS_CLAIM]: { file: stored.path }, iss: ISSUER }, secret), ...headers],
  };
}

/**
 * What the backend receives instead of a multipart upload: a new multipart body with the client's
 * fields as they came and each file replaced by its fields, in the client's order, and (when there
 * were files) the signed `Gitlab-Workhorse-Multipart-Fields`; `headers` are sent as well.
 */
export function rewriteMultipart(parts: readonly Part[], secret: Buffer, headers: string[]): BodyReplacement {
  const boundary = `outrider-${randomBytes(16).toString('hex')}`;
  const chunks: Buffer[] = [];
  const rewritten: Record<string, string> = {};
  for (const part of parts) {
    if (part.kind === 'field') {
      chunks.push(formPart(boundary, part.name, part.value, part.contentType));
      continue;
    }
    rewritten[part.name] = part.stored.path;
    for (const [name, value] of fileFields(part.name, part.filename, part.stored, secret))
      chunks.push(formPart(boundary, name, Buffer.from(value)));
  }
  chunks.push(Buffer.from(`--${boundary}--\r\n`));
  return {
    body: Buffer.concat(chunks),
    contentType: `multipart/form-data; boundary=${boundary}`,
    // Signed even when no file came (an empty file input): the backend can tell "no file" from
    // "not through Outrider". Workhorse sends it only with files; Rails reads an empty one the same.
    headers: [MULTIPART_FIELDS, signJwt({ [REWRITTEN_FIELDS_CLAIM]: rewritten, iss: ISSUER }, secret), ...headers],
  };
}

/**
 * `<f>.name`, `<f>.path`… in the protocol's order (`UPLOAD_KEYS`, a hash only when it was computed),
 * and `<f>.gitlab-workhorse-upload`, the JWT signing all of them.
 */
function fileFields(prefix: string, filename: string, stored: StoredFile, secret: Buffer): [string, string][] {
  const values: Partial<Record<UploadKey, string>> = {
    ...stored.hashes,
    name: filename,
    path: stored.path,
    remote_url: stored.remoteUrl,
    remote_id: stored.remoteId,
    size: String(stored.size),
    upload_duration: String(stored.durationS),
  };
  const upload: Record<string, string> = {};
  for (const key of UPLOAD_KEYS) {
    const value = values[key];
    if (value !== undefined) upload[key] = value;
  }
  const out: [string, string][] = Object.entries(upload).map(([k, v]) => [`${prefix}.${k}`, v]);
  out.push([`${prefix}.${SIGNED_UPLOAD_FIELD}`, signJwt({ [UPLOAD_CLAIM]: upload, iss: ISSUER }, secret)]);
  return out;
}

/** One part of the rewritten body; names escaped as browsers do (`"` → %22, CR/LF → %0D/%0A). */
function formPart(boundary: string, name: string, value: Buffer, contentType?: string): Buffer {
  const escaped = name.replace(/"/g, '%22').replace(/\r/g, '%0D').replace(/\n/g, '%0A');
  const type = contentType === undefined || contentType === '' || contentType === 'text/plain' ? '' : `Content-Type: ${contentType}\r\n`;
  return Buffer.concat([Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="${escaped}"\r\n${type}\r\n`), value, CRLF]);
}

const CRLF = Buffer.from('\r\n');
