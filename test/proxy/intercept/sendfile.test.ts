import { mkdirSync, mkdtempSync, utimesSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { request } from 'undici';
import { describe, expect, it, onTestFinished } from 'vitest';
import { buildProxy, startProxy } from '../../helpers/app.js';
import { startBackend } from '../../helpers/backend.js';

const MTIME = new Date('2026-03-04T05:06:07.250Z'); // sub-second on purpose
const HTTP_MTIME = 'Wed, 04 Mar 2026 05:06:07 GMT';

function fixture(name = 'report 100%.txt', content: string | Buffer = 'SENT FROM DISK') {
  const dir = mkdtempSync(join(tmpdir(), 'outrider-sendfile-'));
  const file = join(dir, name);
  writeFileSync(file, content);
  utimesSync(file, MTIME, MTIME);
  return { dir, file };
}

/** A backend that answers every request with X-Sendfile pointing at `file`, plus `extra` headers. */
async function sendfileBackend(file: string, extra: Record<string, string> = {}, status = 200) {
  return startBackend((_req, res) => {
    res.writeHead(status, { 'x-sendfile': file, ...extra });
    res.end('BACKEND BODY');
  });
}

describe('X-Sendfile', () => {
  it("serves the file with its length and mtime, keeping the backend's Content-Type and Content-Disposition", async () => {
    const { file } = fixture();
    const backend = await sendfileBackend(file, {
      'content-type': 'application/octet-stream',
      'content-disposition': 'attachment; filename="report.txt"',
      'cache-control': 'private',
    });
    const proxy = await startProxy(backend.url);
    const res = await request(`${proxy.url}/uploads/1/report`);
    expect(res.statusCode).toBe(200);
    expect(await res.body.text()).toBe('SENT FROM DISK');
    expect(res.headers['content-length']).toBe('14');
    expect(res.headers['last-modified']).toBe(HTTP_MTIME);
    expect(res.headers['content-type']).toBe('application/octet-stream');
    expect(res.headers['content-disposition']).toBe('attachment; filename="report.txt"');
    expect(res.headers['cache-control']).toBe('private');
    expect(res.headers['x-accel-buffering']).toBe('no');
    expect(res.headers['x-sendfile']).toBeUndefined();
  });

  it('sniffs the Content-Type of a text file when the backend sent none, and answers HEAD without a body', async () => {
    const { file } = fixture('notes.txt', 'plain text');
    const backend = await sendfileBackend(file);
    const app = buildProxy(backend.url);
    const res = await app.inject({ url: '/notes' });
    expect(res.headers['content-type']).toBe('text/plain; charset=utf-8');
    expect(res.body).toBe('plain text');
    const head = await app.inject({ method: 'HEAD', url: '/notes' });
    expect(head.statusCode).toBe(200);
    expect(head.headers['content-length']).toBe('10');
    expect(head.body).toBe('');
  });

  it('answers If-Modified-Since at whole-second precision: 304 when unchanged, 200 when older or unparsable', async () => {
    const { file } = fixture();
    const backend = await sendfileBackend(file, { 'content-type': 'text/plain' });
    const app = buildProxy(backend.url);
    const same = await app.inject({ url: '/f', headers: { 'if-modified-since': HTTP_MTIME } });
    expect(same.statusCode).toBe(304);
    expect(same.body).toBe('');
    expect(same.headers['content-type']).toBeUndefined();
    expect(same.headers['content-length']).toBeUndefined();
    expect(same.headers['last-modified']).toBe(HTTP_MTIME);
    const older = await app.inject({ url: '/f', headers: { 'if-modified-since': 'Wed, 04 Mar 2026 05:06:06 GMT' } });
    expect(older.statusCode).toBe(200);
    expect(older.body).toBe('SENT FROM DISK');
    const garbage = await app.inject({ url: '/f', headers: { 'if-modified-since': '0' } });
    expect(garbage.statusCode).toBe(200);
  });

  it('answers Range with 206 and Content-Range, and an unsatisfiable range with 416', async () => {
    const { file } = fixture();
    const backend = await sendfileBackend(file, { 'content-type': 'image/png', 'content-disposition': 'inline' });
    const app = buildProxy(backend.url);
    const part = await app.inject({ url: '/f', headers: { range: 'bytes=1-2' } });
    expect(part.statusCode).toBe(206);
    expect(part.headers['content-range']).toBe('bytes 1-2/14');
    expect(part.headers['content-type']).toBe('image/png');
    expect(part.headers['content-disposition']).toBe('inline');
    expect(part.body).toBe('EN');
    const beyond = await app.inject({ url: '/f', headers: { range: 'bytes=100-200' } });
    expect(beyond.statusCode).toBe(416);
    expect(beyond.headers['content-range']).toBe('bytes */14');
  });

  it('answers 404 for a missing file or a directory, never naming the path', async () => {
    const { dir } = fixture();
    mkdirSync(join(dir, 'sub'));
    for (const target of [join(dir, 'missing.bin'), join(dir, 'sub')]) {
      const backend = await sendfileBackend(target);
      const res = await buildProxy(backend.url).inject({ url: '/x' });
      expect(res.statusCode).toBe(404);
      expect(res.body).toBe('Not Found\n');
      expect(res.body).not.toContain(dir);
    }
  });

  it('refuses a relative path with 502, and ignores X-Sendfile on a status other than 200', async () => {
    const relative = await sendfileBackend('etc/passwd');
    const res = await buildProxy(relative.url).inject({ url: '/x' });
    expect(res.statusCode).toBe(502);
    expect(res.body).not.toContain('passwd');

    const { file } = fixture();
    const denied = await sendfileBackend(file, {}, 403);
    const passed = await buildProxy(denied.url).inject({ url: '/x' });
    expect(passed.statusCode).toBe(403);
    expect(passed.body).toBe('BACKEND BODY');
    expect(passed.headers['x-sendfile']).toBeUndefined();
  });

  it('survives a client that leaves mid-file and keeps serving', async () => {
    const { file } = fixture('big.bin', 'x'.repeat(32 * 1024 * 1024));
    const backend = await sendfileBackend(file);
    const proxy = await startProxy(backend.url);
    const controller = new AbortController();
    const res = await request(`${proxy.url}/big`, { signal: controller.signal });
    await expect(
      (async () => {
        for await (const _chunk of res.body) controller.abort();
      })(),
    ).rejects.toThrow();
    // The same proxy still answers.
    const again = await request(`${proxy.url}/big`, { headers: { range: 'bytes=0-3' } });
    expect(again.statusCode).toBe(206);
    expect(await again.body.text()).toBe('xxxx');
  });
});

const ETAG = '"v1"';
const DETECT = { 'gitlab-workhorse-detect-content-type': 'true' };

async function png(): Promise<Buffer> {
  return sharp({ create: { width: 8, height: 8, channels: 3, background: '#c00' } })
    .png()
    .toBuffer();
}

describe('X-Sendfile preconditions (RFC 9110 §13.2.2, whatever Cache-Control says)', () => {
  it("keeps the backend's ETag and answers a matching If-None-Match with 304, a different one with the file", async () => {
    const { file } = fixture();
    const backend = await sendfileBackend(file, { 'content-type': 'text/plain', etag: ETAG, 'cache-control': 'private' });
    const app = buildProxy(backend.url);
    const full = await app.inject({ url: '/f' });
    expect([full.statusCode, full.headers.etag, full.body]).toEqual([200, ETAG, 'SENT FROM DISK']);
    for (const ifNoneMatch of [ETAG, 'W/"v1"', '"v0", "v1"', '*']) {
      const same = await app.inject({ url: '/f', headers: { 'if-none-match': ifNoneMatch } });
      expect(same.statusCode, ifNoneMatch).toBe(304);
      expect(same.body).toBe('');
      expect(same.headers.etag).toBe(ETAG);
      expect(same.headers['cache-control']).toBe('private');
      expect(same.headers['content-type']).toBeUndefined();
      expect(same.headers['content-length']).toBeUndefined();
    }
    const other = await app.inject({ url: '/f', headers: { 'if-none-match': '"v2"' } });
    expect([other.statusCode, other.body, other.headers['content-length']]).toEqual([200, 'SENT FROM DISK', '14']);
  });

  it('answers a 304 to HEAD as to GET, and a 412 to other methods whose If-None-Match matches', async () => {
    const { file } = fixture();
    const backend = await sendfileBackend(file, { 'content-type': 'text/plain', etag: ETAG });
    const app = buildProxy(backend.url);
    const head = await app.inject({ method: 'HEAD', url: '/f', headers: { 'if-none-match': ETAG } });
    expect(head.statusCode).toBe(304);
    const post = await app.inject({ method: 'POST', url: '/f', headers: { 'if-none-match': ETAG } });
    expect([post.statusCode, post.body]).toEqual([412, '']);
  });

  it('answers a failed If-Match with 412, comparing strongly, and then ignores If-Unmodified-Since', async () => {
    const { file } = fixture();
    const backend = await sendfileBackend(file, { 'content-type': 'text/plain', etag: ETAG });
    const app = buildProxy(backend.url);
    const older = 'Wed, 04 Mar 2026 05:06:06 GMT';
    for (const ifMatch of ['"v2"', 'W/"v1"', 'garbage']) {
      const failed = await app.inject({ url: '/f', headers: { 'if-match': ifMatch } });
      expect([failed.statusCode, failed.body, failed.headers['content-length']], ifMatch).toEqual([412, '', '0']);
    }
    for (const ifMatch of [ETAG, '"v0", "v1"', '*']) {
      // If-Match holds: If-Unmodified-Since, older than the file, must not be looked at.
      const held = await app.inject({ url: '/f', headers: { 'if-match': ifMatch, 'if-unmodified-since': older } });
      expect([held.statusCode, held.body], ifMatch).toEqual([200, 'SENT FROM DISK']);
    }
    // Without If-Match, If-Unmodified-Since decides, at whole-second precision.
    const changed = await app.inject({ url: '/f', headers: { 'if-unmodified-since': older } });
    expect(changed.statusCode).toBe(412);
    const unchanged = await app.inject({ url: '/f', headers: { 'if-unmodified-since': HTTP_MTIME } });
    expect(unchanged.statusCode).toBe(200);
  });

  it('answers 304 to a revalidation sent with Cache-Control: no-cache', async () => {
    const { file } = fixture();
    const backend = await sendfileBackend(file, { 'content-type': 'text/plain', etag: ETAG });
    const app = buildProxy(backend.url);
    const reload = { 'cache-control': 'no-cache', pragma: 'no-cache' };
    for (const since of [HTTP_MTIME, 'Fri, 01 Jan 2100 00:00:00 GMT']) {
      const res = await app.inject({ url: '/f', headers: { ...reload, 'if-modified-since': since } });
      expect(res.statusCode, since).toBe(304);
      expect(res.headers['last-modified']).toBe(HTTP_MTIME);
    }
    const tagged = await app.inject({ url: '/f', headers: { ...reload, 'if-none-match': ETAG } });
    expect(tagged.statusCode).toBe(304);
  });

  it('ignores If-Modified-Since when If-None-Match is present, and outside GET and HEAD', async () => {
    const { file } = fixture();
    const backend = await sendfileBackend(file, { 'content-type': 'text/plain', etag: ETAG });
    const app = buildProxy(backend.url);
    const both = await app.inject({ url: '/f', headers: { 'if-none-match': '"v2"', 'if-modified-since': HTTP_MTIME } });
    expect(both.statusCode).toBe(200);
    const post = await app.inject({ method: 'POST', url: '/f', headers: { 'if-modified-since': HTTP_MTIME } });
    expect([post.statusCode, post.body]).toEqual([200, 'SENT FROM DISK']);
  });

  it('honours Range only when If-Range names the current ETag strongly, or the exact Last-Modified', async () => {
    const { file } = fixture();
    const backend = await sendfileBackend(file, { 'content-type': 'text/plain', etag: ETAG });
    const app = buildProxy(backend.url);
    const range = { range: 'bytes=1-2' };
    const partial = async (ifRange: string) => {
      const res = await app.inject({ url: '/f', headers: { ...range, 'if-range': ifRange } });
      return [res.statusCode, res.body];
    };
    expect(await partial(ETAG)).toEqual([206, 'EN']);
    expect(await partial(HTTP_MTIME)).toEqual([206, 'EN']);
    // A stale or weak ETag, or any other date (even a later one): the whole file.
    for (const stale of ['"v0"', 'W/"v1"', 'Wed, 04 Mar 2026 05:06:08 GMT', 'Wed, 04 Mar 2026 05:06:06 GMT', 'garbage']) {
      expect(await partial(stale), stale).toEqual([200, 'SENT FROM DISK']);
    }
  });

  it('ignores Range outside GET and HEAD (RFC 9110 §14.2), and serves an empty file whole', async () => {
    const { file } = fixture();
    const backend = await sendfileBackend(file, { 'content-type': 'text/plain' });
    const post = await buildProxy(backend.url).inject({ method: 'POST', url: '/f', headers: { range: 'bytes=1-2' } });
    expect([post.statusCode, post.body]).toEqual([200, 'SENT FROM DISK']);

    const empty = fixture('empty.txt', '');
    const emptyBackend = await sendfileBackend(empty.file, { 'content-type': 'text/plain' });
    const res = await buildProxy(emptyBackend.url).inject({ url: '/f', headers: { range: 'bytes=0-' } });
    expect([res.statusCode, res.headers['content-length'], res.body]).toEqual([200, '0', '']);
  });
});

describe('X-Sendfile Content-Type sniffing when the backend sends none', () => {
  it("names the type from the file's first bytes, not its name, for GET, HEAD and ranges", async () => {
    const image = fixture('x.bin', await png());
    const text = fixture('data.bin', 'just some words\n');
    const page = fixture('page.txt', '<!DOCTYPE html><title>t</title>');
    const cases: [string, string][] = [
      [image.file, 'image/png'],
      [text.file, 'text/plain; charset=utf-8'],
      [page.file, 'text/html; charset=utf-8'],
    ];
    for (const [file, type] of cases) {
      const app = buildProxy((await sendfileBackend(file)).url);
      for (const request of [{ url: '/f' }, { method: 'HEAD' as const, url: '/f' }, { url: '/f', headers: { range: 'bytes=1-2' } }]) {
        const res = await app.inject(request);
        expect([res.statusCode < 300, res.headers['content-type']], `${file} ${JSON.stringify(request)}`).toEqual([true, type]);
      }
    }
  });

  it('reads the file a second time only when the type is to be sniffed', async () => {
    // A Unix socket stats like a file of 0 bytes but cannot be opened (ENXIO): HEAD makes
    // @fastify/send skip opening it, so only an extra read of its first bytes could fail.
    const dir = mkdtempSync(join(tmpdir(), 'outrider-sendfile-'));
    const socket = join(dir, 'unopenable.sock');
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(socket, resolve));
    onTestFinished(() => new Promise<void>((resolve) => server.close(() => resolve())));
    const typed = await sendfileBackend(socket, { 'content-type': 'application/octet-stream' });
    const plain = await buildProxy(typed.url).inject({ method: 'HEAD', url: '/f' });
    expect([plain.statusCode, plain.headers['content-type']]).toEqual([200, 'application/octet-stream']);
    const untyped = await sendfileBackend(socket);
    expect((await buildProxy(untyped.url).inject({ method: 'HEAD', url: '/f' })).statusCode).toBe(404);
    const detect = await sendfileBackend(socket, { 'content-type': 'application/octet-stream', ...DETECT });
    expect((await buildProxy(detect.url).inject({ method: 'HEAD', url: '/f' })).statusCode).toBe(404);
  });
});

