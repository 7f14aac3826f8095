import { mkdtempSync, renameSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { request } from 'undici';
import { beforeAll, describe, expect, it } from 'vitest';
import { ScaledCache } from '../../scaler/cache.js';
import { startProxy } from '../helpers/app.js';
import { type Backend, startBackend } from '../helpers/backend.js';
import { photo } from '../helpers/images.js';

const dir = mkdtempSync(join(tmpdir(), 'outrider-cache-'));
let png400: Buffer;
let jpeg400: Buffer;
beforeAll(async () => {
  png400 = await photo(400, 400, 'png');
  jpeg400 = await photo(400, 400, 'jpeg');
});

function place(name: string, bytes: Buffer, mtime = new Date('2026-03-04T05:06:07Z')): string {
  const file = join(dir, name);
  writeFileSync(file, bytes);
  utimesSync(file, mtime, mtime);
  return file;
}

/** Answers `/<anything>?w=N` with a directive for `location()` at width N. */
async function avatarBackend(location: () => string): Promise<Backend> {
  return startBackend((req, res) => {
    const width = Number(new URL(req.url ?? '/', 'http://x').searchParams.get('w') ?? 64);
    const directive = { Location: location(), Width: width, ContentType: 'image/png' };
    res.writeHead(200, { 'gitlab-workhorse-send-data': `send-scaled-img:${Buffer.from(JSON.stringify(directive)).toString('base64url')}` });
    res.end();
  });
}

async function get(url: string) {
  const res = await request(url);
  const body = Buffer.from(await res.body.arrayBuffer());
  return { status: res.statusCode, body, width: (await sharp(body).metadata()).width };
}

/** The scaler's outcomes in the log, in order. */
const outcomes = (logs: Record<string, unknown>[]) => logs.filter((l) => l.subsystem === 'scaler').map((l) => l.outcome);

describe('the scaled-image cache', () => {
  it('serves a repeated request from the cache, with the same bytes, and a changed file never from the old entry', async () => {
    const file = place('a.png', png400);
    const backend = await avatarBackend(() => file);
    const logs: Record<string, unknown>[] = [];
    const proxy = await startProxy(backend.url, { logs });
    const first = await get(`${proxy.url}/a?w=64`);
    const second = await get(`${proxy.url}/a?w=64`);
    const other = await get(`${proxy.url}/a?w=32`);
    expect([first.width, second.width, other.width]).toEqual([64, 64, 32]);
    expect(second.body.equals(first.body)).toBe(true);
    expect(outcomes(logs)).toEqual(['scaled', 'cache-hit', 'scaled']);

    // Same name, new bytes (a JPEG now) and a new mtime: a miss, scaled from the new file.
    place('a.png', jpeg400, new Date('2026-03-05T00:00:00Z'));
    const changed = await get(`${proxy.url}/a?w=64`);
    expect((await sharp(changed.body).metadata()).format).toBe('jpeg');
    expect(outcomes(logs).at(-1)).toBe('scaled');
    expect((await get(`${proxy.url}/a?w=64`)).body.equals(changed.body)).toBe(true);
    expect(outcomes(logs).at(-1)).toBe('cache-hit');
  });

  it('misses when only the mtime changed, when a file of the same size and mtime was renamed over it, or rewritten in place', async () => {
    const file = place('m.png', png400);
    const backend = await avatarBackend(() => file);
    const logs: Record<string, unknown>[] = [];
    const proxy = await startProxy(backend.url, { logs });
    await get(`${proxy.url}/m?w=48`);
    await get(`${proxy.url}/m?w=48`);
    // The same bytes, touched: a new mtime is a new source.
    utimesSync(file, new Date('2026-03-06T00:00:00Z'), new Date('2026-03-06T00:00:00Z'));
    await get(`${proxy.url}/m?w=48`);
    await get(`${proxy.url}/m?w=48`);
    // The same bytes, size and mtime, but another file (a deploy's rename over the old one).
    const next = place('m.next.png', png400, new Date('2026-03-06T00:00:00Z'));
    renameSync(next, file);
    await get(`${proxy.url}/m?w=48`);
    await get(`${proxy.url}/m?w=48`);
    // Rewritten in place, same inode and size, its mtime put back (as `cp -p` or `rsync -t` do):
    // only the ctime tells, and it does.
    await new Promise((r) => setTimeout(r, 20));
    writeFileSync(file, png400);
    utimesSync(file, new Date('2026-03-06T00:00:00Z'), new Date('2026-03-06T00:00:00Z'));
    await get(`${proxy.url}/m?w=48`);
    await get(`${proxy.url}/m?w=48`);
    expect(outcomes(logs)).toEqual(['scaled', 'cache-hit', 'scaled', 'cache-hit', 'scaled', 'cache-hit', 'scaled', 'cache-hit']);
  });

  it('evicts the least recently used entry at its byte bound, and keeps nothing at 0', async () => {
    const file = place('b.png', png400);
    const backend = await avatarBackend(() => file);
    const logs: Record<string, unknown>[] = [];
    // Room for two of these avatars (each its bytes plus ~170 of bookkeeping), not three.
    const probe = await startProxy(backend.url, { toml: '[image_resizer]\ncache_max_bytes = 0' });
    const size = (await get(`${probe.url}/b?w=64`)).body.length;
    const proxy = await startProxy(backend.url, { logs, toml: `[image_resizer]\ncache_max_bytes = ${Math.floor(2.5 * (size + 170))}` });
    for (const w of [64, 63, 64, 62, 63, 64]) await get(`${proxy.url}/b?w=${w}`);
    // 64 scaled, 63 scaled, 64 hit (now most recent), 62 scaled (evicts 63), 63 scaled again (evicts 64), 64 scaled again.
    expect(outcomes(logs)).toEqual(['scaled', 'scaled', 'cache-hit', 'scaled', 'scaled', 'scaled']);

    const off: Record<string, unknown>[] = [];
    const uncached = await startProxy(backend.url, { logs: off, toml: '[image_resizer]\ncache_max_bytes = 0' });
    for (let i = 0; i < 3; i++) await get(`${uncached.url}/b?w=64`);
    expect(outcomes(off)).toEqual(['scaled', 'scaled', 'scaled']);
  });

  it('keeps its byte count within the bound, most recently used last', () => {
    const cache = new ScaledCache(1000);
    const image = (n: number) => ({ body: Buffer.alloc(n), contentType: 'image/png' as const, width: 1, originalBytes: 1 });
    cache.set('a', image(300));
    cache.set('b', image(300));
    expect(cache.get('a')?.body.length).toBe(300);
    cache.set('c', image(300)); // a, b, c do not fit with their overhead: b, the least recent, goes
    expect([cache.get('a') !== undefined, cache.get('b') !== undefined, cache.get('c') !== undefined]).toEqual([true, false, true]);
    expect(cache.bytes).toBeLessThanOrEqual(1000);
    cache.set('huge', image(5000)); // larger than the whole cache: not kept, nothing evicted for it
    expect([cache.size, cache.get('huge')]).toEqual([2, undefined]);
  });

  it('evicts in least-recently-used order through hits, replacements and evictions, and counts its bytes exactly', () => {
    const cost = 100 + 1 + 160; // body, one-letter key, overhead
    const cache = new ScaledCache(4 * cost);
    const image = (n: number) => ({ body: Buffer.alloc(n), contentType: 'image/png' as const, width: 1, originalBytes: 1 });
    const held = () => ['a', 'b', 'c', 'd', 'e', 'f'].filter((k) => cache.get(k) !== undefined);
    for (const k of ['a', 'b', 'c', 'd']) cache.set(k, image(100));
    expect(cache.bytes).toBe(4 * cost);
    cache.get('a'); // order now b, c, d, a
    cache.get('c'); // b, d, a, c
    cache.set('e', image(100)); // evicts b
    expect(cache.size).toBe(4);
    cache.set('d', image(100)); // a replacement is the most recent: a, c, e, d
    cache.set('f', image(100)); // evicts a
    cache.get('e'); // c, d, f, e
    cache.set('b', image(100)); // evicts c
    expect([cache.get('a'), cache.get('c')]).toEqual([undefined, undefined]);
    expect([cache.size, cache.bytes]).toEqual([4, 4 * cost]);
    // Reading them all in this order leaves them so: b, d, e, f all held.
    expect(held()).toEqual(['b', 'd', 'e', 'f']);
    cache.set('a', image(100 + cost)); // costs two slots: the two least recent (b, d) go
    expect(held()).toEqual(['a', 'e', 'f']);
    expect(cache.bytes).toBe(cost + cost + (100 + cost + 1 + 160));
  });
});

describe('coalescing', () => {
  it('turns 50 concurrent identical requests into one sharp job', async () => {
    const big = await photo(1600, 1600, 'jpeg');
    const file = place('c.jpg', big);
    // The backend holds its answers until all 50 requests arrived, so they reach the scaler together.
    const held: (() => void)[] = [];
    const backend = await startBackend((_req, res) => {
      const directive = { Location: file, Width: 80, ContentType: 'image/jpeg' };
      held.push(() => {
        res.writeHead(200, {
          'gitlab-workhorse-send-data': `send-scaled-img:${Buffer.from(JSON.stringify(directive)).toString('base64url')}`,
        });
        res.end();
      });
      if (held.length === 50) for (const answer of held) answer();
    });
    const logs: Record<string, unknown>[] = [];
    const proxy = await startProxy(backend.url, { logs, toml: '[image_resizer]\nmax_scaler_procs = 1\ncache_max_bytes = 0' });
    const results = await Promise.all(Array.from({ length: 50 }, () => get(`${proxy.url}/c?w=80`)));
    expect(results.every((r) => r.status === 200 && r.width === 80)).toBe(true);
    expect(results.every((r) => r.body.equals((results[0] as { body: Buffer }).body))).toBe(true);
    const seen = outcomes(logs);
    expect(seen.filter((o) => o === 'scaled')).toHaveLength(1);
    expect(seen.filter((o) => o === 'coalesced')).toHaveLength(49);
  });

  it('releases the remote source of a client that leaves while waiting on a shared job, and finishes the job for the rest', async () => {
    const png = await photo(400, 400, 'png');
    const half = png.length >> 1;
    // Object storage that sends the first half of each body and holds the rest until released.
    const bodies: { closed: Promise<void>; release: () => void }[] = [];
    const store = await startBackend((_req, res) => {
      res.writeHead(200, { 'content-type': 'image/png', 'content-length': png.length, etag: '"v1"' });
      res.write(png.subarray(0, half));
      bodies.push({ closed: new Promise((resolve) => res.once('close', () => resolve())), release: () => res.end(png.subarray(half)) });
    });
    const backend = await avatarBackend(() => `${store.url}/avatar.png`);
    const logs: Record<string, unknown>[] = [];
    const proxy = await startProxy(backend.url, { logs, toml: '[image_resizer]\nmax_filesize = 1000000' });
    const first = get(`${proxy.url}/a?w=64`);
    await waitFor(() => bodies.length === 1);
    // The second, identical request waits for the first one's job; then its client goes away.
    const controller = new AbortController();
    const second = request(`${proxy.url}/a?w=64`, { signal: controller.signal }).catch((err: Error) => err);
    await waitFor(() => bodies.length === 2);
    await new Promise((r) => setTimeout(r, 50));
    controller.abort();
    expect(await second).toBeInstanceOf(Error);
    // Its store response is dropped while the first one is still being read.
    await (bodies[1] as { closed: Promise<void> }).closed;
    (bodies[0] as { release: () => void }).release();
    const res = await first;
    expect(res.status).toBe(200);
    expect(res.width).toBe(64);
    expect(logs.some((l) => l.msg === 'scaler failed')).toBe(false);
  });
});

async function waitFor(check: () => boolean): Promise<void> {
  for (let i = 0; i < 200 && !check(); i++) await new Promise((r) => setTimeout(r, 10));
  expect(check()).toBe(true);
}
