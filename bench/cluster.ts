import type { ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import autocannon from 'autocannon';
import sharp from 'sharp';
import { Pool } from 'undici';
import { COPIES } from './images.js';
import {
  cpuMs,
  freePort,
  median,
  type Proc,
  type RedisProc,
  removeOnExit,
  spawnNginx,
  startEdge,
  startOrigin,
  startRedis,
} from './procs.js';

/**
 * `npm run bench:cluster`: three Outrider processes behind nginx (round robin, upstream keep-alive),
 * one redis-server, the bench origin. Measures what the shared scaled-image tier
 * (`[image_resizer.shared_cache]`) does for a cluster:
 *
 * 1. a cold sweep (AVATARS distinct avatars, each asked REPEAT times at once through the balancer)
 *    without and with the shared tier: how many sharp jobs each node ran (the `scaled` outcome of
 *    its log lines), against the target of one per avatar across the cluster;
 * 2. warm requests/s through the balancer, served from the shared tier (`cache_max_bytes = 0`: every
 *    hit is a Redis read), from the local tier (the default cache) and by the three nodes without
 *    the shared tier, in rotated rounds;
 * 3. Redis killed in the middle of a warm run: no request may fail, and the rate must stay that of
 *    the nodes without the tier (alternating rounds); then a cold sweep with Redis gone (each node
 *    scales for itself, nothing waits).
 *
 * BENCH_DURATION (8 s) and BENCH_ROUNDS (3) size the warm runs; CLUSTER_AVATARS (200, at most
 * COPIES) and CLUSTER_REPEAT (3) the sweeps; CLUSTER_SHARED_CACHE adds lines to the nodes'
 * `[image_resizer.shared_cache]` (`timeout = "200ms"`). Every process it starts is stopped, and every file it
 * makes removed, when it ends, Ctrl-C included.
 */
const started = performance.now();
const here = fileURLToPath(new URL('.', import.meta.url));
const duration = Number(process.env.BENCH_DURATION ?? 8);
const rounds = Number(process.env.BENCH_ROUNDS ?? 3);
const avatars = Math.min(Number(process.env.CLUSTER_AVATARS ?? 200), COPIES);
const repeat = Number(process.env.CLUSTER_REPEAT ?? 3);
const NODES = 3;
const SWEEP_CONNECTIONS = 30;
const WARM_CONNECTIONS = 50;
/** The sweep's width, and the one of the sweep made after Redis is gone (new for every node's cache). */
const WIDTH = 64;
const WIDTH_AFTER = 48;

const dir = mkdtempSync(join(tmpdir(), 'outrider-bench-cluster-'));
removeOnExit(dir);
const children: ChildProcess[] = [];
process.on('exit', () => {
  // nginx's master stops its workers on SIGTERM; killed outright, it would leave them running.
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) child.kill(child.spawnfile.includes('nginx') ? 'SIGTERM' : 'SIGKILL');
  }
});
// However it goes, a run is bounded: a wedged process must not keep it (or its children) alive.
setTimeout(() => {
  console.error('bench:cluster: still running after 10 minutes, stopping');
  process.exit(1);
}, 600_000).unref();

const log = (msg: string) => process.stderr.write(`[${((performance.now() - started) / 1000).toFixed(0).padStart(3)} s] ${msg}\n`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Member {
  name: string;
  proc: Proc;
  /** Its stdout: JSON log lines, one access line and one scaler line per avatar request. */
  logFile: string;
  metricsPort: number;
}

interface Cluster {
  label: string;
  members: Member[];
  balancer: Proc;
}

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(timer);
}

/**
 * nginx as the load balancer: round robin over the members (its default), upstream keep-alive,
 * passive health checks (`max_fails`/`fail_timeout`), one worker, access log buffered to /dev/null.
 */
