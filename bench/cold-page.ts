import { type ChildProcess, spawn } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { prepareAvatars } from '../example/backend.js';
import { median } from './procs.js';

/**
 * `npm run bench:cold-page`: the example app's home page (four avatars at seven widths: 28 scaled
 * images) loaded once in a fresh Chromium profile, the way a new user first sees it, with the old
 * defaults (`max_scaler_wait = "0s"`, `formats = []`) and the new ones, alternating, ROUNDS times
 * each (default 5). Reports per config the originals Outrider served (from its log), the time from
 * navigation to the last image's last byte (the page's own Resource Timing), the image bytes and
 * the formats sent. Needs /usr/bin/chromium (CHROMIUM overrides it).
 */
const START = fileURLToPath(new URL('../example/start.js', import.meta.url));
const EXAMPLE_TOML = fileURLToPath(new URL('../../example/outrider.toml', import.meta.url));
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const ROUNDS = Number(process.env.ROUNDS ?? 5);

const scratch = mkdtempSync(join(tmpdir(), 'outrider-cold-page-'));
/** The example's config with an `[image_resizer]` section of its own. */
function variant(name: string, imageResizer: string): string {
  const file = join(scratch, `${name}.toml`);
  writeFileSync(file, `${readFileSync(EXAMPLE_TOML, 'utf8')}\n[image_resizer]\n${imageResizer}\n`);
  return file;
}
const configs: Record<string, string> = {
  'old defaults (wait 0s, formats [])': variant('old', 'max_scaler_wait = "0s"\nformats = []'),
  'queue only (formats [])': variant('queue', 'formats = []'),
  'queue, formats ["webp"]': variant('webp', 'formats = ["webp"]'),
  'new defaults (queue, ["avif", "webp"])': EXAMPLE_TOML,
};

interface Round {
  originals: number;
  lastImageMs: number;
  imageBytes: number;
  formats: string;
}

async function round(config: string, n: number): Promise<Round> {
  const avatars = join(scratch, `avatars-${n}`);
  await prepareAvatars(avatars);
  // A fourth avatar, as after the e2e test's upload: 4 x 7 = 28 images on the page.
  copyFileSync(join(avatars, 'ada.png'), join(avatars, 'zed.png'));
  const logs: Record<string, unknown>[] = [];
  const child = spawn(process.execPath, [START], {
    env: { ...process.env, OUTRIDER_PORT: '0', EXAMPLE_BACKEND_PORT: '0', EXAMPLE_AVATAR_DIR: avatars, EXAMPLE_OUTRIDER_CONFIG: config },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  try {
    const base = await up(child, logs);
    const context = await chromium.launchPersistentContext(join(scratch, `profile-${n}`), {
      executablePath: CHROMIUM,
      headless: true,
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
      deviceScaleFactor: 1,
      viewport: { width: 1100, height: 800 },
    });
    try {
      const page = context.pages()[0] ?? (await context.newPage());
      await page.goto(`${base}/`, { waitUntil: 'load' });
      const timing = await page.evaluate(() => {
        const entries = (
          globalThis as unknown as { performance: { getEntriesByType(t: string): { name: string; responseEnd: number }[] } }
        ).performance
          .getEntriesByType('resource')
          .filter((e) => e.name.includes('/avatars/'));
        return { count: entries.length, last: Math.max(...entries.map((e) => e.responseEnd)) };
      });
      await sleep(200); // the last log lines
      const scaler = logs.filter((l) => l.subsystem === 'scaler');
      const formats = new Map<string, number>();
      for (const l of scaler) formats.set(String(l.format ?? 'source'), (formats.get(String(l.format ?? 'source')) ?? 0) + 1);
      return {
        originals: scaler.filter((l) => l.outcome === 'served-original').length,
        lastImageMs: timing.last,
        // What Outrider wrote: a scaled image's bytes, or an original's.
        imageBytes: scaler.reduce((sum, l) => sum + Number(l.bytesWritten ?? l.originalBytes ?? 0), 0),
        formats: [...formats].map(([f, c]) => `${f} ${c}`).join(', '),
      };
    } finally {
      await context.close();
    }
  } finally {
    child.kill('SIGINT');
    await new Promise((r) => child.once('exit', r));
  }
}

async function up(child: ChildProcess, logs: Record<string, unknown>[]): Promise<string> {
  let out = '';
  let pending = '';
  return Promise.race([
    new Promise<string>((resolve) => {
      child.stdout?.on('data', (d: Buffer) => {
        out += d.toString();
        pending += d.toString();
        const lines = pending.split('\n');
        pending = lines.pop() ?? '';
        for (const line of lines) if (line.startsWith('{')) logs.push(JSON.parse(line) as Record<string, unknown>);
        const m = /Outrider is up on (http:\/\/127\.0\.0\.1:\d+)/.exec(out);
        if (m && out.includes('Ctrl-C stops both.')) resolve(m[1] as string);
      });
    }),
    sleep(20_000).then(() => Promise.reject(new Error(`the example did not come up:\n${out}`))),
  ]);
}

if (!existsSync(CHROMIUM)) {
  process.stderr.write(`${CHROMIUM} is missing: apt-get install chromium (or set CHROMIUM)\n`);
  process.exit(1);
}
const results = new Map<string, Round[]>(Object.keys(configs).map((k) => [k, []]));
let runs = 0;
for (let n = 0; n < ROUNDS; n++) {
  for (const [name, config] of Object.entries(configs)) {
    const r = await round(config, runs++);
    results.get(name)?.push(r);
    process.stdout.write(`${name} #${n + 1}: ${JSON.stringify(r)}\n`);
  }
}
const spread = (xs: number[]) => `${median(xs).toFixed(0)} (${Math.min(...xs).toFixed(0)}–${Math.max(...xs).toFixed(0)})`;
process.stdout.write(`\n| config | originals served | last image, ms | image bytes | formats (last round) |\n|---|---|---|---|---|\n`);
for (const [name, rs] of results) {
  process.stdout.write(
    `| ${name} | ${spread(rs.map((r) => r.originals))} | ${spread(rs.map((r) => r.lastImageMs))} | ${spread(rs.map((r) => r.imageBytes))} | ${rs.at(-1)?.formats} |\n`,
  );
}
process.stdout.write(`\nmedians (min–max) of ${ROUNDS} alternating rounds\n`);
rmSync(scratch, { recursive: true, force: true });
