import { mkdirSync, mkdtempSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { brotliCompressSync, gunzipSync, gzipSync } from 'node:zlib';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { ConfigError } from '../../../config/errors.js';
import { buildServer } from '../../../proxy/server.js';
import { startProxy, testConfig } from '../../helpers/app.js';
import { startBackend } from '../../helpers/backend.js';
import { rawRequest } from '../../helpers/raw.js';

const MTIME = new Date('2026-02-03T04:05:06Z');
const HTTP_MTIME = 'Tue, 03 Feb 2026 04:05:06 GMT';
const APP_JS = `console.log(${JSON.stringify('x'.repeat(2000))});\n`;

/** A document root like a Rails app's public/: assets with precompressed siblings, a secret beside them. */
function documentRoot(): string {
  const root = mkdtempSync(join(tmpdir(), 'outrider-static-'));
  const assets = join(root, 'assets');
  mkdirSync(join(assets, 'sub'), { recursive: true });
  const put = (path: string, data: string | Buffer) => {
    writeFileSync(path, data);
    utimesSync(path, MTIME, MTIME);
  };
  put(join(assets, 'app-1a2b.js'), APP_JS);
  put(join(assets, 'app-1a2b.js.gz'), gzipSync(APP_JS));
  put(join(assets, 'app-1a2b.js.br'), brotliCompressSync(APP_JS));
  put(join(assets, 'only-gz.css'), 'body { color: red }\n');
  put(join(assets, 'only-gz.css.gz'), gzipSync('body { color: red }\n'));
  put(join(assets, 'static file.txt'), 'spaces work\n');
  put(join(assets, 'sub', 'logo.svg'), '<svg/>');
  put(join(assets, '.env'), 'SECRET=assets-dotfile');
  put(join(root, 'secret.txt'), 'SECRET=document-root');
  return root;
}

async function get(url: string, headers: Record<string, string> = {}, method: 'GET' | 'HEAD' | 'POST' = 'GET') {
  const res = await request(url, { headers, method });
  return { status: res.statusCode, headers: res.headers, body: Buffer.from(await res.body.arrayBuffer()) };
}

async function setup() {
  const root = documentRoot();
  const backend = await startBackend((req, res) => res.end(`backend ${req.method} ${req.url}`));
  const proxy = await startProxy(backend.url, { toml: `document_root = "${root}"\n` });
  return { root, backend, proxy };
}

describe('static assets from document_root', () => {
  it('serves /assets/ files without the backend: type, length, immutable caching, ETag and Last-Modified', async () => {
    const { backend, proxy } = await setup();
    const res = await get(`${proxy.url}/assets/app-1a2b.js`);
    expect(res.status).toBe(200);
    expect(res.body.toString()).toBe(APP_JS);
    expect(res.headers['content-type']).toBe('application/javascript; charset=utf-8');
    expect(res.headers['content-length']).toBe(String(APP_JS.length));
    expect(res.headers['cache-control']).toBe('public, max-age=31536000, immutable');
    expect(res.headers['last-modified']).toBe(HTTP_MTIME);
    expect(res.headers.etag).toMatch(/^W\/"[0-9a-f]+-[0-9a-f]+"$/);
    expect(res.headers.vary).toBe('Accept-Encoding');
    expect(res.headers['content-encoding']).toBeUndefined();
    expect((await get(`${proxy.url}/assets/static%20file.txt?v=3`)).body.toString()).toBe('spaces work\n');
    expect((await get(`${proxy.url}/assets/sub/logo.svg`)).headers['content-type']).toBe('image/svg+xml');
    expect(backend.requests).toHaveLength(0);
  });

  it('picks a precompressed sibling by Accept-Encoding: br first, gzip by q-value, the file itself otherwise', async () => {
    const { proxy } = await setup();
    const url = `${proxy.url}/assets/app-1a2b.js`;
    const enc = async (acceptEncoding: string | undefined) => {
      const res = await get(url, acceptEncoding === undefined ? {} : { 'accept-encoding': acceptEncoding });
      expect(res.headers['content-type']).toBe('application/javascript; charset=utf-8');
      expect(res.headers['content-length']).toBe(String(res.body.length));
      return res.headers['content-encoding'];
    };
    expect(await enc(undefined)).toBeUndefined();
    expect(await enc('identity')).toBeUndefined();
    expect(await enc('gzip')).toBe('gzip');
    expect(await enc('gzip, deflate, br')).toBe('br');
    expect(await enc('br;q=1.0, gzip;q=0.8, *;q=0.1')).toBe('br');
    expect(await enc('br;q=0.5, gzip;q=0.9')).toBe('gzip');
    expect(await enc('br;q=0, gzip')).toBe('gzip');
    expect(await enc('*')).toBe('br');
    expect(await enc('gzip;q=0, br;q=0')).toBeUndefined();
    const gz = await get(url, { 'accept-encoding': 'gzip' });
    expect(gunzipSync(gz.body).toString()).toBe(APP_JS);
    // Only a .gz beside it: a br-only client gets the plain file, a br+gzip one the gzip.
    expect((await get(`${proxy.url}/assets/only-gz.css`, { 'accept-encoding': 'br' })).headers['content-encoding']).toBeUndefined();
    const css = await get(`${proxy.url}/assets/only-gz.css`, { 'accept-encoding': 'br, gzip' });
    expect(css.headers['content-encoding']).toBe('gzip');
    expect(css.headers['content-type']).toBe('text/css; charset=utf-8');
  });

  it('answers revalidations with 304 by ETag or date, per encoding', async () => {
    const { proxy } = await setup();
    const url = `${proxy.url}/assets/app-1a2b.js`;
    const br = await get(url, { 'accept-encoding': 'br' });
    const etag = br.headers.etag as string;
    const same = await get(url, { 'accept-encoding': 'br', 'if-none-match': etag });
    expect(same.status).toBe(304);
    expect(same.body.length).toBe(0);
    expect(same.headers['cache-control']).toBe('public, max-age=31536000, immutable');
    expect(same.headers['content-encoding']).toBeUndefined();
    // The gzip variant is another representation with another ETag.
    expect((await get(url, { 'accept-encoding': 'gzip', 'if-none-match': etag })).status).toBe(200);
    expect((await get(url, { 'if-modified-since': HTTP_MTIME })).status).toBe(304);
    expect((await get(url, { 'if-modified-since': 'Mon, 02 Feb 2026 00:00:00 GMT' })).status).toBe(200);
  });

  it('answers a byte range with 206 and one past the end with 416; HEAD sends no body', async () => {
    const { proxy } = await setup();
    const url = `${proxy.url}/assets/app-1a2b.js`;
    const part = await get(url, { range: 'bytes=0-10' });
    expect(part.status).toBe(206);
    expect(part.body.toString()).toBe(APP_JS.slice(0, 11));
    expect(part.headers['content-range']).toBe(`bytes 0-10/${APP_JS.length}`);
    const tail = await get(url, { range: 'bytes=-5' });
    expect(tail.body.toString()).toBe(APP_JS.slice(-5));
    const past = await get(url, { range: `bytes=${APP_JS.length + 10}-` });
    expect(past.status).toBe(416);
    expect(past.headers['content-range']).toBe(`bytes */${APP_JS.length}`);
    const head = await get(url, {}, 'HEAD');
    expect(head.status).toBe(200);
    expect(head.headers['content-length']).toBe(String(APP_JS.length));
    expect(head.body.length).toBe(0);
  });

  it('answers 404 for missing assets and directories without asking the backend; other methods go to it', async () => {
    const { backend, proxy } = await setup();
    for (const path of ['/assets/missing.js', '/assets/sub', '/assets/sub/', '/assets/']) {
      const res = await get(`${proxy.url}${path}`);
      expect(res.status, path).toBe(404);
      expect(res.headers['content-type'], path).toBe('text/plain; charset=utf-8');
      expect(res.body.toString(), path).toBe('Not Found\n');
    }
    expect(backend.requests).toHaveLength(0);
    expect((await get(`${proxy.url}/assets/app-1a2b.js`, {}, 'POST')).body.toString()).toBe('backend POST /assets/app-1a2b.js');
    expect((await get(`${proxy.url}/assetsx/app.js`)).body.toString()).toBe('backend GET /assetsx/app.js');
  });

  it('never serves anything outside the assets directory, however the path is spelled', async () => {
    const { root, backend, proxy } = await setup();
    symlinkSync('/etc', join(root, 'assets', 'etc-link'));
    const attempts = [
      '/assets/../secret.txt',
      '/assets/%2e%2e/secret.txt',
      '/assets/%2E%2E%2Fsecret.txt',
      '/assets/..%2fsecret.txt',
      '/assets/..%5csecret.txt',
      '/assets/..\\secret.txt',
      '/assets/sub/../../secret.txt',
      '/assets/sub/%2e%2e/%2e%2e/secret.txt',
      '/assets/%252e%252e/secret.txt',
      '/assets/.%2e/secret.txt',
      '/assets/../../../../etc/passwd',
      '/assets/.env',
      '/assets/%2eenv',
      '/assets/app-1a2b.js%00.png',
      '/assets/%',
      '/assets//etc/passwd',
    ];
    for (const path of attempts) {
      const res = await rawRequest(proxy.port, `GET ${path} HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip, br\r\nConnection: close\r\n\r\n`);
      // 400: a path the router cannot decode at all.
      expect([400, 404], path).toContain(res.status);
      expect(res.body, path).not.toContain('SECRET');
      expect(res.body, path).not.toContain('root:');
    }
    expect(backend.requests).toHaveLength(0);
    // A symlink the operator placed inside the assets directory is theirs to make (Capistrano links shared/assets).
    expect((await get(`${proxy.url}/assets/etc-link/hostname`)).status).toBe(200);
  });

  it('is off without document_root: /assets/ goes to the backend', async () => {
    const backend = await startBackend((req, res) => res.end(`backend ${req.url}`));
    const proxy = await startProxy(backend.url);
    expect((await get(`${proxy.url}/assets/app.js`)).body.toString()).toBe('backend /assets/app.js');
  });

  it('refuses a document_root that is missing or not a directory, naming it', () => {
    const root = documentRoot();
    const missing = join(root, 'nope');
    expect(() => buildServer(testConfig('http://127.0.0.1:1', `document_root = "${missing}"`), { logger: false })).toThrow(
      new ConfigError(`${missing}: cannot read document_root: no such directory`),
    );
    const file = join(root, 'secret.txt');
    expect(() => buildServer(testConfig('http://127.0.0.1:1', `document_root = "${file}"`), { logger: false })).toThrow(
      `${file}: document_root is not a directory`,
    );
  });
});