async function startBalancer(label: string, ports: number[]): Promise<Proc> {
  const port = await freePort();
  const home = join(dir, `nginx-${label}`);
  mkdirSync(home);
  const child = spawnNginx(
    home,
    `  upstream outrider {
${ports.map((p) => `    server 127.0.0.1:${p} max_fails=3 fail_timeout=10s;`).join('\n')}
    keepalive 64;
  }
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://outrider;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }
  }`,
  );
  children.push(child);
  for (let i = 0; i < 100 && child.exitCode === null; i++) {
    try {
      const res = await fetch(`http://127.0.0.1:${port}/`);
      await res.arrayBuffer();
      if (res.ok) return { child, port };
    } catch {
      // not listening yet
    }
    await sleep(50);
  }
  throw new Error(`nginx did not start: see ${home}/nginx.conf`);
}

/** Three Outriders in front of the origin (each with its metrics listener and its log in a file), behind nginx. */
async function startCluster(label: string, originPort: number, opts: { redis?: RedisProc; cacheMaxBytes?: number }): Promise<Cluster> {
  const members: Member[] = [];
  for (let i = 1; i <= NODES; i++) {
    const metricsPort = await freePort();
    const logFile = join(dir, `${label}-${i}.log`);
    const toml = [
      `prometheus_listen_addr = "127.0.0.1:${metricsPort}"`,
      '[image_resizer]',
      // A cold sweep queues for the slots rather than getting originals: every answer is scaled.
      'max_scaler_wait = "10s"',
      opts.cacheMaxBytes === undefined ? '' : `cache_max_bytes = ${opts.cacheMaxBytes}`,
      opts.redis === undefined ? '' : `[image_resizer.shared_cache]\nurl = "${opts.redis.url}"\n${process.env.CLUSTER_SHARED_CACHE ?? ''}`,
    ].join('\n');
    const proc = await startEdge(originPort, { name: `cluster-${label}-${i}`, toml, stdout: logFile });
    children.push(proc.child);
    members.push({ name: `${label}-${i}`, proc, logFile, metricsPort });
  }
  if (opts.redis !== undefined) {
    for (const m of members) {
      for (let waited = 0; !readFileSync(m.logFile, 'utf8').includes('"shared cache available"'); waited += 20) {
        if (waited > 5000) throw new Error(`${m.name} did not connect to Redis: see ${m.logFile}`);
        await sleep(20);
      }
    }
  }
  const balancer = await startBalancer(
    label,
    members.map((m) => m.proc.port),
  );
  return { label, members, balancer };
}

async function stopCluster(c: Cluster): Promise<void> {
  await stop(c.balancer.child);
  await Promise.all(c.members.map((m) => stop(m.proc.child)));
}

interface LogCount {
  /** Scaler outcomes (`scaled`, `coalesced`, `cache-hit`, `shared-hit`, `served-original`…). */
  outcomes: Record<string, number>;
  scalerLines: number;
  /** Access lines by status, other than 200 (499: a client that left, as autocannon's do when a run ends). */
  statuses: Record<string, number>;
  /** Warnings and errors by message (and reason), such as `shared cache unavailable`. */
  warnings: Record<string, number>;
  /** Lines at `error` or `fatal`, and access lines with a 5xx status. */
  errors: number;
}

