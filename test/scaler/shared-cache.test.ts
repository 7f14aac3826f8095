import { execFile } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import sharp from 'sharp';
import { request } from 'undici';
import { beforeAll, describe, expect, it } from 'vitest';
import { sendScaledImage } from '../../backend/index.js';
import { loadConfig } from '../../config/load.js';
import { startProxy } from '../helpers/app.js';
import { type Backend, startBackend } from '../helpers/backend.js';
import { photo } from '../helpers/images.js';
import { scrape } from '../helpers/metrics.js';
import { HAVE_REDIS, REDIS_CLI, REDIS_SERVER, startRedis, startSilentServer } from '../helpers/redis.js';
import { until } from '../helpers/wait.js';

const dir = mkdtempSync(join(tmpdir(), 'outrider-shared-'));
let source: string;
beforeAll(async () => {
  source = join(dir, 'avatar.png');
  writeFileSync(source, await photo(600, 600, 'png'));
});

/** A backend whose every answer is a scale instruction for the avatar at ?w=. */
async function avatars(): Promise<Backend> {
  return startBackend((req, res) => {
    const width = Number(new URL(req.url ?? '/', 'http://x').searchParams.get('w'));
    const { name, value } = sendScaledImage({ location: source, width, contentType: 'image/png' });
    res.writeHead(200, { [name]: value }).end();
  });
}

const shared = (url: string, extra = '') =>
  `[image_resizer]\ncache_max_bytes = 0\nmax_filesize = 5000000\n[image_resizer.shared_cache]\nurl = "${url}"\ntimeout = "50ms"\nretry_after = "300ms"\n${extra}`;

async function fetchWidth(url: string): Promise<{ status: number; width: number | undefined; ms: number }> {
  const started = performance.now();
  const res = await request(url, { headersTimeout: 5000, bodyTimeout: 5000 });
  const body = Buffer.from(await res.body.arrayBuffer());
  const ms = performance.now() - started;
  return { status: res.statusCode, width: res.statusCode === 200 ? (await sharp(body).metadata()).width : undefined, ms };
}

const scalerOutcomes = (logs: Record<string, unknown>[]) => logs.filter((l) => l.subsystem === 'scaler').map((l) => l.outcome);
const tierLines = (logs: Record<string, unknown>[], msg: string) => logs.filter((l) => l.subsystem === 'shared-cache' && l.msg === msg);

