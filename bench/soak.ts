import { mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import autocannon from 'autocannon';
import { COPIES } from './images.js';
import { freePort, memoryMiB, startEdge, startOrigin, uploadBody } from './procs.js';

/**
 * `npm run bench:soak`: a sustained mixed load on one Outrider (default settings but for a 2 s wait
 * for a scaling slot) for SOAK_MINUTES (default 5), sampling its RSS every second:
 * - scaling of many distinct images at ten widths (COPIES copies of each avatar, PNG and JPEG:
 *   about 5 000 different outputs, more than the 64 MiB cache holds, so it churns),
 * - 304 revalidations and plain proxied 1 KiB requests at a fixed rate,
 * - accelerated uploads of 1 MiB (two at a time) and 32 MiB (one at a time), stored and deleted.
 * Prints the RSS at the end of each minute and the peak, checks the peak against SOAK_MAX_MIB
 * (default 300) and the last minute against the second (within 10%), and writes JSON to
 * bench/results/. SOAK_WORKERS and SOAK_NODE_ARGS / SOAK_ENV_* vary the Outrider under test.
 */
const minutes = Number(process.env.SOAK_MINUTES ?? 5);
const maxMiB = Number(process.env.SOAK_MAX_MIB ?? 300);
const seconds = Math.round(minutes * 60);
const WIDTHS = [16, 24, 32, 48, 64, 96, 128, 160, 200, 256];
const here = fileURLToPath(new URL('.', import.meta.url));

const env: NodeJS.ProcessEnv = {};
for (const [k, v] of Object.entries(process.env)) if (k.startsWith('SOAK_ENV_')) env[k.slice('SOAK_ENV_'.length)] = v;

const origin = await startOrigin();
const name = 'soak';
const metricsPort = await freePort();
const edge = await startEdge(origin.port, {
  name,
  toml: `prometheus_listen_addr = "127.0.0.1:${metricsPort}"\nworkers = ${process.env.SOAK_WORKERS ?? 1}\n[image_resizer]\nmax_scaler_wait = "2s"\n`,
  nodeArgs: process.env.SOAK_NODE_ARGS,
  env,
});
const uploadDir = join(tmpdir(), `outrider-bench-${process.pid}-${name}-uploads`);
const stop = () => {
  edge.child.kill('SIGTERM');
  origin.child.kill('SIGTERM');
};
process.on('exit', stop);

const url = `http://127.0.0.1:${edge.port}`;
let n = 0;
const scaling = autocannon({
  url,
  connections: 6,
  duration: seconds,
  requests: [
    {
      method: 'GET',
      path: '/avatar.png?width=64&copy=0',
      // Every request another image or width, spread so that outputs repeat only now and then.
      setupRequest: (req) => {
        const i = n++;
        const ext = i % 2 === 0 ? 'png' : 'jpg';
        const copy = Math.floor(Math.random() * COPIES);
        return { ...req, path: `/avatar.${ext}?width=${WIDTHS[(i >> 1) % WIDTHS.length]}&copy=${copy}` };
      },
    },
  ],
});
const revalidations = autocannon({
  url: `${url}/avatar.png?width=64`,
  connections: 4,
  overallRate: 500,
  duration: seconds,
  headers: { 'if-modified-since': 'Fri, 01 Jan 2100 00:00:00 GMT' },
});
const proxied = autocannon({ url: `${url}/1k`, connections: 8, overallRate: 1000, duration: seconds });
const small = uploadBody(1024 * 1024);
const large = uploadBody(32 * 1024 * 1024);
const uploads = [
  autocannon({
    url: `${url}/uploads/small`,
    method: 'POST',
    connections: 2,
    duration: seconds,
    headers: { 'content-type': small.contentType },
    body: small.body,
  }),
  autocannon({
    url: `${url}/uploads/large`,
    method: 'POST',
    connections: 1,
    duration: seconds,
    timeout: 60,
    headers: { 'content-type': large.contentType },
    body: large.body,
  }),
];

const samples: { second: number; rss: number }[] = [];
const started = Date.now();
const sampler = setInterval(() => {
  const second = Math.round((Date.now() - started) / 1000);
  samples.push({ second, rss: memoryMiB(edge.child.pid).rss });
  if (second % 60 === 0) process.stderr.write(`minute ${second / 60}: RSS ${memoryMiB(edge.child.pid).rss.toFixed(0)} MiB\n`);
}, 1000);
const [scaled, revalidated, plain, ...uploaded] = await Promise.all([scaling, revalidations, proxied, ...uploads]);
clearInterval(sampler);
const peak = memoryMiB(edge.child.pid).peak;
// Where the memory is, by Outrider's own account (prom-client's process metrics).
const scrape = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
const gauge = (metric: string) => {
  const m = new RegExp(`^${metric}(?:\\{[^}]*\\})? ([0-9.e+]+)$`, 'm').exec(scrape);
  return m === null ? undefined : Math.round(Number(m[1]) / 1024 / 1024);
};
const breakdown = {
  'RSS MiB': gauge('process_resident_memory_bytes'),
  'V8 heap used MiB': gauge('nodejs_heap_size_used_bytes'),
  'V8 heap total MiB': gauge('nodejs_heap_size_total_bytes'),
  'external (Buffers) MiB': gauge('nodejs_external_memory_bytes'),
};
// Uploads cut off when the load stopped are cleaned up as their requests close.
await new Promise((r) => setTimeout(r, 2000));
let leftovers: number;
try {
  leftovers = readdirSync(uploadDir).length;
} catch {
  leftovers = 0;
}
stop();

const perMinute = Array.from({ length: Math.ceil(minutes) }, (_, m) => {
  const inMinute = samples.filter((s) => s.second > m * 60 && s.second <= (m + 1) * 60);
  return {
    minute: m + 1,
    'RSS at end MiB': Math.round(inMinute.at(-1)?.rss ?? 0),
    'max MiB': Math.round(Math.max(0, ...inMinute.map((s) => s.rss))),
  };
});
const load = [
  ['scaling (distinct images)', scaled],
  ['304 revalidations', revalidated],
  ['proxied 1 KiB', plain],
  ['uploads 1 MiB', uploaded[0]],
  ['uploads 32 MiB', uploaded[1]],
] as const;
console.log(`\nOutrider soak: ${minutes} min, workers = ${process.env.SOAK_WORKERS ?? 1} (node ${process.version})`);
console.table(
  load.map(([what, r]) => ({
    load: what,
    requests: r?.requests.total,
    'req/s': Math.round(r?.requests.average ?? 0),
    'p99 ms': r?.latency.p99,
    'errors+non2xx': (r?.errors ?? 0) + (r?.timeouts ?? 0) + (what === '304 revalidations' ? 0 : (r?.non2xx ?? 0)),
  })),
);
console.table(perMinute);
console.log('at the end:', breakdown);
const second = perMinute[1]?.['RSS at end MiB'];
const last = perMinute.at(-1)?.['RSS at end MiB'];
const drift = second !== undefined && last !== undefined && second > 0 ? (last - second) / second : undefined;
console.log(
  `peak RSS ${peak.toFixed(0)} MiB (limit ${maxMiB}); last minute vs second: ${drift === undefined ? 'n/a' : `${(drift * 100).toFixed(1)}%`} (limit ±10%)`,
);
console.log(`upload temp files left behind: ${leftovers}`);
const dir = join(here, '../../bench/results');
mkdirSync(dir, { recursive: true });
const file = join(dir, `soak-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
writeFileSync(file, JSON.stringify({ date: new Date().toISOString(), minutes, env, peak, breakdown, perMinute, samples }, null, 2));
console.log(`results written to ${file}`);
process.exitCode = peak < maxMiB && drift !== undefined && Math.abs(drift) <= 0.1 && leftovers === 0 ? 0 : 1;
