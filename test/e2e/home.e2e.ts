import { randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { chromium, type Page } from 'playwright-core';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HOME_WIDTHS } from '../../example/backend.js';
import { type ExampleApp, startExampleApp } from './example-app.js';

/**
 * The example app in a real browser: `npm start` (built), Debian's chromium driven by
 * playwright-core. Needs /usr/bin/chromium (CHROMIUM overrides it); `.ci/run` installs it.
 */
const ARTIFACTS = fileURLToPath(new URL('./artifacts/', import.meta.url));
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const STARTERS = ['ada.png', 'grace.jpg', 'linus.png'];

const scratch = mkdtempSync(join(tmpdir(), 'outrider-e2e-'));
let app: ExampleApp;
/** Every JSON line Outrider logged, and its base URL: set once npm start is up. */
let logs: Record<string, unknown>[] = [];
let base = '';

beforeAll(async () => {
  // A fresh avatar directory: the page shows exactly the starters and what this test uploads.
  app = await startExampleApp({ EXAMPLE_AVATAR_DIR: join(scratch, 'avatars') });
  ({ logs, base } = app);
});

afterAll(async () => {
  expect(await app?.stop()).toBe(0);
  rmSync(scratch, { recursive: true, force: true });
});

/** What the page functions below use of the DOM (they run in the browser; the project has no DOM types). */
interface PageImage {
  complete: boolean;
  currentSrc: string;
  width: number;
  naturalWidth: number;
}
declare const document: { images: ArrayLike<PageImage> };

/** Each avatar image on the page once all have loaded: the width asked for and the width decoded. */
async function images(page: Page) {
  await page.waitForFunction(() => Array.from(document.images).every((img) => img.complete), undefined, { timeout: 30_000 });
  return page.$$eval('table.avatars img', (imgs) =>
    (imgs as unknown as PageImage[]).map((img) => ({
      src: new URL(img.currentSrc).pathname + new URL(img.currentSrc).search,
      asked: Number(new URL(img.currentSrc).searchParams.get('width')),
      attribute: img.width,
      natural: img.naturalWidth,
    })),
  );
}

/** The two scaled images a cell's <img> offers: its width at 1x, and twice that in srcset for 2x screens. */
const candidates = (name: string, width: number) => [`/avatars/${name}?width=${width}`, `/avatars/${name}?width=${2 * width}`];

/**
 * Every avatar cell, in page order, shows one of its two scaled candidates, decoded at that
 * candidate's width and laid out at the width asked. Which one is the browser's choice: HTML's
 * srcset selection lets it take a candidate it already holds for another cell, and Chromium does,
 * and may report that candidate in currentSrc while the 1x bitmap is still the one decoded. An
 * original (400 px wide, or any other width) never passes.
 */
function expectShown(shown: Awaited<ReturnType<typeof images>>, names: string[]): void {
  const cells = names.flatMap((n) => HOME_WIDTHS.map((w) => ({ n, w })));
  expect(shown).toHaveLength(cells.length);
  shown.forEach((img, i) => {
    const { n, w } = cells[i] as { n: string; w: number };
    expect(candidates(n, w), `cell ${i}`).toContain(img.src);
    expect([w, 2 * w], `cell ${i} (${img.src}) decoded width`).toContain(img.natural);
    expect(img.attribute, `cell ${i}`).toBe(w);
  });
}

