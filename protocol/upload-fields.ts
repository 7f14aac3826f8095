/**
 * What an accelerated upload becomes for the backend (Workhorse `upload/rewrite.go`,
 * `../shared/PROTOCOL.md` §4): for a file part `<f>`, the plain fields `<f>.<key>` for every key
 * below, and `<f>.gitlab-workhorse-upload`, a JWT whose `upload` claim signs the same keys; the
 * request carries `Gitlab-Workhorse-Multipart-Fields`, a JWT whose `rewritten_fields` claim maps
 * each file field to its stored path.
 */

/** The hashes computed while a file is stored, in the order they are sent (`UploadHashFunctions` picks among them). */
export const UPLOAD_HASHES = ['md5', 'sha1', 'sha256', 'sha512'] as const;
export type UploadHash = (typeof UPLOAD_HASHES)[number];

/** The keys of a stored file, in the order they are sent, each a plain `<f>.<key>` field and signed in the `upload` claim. */
export const UPLOAD_KEYS = ['name', 'path', 'remote_url', 'remote_id', 'size', ...UPLOAD_HASHES, 'upload_duration'] as const;
export type UploadKey = (typeof UPLOAD_KEYS)[number];

/** The suffix of the field carrying a file's signed keys: `<f>.gitlab-workhorse-upload`. */
export const SIGNED_UPLOAD_FIELD = 'gitlab-workhorse-upload';
/** The claim of `<f>.gitlab-workhorse-upload` holding the signed keys. */
export const UPLOAD_CLAIM = 'upload';
/** The claim of `Gitlab-Workhorse-Multipart-Fields` mapping each rewritten file field to its path. */
export const REWRITTEN_FIELDS_CLAIM = 'rewritten_fields';
