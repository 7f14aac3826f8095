import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import autocannon from 'autocannon';
import { render } from '../scaler/scale.js';
import { avatarFiles, COPIES } from './images.js';
import { cpuMs, freePort, median, NGINX, type Proc, removeOnExit, spawnNginx, startEdge, startOrigin, uploadBody } from './procs.js';
import { type Scenario, scenarios } from './scenarios.js';

/**
 * `npm run bench`: spawns the origin backend and Outrider as separate processes, runs every
 * scenario with autocannon for BENCH_DURATION seconds, BENCH_ROUNDS times interleaved (so machine
 * noise hits all alike; every other round in reverse order), and prints medians and ratios measured
 * in the same round. JSON goes to bench/results/; the files and directories made for the processes
 * are removed on exit. BENCH_ONLY=name,name limits the scenarios.
 */
const here = fileURLToPath(new URL('.', import.meta.url));
const duration = Number(process.env.BENCH_DURATION ?? 10);
const rounds = Number(process.env.BENCH_ROUNDS ?? 3);
const only = process.env.BENCH_ONLY?.split(',');

interface Sample {
  requests: number;
  p50: number;
  p99: number;
  bodyBytes: number;
  errors: number;
  non2xx: number;
  proxyCpuMsPerKReq: number | undefined;
}

/** The bare node:http + undici forward: the floor for any Node proxy. */
async function startBare(originPort: number): Promise<Proc> {
  const port = await freePort();
  const child = spawn(process.execPath, [join(here, 'bare-proxy.js'), String(port), String(originPort)], { stdio: 'inherit' });
  await new Promise((r) => setTimeout(r, 500));
  return { child, port };
}

/**
 * nginx as a reverse proxy, the bar to reach: one worker (Outrider is one process too; `workers`
 * "auto" for `worker_processes auto`), upstream keep-alive, access log buffered to /dev/null.
 * Skipped when nginx is not installed.
 */
async function startNginx(originPort: number, workers: number | 'auto' = 1): Promise<Proc | undefined> {
  if (NGINX === undefined) return undefined;
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'outrider-bench-nginx-'));
  removeOnExit(dir);
  const imageFilter = ['/usr/lib/nginx/modules/ngx_http_image_filter_module.so'].find((p) => existsSync(p));
  const child = spawnNginx(
    dir,
    `  upstream origin { server 127.0.0.1:${originPort}; keepalive 64; }
  server {
    listen 127.0.0.1:${port};
    location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; }
    ${imageFilter === undefined ? '' : `location /nginx-scale/ { proxy_pass http://origin/static/; proxy_http_version 1.1; proxy_set_header Connection ""; image_filter resize 64 -; image_filter_buffer 2M; }`}
  }`,
    imageFilter === undefined ? '' : `load_module ${imageFilter};`,
    workers,
  );
  await new Promise((r) => setTimeout(r, 500));
  return { child, port };
}

type Procs = Record<Scenario['target'], { port: number; pid: number | undefined }>;

/** autocannon's options for a scenario: its method, headers, upload body and rotating path. */
function cannonOptions(s: Scenario, port: number, seconds: number): autocannon.Options {
  const upload = s.uploadBytes === undefined ? undefined : uploadBody(s.uploadBytes);
  const headers = { ...s.headers, ...(upload === undefined ? {} : { 'content-type': upload.contentType }) };
  let copy = 0;
  return {
    url: `http://127.0.0.1:${port}`,
    connections: s.connections,
    duration: seconds,
    // A 100 MiB upload takes a while on a busy loopback.
    timeout: 60,
    requests: [
      {
        method: s.method ?? 'GET',
        path: s.path.replace('{copy}', '0'),
        headers,
        ...(upload === undefined ? {} : { body: upload.body }),
        ...(s.path.includes('{copy}')
          ? { setupRequest: (req) => ({ ...req, path: s.path.replace('{copy}', String(copy++ % COPIES)) }) }
          : {}),
      },
    ],
  };
}

