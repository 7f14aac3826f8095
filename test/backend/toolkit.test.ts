import { execFileSync } from 'node:child_process';
import { createHash, createHmac, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import Fastify from 'fastify';
import { FormData, request } from 'undici';
import { describe, expect, it } from 'vitest';
import {
  API_CONTENT_TYPE,
  authorizeResponse,
  DETECT_CONTENT_TYPE,
  loadSecret,
  OutriderSecretError,
  OutriderVerificationError,
  readFields,
  respond,
  sendFile,
  sendScaledImage,
  sendUrl,
  signJwt,
  type UploadedFile,
  verifyApiRequest,
  verifyJwt,
  verifyUploadFields,
} from '../../backend/index.js';
import { ConfigError, secretHint } from '../../config/errors.js';
import { decodeSendData } from '../../protocol/send-data.js';
import { loadSecret as outriderLoadSecret } from '../../proxy/runtime/start-files.js';
import { parseAuthorization } from '../../proxy/upload/authorize.js';
import { startProxy } from '../helpers/app.js';
import { startBackend } from '../helpers/backend.js';

// Workhorse's test key (testdata/test-secret).
const SECRET_B64 = '+M8OJgJxoxdDRgOR0UT8sDbAgp/63y/XUNE3d8+tawA=';
const SECRET = Buffer.from(SECRET_B64, 'base64');
const OTHER = randomBytes(32);
const root = mkdtempSync(join(tmpdir(), 'outrider-toolkit-'));
const TEMP = join(root, 'uploads');
mkdirSync(TEMP);
const now = () => Math.floor(Date.now() / 1000);

/** Runs `fn` and returns the OutriderVerificationError it throws. */
function refusal(fn: () => unknown): OutriderVerificationError {
  try {
    fn();
  } catch (err) {
    if (err instanceof OutriderVerificationError) return err;
    throw err;
  }
  throw new Error('expected an OutriderVerificationError');
}

/** Swaps one character of a JWT part (0 header, 1 payload, 2 signature). */
function tamper(token: string, part: number): string {
  const parts = token.split('.');
  const text = parts[part] as string;
  parts[part] = `${text.slice(0, 4)}${text[4] === 'A' ? 'B' : 'A'}${text.slice(5)}`;
  return parts.join('.');
}

describe('verifyJwt', () => {
  it('returns the claims of a token signed with the secret by gitlab-workhorse', () => {
    const token = signJwt({ iss: 'gitlab-workhorse', x: 1 }, SECRET);
    expect(verifyJwt(token, SECRET)).toEqual({ iss: 'gitlab-workhorse', x: 1 });
    expect(JSON.parse(Buffer.from(token.split('.')[0] as string, 'base64url').toString())).toEqual({ alg: 'HS256', typ: 'JWT' });
  });

  it('refuses a wrong secret, a tampered header, payload or signature, and a non-canonical signature', () => {
    const token = signJwt({ iss: 'gitlab-workhorse', rewritten_fields: { avatar: '/tmp/a' } }, SECRET);
    expect(refusal(() => verifyJwt(token, OTHER)).code).toBe('EDGE_VERIFY_SIGNATURE');
    expect(refusal(() => verifyJwt(tamper(token, 0), SECRET)).code).toBe('EDGE_VERIFY_SIGNATURE');
    expect(refusal(() => verifyJwt(tamper(token, 1), SECRET)).code).toBe('EDGE_VERIFY_SIGNATURE');
    expect(refusal(() => verifyJwt(tamper(token, 2), SECRET)).code).toBe('EDGE_VERIFY_SIGNATURE');
    // The same signature bytes with padding, or with other trailing bits, decode alike: refused all the same.
    expect(refusal(() => verifyJwt(`${token}=`, SECRET)).code).toBe('EDGE_VERIFY_SIGNATURE');
    const last = token.at(-1) as string;
    // 32 bytes are 43 characters with 2 bits to spare: the last character's lowest bit is not decoded.
    const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
    const sibling = alphabet[alphabet.indexOf(last) ^ 1] as string;
    expect(Buffer.from(`${token.split('.')[2]?.slice(0, -1)}${sibling}`, 'base64url')).toEqual(
      Buffer.from(token.split('.')[2] as string, 'base64url'),
    );
    expect(refusal(() => verifyJwt(`${token.slice(0, -1)}${sibling}`, SECRET)).code).toBe('EDGE_VERIFY_SIGNATURE');
    // Re-signed claims under the original header and signature do not pass.
    const [h, , s] = token.split('.');
    const forged = Buffer.from(JSON.stringify({ iss: 'gitlab-workhorse', rewritten_fields: { avatar: '/etc/passwd' } })).toString(
      'base64url',
    );
    expect(refusal(() => verifyJwt(`${h}.${forged}.${s}`, SECRET)).code).toBe('EDGE_VERIFY_SIGNATURE');
  });

  it('accepts HS256 only: alg none, HS512 and a missing alg are refused, even with an HMAC-SHA256 that matches', () => {
    const make = (header: object, alg: 'sha256' | 'sha512' = 'sha256') => {
      const body = `${Buffer.from(JSON.stringify(header)).toString('base64url')}.${Buffer.from('{"iss":"gitlab-workhorse"}').toString('base64url')}`;
      return `${body}.${createHmac(alg, SECRET).update(body).digest('base64url')}`;
    };
    for (const token of [make({ alg: 'none' }), make({ alg: 'HS512' }), make({ typ: 'JWT' })]) {
      const err = refusal(() => verifyJwt(token, SECRET));
      expect(err.code).toBe('EDGE_VERIFY_MALFORMED');
      expect(err.message).toBe('not an HS256 token');
    }
    // A real HS512 token, and an unsigned one: their signatures are not the HS256 one.
    expect(refusal(() => verifyJwt(make({ alg: 'HS512' }, 'sha512'), SECRET)).code).toBe('EDGE_VERIFY_SIGNATURE');
    expect(refusal(() => verifyJwt(`${make({ alg: 'none' }).split('.').slice(0, 2).join('.')}.`, SECRET)).code).toBe(
      'EDGE_VERIFY_SIGNATURE',
    );
  });

  it('refuses what is not a JWT, claims that are not an object, and another issuer', () => {
    for (const token of ['', 'a.b', 'a.b.c.d']) expect(refusal(() => verifyJwt(token, SECRET)).code).toBe('EDGE_VERIFY_MALFORMED');
    const notJson = `${signJwt({}, SECRET).split('.')[0]}.${Buffer.from('{oops').toString('base64url')}`;
    expect(refusal(() => verifyJwt(`${notJson}.${createHmac('sha256', SECRET).update(notJson).digest('base64url')}`, SECRET)).message).toBe(
      'not a JWT',
    );
    const list = `${signJwt({}, SECRET).split('.')[0]}.${Buffer.from('[1]').toString('base64url')}`;
    expect(refusal(() => verifyJwt(`${list}.${createHmac('sha256', SECRET).update(list).digest('base64url')}`, SECRET)).message).toBe(
      'claims are not an object',
    );
    const err = refusal(() => verifyJwt(signJwt({ iss: 'someone-else' }, SECRET), SECRET));
    expect([err.code, err.statusCode, err.message]).toEqual(['EDGE_VERIFY_ISSUER', 400, 'the token was not issued by "gitlab-workhorse"']);
    expect(verifyJwt(signJwt({ iss: 'someone-else' }, SECRET), SECRET, { issuer: null })).toEqual({ iss: 'someone-else' });
  });
});

describe('verifyApiRequest', () => {
  const headers = (iat: number | undefined, key = SECRET, iss = 'gitlab-workhorse') => ({
    'gitlab-workhorse-api-request': signJwt({ iss, ...(iat === undefined ? {} : { iat }) }, key),
  });

  it('accepts a fresh token from node:http headers, any-case records and fetch Headers', () => {
    expect(verifyApiRequest(headers(now()), SECRET)).toMatchObject({ iss: 'gitlab-workhorse' });
    const token = headers(now())['gitlab-workhorse-api-request'];
    expect(verifyApiRequest({ 'Gitlab-Workhorse-Api-Request': token }, SECRET).iss).toBe('gitlab-workhorse');
    expect(verifyApiRequest(new Headers({ 'Gitlab-Workhorse-Api-Request': token }), SECRET).iss).toBe('gitlab-workhorse');
    expect(verifyApiRequest({ 'gitlab-workhorse-api-request': [token] }, SECRET).iss).toBe('gitlab-workhorse');
  });

  it('refuses with 401: missing, repeated, wrong secret, tampered, other issuer', () => {
    const cases: [Record<string, string | string[]>, string][] = [
      [{}, 'EDGE_VERIFY_MISSING'],
      [{ 'gitlab-workhorse-api-request': '' }, 'EDGE_VERIFY_MISSING'],
      [{ 'gitlab-workhorse-api-request': ['a', 'b'] }, 'EDGE_VERIFY_MALFORMED'],
      [headers(now(), OTHER), 'EDGE_VERIFY_SIGNATURE'],
      [{ 'gitlab-workhorse-api-request': tamper(headers(now())['gitlab-workhorse-api-request'], 2) }, 'EDGE_VERIFY_SIGNATURE'],
      [headers(now(), SECRET, 'rails'), 'EDGE_VERIFY_ISSUER'],
    ];
    for (const [given, code] of cases) {
      const err = refusal(() => verifyApiRequest(given, SECRET));
      expect([err.code, err.statusCode]).toEqual([code, 401]);
    }
  });

  it('wants iat within 60 s plus 30 s of clock skew by default, and takes other limits', () => {
    const at = 1_800_000_000;
    const check =
      (iat: number | undefined, options = {}) =>
      () =>
        verifyApiRequest(headers(iat), SECRET, { now: at * 1000, ...options });
    expect(check(at - 90)()).toMatchObject({ iat: at - 90 });
    expect(check(at + 30)()).toMatchObject({ iat: at + 30 });
    const expired = refusal(check(at - 91));
    expect([expired.code, expired.statusCode, expired.message]).toEqual([
      'EDGE_VERIFY_EXPIRED',
      401,
      'the API request token is 91 s old, over 90 s',
    ]);
    expect(refusal(check(at + 31)).message).toBe('the API request token was issued in the future');
    expect(refusal(check(undefined)).message).toBe('the API request token has no iat');
    expect(refusal(check(at - 11, { maxAgeSeconds: 10, clockSkewSeconds: 0 })).code).toBe('EDGE_VERIFY_EXPIRED');
    // Older Workhorse versions send no iat: opt out of the age check.
    expect(check(undefined, { maxAgeSeconds: Number.POSITIVE_INFINITY })()).toEqual({ iss: 'gitlab-workhorse' });
    const text = `${signJwt({}, SECRET).split('.')[0]}.${Buffer.from('{"iss":"gitlab-workhorse","iat":"now"}').toString('base64url')}`;
    const stringIat = `${text}.${createHmac('sha256', SECRET).update(text).digest('base64url')}`;
    expect(refusal(() => verifyApiRequest({ 'gitlab-workhorse-api-request': stringIat }, SECRET)).code).toBe('EDGE_VERIFY_EXPIRED');
  });
});

describe('authorizeResponse', () => {
  it('answers the JSON and content type Outrider trusts, which Outrider reads back as given', () => {
    const answer = authorizeResponse({ tempPath: TEMP, maximumSize: 200_000, uploadHashFunctions: ['sha256'] });
    expect(answer).toEqual({
      statusCode: 200,
      contentType: 'application/vnd.gitlab-workhorse+json',
      body: JSON.stringify({ TempPath: TEMP, MaximumSize: 200_000, UploadHashFunctions: ['sha256'] }),
    });
    expect(parseAuthorization(JSON.parse(answer.body))).toEqual({
      destination: { kind: 'local', dir: TEMP },
      maxSize: 200_000,
      hashes: ['sha256'],
    });
    expect(parseAuthorization(JSON.parse(authorizeResponse({ tempPath: TEMP }).body))).toMatchObject({
      maxSize: 0,
      hashes: ['md5', 'sha1', 'sha256', 'sha512'],
    });
  });

  it('describes object storage with Workhorse key names', () => {
    const answer = authorizeResponse({
      remoteObject: {
        id: 'obj-1',
        getUrl: 'https://store.test/obj-1',
        storeUrl: 'https://store.test/obj-1?put',
        deleteUrl: 'https://store.test/obj-1?delete',
        putHeaders: { 'content-type': 'image/png' },
        timeout: 60,
      },
      maximumSize: 1000,
    });
    expect(JSON.parse(answer.body)).toEqual({
      RemoteObject: {
        ID: 'obj-1',
        GetURL: 'https://store.test/obj-1',
        StoreURL: 'https://store.test/obj-1?put',
        DeleteURL: 'https://store.test/obj-1?delete',
        CustomPutHeaders: true,
        PutHeaders: { 'content-type': 'image/png' },
        Timeout: 60,
      },
      MaximumSize: 1000,
    });
    expect(parseAuthorization(JSON.parse(answer.body)).destination).toMatchObject({
      kind: 'remote',
      id: 'obj-1',
      getUrl: 'https://store.test/obj-1',
      storeUrl: 'https://store.test/obj-1?put',
      putHeaders: { 'content-type': 'image/png' },
      timeoutMs: 60_000,
    });
    const multipart = authorizeResponse({
      remoteObject: {
        id: 'm',
        getUrl: 'https://s/m',
        multipartUpload: { partSize: 5, partUrls: ['https://s/1'], completeUrl: 'https://s/c' },
      },
    });
    expect(parseAuthorization(JSON.parse(multipart.body)).destination).toMatchObject({
      multipart: { partSize: 5, partUrls: ['https://s/1'] },
    });
  });

  it('refuses options Outrider could not use', () => {
    expect(() => authorizeResponse({} as never)).toThrow('exactly one of tempPath and remoteObject');
    expect(() => authorizeResponse({ tempPath: TEMP, remoteObject: { id: 'x', getUrl: '' } } as never)).toThrow('exactly one');
    expect(() => authorizeResponse({ tempPath: 'relative/dir' })).toThrow('tempPath must be absolute');
    expect(() => authorizeResponse({ tempPath: TEMP, maximumSize: -1 })).toThrow(RangeError);
    expect(() => authorizeResponse({ tempPath: TEMP, uploadHashFunctions: ['crc32' as never] })).toThrow('unknown hash functions crc32');
    expect(() => authorizeResponse({ remoteObject: { id: 'x', getUrl: 'https://s/x' } })).toThrow('storeUrl must be set');
  });
});

describe('sendScaledImage, sendFile, sendUrl', () => {
  it('build the headers Outrider (and Workhorse, strict about padding) decodes', () => {
    const scaled = sendScaledImage({ location: '/srv/avatars/ada.png', width: 64, contentType: 'image/png' });
    expect(scaled.name).toBe('Gitlab-Workhorse-Send-Data');
    expect(scaled.value).toMatch(/^send-scaled-img:[A-Za-z0-9_-]+={0,2}$/);
    // Go's base64.URLEncoding wants the padding: the length is a multiple of 4.
    expect(scaled.value.slice('send-scaled-img:'.length).length % 4).toBe(0);
    expect(Object.fromEntries(decodeSendData(scaled.value, 'send-scaled-img:'))).toEqual({
      location: '/srv/avatars/ada.png',
      width: 64,
      contenttype: 'image/png',
    });
    const url = sendUrl('https://store.test/a?b=c', { allowRedirects: true });
    expect(url.value.slice('send-url:'.length).length % 4).toBe(0);
    expect(Object.fromEntries(decodeSendData(url.value, 'send-url:'))).toEqual({
      url: 'https://store.test/a?b=c',
      allowredirects: true,
      allowlocalhost: true,
      alloweduris: [],
      ssrffilter: false,
      body: '',
      header: {},
      responseheaders: {},
      method: 'GET',
    });
    // Every key of Rails' Gitlab::Workhorse.send_url, as it writes them.
    const full = sendUrl('https://registry.test/v2/a/manifests/1', {
      method: 'post',
      body: 'q',
      headers: { Authorization: 'Bearer t', Accept: ['a', 'b'] },
      responseHeaders: { 'Content-Type': 'application/json' },
      timeouts: { open: 10, read: 2.5 },
      responseStatuses: { error: 502, timeout: 504 },
      ssrfFilter: true,
      allowLocalhost: false,
      allowedUris: ['https://registry.test'],
    });
    expect(Object.fromEntries(decodeSendData(full.value, 'send-url:'))).toMatchObject({
      method: 'POST',
      body: 'q',
      header: { Authorization: ['Bearer t'], Accept: ['a', 'b'] },
      responseheaders: { 'Content-Type': ['application/json'] },
      dialtimeout: '10s',
      responseheadertimeout: '2.5s',
      errorresponsestatus: 502,
      timeoutresponsestatus: 504,
      ssrffilter: true,
      allowlocalhost: false,
      alloweduris: ['https://registry.test'],
    });
    // keepFormat is Outrider's own key, written only when set, so the header stays Workhorse's otherwise.
    const keep = (keepFormat?: boolean) =>
      Object.fromEntries(
        decodeSendData(sendScaledImage({ location: '/a.png', width: 8, contentType: 'image/png', keepFormat }).value, 'send-scaled-img:'),
      );
    expect(keep(true)).toEqual({ location: '/a.png', width: 8, contenttype: 'image/png', keepformat: true });
    expect(keep(false)).toEqual({ location: '/a.png', width: 8, contenttype: 'image/png' });
    expect(keep()).toEqual({ location: '/a.png', width: 8, contenttype: 'image/png' });
    expect(DETECT_CONTENT_TYPE).toEqual({ name: 'Gitlab-Workhorse-Detect-Content-Type', value: 'true' });
    expect(Object.fromEntries(decodeSendData(sendUrl('http://x/').value, 'send-url:'))).toMatchObject({ allowredirects: false });
    expect(sendFile('/srv/files/report.pdf')).toEqual({ name: 'X-Sendfile', value: '/srv/files/report.pdf' });
  });

  it('refuse what Outrider would answer with a 502', () => {
    expect(() => sendScaledImage({ location: 'ada.png', width: 64, contentType: 'image/png' })).toThrow('absolute path or an http(s) URL');
    expect(sendScaledImage({ location: 'https://store.test/a.png', width: 1, contentType: 'image/png' }).name).toBe(
      'Gitlab-Workhorse-Send-Data',
    );
    for (const width of [0, -1, 1.5, Number.NaN]) {
      expect(() => sendScaledImage({ location: '/a.png', width, contentType: 'image/png' })).toThrow(RangeError);
    }
    expect(() => sendScaledImage({ location: '/a.png', width: 8, contentType: '' })).toThrow('contentType must be set');
    expect(() => sendScaledImage({ location: '/a.png', width: 8, contentType: 'image/png', keepFormat: 'yes' as never })).toThrow(
      'keepFormat must be true or false',
    );
    expect(() => sendFile('files/report.pdf')).toThrow('must be absolute');
    expect(() => sendUrl('ftp://x/')).toThrow('must be http(s)');
    expect(() => sendUrl('http://x/', { method: 'GE T' })).toThrow('must be an HTTP method');
    expect(() => sendUrl('http://x/', { timeouts: { open: 0 } })).toThrow(RangeError);
    expect(() => sendUrl('http://x/', { responseStatuses: { error: 200 } })).toThrow(RangeError);
  });

  it('respond answers a node:http response and a fastify reply with status 200, the header and the extra headers', async () => {
    const file = sendFile('/srv/a.txt');
    const backend = await startBackend((_req, res) => respond(res, file, { 'content-type': 'text/plain', 'cache-control': 'no-cache' }));
    const res = await request(backend.url);
    expect([res.statusCode, res.headers['x-sendfile'], res.headers['content-type'], res.headers['cache-control']]).toEqual([
      200,
      '/srv/a.txt',
      'text/plain',
      'no-cache',
    ]);
    expect(await res.body.text()).toBe('');

    const app = Fastify();
    app.get('/', (_req, reply) => respond(reply, file, { 'cache-control': 'private' }));
    app.post('/authorize', (_req, reply) => respond(reply, authorizeResponse({ tempPath: TEMP })));
    const got = await app.inject('/');
    expect([got.statusCode, got.headers['x-sendfile'], got.headers['cache-control'], got.body]).toEqual([200, '/srv/a.txt', 'private', '']);
    const auth = await app.inject({ method: 'POST', url: '/authorize' });
    // fastify adds a charset; Outrider (and Workhorse) match the media type.
    expect([auth.statusCode, auth.headers['content-type'], auth.json()]).toEqual([
      200,
      `${API_CONTENT_TYPE}; charset=utf-8`,
      { TempPath: TEMP },
    ]);
    await app.close();
  });
});

/** The fields Outrider sends for one stored file (proxy/upload/rewrite.ts `fileFields`), signed with `key`. */
function uploadFields(field: string, upload: Record<string, string>, key = SECRET): [string, string][] {
  return [
    ...Object.entries(upload).map(([k, v]): [string, string] => [`${field}.${k}`, v]),
    [`${field}.gitlab-workhorse-upload`, signJwt({ upload, iss: 'gitlab-workhorse' }, key)],
  ];
}
const fieldsHeader = (rewritten: Record<string, string>, key = SECRET) => ({
  'gitlab-workhorse-multipart-fields': signJwt({ rewritten_fields: rewritten, iss: 'gitlab-workhorse' }, key),
});
const AVATAR = {
  name: 'me.png',
  path: join(TEMP, 'outrider-upload-1'),
  remote_url: '',
  remote_id: '',
  size: '1234',
  sha256: 'ab'.repeat(32),
  upload_duration: '0.01',
};

describe('verifyUploadFields', () => {
  const genuine = () => new URLSearchParams([['title', 'hello'], ...uploadFields('avatar', AVATAR)]);
  const verify = (
    fields: Parameters<typeof verifyUploadFields>[1],
    headers: Record<string, string> = fieldsHeader({ avatar: AVATAR.path }),
  ) => verifyUploadFields(headers, fields, SECRET, { tempPath: TEMP });

  it('returns the signed file descriptors, from FormData, URLSearchParams, a Map or a plain object', () => {
    const expected: UploadedFile = {
      field: 'avatar',
      name: 'me.png',
      path: AVATAR.path,
      remoteId: undefined,
      remoteUrl: undefined,
      size: 1234,
      hashes: { sha256: AVATAR.sha256 },
      uploadDuration: 0.01,
    };
    const entries = [...genuine()];
    const formData = new globalThis.FormData();
    for (const [k, v] of entries) formData.append(k, v);
    for (const fields of [genuine(), formData, new Map(entries), Object.fromEntries(entries)]) expect(verify(fields)).toEqual([expected]);
  });

  it('describes a file in object storage', () => {
    const remote = { name: 'big.bin', path: '', remote_url: 'https://store.test/o1', remote_id: 'o1', size: '5', md5: '0'.repeat(32) };
    const files = verifyUploadFields(fieldsHeader({ file: '' }), new URLSearchParams(uploadFields('file', remote)), SECRET, {
      tempPath: TEMP,
    });
    expect(files).toEqual([
      {
        field: 'file',
        name: 'big.bin',
        path: undefined,
        remoteId: 'o1',
        remoteUrl: 'https://store.test/o1',
        size: 5,
        hashes: { md5: '0'.repeat(32) },
        uploadDuration: undefined,
      },
    ]);
  });

  it('refuses a request without the fields header, or with one signed with another secret or tampered', () => {
    const missing = refusal(() => verify(genuine(), {}));
    expect([missing.code, missing.statusCode]).toEqual(['EDGE_VERIFY_MISSING', 400]);
    expect(refusal(() => verify(genuine(), fieldsHeader({ avatar: AVATAR.path }, OTHER))).code).toBe('EDGE_VERIFY_SIGNATURE');
    const tampered = tamper(fieldsHeader({ avatar: AVATAR.path })['gitlab-workhorse-multipart-fields'], 2);
    expect(refusal(() => verify(genuine(), { 'gitlab-workhorse-multipart-fields': tampered })).code).toBe('EDGE_VERIFY_SIGNATURE');
    const unsignedClaims = `x.${Buffer.from(JSON.stringify({ rewritten_fields: { avatar: AVATAR.path } })).toString('base64url')}.`;
    expect(refusal(() => verify(genuine(), { 'gitlab-workhorse-multipart-fields': unsignedClaims })).code).toBe('EDGE_VERIFY_SIGNATURE');
    expect(
      refusal(() => verify(genuine(), { 'gitlab-workhorse-multipart-fields': signJwt({ iss: 'gitlab-workhorse' }, SECRET) })).message,
    ).toBe('rewritten_fields is not an object');
  });

  it('tells a form that came through Outrider with no file apart from one that did not come through it', () => {
    const options = { tempPath: TEMP, required: 'avatar' };
    const empty = new URLSearchParams([
      ['title', 'hello'],
      ['avatar', ''],
    ]);
    // An empty file input on a multipart route: Outrider signs an empty rewritten_fields.
    const noFile = refusal(() => verifyUploadFields(fieldsHeader({}), empty, SECRET, options));
    expect([noFile.code, noFile.statusCode, noFile.message]).toEqual(['EDGE_VERIFY_NO_FILE', 400, 'no file was sent in the field avatar']);
    expect(verifyUploadFields(fieldsHeader({}), empty, SECRET, { tempPath: TEMP })).toEqual([]);
    // A body that was not multipart on a pre-authorized route: only the API request token is there.
    const api = { 'gitlab-workhorse-api-request': signJwt({ iss: 'gitlab-workhorse', iat: Math.floor(Date.now() / 1000) }, SECRET) };
    expect(refusal(() => verifyUploadFields(api, empty, SECRET, options)).code).toBe('EDGE_VERIFY_NO_FILE');
    // Neither header, or a forged token: not through Outrider.
    expect(refusal(() => verifyUploadFields({}, empty, SECRET, options)).code).toBe('EDGE_VERIFY_MISSING');
    const forged = { 'gitlab-workhorse-api-request': signJwt({ iss: 'gitlab-workhorse' }, OTHER) };
    expect(refusal(() => verifyUploadFields(forged, empty, SECRET, options)).code).toBe('EDGE_VERIFY_MISSING');
    // A required field whose file is there passes.
    expect(verifyUploadFields(fieldsHeader({ avatar: AVATAR.path }), genuine(), SECRET, options)).toHaveLength(1);
  });

  it('refuses a missing, unsigned, foreign-signed or tampered upload token', () => {
    const without = genuine();
    without.delete('avatar.gitlab-workhorse-upload');
    expect(refusal(() => verify(without)).message).toBe('the field avatar.gitlab-workhorse-upload is missing');
    const foreign = new URLSearchParams(uploadFields('avatar', AVATAR, OTHER));
    expect(refusal(() => verify(foreign)).code).toBe('EDGE_VERIFY_SIGNATURE');
    const tampered = genuine();
    tampered.set('avatar.gitlab-workhorse-upload', tamper(String(tampered.get('avatar.gitlab-workhorse-upload')), 1));
    expect(refusal(() => verify(tampered)).code).toBe('EDGE_VERIFY_SIGNATURE');
    const noUpload = genuine();
    noUpload.set('avatar.gitlab-workhorse-upload', signJwt({ iss: 'gitlab-workhorse' }, SECRET));
    expect(refusal(() => verify(noUpload)).message).toBe('avatar.gitlab-workhorse-upload has no upload claim');
  });

  it('refuses plain fields that differ from the signed ones, are extra, missing or repeated', () => {
    const changed = genuine();
    changed.set('avatar.size', '1');
    expect(refusal(() => verify(changed)).message).toBe('the field avatar.size is not the one Outrider signed');
    const path = genuine();
    path.set('avatar.path', join(TEMP, 'other'));
    expect(refusal(() => verify(path)).code).toBe('EDGE_VERIFY_MISMATCH');
    // A client field placed before the file part (Workhorse does not catch it) claiming a hash nobody computed.
    const extra = genuine();
    extra.append('avatar.md5', '0'.repeat(32));
    expect(refusal(() => verify(extra)).message).toBe('the field avatar.md5 is not the one Outrider signed');
    const missing = genuine();
    missing.delete('avatar.sha256');
    expect(refusal(() => verify(missing)).code).toBe('EDGE_VERIFY_MISMATCH');
    const twice = genuine();
    twice.append('avatar.name', 'me.png');
    expect(refusal(() => verify(twice)).message).toBe('the field avatar.name is there more than once');
    expect(refusal(() => verify({ ...Object.fromEntries(genuine()), 'avatar.name': ['me.png', 'x.png'] })).code).toBe(
      'EDGE_VERIFY_MISMATCH',
    );
  });

  it('refuses a signed path that is not the rewritten one, or not in the tempPath handed out', () => {
    expect(refusal(() => verify(genuine(), fieldsHeader({ avatar: join(TEMP, 'elsewhere') }))).message).toBe(
      'avatar.path is not the path in rewritten_fields',
    );
    for (const path of ['/etc/passwd', join(TEMP, 'sub', 'x'), `${TEMP}/..`, `${TEMP}-evil/x`]) {
      const upload = { ...AVATAR, path };
      const err = refusal(() =>
        verifyUploadFields(fieldsHeader({ avatar: path }), new URLSearchParams(uploadFields('avatar', upload)), SECRET, { tempPath: TEMP }),
      );
      expect([path, err.code]).toEqual([path, 'EDGE_VERIFY_OUTSIDE']);
    }
    // Any of several directories; without tempPath, any signed path.
    const elsewhere = { ...AVATAR, path: '/var/tmp/x' };
    const fields = new URLSearchParams(uploadFields('avatar', elsewhere));
    expect(verifyUploadFields(fieldsHeader({ avatar: '/var/tmp/x' }), fields, SECRET, { tempPath: [TEMP, '/var/tmp'] })).toHaveLength(1);
    expect(verifyUploadFields(fieldsHeader({ avatar: '/var/tmp/x' }), fields, SECRET)[0]?.path).toBe('/var/tmp/x');
  });

  it('refuses signed values of the wrong shape', () => {
    const bad = (upload: Record<string, unknown>) =>
      refusal(() =>
        verifyUploadFields(
          fieldsHeader({ avatar: String(upload.path ?? '') }),
          {
            'avatar.gitlab-workhorse-upload': signJwt({ upload, iss: 'gitlab-workhorse' }, SECRET),
            ...Object.fromEntries(Object.entries(upload).map(([k, v]) => [`avatar.${k}`, v])),
          },
          SECRET,
        ),
      ).code;
    expect(bad({ ...AVATAR, size: 12 })).toBe('EDGE_VERIFY_MALFORMED');
    expect(bad({ ...AVATAR, size: '-1' })).toBe('EDGE_VERIFY_MALFORMED');
    expect(bad({ ...AVATAR, path: '', remote_id: '' })).toBe('EDGE_VERIFY_MALFORMED');
  });
});

describe('readFields and verifyUploadFields behind a real Outrider', () => {
  it('accept exactly what Outrider sends for multipart and body uploads, and the file is where they say', async () => {
    const secretPath = join(root, 'secret');
    writeFileSync(secretPath, `${SECRET_B64}\n`);
    const seen: { files: UploadedFile[]; bytes: Buffer; title: unknown; api: unknown }[] = [];
    const backend = await startBackend((req, res) => {
      if (req.url?.endsWith('/authorize')) {
        verifyApiRequest(req.headers, SECRET);
        respond(res, authorizeResponse({ tempPath: TEMP, uploadHashFunctions: ['sha256', 'md5'] }));
        return;
      }
      readFields(req)
        .then((fields) => {
          const files = verifyUploadFields(req.headers, fields, SECRET, { tempPath: TEMP });
          const api = verifyApiRequest(req.headers, SECRET).iss;
          seen.push({ files, bytes: readFileSync(files[0]?.path as string), title: fields.get('title'), api });
          res.writeHead(201).end();
        })
        .catch((err: unknown) => res.writeHead(500).end(String(err)));
    });
    const proxy = await startProxy(backend.url, {
      toml: `secret_path = "${secretPath}"\n[[uploads.routes]]\nmethod = "POST"\npath = "^/uploads/"\n[[uploads.routes]]\nmethod = "PUT"\npath = "^/packages/"\nkind = "body"\n`,
    });
    const bytes = randomBytes(3000);
    const form = new FormData();
    form.append('title', 'hello');
    form.append('avatar', new Blob([bytes]), 'dir/me.png');
    expect((await request(`${proxy.url}/uploads/avatar`, { method: 'POST', body: form })).statusCode).toBe(201);
    expect((await request(`${proxy.url}/packages/p1`, { method: 'PUT', body: bytes })).statusCode).toBe(201);
    const sha256 = createHash('sha256').update(bytes).digest('hex');
    expect(
      seen.map((s) => [s.files.map((f) => [f.field, f.name, f.size, f.hashes.sha256, f.remoteId]), s.bytes.equals(bytes), s.api]),
    ).toEqual([
      [[['avatar', 'me.png', 3000, sha256, undefined]], true, 'gitlab-workhorse'],
      [[['file', '', 3000, sha256, undefined]], true, 'gitlab-workhorse'],
    ]);
    expect(seen[0]?.title).toBe('hello');
    expect(Object.keys(seen[0]?.files[0]?.hashes ?? {}).sort()).toEqual(['md5', 'sha256']);
    expect(seen[0]?.files[0]?.uploadDuration).toBeTypeOf('number');
  });

  it('readFields reads a fastify request whose multipart parser leaves the body alone', async () => {
    const app = Fastify();
    app.addContentTypeParser('multipart/form-data', (_req, _payload, done) => done(null));
    app.post('/', async (req) => ({ title: (await readFields(req.raw)).get('title') }));
    const form = new globalThis.FormData();
    form.append('title', 'hello');
    const encoded = new Request('http://x/', { method: 'POST', body: form });
    const res = await app.inject({
      method: 'POST',
      url: '/',
      headers: { 'content-type': encoded.headers.get('content-type') ?? '' },
      payload: Buffer.from(await encoded.arrayBuffer()),
    });
    expect(res.json()).toEqual({ title: 'hello' });
    await app.close();
  });

  it('readFields refuses a form over its limit with 413, and one without a Content-Type', async () => {
    const body = (text: string, headers: Record<string, string>) => Object.assign(Readable.from([Buffer.from(text)]), { headers });
    const declared = await readFields(body('a=1', { 'content-type': 'application/x-www-form-urlencoded', 'content-length': '99' }), {
      limit: 10,
    }).catch((e: unknown) => e);
    expect([(declared as OutriderVerificationError).code, (declared as OutriderVerificationError).statusCode]).toEqual([
      'EDGE_VERIFY_TOO_LARGE',
      413,
    ]);
    const streamed = body('a=1&b=2&c=3', { 'content-type': 'application/x-www-form-urlencoded' });
    expect(await readFields(streamed, { limit: 10 }).catch((e: unknown) => (e as OutriderVerificationError).code)).toBe(
      'EDGE_VERIFY_TOO_LARGE',
    );
    expect(streamed.destroyed).toBe(false); // left for the 413 to be answered on the same socket
    expect(await readFields(body('a=1', {})).catch((e: unknown) => (e as OutriderVerificationError).code)).toBe('EDGE_VERIFY_MALFORMED');
    expect(
      await readFields(body('--x\r\nbroken', { 'content-type': 'multipart/form-data; boundary=x' })).catch(
        (e: unknown) => (e as OutriderVerificationError).code,
      ),
    ).toBe('EDGE_VERIFY_MALFORMED');
    const ok = await readFields(body('a=1&a=2&b=%C3%A9', { 'content-type': 'application/x-www-form-urlencoded' }));
    expect([ok.getAll('a'), ok.get('b')]).toEqual([['1', '2'], 'é']);
  });
});

describe('loadSecret', () => {
  it('reads the base64 of 32 bytes, whitespace ignored, with the same rules and messages as Outrider', () => {
    const file = (name: string, text: string) => {
      const path = join(root, name);
      writeFileSync(path, text);
      return path;
    };
    const good = file('good', `${SECRET_B64.slice(0, 20)}\n${SECRET_B64.slice(20)}\n  `);
    expect(loadSecret(good).equals(SECRET)).toBe(true);
    expect(outriderLoadSecret(good).equals(SECRET)).toBe(true);
    const cases: [string, string, string][] = [
      [join(root, 'nope'), 'EDGE_SECRET_UNREADABLE', 'cannot read the secret: no such file'],
      [file('short', randomBytes(16).toString('base64')), 'EDGE_SECRET_INVALID', 'the secret must be the base64 of 32 bytes, got 16 bytes'],
      [file('text', 'not base64 at all!'), 'EDGE_SECRET_INVALID', 'the secret must be the base64 of 32 bytes; the file is not base64'],
      [
        file('url', SECRET.toString('base64url')),
        'EDGE_SECRET_INVALID',
        'the secret must be the base64 of 32 bytes; the file is not base64',
      ],
    ];
    for (const [path, code, message] of cases) {
      const err = (() => {
        try {
          loadSecret(path);
        } catch (e) {
          return e as OutriderSecretError;
        }
      })();
      expect(err).toBeInstanceOf(OutriderSecretError);
      expect([err?.code, err?.message]).toEqual([code, `${path}: ${message}`]);
      // Outrider says the same, naming its key, and then how to make a good secret.
      expect(() => outriderLoadSecret(path)).toThrow(
        new ConfigError(`${path}: ${message.replace('the secret', 'the secret (secret_path)')} — ${secretHint(path)}`),
      );
    }
  });
});

describe('the outrider/backend package entry', () => {
  const here = fileURLToPath(new URL('../..', import.meta.url));

  it('imports only node: builtins and its own files', () => {
    // The toolkit is backend/ plus the protocol module it shares with the proxy, which imports nothing above it.
    for (const [folder, allowed] of [
      ['backend', ['node:', './', '../protocol/']],
      ['protocol', ['node:', './']],
    ] as const) {
      const dir = join(here, folder);
      for (const name of readdirSync(dir).filter((n) => n.endsWith('.ts'))) {
        const imports = [...readFileSync(join(dir, name), 'utf8').matchAll(/^(?:import|export)[^;]*? from '([^']+)'/gm)].map((m) => m[1]);
        expect(
          imports.filter((i) => !allowed.some((prefix) => i?.startsWith(prefix))),
          `${folder}/${name}`,
        ).toEqual([]);
      }
    }
  });

  it('resolves as outrider/backend from the build, with types', () => {
    expect(existsSync(join(here, 'dist/backend/index.d.ts'))).toBe(true);
    const out = execFileSync(
      process.execPath,
      ['--input-type=module', '-e', "const m = await import('outrider/backend'); console.log(Object.keys(m).sort().join(' '))"],
      { cwd: here, encoding: 'utf8' },
    );
    expect(out.trim().split(' ')).toEqual(
      expect.arrayContaining([
        'authorizeResponse',
        'loadSecret',
        'readFields',
        'respond',
        'sendFile',
        'sendScaledImage',
        'sendUrl',
        'verifyApiRequest',
        'verifyUploadFields',
      ]),
    );
  });
});
