/**
 * The header names and content type of Workhorse's wire protocol (`../shared/PROTOCOL.md`), as
 * Workhorse and Rails write them. HTTP names are case-insensitive: the proxy matches them
 * lower-cased (`proxy/forward/headers.ts`), the backend toolkit sends them as written here.
 */

/** Response: `<prefix><base64 JSON>`, work handed to the proxy (send-url, send-scaled-img…). */
export const SEND_DATA_HEADER = 'Gitlab-Workhorse-Send-Data';
/** Response: an absolute path the proxy serves. */
export const SENDFILE_HEADER = 'X-Sendfile';
/** Request: what the proxy tells the backend it serves X-Sendfile with (the value is `X-Sendfile`). */
export const SENDFILE_TYPE_HEADER = 'X-Sendfile-Type';
/** Response: "true" asks the proxy to sniff the Content-Type of what it serves. */
export const DETECT_CONTENT_TYPE_HEADER = 'Gitlab-Workhorse-Detect-Content-Type';
/** Request: a JWT naming the form fields an accelerated upload rewrote (`rewritten_fields`). */
export const MULTIPART_FIELDS_HEADER = 'Gitlab-Workhorse-Multipart-Fields';
/** Request: a JWT `{"iss","iat"}` proving a request (an `/authorize` call, an upload) came through the proxy. */
export const API_REQUEST_HEADER = 'Gitlab-Workhorse-Api-Request';
/** Request: the proxy's version. */
export const WORKHORSE_HEADER = 'Gitlab-Workhorse';
/** Request: when the proxy received the request, in nanoseconds since the epoch. */
export const PROXY_START_HEADER = 'Gitlab-Workhorse-Proxy-Start';
/** The content type of internal API answers: an authorize answer the proxy trusts, never relayed to a client. */
export const API_CONTENT_TYPE = 'application/vnd.gitlab-workhorse+json';