async function runOne(s: Scenario, procs: Procs): Promise<Sample> {
  const { port, pid } = procs[s.target];
  const upload = s.uploadBytes === undefined ? undefined : uploadBody(s.uploadBytes);
  const sampleRes = await fetch(`http://127.0.0.1:${port}${s.path.replace('{copy}', '0')}`, {
    method: s.method ?? 'GET',
    headers: { ...s.headers, ...(upload === undefined ? {} : { 'content-type': upload.contentType }) },
    body: upload?.body,
  });
  const bodyBytes = (await sampleRes.arrayBuffer()).byteLength;
  // A short unrecorded warm-up, so the JIT and connection pools are warm for every scenario alike.
  await autocannon(cannonOptions(s, port, 1));
  const before = cpuMs(pid);
  const result = await autocannon(cannonOptions(s, port, duration));
  const after = cpuMs(pid);
  const total = result.requests.total;
  return {
    requests: result.requests.average,
    p50: result.latency.p50,
    p99: result.latency.p99,
    bodyBytes,
    errors: result.errors + result.timeouts,
    // A scenario that expects another status (304) counts responses that are not it instead.
    non2xx: s.expectStatus === undefined ? result.non2xx : total - (result.statusCodeStats?.[`${s.expectStatus}`]?.count ?? 0),
    proxyCpuMsPerKReq:
      s.target !== 'direct' && before !== undefined && after !== undefined && total > 0 ? ((after - before) / total) * 1000 : undefined,
  };
}

/** sharp alone, in this process, on the bench's avatars with Outrider's own pipeline: the ceiling. */
async function rawSharp(seconds: number): Promise<{ format: 'png' | 'jpeg'; perSecond: number; bytes: number }[]> {
  const files = await avatarFiles();
  const out: { format: 'png' | 'jpeg'; perSecond: number; bytes: number }[] = [];
  for (const format of ['png', 'jpeg'] as const) {
    const input = readFileSync(format === 'png' ? files.png : files.jpg);
    let count = 0;
    let bytes = 0;
    const until = performance.now() + seconds * 1000;
    const worker = async () => {
      while (performance.now() < until) {
        bytes = (await render(input, format, 64, 25_000_000)).body.length;
        count++;
      }
    };
    const started = performance.now();
    await Promise.all([worker(), worker()]);
    out.push({ format, perSecond: count / ((performance.now() - started) / 1000), bytes });
  }
  return out;
}