describe('the example app in Chromium', () => {
  it('uploads an avatar through the form, shows every avatar at the width asked, and revalidates with 304s on reload', async () => {
    expect(existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install chromium`).toBe(true);
    const context = await chromium.launchPersistentContext(join(scratch, 'profile'), {
      executablePath: CHROMIUM,
      headless: true,
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
      // 1x: each <img> takes its src, so naturalWidth is exactly the ?width= asked for.
      deviceScaleFactor: 1,
      viewport: { width: 1100, height: 800 },
    });
    try {
      const page = context.pages()[0] ?? (await context.newPage());
      // Each response with whether its request carried If-Modified-Since, as Chromium sent it
      // (allHeaders has the headers its HTTP cache added). Settled before they are read.
      const responses: { path: string; status: number; type?: string; vary?: string; conditional: Promise<boolean | null> }[] = [];
      page.on('response', (res) => {
        const url = new URL(res.url());
        const conditional = res
          .request()
          .allHeaders()
          .then((h) => 'if-modified-since' in h)
          .catch(() => null); // a page already gone: read only if it is an avatar's, and then fails

        const headers = res.headers();
        responses.push({
          path: url.pathname + url.search,
          status: res.status(),
          type: headers['content-type'],
          vary: headers.vary,
          conditional,
        });
      });

      await page.goto(`${base}/`);
      expect(await page.textContent('body')).toContain('through Outrider 0.');

      // The live counter: a WebSocket to the backend's /live, tunnelled by Outrider, ticks once a second.
      await page.waitForSelector('output#live[data-tick]', { timeout: 10_000 });
      const firstTick = Number(await page.getAttribute('output#live', 'data-tick'));
      await page.waitForFunction(
        (seen) =>
          Number(
            (document as unknown as { getElementById(id: string): { dataset: { tick?: string } } }).getElementById('live').dataset.tick,
          ) > seen,
        firstTick,
        { timeout: 5_000 },
      );
      expect(await page.textContent('output#live')).toMatch(/^tick \d+, \d+ pages? connected$/);

      // Upload a 400x300 PNG through the home page's form: Outrider stores it, the backend moves it, 303 to /.
      const stem = `e2e-${randomUUID().slice(0, 8)}`;
      const file = join(scratch, `${stem}.png`);
      await sharp({ create: { width: 400, height: 300, channels: 3, background: '#f59e0b' } })
        .composite([
          {
            input: Buffer.from(
              '<svg xmlns="http://www.w3.org/2000/svg" width="400" height="300"><circle cx="200" cy="150" r="110" fill="#1d4ed8"/></svg>',
            ),
          },
        ])
        .png()
        .toFile(file);
      await page.setInputFiles('form.upload input[type=file]', file);
      await Promise.all([page.waitForURL(`${base}/`, { waitUntil: 'load' }), page.click('form.upload button')]);
      expect(responses.find((r) => r.path === '/uploads/avatar')?.status).toBe(303);
      expect(logs.some((l) => l.subsystem === 'upload' && l.outcome === 'stored')).toBe(true);
      expect(readdirSync(join(scratch, 'avatars'))).toContain(`${stem}.png`);

      const names = [...STARTERS, `${stem}.png`];
      const first = await images(page);
      expect(first).toHaveLength(names.length * HOME_WIDTHS.length);
      expectShown(first, names);
      // Scaled by Outrider (or taken from its cache of scaled images, or revalidated): never an original.
      const outcomes = new Set(logs.filter((l) => l.subsystem === 'scaler').map((l) => l.outcome));
      expect([...outcomes].filter((o) => !['scaled', 'cache-hit', 'coalesced', 'not-modified'].includes(String(o)))).toEqual([]);
      expect(outcomes.has('scaled')).toBe(true);
      // The first loads of the page (before and after the upload) got no original, with the
      // default queue (max_scaler_wait, max_scaler_queue), though they asked for 21 and 28 at once.
      expect(logs.filter((l) => l.subsystem === 'scaler' && l.outcome === 'served-original')).toEqual([]);
      // Chromium accepts AVIF: every scaled avatar came as AVIF, with Vary: Accept.
      const scaledAnswers = responses.filter((r) => /^\/avatars\/.*\?width=/.test(r.path) && r.status === 200);
      expect(scaledAnswers.length).toBeGreaterThan(0);
      expect(scaledAnswers.filter((r) => r.type !== 'image/avif' || r.vary !== 'Accept')).toEqual([]);
      expect(logs.filter((l) => l.subsystem === 'scaler' && l.format !== 'avif')).toEqual([]);

      // Reload: the avatars are stale at once (max-age=0, must-revalidate), so each one the browser
      // holds (it had a response for it) is asked again with If-Modified-Since, and Outrider
      // answers 304 without scaling. A candidate the first load never fetched (its cell showed the
      // 2x one another cell had loaded) may be asked fresh now: a plain 200, scaled or from the cache.
      const before = responses.length;
      const logged = logs.length;
      const held = new Set(
        responses
          .slice(0, before)
          .filter((r) => r.path.startsWith('/avatars/'))
          .map((r) => r.path),
      );
      await page.reload({ waitUntil: 'load' });
      const again = await images(page);
      expectShown(again, names);
      const offered = new Set(names.flatMap((n) => HOME_WIDTHS.flatMap((w) => candidates(n, w))));
      const asked = await Promise.all(
        responses
          .slice(before)
          .filter((r) => r.path.startsWith('/avatars/'))
          .map(async (r) => ({ path: r.path, status: r.status, conditional: await r.conditional })),
      );
      const reasked = new Set(asked.map((r) => r.path));
      // Every cell had one of its candidates asked again; each URL once (cells sharing it share
      // the request), and only the page's scaled candidates.
      const unasked = names.flatMap((n) =>
        HOME_WIDTHS.filter((w) => !candidates(n, w).some((c) => reasked.has(c))).map((w) => `${n} ${w}`),
      );
      expect(unasked, 'cells none of whose candidates the reload asked for').toEqual([]);
      expect(asked.filter((r) => !offered.has(r.path))).toEqual([]);
      expect(reasked.size).toBe(asked.length);
      // What the browser held it revalidated (If-Modified-Since); what it did not, it asked plainly.
      expect(asked.filter((r) => r.conditional !== held.has(r.path))).toEqual([]);
      expect(asked.filter((r) => r.conditional).length, 'revalidations').toBeGreaterThan(0);
      expect(asked.filter((r) => !r.conditional && r.status !== 200)).toEqual([]);
      // Outrider answered every revalidation 304, without scaling, and every plain request 200. Its
      // access log says what it answered: for a revalidated image, Chromium at times reports the
      // status of the cached 200 it shows, not the 304 that revalidated it.
      const edge = logs.slice(logged).filter((l) => String(l.path).startsWith('/avatars/'));
      expect(edge.map((l) => `${l.path} ${l.status}`).sort()).toEqual(asked.map((r) => `${r.path} ${r.conditional ? 304 : 200}`).sort());
      const reloaded = logs.slice(logged).filter((l) => l.subsystem === 'scaler');
      expect(reloaded.filter((l) => l.outcome === 'not-modified')).toHaveLength(asked.filter((r) => r.conditional).length);
      expect(reloaded.filter((l) => !['not-modified', 'scaled', 'cache-hit', 'coalesced'].includes(String(l.outcome)))).toEqual([]);
      expect(reloaded).toHaveLength(asked.length);

      mkdirSync(ARTIFACTS, { recursive: true });
      await page.screenshot({ path: join(ARTIFACTS, 'home.png'), fullPage: true });
      expect((await sharp(join(ARTIFACTS, 'home.png')).metadata()).width).toBe(1100);
    } finally {
      await context.close();
    }
    // The pages are gone: each of their tunnels to /live was logged when it closed (the home page's
    // and the reload's), as a 101 that one side ended: the browser, or the backend answering its close frame.
    const ended = (l: Record<string, unknown>) =>
      l.subsystem === 'tunnel' && l.path === '/live' && (l.reason === 'client' || l.reason === 'backend');
    const end = Date.now() + 5_000;
    while (Date.now() < end && logs.filter(ended).length < 2) await sleep(50);
    const tunnels = logs.filter((l) => l.subsystem === 'tunnel');
    expect(tunnels.length).toBeGreaterThanOrEqual(1);
    expect(tunnels.filter((l) => l.path !== '/live' || l.status !== 101)).toEqual([]);
    expect(tunnels.filter(ended).length).toBeGreaterThanOrEqual(2);
  });
});