describe.skipIf(!HAVE_REDIS && process.env.CI !== 'true')(`the shared cache on a real Redis (${REDIS_SERVER})`, () => {
  it('serves a second Outrider from what the first stored, and counts hits, misses and bytes', async () => {
    const redis = await startRedis();
    const backend = await avatars();
    const toml = `prometheus_listen_addr = "127.0.0.1:0"\n${shared(redis.url)}`;
    const aLogs: Record<string, unknown>[] = [];
    const bLogs: Record<string, unknown>[] = [];
    const a = await startProxy(backend.url, { toml, logs: aLogs });
    const b = await startProxy(backend.url, { toml, logs: bLogs });
    await until(
      () => tierLines(aLogs, 'shared cache available').length + tierLines(bLogs, 'shared cache available').length === 2,
      5_000,
      'both connected',
    );
    expect((await fetchWidth(`${a.url}/x?w=64`)).width).toBe(64);
    await until(() => Number(redis.cli('DBSIZE').trim()) === 1, 5_000, 'the image stored in Redis');
    expect((await fetchWidth(`${b.url}/x?w=64`)).width).toBe(64);
    expect(scalerOutcomes(aLogs)).toEqual(['scaled']);
    expect(scalerOutcomes(bLogs)).toEqual(['shared-hit']);
    // The lease was let go of once the image was stored: only the image is left.
    expect(redis.cli('KEYS', '*').trim()).toMatch(/^outrider:img:\{[\w-]+\}$/);
    const metrics = await scrape(b.app);
    expect(metrics.value('outrider_image_shared_cache_requests_total', { result: 'hit' })).toBe(1);
    expect(metrics.value('outrider_image_shared_cache_requests_total', { result: 'miss' })).toBe(0);
    expect(metrics.value('outrider_image_shared_cache_bytes_total', { direction: 'read' })).toBeGreaterThan(100);
    expect(metrics.value('outrider_image_shared_cache_available')).toBe(1);
  });

  it('keeps serving at local speed while Redis is killed, and uses it again once it is back', async () => {
    const redis = await startRedis();
    const backend = await avatars();
    const logs: Record<string, unknown>[] = [];
    const proxy = await startProxy(backend.url, { toml: shared(redis.url), logs });
    await until(() => tierLines(logs, 'shared cache available').length === 1, 5_000, 'connected');
    expect((await fetchWidth(`${proxy.url}/x?w=40`)).width).toBe(40);
    await redis.kill();
    // Redis is gone: every answer is still scaled, none waits on it.
    for (const w of [41, 42, 43]) {
      const answer = await fetchWidth(`${proxy.url}/x?w=${w}`);
      expect(answer).toMatchObject({ status: 200, width: w });
      expect(answer.ms).toBeLessThan(1000);
    }
    await until(() => tierLines(logs, 'shared cache unavailable').length > 0, 5_000, 'the warning');
    expect(tierLines(logs, 'shared cache unavailable')).toHaveLength(1);
    await redis.restart();
    await until(() => tierLines(logs, 'shared cache available').length === 2, 5_000, 'reconnected');
    expect((await fetchWidth(`${proxy.url}/x?w=44`)).width).toBe(44);
    await until(() => Number(redis.cli('DBSIZE').trim()) === 1, 5_000, 'a new image stored after the restart');
    expect(logs.filter((l) => (l.level as number) >= 50)).toEqual([]);
  });

  it('answers without delay when Redis accepts connections and never answers', async () => {
    const silent = await startSilentServer();
    const backend = await avatars();
    const logs: Record<string, unknown>[] = [];
    const proxy = await startProxy(backend.url, { toml: shared(silent.url), logs });
    await until(() => silent.connections() > 0, 5_000, 'a connection to the silent server');
    for (const w of [50, 51, 52, 53]) {
      const answer = await fetchWidth(`${proxy.url}/x?w=${w}`);
      expect(answer).toMatchObject({ status: 200, width: w });
      // Never connected: not one call is made, so nothing waits for a timeout.
      expect(answer.ms).toBeLessThan(1000);
    }
    expect(scalerOutcomes(logs)).toEqual(['scaled', 'scaled', 'scaled', 'scaled']);
    expect(tierLines(logs, 'shared cache available')).toEqual([]);
  });

  it('opens its breaker when a connected Redis stops answering: each call bounded by the timeout, one warning, then back', async () => {
    const redis = await startRedis();
    const backend = await avatars();
    const logs: Record<string, unknown>[] = [];
    const proxy = await startProxy(backend.url, { toml: shared(redis.url, 'failure_threshold = 2\n'), logs });
    await until(() => tierLines(logs, 'shared cache available').length === 1, 5_000, 'connected');
    const baseline = await fetchWidth(`${proxy.url}/x?w=60`);
    // Redis stops answering every client for two seconds (a stall, a slow disk, a failover).
    redis.cli('CLIENT', 'PAUSE', '2000', 'ALL');
    const during = [];
    for (const w of [61, 62, 63, 64, 65]) during.push(await fetchWidth(`${proxy.url}/x?w=${w}`));
    expect(during.map((a) => a.width)).toEqual([61, 62, 63, 64, 65]);
    // Bounded by the timeout, not by the pause: without it each would wait the two seconds out.
    expect(baseline.status).toBe(200);
    for (const a of during) expect(a.ms).toBeLessThan(1500);
    expect(tierLines(logs, 'shared cache unavailable')).toHaveLength(1);
    await until(() => tierLines(logs, 'shared cache available').length === 2, 8000, 'available again');
    expect((await fetchWidth(`${proxy.url}/x?w=66`)).width).toBe(66);
    await until(() => Number(redis.cli('DBSIZE').trim()) >= 2, 8000, 'images stored again');
    expect(tierLines(logs, 'shared cache unavailable')).toHaveLength(1);
  });

  it('lets go of a lease its timed-out lookup took late, so no request waits for it', async () => {
    const redis = await startRedis();
    const backend = await avatars();
    const logs: Record<string, unknown>[] = [];
    // One failure is not enough to open the breaker: the next request asks Redis again.
    const proxy = await startProxy(backend.url, { toml: shared(redis.url, 'failure_threshold = 5\n'), logs });
    await until(() => tierLines(logs, 'shared cache available').length === 1, 5_000, 'connected');
    // Redis busy with a slow script for about half a second: the lookup times out, then runs.
    const busy = execFile(REDIS_CLI, ['-p', String(redis.port), 'EVAL', 'local i = 0 while i < 40000000 do i = i + 1 end return i', '0']);
    await sleep(50);
    expect((await fetchWidth(`${proxy.url}/x?w=90`)).width).toBe(90);
    await new Promise((r) => busy.once('exit', r));
    await until(() => redis.cli('KEYS', '*lease').trim() === '', 2000, 'the late lease released');
    // The same image again: no lease left to wait for (lease_wait would be 2 s).
    const again = await fetchWidth(`${proxy.url}/x?w=90`);
    expect(again.width).toBe(90);
    expect(again.ms).toBeLessThan(1000);
  });

  it('scales on its own when the lease holder dies (its lease expires) or is slower than lease_wait', async () => {
    const redis = await startRedis();
    const backend = await avatars();
    const logs: Record<string, unknown>[] = [];
    const proxy = await startProxy(backend.url, {
      toml: `prometheus_listen_addr = "127.0.0.1:0"\n${shared(redis.url, 'lease_wait = "400ms"\n')}`,
      logs,
    });
    await until(() => tierLines(logs, 'shared cache available').length === 1, 5_000, 'connected');
    expect((await fetchWidth(`${proxy.url}/x?w=97`)).width).toBe(97);
    await until(() => Number(redis.cli('DBSIZE').trim()) === 1, 5_000, 'stored');
    const key = redis.cli('KEYS', '*').trim();
    // A holder that died: its lease (no image) runs out after 100 ms, well inside lease_wait.
    redis.cli('DEL', key);
    redis.cli('SET', `${key}:lease`, 'a node that died', 'PX', '100');
    const afterDeath = await fetchWidth(`${proxy.url}/x?w=97`);
    expect(afterDeath).toMatchObject({ status: 200, width: 97 });
    // A holder slower than lease_wait: the request waits 400 ms, then scales itself.
    redis.cli('DEL', key);
    redis.cli('SET', `${key}:lease`, 'a slow node', 'PX', '30000');
    const afterWait = await fetchWidth(`${proxy.url}/x?w=97`);
    expect(afterWait).toMatchObject({ status: 200, width: 97 });
    expect(afterWait.ms).toBeGreaterThanOrEqual(350);
    expect(afterWait.ms).toBeLessThan(2000);
    expect(scalerOutcomes(logs)).toEqual(['scaled', 'scaled', 'scaled']);
    const metrics = await scrape(proxy.app);
    expect(metrics.value('outrider_image_shared_cache_lease_waits_total', { result: 'gone' })).toBe(1);
    expect(metrics.value('outrider_image_shared_cache_lease_waits_total', { result: 'timeout' })).toBe(1);
  });

  it('scales on its own, at once, when the key holds something it did not write', async () => {
    const redis = await startRedis();
    const backend = await avatars();
    const aLogs: Record<string, unknown>[] = [];
    const bLogs: Record<string, unknown>[] = [];
    const a = await startProxy(backend.url, { toml: shared(redis.url), logs: aLogs });
    const b = await startProxy(backend.url, { toml: shared(redis.url), logs: bLogs });
    await until(
      () => tierLines(aLogs, 'shared cache available').length + tierLines(bLogs, 'shared cache available').length === 2,
      5_000,
      'connected',
    );
    expect((await fetchWidth(`${a.url}/x?w=96`)).width).toBe(96);
    await until(() => Number(redis.cli('DBSIZE').trim()) === 1, 5_000, 'stored');
    const key = redis.cli('KEYS', '*').trim();
    redis.cli('SET', key, 'not an image', 'KEEPTTL');
    const answer = await fetchWidth(`${b.url}/x?w=96`);
    expect(answer).toMatchObject({ status: 200, width: 96 });
    expect(answer.ms).toBeLessThan(1000);
    expect(scalerOutcomes(bLogs)).toEqual(['scaled']);
  });

  it('serves images and logs the error once when Redis is full', async () => {
    const redis = await startRedis();
    redis.cli('CONFIG', 'SET', 'maxmemory', '1');
    redis.cli('CONFIG', 'SET', 'maxmemory-policy', 'noeviction');
    const backend = await avatars();
    const logs: Record<string, unknown>[] = [];
    const proxy = await startProxy(backend.url, { toml: shared(redis.url), logs });
    await until(() => tierLines(logs, 'shared cache available').length === 1, 5_000, 'connected');
    for (const w of [70, 71, 72]) expect(await fetchWidth(`${proxy.url}/x?w=${w}`)).toMatchObject({ status: 200, width: w });
    await until(() => tierLines(logs, 'shared cache call failed').length > 0, 5_000, 'the error logged');
    expect(tierLines(logs, 'shared cache call failed')).toHaveLength(1);
    expect(String((tierLines(logs, 'shared cache call failed')[0]?.err as { message?: string })?.message)).toMatch(/OOM/);
    expect(redis.cli('DBSIZE').trim()).toBe('0');
  });
});

