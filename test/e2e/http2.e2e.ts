import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { certificate } from '../helpers/tls.js';
import { type ExampleApp, startExampleApp } from './example-app.js';

/**
 * The example app as the only edge: `npm start`'s Outrider with `[tls]` (HTTP/2 by ALPN), in
 * Debian's chromium. The certificate is the suite's own, so the browser is told to accept it.
 */
const EXAMPLE_CONFIG = fileURLToPath(new URL('../../example/outrider.toml', import.meta.url));
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';

const scratch = mkdtempSync(join(tmpdir(), 'outrider-e2e-h2-'));
let app: ExampleApp;
let logs: Record<string, unknown>[] = [];
let base = '';

beforeAll(async () => {
  const pair = certificate('e2e-h2');
  const config = join(scratch, 'outrider.toml');
  writeFileSync(config, `${readFileSync(EXAMPLE_CONFIG, 'utf8')}\n[tls]\ncertificate = "${pair.cert}"\nkey = "${pair.key}"\n`);
  app = await startExampleApp({ EXAMPLE_AVATAR_DIR: join(scratch, 'avatars'), EXAMPLE_OUTRIDER_CONFIG: config });
  ({ logs, base } = app);
  expect(base).toMatch(/^https:/);
});

afterAll(async () => {
  expect(await app?.stop()).toBe(0);
  rmSync(scratch, { recursive: true, force: true });
});

interface Timing {
  name: string;
  nextHopProtocol: string;
}
declare const performance: { getEntriesByType(type: string): Timing[] };
declare const document: { images: ArrayLike<{ complete: boolean }>; getElementById(id: string): { dataset: { tick?: string } } };

describe('the example app over HTTPS in Chromium', () => {
  it('loads the home page and every avatar over HTTP/2, and the live counter ticks over its WebSocket', async () => {
    expect(existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install chromium`).toBe(true);
    const browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking'],
    });
    try {
      const context = await browser.newContext({ ignoreHTTPSErrors: true });
      const page = await context.newPage();
      await page.goto(`${base}/`);
      await page.waitForFunction(() => Array.from(document.images).every((img) => img.complete), undefined, { timeout: 30_000 });
      const protocols = await page.evaluate(() =>
        [...performance.getEntriesByType('navigation'), ...performance.getEntriesByType('resource')].map((t) => ({
          name: t.name,
          protocol: t.nextHopProtocol,
        })),
      );
      const images = protocols.filter((p) => p.name.includes('/avatars/'));
      expect(images.length).toBeGreaterThan(0);
      expect(protocols.filter((p) => p.protocol !== 'h2')).toEqual([]);
      // The live counter: a WebSocket through the tunnel.
      await page.waitForSelector('output#live[data-tick]', { timeout: 10_000 });
      const first = Number(await page.getAttribute('output#live', 'data-tick'));
      await page.waitForFunction((t) => Number(document.getElementById('live').dataset.tick) > t, first, { timeout: 5_000 });
      await context.close();
    } finally {
      await browser.close();
    }
    // Each page's tunnel to /live was logged when it closed; the access lines name no failure.
    const tunnel = async () => logs.find((l) => l.subsystem === 'tunnel' && l.path === '/live');
    for (let i = 0; i < 50 && (await tunnel()) === undefined; i++) await sleep(100);
    const line = await tunnel();
    // Chromium opens it on the HTTP/2 connection it already holds: RFC 8441's extended CONNECT.
    expect(line).toMatchObject({ method: 'CONNECT', httpVersion: '2', upgrade: 'websocket', status: 200 });
    const scaled = logs.filter((l) => l.subsystem === 'scaler');
    expect(scaled.length).toBeGreaterThan(0);
    expect(logs.filter((l) => l.msg === 'request' && typeof l.status === 'number' && l.status >= 500)).toEqual([]);
  });
});