async function main(): Promise<void> {
  const children: ChildProcess[] = [];
  const killAll = () => {
    for (const child of children) if (child.exitCode === null) child.kill(child.spawnfile.includes('nginx') ? 'SIGQUIT' : 'SIGTERM');
  };
  process.on('exit', killAll);
  const origin = await startOrigin(process.env.BENCH_ORIGIN_CPUS);
  children.push(origin.child);
  // Scaling requests wait for a slot (up to 10 s) instead of falling back to the original, so the
  // scale scenarios measure scaling itself; their 8 connections fit 2 running + 8 waiting. The
  // main instance scales every request (cache off: cold scaling); "warm" keeps the default cache.
  const scaler = (extra: string | undefined, cache: boolean) =>
    `${extra ?? ''}\n${extra?.includes('[image_resizer]') ? '' : `[image_resizer]\nmax_scaler_wait = "10s"\n${cache ? '' : 'cache_max_bytes = 0\n'}`}`;
  const start = (name: string, toml: string | undefined, nodeArgs: string | undefined, cache: boolean, node?: string) =>
    startEdge(origin.port, { name, toml: scaler(toml, cache), nodeArgs, node });
  const edge = await start('a', process.env.BENCH_EDGE_CONFIG, process.env.BENCH_EDGE_NODE_ARGS, false);
  children.push(edge.child);
  const warm = await start('warm', process.env.BENCH_EDGE_CONFIG, process.env.BENCH_EDGE_NODE_ARGS, true);
  children.push(warm.child);
  // A second Outrider to compare with in the same rounds: another config, Node flags or Node binary
  // (BENCH_B_NODE, e.g. Node 24 from the npm node package). It keeps the default cache, so warm-b-png-64
  // measures its cache hits; proxy-b-1k never touches the cache.
  const wantB =
    process.env.BENCH_B_CONFIG !== undefined || process.env.BENCH_B_NODE_ARGS !== undefined || process.env.BENCH_B_NODE !== undefined;
  const edgeB = wantB
    ? await start('b', process.env.BENCH_B_CONFIG, process.env.BENCH_B_NODE_ARGS, true, process.env.BENCH_B_NODE)
    : undefined;
  if (edgeB !== undefined) children.push(edgeB.child);
  const bare = await startBare(origin.port);
  children.push(bare.child);
  const nginx = await startNginx(origin.port);
  if (nginx !== undefined) children.push(nginx.child);
  // One process per CPU on both sides, started only when a scenario of theirs is named.
  const named = (target: Scenario['target']) => scenarios.some((s) => s.target === target && only?.includes(s.name) === true);
  const edgeAuto = named('edge-auto')
    ? await start('auto', `workers = "auto"\n${process.env.BENCH_EDGE_CONFIG ?? ''}`, process.env.BENCH_EDGE_NODE_ARGS, false)
    : undefined;
  if (edgeAuto !== undefined) children.push(edgeAuto.child);
  const nginxAuto = named('nginx-auto') ? await startNginx(origin.port, 'auto') : undefined;
  if (nginxAuto !== undefined) children.push(nginxAuto.child);
  const available = (s: Scenario) =>
    (s.target !== 'nginx' || nginx !== undefined) &&
    (s.target !== 'edge-b' || edgeB !== undefined) &&
    (s.target !== 'edge-auto' || edgeAuto !== undefined) &&
    (s.target !== 'nginx-auto' || nginxAuto !== undefined);
  const selected = scenarios.filter((s) => (only === undefined ? s.optIn !== true : only.includes(s.name)) && available(s));
  const procs: Procs = {
    direct: { port: origin.port, pid: origin.child.pid },
    edge: { port: edge.port, pid: edge.child.pid },
    'edge-warm': { port: warm.port, pid: warm.child.pid },
    'edge-b': { port: edgeB?.port ?? 0, pid: edgeB?.child.pid },
    bare: { port: bare.port, pid: bare.child.pid },
    nginx: { port: nginx?.port ?? 0, pid: nginx?.child.pid },
    'edge-auto': { port: edgeAuto?.port ?? 0, pid: edgeAuto?.child.pid },
    'nginx-auto': { port: nginxAuto?.port ?? 0, pid: nginxAuto?.child.pid },
  };
  const samples = new Map<string, Sample[]>();
  const ratios = new Map<string, number[]>();
  try {
    for (let round = 1; round <= rounds; round++) {
      // Every other round runs the scenarios in reverse order, so that a machine growing busier or
      // quieter during a round does not favour the scenarios that come first (ABBA counterbalancing).
      const order = round % 2 === 1 ? selected : [...selected].reverse();
      const thisRound = new Map<string, Sample>();
      for (const s of order) {
        const sample = await runOne(s, procs);
        thisRound.set(s.name, sample);
        samples.set(s.name, [...(samples.get(s.name) ?? []), sample]);
        process.stderr.write(`round ${round}/${rounds} ${s.name}: ${Math.round(sample.requests)} req/s, p99 ${sample.p99} ms\n`);
      }
      for (const s of selected) {
        const sample = thisRound.get(s.name);
        const base = s.baseline === undefined ? undefined : thisRound.get(s.baseline);
        if (sample !== undefined && base !== undefined && base.requests > 0) {
          ratios.set(s.name, [...(ratios.get(s.name) ?? []), sample.requests / base.requests]);
        }
      }
    }
  } finally {
    killAll();
  }

  const rows = selected.map((s) => {
    const xs = samples.get(s.name) ?? [];
    const cpu = xs.map((x) => x.proxyCpuMsPerKReq).filter((x): x is number => x !== undefined);
    const r = ratios.get(s.name);
    return {
      scenario: s.name,
      'req/s': Math.round(median(xs.map((x) => x.requests))),
      'p50 ms': median(xs.map((x) => x.p50)),
      'p99 ms': median(xs.map((x) => x.p99)),
      'body bytes': median(xs.map((x) => x.bodyBytes)),
      'upload MiB/s': s.uploadBytes === undefined ? '' : Math.round((median(xs.map((x) => x.requests)) * s.uploadBytes) / 1024 / 1024),
      ratio: r === undefined ? '' : `${median(r).toFixed(2)}x ${s.baseline}`,
      'proxy req/CPU-s': cpu.length > 0 ? Math.round(1_000_000 / median(cpu)) : '',
      'errors+non2xx': xs.reduce((n, x) => n + x.errors + x.non2xx, 0),
    };
  });
  console.log(`\nOutrider bench: ${rounds} rounds x ${duration}s per scenario, medians (node ${process.version})`);
  console.table(rows);
  const raw = await rawSharp(duration);
  console.log('\nRaw in-process sharp, the same 400 px images to 64 px with the same settings, 2 jobs at once:');
  console.table(
    raw.map((r) => {
      const through = rows.find((row) => row.scenario === `scale-${r.format}-64`);
      return {
        scenario: `raw-sharp-${r.format}-64`,
        'images/s': Math.round(r.perSecond),
        'body bytes': r.bytes,
        'through Outrider': through === undefined ? '' : `${(through['req/s'] / r.perSecond).toFixed(2)}x raw`,
      };
    }),
  );
  const dir = join(here, '../../bench/results');
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  writeFileSync(
    file,
    JSON.stringify({ date: new Date().toISOString(), duration, rounds, rows, samples: Object.fromEntries(samples) }, null, 2),
  );
  console.log(`results written to ${file}`);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
