import { mkdirSync, mkdtempSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { buildProxy, startProxy } from '../../helpers/app.js';
import { startBackend } from '../../helpers/backend.js';

const MTIME = new Date('2026-03-04T05:06:07.250Z'); // sub-second on purpose
const HTTP_MTIME = 'Wed, 04 Mar 2026 05:06:07 GMT';

function fixture(name = 'report 100%.txt', content = 'SENT FROM DISK') {
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

  it('guesses the Content-Type from the extension when the backend sent none, and answers HEAD without a body', async () => {
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