/** What a member logged since its log was last truncated. */
function readLog(m: Member): LogCount {
  const count: LogCount = { outcomes: {}, scalerLines: 0, statuses: {}, warnings: {}, errors: 0 };
  const add = (to: Record<string, number>, key: string) => {
    to[key] = (to[key] ?? 0) + 1;
  };
  for (const line of readFileSync(m.logFile, 'utf8').split('\n')) {
    if (line === '') continue;
    const level = Number(/^\{"level":(\d+)/.exec(line)?.[1] ?? 0);
    if (line.includes('"subsystem":"scaler"')) {
      const parsed = JSON.parse(line) as { outcome?: unknown; reason?: unknown };
      add(count.outcomes, `${String(parsed.outcome)}${parsed.reason === undefined ? '' : ` (${String(parsed.reason)})`}`);
      count.scalerLines++;
    } else if (line.includes('"msg":"request"')) {
      const status = /"status":(\d+)/.exec(line)?.[1] ?? '?';
      if (status !== '200') add(count.statuses, status);
      if (status.startsWith('5')) count.errors++;
    }
    if (level >= 40) {
      const parsed = JSON.parse(line) as { msg?: unknown; reason?: unknown; err?: { message?: unknown } };
      const why = parsed.reason ?? parsed.err?.message;
      add(count.warnings, `${String(parsed.msg)}${why === undefined ? '' : ` (${String(why)})`}`);
      if (level >= 50) count.errors++;
    }
  }
  return count;
}

const sum = (xs: Record<string, number>[]) => {
  const out: Record<string, number> = {};
  for (const x of xs) for (const [k, v] of Object.entries(x)) out[k] = (out[k] ?? 0) + v;
  return out;
};

/** Every member's log once `expected` scaler lines are in (lines are flushed within a few ms), then empties the logs. */
async function collectLogs(c: Cluster, expected: number): Promise<LogCount[]> {
  await sleep(50);
  let counts = c.members.map(readLog);
  for (let waited = 0; counts.reduce((n, x) => n + x.scalerLines, 0) < expected && waited < 3000; waited += 50) {
    await sleep(50);
    counts = c.members.map(readLog);
  }
  for (const m of c.members) truncateSync(m.logFile, 0);
  return counts;
}

/** The shared-tier counters of a member's /metrics: `requests:hit`, `lease_waits:filled`…, and `available`. */
async function sharedCounters(m: Member): Promise<Record<string, number>> {
  const text = await (await fetch(`http://127.0.0.1:${m.metricsPort}/metrics`)).text();
  const out: Record<string, number> = {};
  for (const [, family, result, value] of text.matchAll(
    /^outrider_image_shared_cache_(requests|lease_waits)_total\{result="(\w+)"\} (\S+)$/gm,
  )) {
    out[`${family}:${result}`] = Number(value);
  }
  const available = /^outrider_image_shared_cache_available (\S+)$/m.exec(text)?.[1];
  if (available !== undefined) out.available = Number(available);
  return out;
}

/** The longest event-loop delay of each member since its last scrape (prom-client resets it on every scrape), in ms. */
async function loopLagMaxMs(c: Cluster): Promise<number[]> {
  return Promise.all(
    c.members.map(async (m) => {
      const text = await (await fetch(`http://127.0.0.1:${m.metricsPort}/metrics`)).text();
      return Number(/^nodejs_eventloop_lag_max_seconds (\S+)$/m.exec(text)?.[1] ?? Number.NaN) * 1000;
    }),
  );
}

async function clusterCounters(c: Cluster): Promise<Record<string, number>> {
  return sum(await Promise.all(c.members.map(sharedCounters)));
}

const minus = (a: Record<string, number>, b: Record<string, number>) =>
  Object.fromEntries(Object.entries(a).map(([k, v]) => [k, v - (b[k] ?? 0)]));

interface SweepResult {
  label: string;
  scaledPerNode: number[];
  outcomes: Record<string, number>;
  statuses: Record<string, number>;
  warnings: Record<string, number>;
  /** Error lines and 5xx answers logged by the nodes. */
  errors: number;
  seconds: number;
  /** Answers that were not a 200 with an image of the width asked for, or no answer. */
  failed: number;
  shared: Record<string, number> | undefined;
}

/**
 * A cold sweep through the balancer: `avatars` copies, each asked `repeat` times in a row, taken
 * by SWEEP_CONNECTIONS clients from one queue, so a copy's requests go out together and round
 * robin spreads them over the nodes, which race for it.
 */
async function sweep(c: Cluster, width: number, shared: boolean): Promise<SweepResult> {
  const before = shared ? await clusterCounters(c) : undefined;
  const pool = new Pool(`http://127.0.0.1:${c.balancer.port}`, { connections: SWEEP_CONNECTIONS });
  const queue = Array.from({ length: avatars * repeat }, (_, i) => Math.floor(i / repeat));
  let next = 0;
  let failed = 0;
  const t0 = performance.now();
  const client = async () => {
    while (next < queue.length) {
      const copy = queue[next++];
      try {
        const res = await pool.request({ method: 'GET', path: `/avatar.png?width=${width}&copy=${copy}` });
        const body = Buffer.from(await res.body.arrayBuffer());
        const meta = res.statusCode === 200 ? await sharp(body).metadata() : undefined;
        if (meta?.width !== width) failed++;
      } catch {
        failed++;
      }
    }
  };
  await Promise.all(Array.from({ length: SWEEP_CONNECTIONS }, client));
  const seconds = (performance.now() - t0) / 1000;
  await pool.close();
  const counts = await collectLogs(c, queue.length);
  return {
    label: c.label,
    scaledPerNode: counts.map((x) => x.outcomes.scaled ?? 0),
    outcomes: sum(counts.map((x) => x.outcomes)),
    statuses: sum(counts.map((x) => x.statuses)),
    warnings: sum(counts.map((x) => x.warnings)),
    errors: counts.reduce((a, x) => a + x.errors, 0),
    seconds,
    failed,
    shared: before === undefined ? undefined : minus(await clusterCounters(c), before),
  };
}

interface WarmSample {
  requestsPerSecond: number;
  p50: number;
  p99: number;
  total: number;
  /** Connection errors, timeouts and non-2xx answers seen by the client. */
  failed: number;
  /** Error lines and 5xx answers logged by the nodes. */
  errors: number;
  outcomes: Record<string, number>;
  statuses: Record<string, number>;
  warnings: Record<string, number>;
  outriderCpuMsPerKReq: number;
  redisCpuMsPerKReq: number | undefined;
  nginxCpuMsPerKReq: number;
  /** The longest event-loop delay of any node during the run (a Redis reply waits behind it). */
  loopLagMaxMs: number;
}

/**
 * Warm requests through the balancer: autocannon rotating over the swept avatars for `seconds`,
 * after one unrecorded second. `during` runs as the measured part starts (it may kill Redis).
 */
async function warm(c: Cluster, redis: RedisProc | undefined, seconds: number, during?: () => void): Promise<WarmSample> {
  let copy = 0;
  const options = (s: number): autocannon.Options => ({
    url: `http://127.0.0.1:${c.balancer.port}`,
    connections: WARM_CONNECTIONS,
    duration: s,
    requests: [
      {
        method: 'GET',
        path: `/avatar.png?width=${WIDTH}&copy=0`,
        setupRequest: (req) => ({ ...req, path: `/avatar.png?width=${WIDTH}&copy=${copy++ % avatars}` }),
      },
    ],
  });
  await autocannon(options(1));
  // What the warm-up second logged is not counted, but its warnings are kept (a breaker that opened then).
  const warmup = sum((await collectLogs(c, 0)).map((x) => x.warnings));
  const pids = c.members.map((m) => m.proc.child.pid);
  const cpu = () => ({
    outrider: pids.reduce<number>((sum, pid) => sum + (cpuMs(pid) ?? 0), 0),
    redis: redis !== undefined && redis.child.exitCode === null && redis.child.signalCode === null ? cpuMs(redis.child.pid) : undefined,
    nginx: cpuMs(c.balancer.child.pid) ?? 0,
  });
  await loopLagMaxMs(c);
  const before = cpu();
  during?.();
  const result = await autocannon(options(seconds));
  const after = cpu();
  const lag = await loopLagMaxMs(c);
  const total = result.requests.total;
  const counts = await collectLogs(c, total);
  const perK = (a: number, b: number) => ((a - b) / Math.max(total, 1)) * 1000;
  return {
    requestsPerSecond: result.requests.average,
    p50: result.latency.p50,
    p99: result.latency.p99,
    total,
    failed: result.errors + result.timeouts + result.non2xx,
    errors: counts.reduce((a, x) => a + x.errors, 0),
    outcomes: sum(counts.map((x) => x.outcomes)),
    statuses: sum(counts.map((x) => x.statuses)),
    warnings: sum([
      ...counts.map((x) => x.warnings),
      Object.fromEntries(Object.entries(warmup).map(([k, v]) => [`${k}, in the unrecorded warm-up second`, v])),
    ]),
    outriderCpuMsPerKReq: perK(after.outrider, before.outrider),
    redisCpuMsPerKReq: after.redis === undefined || before.redis === undefined ? undefined : perK(after.redis, before.redis),
    nginxCpuMsPerKReq: perK(after.nginx, before.nginx),
    loopLagMaxMs: Math.max(...lag),
  };
}

/** Non-200 statuses and warnings the nodes logged during a phase: printed now, and listed under the tables. */
const notes: string[] = [];
function note(what: string, x: { statuses: Record<string, number>; warnings: Record<string, number> }): void {
  const parts = [
    ...Object.entries(x.statuses).map(([k, v]) => `${v} × status ${k}`),
    ...Object.entries(x.warnings).map(([k, v]) => `${v} × "${k}"`),
  ];
  if (parts.length === 0) return;
  notes.push(`- ${what}: ${parts.join('; ')}`);
  log(`  logged: ${parts.join('; ')}`);
}

const n = (x: number) => Math.round(x).toLocaleString('en-US').replace(/,/g, ' ');
const table = (head: string[], rows: (string | number)[][]) =>
  [`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`, ...rows.map((r) => `| ${r.join(' | ')} |`)].join('\n');
/** `outcome count` pairs, largest first. */
const outcomeList = (o: Record<string, number>) =>
  Object.entries(o)
    .filter(([, v]) => v > 0)
    .sort((a, b) => b[1] - a[1])
    .map(([k, v]) => `${k} ${n(v)}`)
    .join(', ');

function sweepRow(what: string, s: SweepResult): (string | number)[] {
  const scaled = s.scaledPerNode.reduce((a, b) => a + b, 0);
  const waits =
    s.shared === undefined ? '' : ['filled', 'gone', 'timeout'].map((r) => `${r} ${s.shared?.[`lease_waits:${r}`] ?? 0}`).join(', ');
  return [
    what,
    ...s.scaledPerNode,
    `**${scaled}** (${(scaled / avatars).toFixed(2)} per avatar)`,
    outcomeList(Object.fromEntries(Object.entries(s.outcomes).filter(([k]) => k !== 'scaled'))),
    waits,
    s.seconds.toFixed(1),
    s.failed + s.errors,
  ];
}

/** `xs` against `base` run in the same rounds: the median of the per-round ratios of req/s. */
function ratio(xs: WarmSample[], base: WarmSample[] | undefined): string {
  if (base === undefined || base.length !== xs.length) return '–';
  return `${median(xs.map((x, i) => x.requestsPerSecond / (base[i] as WarmSample).requestsPerSecond)).toFixed(2)}×`;
}

function warmRow(what: string, xs: WarmSample[], base?: WarmSample[]): (string | number)[] {
  const rps = xs.map((x) => x.requestsPerSecond);
  const redis = xs.map((x) => x.redisCpuMsPerKReq).filter((x): x is number => x !== undefined);
  return [
    what,
    `**${n(median(rps))}**${xs.length > 1 ? ` (${n(Math.min(...rps))}–${n(Math.max(...rps))})` : ''}`,
    ratio(xs, base),
    `${median(xs.map((x) => x.p50))} / ${median(xs.map((x) => x.p99))}`,
    median(xs.map((x) => x.outriderCpuMsPerKReq)).toFixed(0),
    redis.length === 0 ? '–' : median(redis).toFixed(0),
    median(xs.map((x) => x.nginxCpuMsPerKReq)).toFixed(0),
    Math.max(...xs.map((x) => x.loopLagMaxMs)).toFixed(0),
    outcomeList(sum(xs.map((x) => x.outcomes))),
    xs.reduce((a, x) => a + x.failed + x.errors, 0),
  ];
}

/**
 * `rounds` rounds of warm runs, one per entry of `runs` in each, in rotated order (ABC, BCA, CAB…)
 * so a machine growing busier or quieter favours none. Samples by name, in round order.
 */
async function alternate(runs: Record<string, () => Promise<WarmSample>>, label: string): Promise<Record<string, WarmSample[]>> {
  const names = Object.keys(runs);
  const out: Record<string, WarmSample[]> = Object.fromEntries(names.map((k) => [k, []]));
  for (let round = 0; round < rounds; round++) {
    for (let i = 0; i < names.length; i++) {
      const name = names[(round + i) % names.length] as string;
      const s = await (runs[name] as () => Promise<WarmSample>)();
      out[name]?.push(s);
      log(
        `${label} round ${round + 1}/${rounds}, ${name}: ${n(s.requestsPerSecond)} req/s, p99 ${s.p99} ms, failed ${s.failed + s.errors}`,
      );
      note(`${label} round ${round + 1}, ${name}`, s);
    }
  }
  return out;
}

async function main(): Promise<void> {
  const origin = await startOrigin(process.env.BENCH_ORIGIN_CPUS);
  children.push(origin.child);
  const redis = await startRedis();
  children.push(redis.child);
  log(`origin on ${origin.port}, redis-server on ${redis.port}; ${avatars} avatars × ${repeat}, ${NODES} nodes`);

  // 1. Without the shared tier: each node scales what reaches it. This cluster stays up as the
  //    baseline of the warm runs.
  const alone = await startCluster('no-tier', origin.port, {});
  const sweepAlone = await sweep(alone, WIDTH, false);
  log(`cold sweep without the shared tier: ${sweepAlone.scaledPerNode.join(' + ')} scaled in ${sweepAlone.seconds.toFixed(1)} s`);
  note('cold sweep without the shared tier', sweepAlone);

  // 2. With it: the same sweep on three fresh nodes and an empty Redis.
  const shared = await startCluster('shared', origin.port, { redis });
  const remote = await startCluster('shared-no-local', origin.port, { redis, cacheMaxBytes: 0 });
  const sweepShared = await sweep(shared, WIDTH, true);
  log(`cold sweep with the shared tier: ${sweepShared.scaledPerNode.join(' + ')} scaled in ${sweepShared.seconds.toFixed(1)} s`);
  note('cold sweep with the shared tier', sweepShared);

  // 3. Warm: the Redis tier alone, the local tier, and the cluster without the shared tier.
  const up = await alternate(
    {
      'redis tier': () => warm(remote, redis, duration),
      'local tier': () => warm(shared, redis, duration),
      'no shared tier': () => warm(alone, undefined, duration),
    },
    'warm',
  );
  await stopCluster(remote);

  // 4. Redis dies two seconds into a warm run; then warm runs against the cluster without the
  //    tier, and a cold sweep without Redis.
  const killed = await warm(shared, redis, duration, () => {
    setTimeout(() => void redis.kill().then(() => log('redis-server killed (SIGKILL)')), 2000);
  });
  log(`warm, Redis killed mid-run: ${n(killed.requestsPerSecond)} req/s, failed ${killed.failed + killed.errors}`);
  note('warm, Redis killed mid-run', killed);
  const down = await alternate(
    { 'local tier, Redis down': () => warm(shared, redis, duration), 'no shared tier': () => warm(alone, undefined, duration) },
    'Redis down',
  );
  const counters = await Promise.all(shared.members.map(sharedCounters));
  const sweepDown = await sweep(shared, WIDTH_AFTER, true);
  log(`cold sweep with Redis down: ${sweepDown.scaledPerNode.join(' + ')} scaled in ${sweepDown.seconds.toFixed(1)} s`);
  note('cold sweep with Redis down', sweepDown);
  await Promise.all([stopCluster(shared), stopCluster(alone)]);
  await stop(origin.child);

  const sweepHead = [
    `cold sweep: ${avatars} avatars × ${repeat} requests, ${SWEEP_CONNECTIONS} connections`,
    ...shared.members.map((_, i) => `scaled on node ${i + 1}`),
    'scaled in total',
    'other outcomes',
    'lease waits',
    'seconds',
    'failed',
  ];
  const warmHead = [
    `warm via nginx: ${WARM_CONNECTIONS} connections, ${duration} s runs`,
    'req/s median (min–max)',
    'vs no shared tier, same rounds',
    'p50 / p99 ms',
    'Outrider CPU ms per 1k req (3 nodes)',
    'Redis CPU ms per 1k req',
    'nginx CPU ms per 1k req',
    'longest event-loop delay, ms',
    'outcomes (all runs)',
    'failed',
  ];
  const report = [
    `Outrider cluster bench: ${NODES} nodes behind nginx (round robin), one redis-server, ${availableParallelism()} CPUs, node ${process.version}, ${new Date().toISOString()}`,
    '',
    table(sweepHead, [
      sweepRow('without the shared tier', sweepAlone),
      sweepRow('with the shared tier (empty Redis)', sweepShared),
      sweepRow(`with the shared tier, Redis killed (width ${WIDTH_AFTER}: new to every node)`, sweepDown),
    ]),
    '',
    table(warmHead, [
      warmRow(
        `shared tier only: \`cache_max_bytes = 0\`, every hit a Redis read (${rounds} rounds)`,
        up['redis tier'] ?? [],
        up['no shared tier'],
      ),
      warmRow(`local tier: default cache, Redis up (${rounds} rounds)`, up['local tier'] ?? [], up['no shared tier']),
      warmRow(`no shared tier: default cache (${rounds} rounds, rotated with the two above)`, up['no shared tier'] ?? []),
      warmRow('local tier, redis-server killed 2 s into the run', [killed]),
      warmRow(`local tier, Redis down (${rounds} rounds)`, down['local tier, Redis down'] ?? [], down['no shared tier']),
      warmRow(`no shared tier (${rounds} rounds, alternating with the row above)`, down['no shared tier'] ?? []),
    ]),
    '',
    `After the kill: \`outrider_image_shared_cache_available\` = ${counters.map((c) => c.available ?? '?').join(', ')} on the three nodes; shared-tier lookups skipped (no call made) in the sweep without Redis: ${n(sweepDown.shared?.['requests:skipped'] ?? 0)}, failed: ${n(sweepDown.shared?.['requests:error'] ?? 0)}.`,
    ...(notes.length === 0
      ? []
      : ['', 'Logged by the nodes (status 499: a client that left, as autocannon cuts its requests in flight when a run ends):', ...notes]),
    `Total wall time: ${((performance.now() - started) / 1000).toFixed(0)} s.`,
  ].join('\n');
  console.log(`\n${report}`);

  const results = join(here, '../../bench/results');
  mkdirSync(results, { recursive: true });
  const file = join(results, `cluster-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  writeFileSync(
    file,
    JSON.stringify(
      { date: new Date().toISOString(), duration, rounds, avatars, repeat, sweepAlone, sweepShared, sweepDown, up, killed, down },
      null,
      2,
    ),
  );
  console.log(`results written to ${file}`);
}

main()
  .then(() => process.exit(0))
  .catch((err: unknown) => {
    console.error(err);
    process.exit(1);
  });
