import { mkdtempSync, readdirSync, readlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { request } from 'undici';
import { beforeAll, describe, expect, it } from 'vitest';
import { buildProxy, startProxy } from '../../helpers/app.js';
import { type Backend, startBackend } from '../../helpers/backend.js';
import { gif, photo, pixelBomb, SVG, TINY_PNG, truncatedPng } from '../../helpers/images.js';

const MTIME = new Date('2026-03-04T05:06:07.250Z'); // sub-second on purpose
const HTTP_MTIME = 'Wed, 04 Mar 2026 05:06:07 GMT';
const dir = mkdtempSync(join(tmpdir(), 'outrider-scaler-'));

function place(name: string, bytes: Buffer, mtime = MTIME): string {
  const file = join(dir, name);
  writeFileSync(file, bytes);
  utimesSync(file, mtime, mtime);
  return file;
}

function directive(params: Record<string, unknown>): string {
  return `send-scaled-img:${Buffer.from(JSON.stringify(params)).toString('base64url')}`;
}

/** A Rails-like backend: 200, empty-ish body, the directive, and its own caching headers. */
async function avatarBackend(params: (url: URL) => Record<string, unknown>): Promise<Backend> {
  return startBackend((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    res.writeHead(200, {
      'gitlab-workhorse-send-data': directive(params(url)),
      'content-type': 'image/png',
      'cache-control': 'max-age=60, private',
      'content-disposition': 'inline',
    });
    res.end('BACKEND BODY');
  });
}

let png400: Buffer;
let jpeg400: Buffer;
beforeAll(async () => {
  png400 = await photo(400, 400, 'png');
  jpeg400 = await photo(400, 400, 'jpeg');
});

const widthOf = async (body: Buffer) => (await sharp(body).metadata()).width;

describe('send-scaled-img', () => {
  it('scales a PNG to the requested width as PNG, keeping the backend headers, with exact length and Last-Modified', async () => {
    const file = place('a.png', png400);
    const backend = await avatarBackend((u) => ({ Location: file, Width: Number(u.searchParams.get('width')), ContentType: 'image/png' }));
    const proxy = await startProxy(backend.url);
    const res = await request(`${proxy.url}/uploads/user/avatar/1/a.png?width=64`);
    const body = Buffer.from(await res.body.arrayBuffer());
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toBe('image/png');
    expect(res.headers['content-length']).toBe(String(body.length));
    expect(res.headers['last-modified']).toBe(HTTP_MTIME);
    expect(res.headers['cache-control']).toBe('max-age=60, private');
    expect(res.headers['gitlab-workhorse-send-data']).toBeUndefined();
    expect((await sharp(body).metadata()).format).toBe('png');
    expect(await widthOf(body)).toBe(64);
    expect(body.length).toBeLessThan(png400.length);
    expect(body.toString('latin1')).not.toContain('BACKEND BODY');
  });

  it('keeps a JPEG a JPEG, even when the directive claims another type', async () => {
    const file = place('b.jpg', jpeg400);
    const backend = await avatarBackend(() => ({ Location: file, Width: 40, ContentType: 'image/png' }));
    const res = await buildProxy(backend.url).inject({ url: '/b.jpg?width=40' });
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toBe('image/jpeg');
    const meta = await sharp(res.rawPayload).metadata();
    expect(meta.format).toBe('jpeg');
    expect(meta.width).toBe(40);
    expect(meta.height).toBe(40);
  });

  it('answers If-Modified-Since with 304 at whole seconds, before scaling', async () => {
    const file = place('c.png', png400);
    const backend = await avatarBackend(() => ({ Location: file, Width: 64, ContentType: 'image/png' }));
    const logs: Record<string, unknown>[] = [];
    const app = buildProxy(backend.url, { logs });
    const same = await app.inject({ url: '/c', headers: { 'if-modified-since': HTTP_MTIME } });
    expect(same.statusCode).toBe(304);
    // One outcome line, bound to the request's id as its access line is.
    const access = logs.find((l) => l.msg === 'request');
    expect(logs.filter((l) => l.subsystem === 'scaler')).toEqual([
      expect.objectContaining({
        level: 30,
        msg: 'scaler',
        requestId: access?.requestId,
        width: 64,
        contentType: 'image/png',
        outcome: 'not-modified',
        durationMs: expect.any(Number),
      }),
    ]);
    expect(same.body).toBe('');
    expect(same.headers['content-type']).toBeUndefined();
    expect(same.headers['content-length']).toBeUndefined();
    expect(same.headers['last-modified']).toBe(HTTP_MTIME);
    const older = await app.inject({ url: '/c', headers: { 'if-modified-since': 'Wed, 04 Mar 2026 05:06:06 GMT' } });
    expect(older.statusCode).toBe(200);
    expect(older.headers['last-modified']).toBe(HTTP_MTIME);
    const garbage = await app.inject({ url: '/c', headers: { 'if-modified-since': '0' } });
    expect(garbage.statusCode).toBe(200);
  });

  it('serves the new image once the file changes', async () => {
    const file = place('d.png', png400);
    const backend = await avatarBackend(() => ({ Location: file, Width: 64, ContentType: 'image/png' }));
    const app = buildProxy(backend.url);
    const first = await app.inject({ url: '/d' });
    place('d.png', await photo(200, 100, 'png'), new Date('2026-05-01T00:00:00Z'));
    const revalidate = await app.inject({ url: '/d', headers: { 'if-modified-since': first.headers['last-modified'] as string } });
    expect(revalidate.statusCode).toBe(200);
    expect(revalidate.headers['last-modified']).toBe('Fri, 01 May 2026 00:00:00 GMT');
    expect((await sharp(revalidate.rawPayload).metadata()).height).toBe(32);
  });

  it('serves the original bytes with 200 when the file is too large, too small, not PNG/JPEG, a pixel bomb, or not wider than asked', async () => {
    const bomb = pixelBomb();
    expect(bomb.length).toBeLessThan(100_000);
    const cases: [string, Buffer, string, string][] = [
      ['big.png', png400, 'max_filesize = 1000', 'image/png'],
      // Too small to tell its format: not labelled as an image it may not be.
      ['tiny.png', TINY_PNG, '', 'application/octet-stream'],
      ['logo.svg', SVG, '', 'application/octet-stream'],
      ['anim.gif', await gif(), '', 'application/octet-stream'],
      ['bomb.png', bomb, '', 'image/png'],
      ['small.png', await photo(50, 50, 'png'), '', 'image/png'],
    ];
    for (const [name, bytes, toml, type] of cases) {
      const file = place(name, bytes);
      const backend = await avatarBackend(() => ({ Location: file, Width: 64, ContentType: 'image/png' }));
      const started = Date.now();
      const logs: Record<string, unknown>[] = [];
      const res = await buildProxy(backend.url, { toml: `[image_resizer]\n${toml}`, logs }).inject({ url: `/${name}` });
      expect(res.statusCode, name).toBe(200);
      // The warning is logged through the request's own logger, made for it on first use.
      const access = logs.find((l) => l.msg === 'request');
      expect(
        logs.find((l) => l.outcome === 'served-original'),
        name,
      ).toMatchObject({
        level: 40,
        requestId: access?.requestId,
        subsystem: 'scaler',
        width: 64,
        contentType: 'image/png',
      });
      expect(res.rawPayload.equals(bytes), name).toBe(true);
      expect(res.headers['content-type'], name).toBe(type);
      expect(res.headers['content-length'], name).toBe(String(bytes.length));
      expect(Date.now() - started, name).toBeLessThan(2000);
    }
  });

  it('serves the original when sharp cannot decode it (a truncated PNG)', async () => {
    const broken = await truncatedPng();
    const file = place('broken.png', broken);
    const backend = await avatarBackend(() => ({ Location: file, Width: 64, ContentType: 'image/png' }));
    const res = await buildProxy(backend.url).inject({ url: '/broken' });
    expect(res.statusCode).toBe(200);
    expect(res.rawPayload.equals(broken)).toBe(true);
  });

  it('answers 502 without detail for an invalid directive or a missing file', async () => {
    const file = place('e.png', png400);
    const bad = [
      { Location: file, Width: 0, ContentType: 'image/png' },
      { Location: file, Width: 5000, ContentType: 'image/png' },
      { Location: file, Width: '64', ContentType: 'image/png' },
      { Width: 64, ContentType: 'image/png' },
      { Location: file, Width: 64 },
      { Location: join(dir, 'missing.png'), Width: 64, ContentType: 'image/png' },
    ];
    for (const params of bad) {
      const backend = await avatarBackend(() => params);
      const res = await buildProxy(backend.url).inject({ url: '/e' });
      expect(res.statusCode).toBe(502);
      expect(res.body).not.toContain(dir);
      expect(res.body).not.toContain('BACKEND BODY');
    }
    const garbled = await startBackend((_req, res) => res.writeHead(200, { 'gitlab-workhorse-send-data': 'send-scaled-img:%%%' }).end());
    expect((await buildProxy(garbled.url).inject({ url: '/e' })).statusCode).toBe(502);
  });

  it('passes a non-200 backend answer through untouched', async () => {
    const file = place('f.png', png400);
    const backend = await startBackend((_req, res) => {
      res.writeHead(404, { 'gitlab-workhorse-send-data': directive({ Location: file, Width: 64, ContentType: 'image/png' }) });
      res.end('no avatar');
    });
    const res = await buildProxy(backend.url).inject({ url: '/f' });
    expect(res.statusCode).toBe(404);
    expect(res.body).toBe('no avatar');
  });

  it('scales a remote Location fetched from object storage, with its Last-Modified', async () => {
    const store = await startBackend((req, res) => {
      if (req.url === '/gone.png') return void res.writeHead(404).end();
      res.writeHead(200, { 'content-type': 'image/jpeg', 'content-length': jpeg400.length, 'last-modified': HTTP_MTIME }).end(jpeg400);
    });
    const backend = await avatarBackend((u) => ({ Location: `${store.url}${u.pathname}`, Width: 48, ContentType: 'image/jpeg' }));
    const app = buildProxy(backend.url);
    const res = await app.inject({ url: '/avatar.jpg' });
    expect(res.statusCode).toBe(200);
    expect(await widthOf(res.rawPayload)).toBe(48);
    expect(res.headers['last-modified']).toBe(HTTP_MTIME);
    const fresh = await app.inject({ url: '/avatar.jpg', headers: { 'if-modified-since': HTTP_MTIME } });
    expect(fresh.statusCode).toBe(304);
    const gone = await app.inject({ url: '/gone.png' });
    expect(gone.statusCode).toBe(502);
  });

  it('caches remote images by URL and strong ETag: a new signature is a hit, another object under the same ETag never is', async () => {
    const red = await sharp({ create: { width: 200, height: 200, channels: 3, background: '#ff0000' } })
      .png()
      .toBuffer();
    const blue = await sharp({ create: { width: 200, height: 200, channels: 3, background: '#0000ff' } })
      .png()
      .toBuffer();
    let fetches = 0;
    // Both objects carry the same ETag, as a server deriving ETags from size and mtime may give them.
    const store = await startBackend((req, res) => {
      fetches++;
      const id = new URL(req.url ?? '/', 'http://x').searchParams.get('id');
      res.writeHead(200, { 'content-type': 'image/png', etag: '"same"' }).end(id === 'blue' ? blue : red);
    });
    let signature = 0;
    const backend = await avatarBackend((u) => ({
      Location: `${store.url}/download?id=${u.searchParams.get('id')}&X-Amz-Signature=${++signature}&X-Amz-Date=20261201T000000Z`,
      Width: 50,
      ContentType: 'image/png',
    }));
    const logs: Record<string, unknown>[] = [];
    const proxy = await startProxy(backend.url, { logs });
    const colour = async (id: string) => {
      const res = await request(`${proxy.url}/avatar?id=${id}`);
      const body = Buffer.from(await res.body.arrayBuffer());
      expect(await widthOf(body)).toBe(50);
      const { channels } = await sharp(body).stats();
      return channels[0]?.mean === 255 ? 'red' : channels[2]?.mean === 255 ? 'blue' : 'other';
    };
    expect(await colour('red')).toBe('red');
    expect(await colour('blue')).toBe('blue');
    expect(await colour('red')).toBe('red');
    expect(await colour('blue')).toBe('blue');
    const outcomes = logs.filter((l) => l.subsystem === 'scaler').map((l) => l.outcome);
    expect(outcomes).toEqual(['scaled', 'scaled', 'cache-hit', 'cache-hit']);
    expect(logs.find((l) => l.outcome === 'cache-hit')).toMatchObject({
      level: 30,
      msg: 'scaler',
      width: 50,
      contentType: 'image/png',
      durationMs: expect.any(Number),
      bytesWritten: expect.any(Number),
      originalBytes: red.length,
    });
    // Each outcome line names the request it belongs to, as its access line does.
    const ids = logs.filter((l) => l.msg === 'request').map((l) => l.requestId);
    expect(new Set(ids).size).toBe(4);
    expect(logs.filter((l) => l.subsystem === 'scaler').map((l) => l.requestId)).toEqual(ids);
    // Each request still asks the store (its validators are the key), but only two were scaled.
    expect(fetches).toBe(4);
  });

  it('decides a 304 before reading a single image byte: a remote body that never ends does not hold it up', async () => {
    let hungUp = false;
    const store = await startBackend((_req, res) => {
      res.writeHead(200, { 'content-type': 'image/png', 'last-modified': HTTP_MTIME }); // chunked: no length to judge by
      res.write(png400.subarray(0, 1000)); // and never the rest
      res.on('close', () => {
        hungUp = true;
      });
    });
    const backend = await avatarBackend(() => ({ Location: `${store.url}/stalled.png`, Width: 64, ContentType: 'image/png' }));
    const proxy = await startProxy(backend.url);
    const res = await request(`${proxy.url}/stalled`, { headers: { 'if-modified-since': HTTP_MTIME }, headersTimeout: 3000 });
    expect(res.statusCode).toBe(304);
    expect(await res.body.text()).toBe('');
    // The unread object is let go of rather than drained.
    for (let waited = 0; !hungUp && waited < 2000; waited += 20) await new Promise((r) => setTimeout(r, 20));
    expect(hungUp).toBe(true);
  });

  it('serves originals instead of queueing when every scaling slot is busy', async () => {
    const big = await photo(1500, 1500, 'png');
    const file = place('busy.png', big);
    // Eight different widths: eight different jobs (identical requests would share one).
    const backend = await avatarBackend((url) => ({ Location: file, Width: Number(url.searchParams.get('w')), ContentType: 'image/png' }));
    const proxy = await startProxy(backend.url, {
      toml: '[image_resizer]\nmax_scaler_procs = 1\nmax_scaler_wait = "0s"\nmax_filesize = 50000000',
    });
    const results = await Promise.all(
      Array.from({ length: 8 }, async (_, i) => {
        const res = await request(`${proxy.url}/busy?w=${64 + i}`);
        return { status: res.statusCode, width: await widthOf(Buffer.from(await res.body.arrayBuffer())), asked: 64 + i };
      }),
    );
    expect(results.every((r) => r.status === 200)).toBe(true);
    expect(results.filter((r) => r.width === r.asked).length).toBeGreaterThanOrEqual(1);
    expect(results.filter((r) => r.width === 1500).length).toBeGreaterThanOrEqual(1);
  });

  it('keeps serving after clients abandon requests mid-scale, and gets every slot back', async () => {
    const big = await photo(1500, 1500, 'png');
    const file = place('abandoned.png', big);
    const backend = await avatarBackend(() => ({ Location: file, Width: 64, ContentType: 'image/png' }));
    const logs: Record<string, unknown>[] = [];
    const proxy = await startProxy(backend.url, {
      toml: '[image_resizer]\nmax_scaler_procs = 1\nmax_scaler_wait = "0s"\nmax_filesize = 50000000',
      logs,
    });
    for (let i = 0; i < 3; i++) {
      // The client sends its request and hangs up before the answer can exist.
      const socket = connect(proxy.port, '127.0.0.1');
      await new Promise<void>((r) => socket.once('connect', () => r()));
      socket.write('GET /abandoned HTTP/1.1\r\nHost: x\r\n\r\n');
      await new Promise((r) => setTimeout(r, 10));
      socket.destroy();
    }
    // All three are accounted for (a busy one may be served its original before the client hangs up),
    // and at least one was abandoned while it was being scaled.
    const lines = () => logs.filter((l) => l.msg === 'request');
    for (let waited = 0; lines().length < 3 && waited < 5000; waited += 50) await new Promise((r) => setTimeout(r, 50));
    expect(lines()).toHaveLength(3);
    expect(lines().some((l) => l.aborted === true && l.status === 499)).toBe(true);
    // A job libvips is already running cannot be interrupted (sharp has no cancellation): its slot
    // comes back when it finishes, never leaked. The next requests scale again.
    let width: number | undefined;
    for (let tries = 0; width !== 64 && tries < 30; tries++) {
      const res = await request(`${proxy.url}/abandoned`);
      width = await widthOf(Buffer.from(await res.body.arrayBuffer()));
      if (width !== 64) await new Promise((r) => setTimeout(r, 100));
    }
    expect(width).toBe(64);
  });

  it('turns a JPEG upright by its EXIF orientation, judging the width as displayed', async () => {
    // Stored 400 wide and 200 high, displayed rotated a quarter turn: 200 wide, 400 high.
    const sideways = await sharp(await photo(400, 200, 'jpeg'))
      .withMetadata({ orientation: 6 })
      .jpeg()
      .toBuffer();
    const file = place('sideways.jpg', sideways);
    const backend = await avatarBackend((url) => ({ Location: file, Width: Number(url.searchParams.get('w')), ContentType: 'image/jpeg' }));
    const proxy = await startProxy(backend.url);
    const scaled = await request(`${proxy.url}/a?w=100`);
    const meta = await sharp(Buffer.from(await scaled.body.arrayBuffer())).metadata();
    expect([meta.width, meta.height, meta.orientation]).toEqual([100, 200, undefined]);
    // 300 is wider than the displayed 200: never enlarged, the original is served.
    const wide = await request(`${proxy.url}/a?w=300`);
    expect(Buffer.from(await wide.body.arrayBuffer()).equals(sideways)).toBe(true);
  });

  it('closes the original file when clients leave while it is streamed to them', async () => {
    const file = place('streamed.png', Buffer.concat([png400, Buffer.alloc(8 * 1024 * 1024)]));
    const backend = await avatarBackend(() => ({ Location: file, Width: 64, ContentType: 'image/png' }));
    const proxy = await startProxy(backend.url, { toml: '[image_resizer]\nmax_filesize = 1000' });
    const openOnFile = () =>
      readdirSync('/proc/self/fd').filter((fd) => {
        try {
          return readlinkSync(`/proc/self/fd/${fd}`) === file;
        } catch {
          return false;
        }
      }).length;
    for (let i = 0; i < 5; i++) {
      const socket = connect(proxy.port, '127.0.0.1');
      socket.write('GET /streamed HTTP/1.1\r\nHost: x\r\n\r\n');
      // The original is being served (too large to scale): take its first bytes and hang up.
      await new Promise<void>((r) => socket.once('data', () => r()));
      expect(openOnFile()).toBeGreaterThanOrEqual(1);
      socket.destroy();
    }
    for (let waited = 0; openOnFile() > 0 && waited < 3000; waited += 50) await new Promise((r) => setTimeout(r, 50));
    expect(openOnFile()).toBe(0);
  });
});