describe('X-Sendfile with Gitlab-Workhorse-Detect-Content-Type: true', () => {
  /** Serves `content` as `name` with the detect header and `extra`; returns the answer to `headers`. */
  async function detected(name: string, content: string | Buffer, extra: Record<string, string>, headers: Record<string, string> = {}) {
    const { file } = fixture(name, content);
    const backend = await sendfileBackend(file, { ...DETECT, ...extra });
    const res = await buildProxy(backend.url).inject({ url: '/f', headers });
    return {
      status: res.statusCode,
      type: res.headers['content-type'],
      disposition: res.headers['content-disposition'],
      body: res.rawPayload,
    };
  }

  it('serves HTML as inline plain text, whatever type the backend claimed', async () => {
    const html = '<!DOCTYPE html><script>alert(document.cookie)</script>';
    const res = await detected('page.html', html, { 'content-type': 'text/html; charset=utf-8' });
    expect(res).toMatchObject({ status: 200, type: 'text/plain; charset=utf-8', disposition: 'inline' });
    expect(res.body.toString()).toBe(html);
  });

  it('serves an SVG carrying a script as image/svg+xml, as an attachment even when the backend said inline', async () => {
    const svg = '<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>';
    const res = await detected('logo.svg', svg, { 'content-type': 'image/svg+xml', 'content-disposition': 'inline; filename="logo.svg"' });
    expect(res).toMatchObject({ status: 200, type: 'image/svg+xml', disposition: 'attachment; filename="logo.svg"' });
  });

  it("keeps the backend's attachment disposition, the type still coming from the bytes", async () => {
    const svg = '<svg xmlns="http://www.w3.org/2000/svg"/>';
    const res = await detected('a.txt', svg, { 'content-type': 'text/plain', 'content-disposition': 'attachment; filename="a.svg"' });
    expect(res).toMatchObject({ status: 200, type: 'image/svg+xml', disposition: 'attachment; filename="a.svg"' });
  });

  it('serves a PNG named .html as an inline image, and plain text as inline text', async () => {
    const image = await png();
    const res = await detected('image.html', image, { 'content-type': 'text/html' });
    expect(res).toMatchObject({ status: 200, type: 'image/png', disposition: 'inline' });
    expect(res.body.equals(image)).toBe(true);
    expect(await detected('notes.txt', 'a text file', {})).toMatchObject({
      status: 200,
      type: 'text/plain; charset=utf-8',
      disposition: 'inline',
    });
  });

  it("sniffs the file's head for a range, not the bytes the range sends", async () => {
    // Workhorse (sendfile.go, sendFileFromDisk) reads MaxDetectSize bytes from the start of the
    // file before http.ServeContent, as Outrider does: a ranged answer gets the type of the whole
    // file. A forged "PNG" of text bytes is therefore plain text, inline: the two bytes sent ("EN")
    // are not what is sniffed.
    const text = await detected(
      'forgedfile.png',
      'SENT FROM DISK',
      { 'content-type': 'image/png', 'content-disposition': 'inline' },
      { range: 'bytes=1-2' },
    );
    expect(text).toMatchObject({ status: 206, type: 'text/plain; charset=utf-8', disposition: 'inline' });
    expect(text.body.toString()).toBe('EN');
    // A forged "PNG" of unknown binary bytes is an attachment of no particular type (Workhorse's
    // TestSuccessOverrideContentHeadersRangeRequestFeatureEnabled).
    const binary = Buffer.from([0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07]);
    const forged = await detected(
      'forgedfile.png',
      binary,
      { 'content-type': 'image/png', 'content-disposition': 'inline' },
      { range: 'bytes=1-2' },
    );
    expect(forged).toMatchObject({ status: 206, type: 'application/octet-stream', disposition: 'attachment' });
    expect([...forged.body]).toEqual([0x01, 0x02]);
  });

  it('decides from the first 4096 bytes and still streams the whole file', async () => {
    // Text first, then a NUL past 4096 bytes: still text; the body arrives whole.
    const content = Buffer.concat([Buffer.alloc(5000, 'a'), Buffer.from([0]), Buffer.alloc(200_000, 'b')]);
    const res = await detected('big.txt', content, { 'content-type': 'application/json' });
    expect(res).toMatchObject({ status: 200, type: 'text/plain; charset=utf-8', disposition: 'inline' });
    expect(res.body.equals(content)).toBe(true);
  });

  it('sets the headers on HEAD, and leaves them off a 304', async () => {
    const { file } = fixture('page.html', '<html><body>x</body></html>');
    const backend = await sendfileBackend(file, { ...DETECT, 'content-type': 'text/html', etag: ETAG });
    const app = buildProxy(backend.url);
    const head = await app.inject({ method: 'HEAD', url: '/f' });
    expect([head.statusCode, head.headers['content-type'], head.headers['content-disposition'], head.body]).toEqual([
      200,
      'text/plain; charset=utf-8',
      'inline',
      '',
    ]);
    const same = await app.inject({ url: '/f', headers: { 'if-none-match': ETAG } });
    expect([same.statusCode, same.headers['content-type']]).toEqual([304, undefined]);
    expect(same.headers['gitlab-workhorse-detect-content-type']).toBeUndefined();
  });
});
