import { type ChildProcess, spawn } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import autocannon from 'autocannon';
import { avatarFiles, COPIES } from './images.js';
import { cpuMs, median, type Proc, startEdge, startOrigin } from './procs.js';

/**
 * `npm run bench:formats`: cold scaling of the bench's 400 px PNG and JPEG avatars to 64 px as
 * AVIF, WebP and the source's own format, through Outrider (format chosen by Accept, cache off)
 * and through ipx (`w_64,f_avif`…, its explicit options; ipx keeps no result cache). Every request
 * names another copy of the file, so nothing is reused. FORMATS_DURATION seconds per run
 * (default 5), FORMATS_ROUNDS rounds (default 3), every other round in reverse order; prints
 * the bytes of one answer, scales/s and CPU ms per scale of each server (medians, min–max).
 */
const here = fileURLToPath(new URL('.', import.meta.url));
const duration = Number(process.env.FORMATS_DURATION ?? 5);
const rounds = Number(process.env.FORMATS_ROUNDS ?? 3);
const CONNECTIONS = 8;

type Source = 'png' | 'jpeg';
type Format = 'avif' | 'webp' | 'source';
interface Case {
  server: 'outrider' | 'ipx';
  source: Source;
  format: Format;
}
interface Sample {
  perSecond: number;
  bytes: number;
  cpuMsPerScale: number | undefined;
  errors: number;
}

const MEDIA: Record<Source | 'avif' | 'webp', string> = { png: 'image/png', jpeg: 'image/jpeg', avif: 'image/avif', webp: 'image/webp' };

async function startIpx(dir: string): Promise<Proc> {
  const child = spawn(process.execPath, [join(here, 'ipx-server.js'), dir], { stdio: ['ignore', 'pipe', 'inherit'] });
  const port = await new Promise<number>((resolve, reject) => {
    child.stdout?.once('data', (d: Buffer) => resolve(Number(d.toString().trim())));
    child.once('exit', (code) => reject(new Error(`ipx exited with ${code}`)));
  });
  return { child, port };
}

/** The request for copy `n` of a case: Outrider's avatar route with an Accept, or ipx's URL. */
function target(c: Case, n: number): { path: string; headers: Record<string, string> } {
  const ext = c.source === 'png' ? 'png' : 'jpg';
  if (c.server === 'outrider') {
    const accept = MEDIA[c.format === 'source' ? c.source : c.format];
    return { path: `/avatar.${ext}?width=64&copy=${n}`, headers: { accept } };
  }
  const format = c.format === 'source' ? c.source : c.format;
  return { path: `/w_64,f_${format}/copy-${n}.${ext}`, headers: {} };
}

async function run(c: Case, proc: Proc, seconds: number): Promise<Sample> {
  const first = target(c, 0);
  const res = await fetch(`http://127.0.0.1:${proc.port}${first.path}`, { headers: first.headers });
  const body = Buffer.from(await res.arrayBuffer());
  const expected = MEDIA[c.format === 'source' ? c.source : c.format];
  if (res.status !== 200 || res.headers.get('content-type') !== expected) {
    throw new Error(`${c.server} ${c.source}→${c.format}: ${res.status} ${res.headers.get('content-type')}, expected ${expected}`);
  }
  let copy = 1;
  const options = (s: number): autocannon.Options => ({
    url: `http://127.0.0.1:${proc.port}`,
    connections: CONNECTIONS,
    duration: s,
    timeout: 30,
    requests: [{ ...first, setupRequest: (req) => ({ ...req, ...target(c, copy++ % COPIES) }) }],
  });
  await autocannon(options(1));
  const before = cpuMs(proc.child.pid);
  const result = await autocannon(options(seconds));
  const after = cpuMs(proc.child.pid);
  const total = result.requests.total;
  return {
    perSecond: result.requests.average,
    bytes: body.length,
    cpuMsPerScale: before !== undefined && after !== undefined && total > 0 ? (after - before) / total : undefined,
    errors: result.errors + result.timeouts + result.non2xx,
  };
}

async function main(): Promise<void> {
  const files = await avatarFiles();
  const children: ChildProcess[] = [];
  process.on('exit', () => {
    for (const child of children) if (child.exitCode === null) child.kill('SIGTERM');
  });
  const origin = await startOrigin(process.env.BENCH_ORIGIN_CPUS);
  children.push(origin.child);
  // The cache off, so every request scales; requests wait for a slot rather than get the original.
  const edge = await startEdge(origin.port, {
    name: 'formats',
    toml: `[image_resizer]\nmax_scaler_wait = "10s"\ncache_max_bytes = 0\n${process.env.FORMATS_EDGE_TOML ?? ''}\n`,
  });
  children.push(edge.child);
  const ipx = await startIpx(dirname(files.png));
  children.push(ipx.child);

  const cases: Case[] = [];
  for (const source of ['png', 'jpeg'] as const) {
    for (const format of ['avif', 'webp', 'source'] as const) {
      for (const server of ['outrider', 'ipx'] as const) cases.push({ server, source, format });
    }
  }
  const name = (c: Case) => `${c.server} ${c.source}→${c.format}`;
  const samples = new Map<string, Sample[]>();
  for (let round = 1; round <= rounds; round++) {
    for (const c of round % 2 === 1 ? cases : [...cases].reverse()) {
      const sample = await run(c, c.server === 'outrider' ? edge : ipx, duration);
      samples.set(name(c), [...(samples.get(name(c)) ?? []), sample]);
      process.stdout.write(`round ${round} ${name(c)}: ${sample.perSecond.toFixed(0)}/s ${sample.bytes} B\n`);
    }
  }
  const spread = (xs: number[], digits = 0) =>
    `${median(xs).toFixed(digits)} (${Math.min(...xs).toFixed(digits)}–${Math.max(...xs).toFixed(digits)})`;
  process.stdout.write(
    '\n| 400 px → 64 px | Outrider bytes | ipx bytes | Outrider scales/s | ipx scales/s | ratio | Outrider CPU ms/scale | ipx CPU ms/scale |\n|---|---|---|---|---|---|---|---|\n',
  );
  for (const source of ['png', 'jpeg'] as const) {
    for (const format of ['avif', 'webp', 'source'] as const) {
      const o = samples.get(name({ server: 'outrider', source, format })) ?? [];
      const i = samples.get(name({ server: 'ipx', source, format })) ?? [];
      const ratio = median(o.map((s) => s.perSecond)) / median(i.map((s) => s.perSecond));
      const cpu = (xs: Sample[]) =>
        spread(
          xs.map((s) => s.cpuMsPerScale ?? Number.NaN),
          1,
        );
      const errors = [...o, ...i].reduce((n, s) => n + s.errors, 0);
      process.stdout.write(
        `| ${source} → ${format === 'source' ? source : format} | ${o[0]?.bytes} | ${i[0]?.bytes} | ${spread(o.map((s) => s.perSecond))} | ${spread(
          i.map((s) => s.perSecond),
        )} | ${ratio.toFixed(2)}× | ${cpu(o)} | ${cpu(i)} |${errors > 0 ? ` ${errors} errors` : ''}\n`,
      );
    }
  }
  process.stdout.write(`\n${CONNECTIONS} connections, ${duration} s per run, medians (min–max) of ${rounds} rounds\n`);
}

await main();
process.exit(0);