describe('[image_resizer.shared_cache]', () => {
  it('has defaults for everything but the URL, and names what it expected otherwise', () => {
    expect(loadConfig('[image_resizer.shared_cache]\nurl = "redis://10.0.0.5:6379/2"\n').imageResizer.sharedCache).toEqual({
      url: 'redis://10.0.0.5:6379/2',
      keyPrefix: 'outrider:img:',
      ttlMs: 7 * 86_400_000,
      timeoutMs: 100,
      leaseMs: 10_000,
      leaseWaitMs: 2000,
      failureThreshold: 3,
      retryAfterMs: 5000,
    });
    expect(loadConfig('').imageResizer.sharedCache).toBeUndefined();
    expect(() => loadConfig('[image_resizer.shared_cache]\n')).toThrow(/shared_cache\.url/);
    expect(() => loadConfig('[image_resizer.shared_cache]\nurl = "http://redis:6379"\n')).toThrow(
      /expected a Redis URL[\s\S]*http:\/\/redis:6379/,
    );
    expect(() => loadConfig('[image_resizer.shared_cache]\nurl = "redis://r"\nttl = "10ms"\n')).toThrow(/from "1s"/);
    expect(() => loadConfig('[image_resizer.shared_cache]\nurl = "redis://r"\ntimout = "10ms"\n')).toThrow(/did you mean timeout/);
  });
});
