import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { Client, request } from 'undici';
import { describe, expect, it, onTestFinished } from 'vitest';
import { startBackend } from '../../helpers/backend.js';
import { CLI, configFile, type Line, type Running, startCli } from '../../helpers/cli.js';

// `npm test` builds first (pretest): these tests run the real `outrider` binary.
const CRASH_FIXTURE = fileURLToPath(new URL('../../fixtures/throw-on-sigusr2.mjs', import.meta.url));

const workerPids = (edge: Running) => edge.logs.filter((l) => l.msg === 'worker ready').map((l) => l.workerPid as number);
const requestPids = (edge: Running) => new Set(edge.logs.filter((l) => l.msg === 'request').map((l) => l.pid as number));

/** The value of one unlabelled or labelled sample in Prometheus text. */
function sample(text: string, series: string): number {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? Number.NaN : Number(line.slice(series.length + 1));
}

describe('workers > 1 (node:cluster)', () => {
  it('runs N worker processes sharing one listener, announced once, with metrics summed over them', async () => {
    const backend = await startBackend((req, res) => res.end(`backend saw ${req.url}`));
    const edge = await startCli(
      `listen_addr = "127.0.0.1:0"\nauth_backend = "${backend.url}"\nworkers = 2\nprometheus_listen_addr = "127.0.0.1:0"\n`,
    );
    expect(edge.ready).toMatchObject({ workers: 2, backend: backend.url, pid: edge.child.pid });
    expect(edge.logs.filter((l) => l.msg === 'outrider ready')).toHaveLength(1);
    const pids = workerPids(edge);
    expect(new Set(pids).size).toBe(2);
    expect(pids).not.toContain(edge.child.pid);

    for (let i = 0; i < 8; i++) {
      const res = await request(`http://${edge.listen}/n/${i}`, { headers: { connection: 'close' } });
      expect(await res.body.text()).toBe(`backend saw /n/${i}`);
    }
    // Access-log lines carry the worker's pid: round-robin gave both of them requests.
    await edge.waitFor(() => edge.logs.filter((l) => l.msg === 'request').length === 8, '8 access-log lines');
    expect(requestPids(edge)).toEqual(new Set(pids));

    // The primary serves /metrics: the sum of both workers' registries.
    const metrics = await (await request(`http://${edge.ready.metrics as string}/metrics`)).body.text();
    expect(sample(metrics, 'outrider_http_requests_total{code="200",method="GET",route="*"}')).toBe(8);
    expect(sample(metrics, 'outrider_http_in_flight_requests')).toBe(0);
    const maxProcs = sample(metrics, 'outrider_image_resize_max_processes');
    expect(maxProcs % 2).toBe(0);
    expect(maxProcs).toBeGreaterThanOrEqual(4);
  });

  it('replaces a worker killed with SIGKILL: its in-flight requests fail at once, the other keeps serving', async () => {
    const held: (() => void)[] = [];
    const backend = await startBackend((req, res) => {
      if (req.url === '/hold') held.push(() => res.end('released'));
      else res.end('quick');
    });
    const edge = await startCli(
      `listen_addr = "127.0.0.1:0"\nauth_backend = "${backend.url}"\nworkers = 2\nprometheus_listen_addr = "127.0.0.1:0"\n`,
    );
    const metricsUrl = `http://${edge.ready.metrics as string}/metrics`;
    for (let i = 0; i < 4; i++) await (await request(`http://${edge.listen}/warm`, { headers: { connection: 'close' } })).body.text();
    await edge.waitFor(() => edge.logs.filter((l) => l.msg === 'request').length === 4, '4 access-log lines');
    const before = sample(await (await request(metricsUrl)).body.text(), 'outrider_http_requests_total{code="200",method="GET",route="*"}');
    expect(before).toBe(4);

    // Four requests on four connections: round-robin puts two on each worker.
    const clients = Array.from({ length: 4 }, () => new Client(`http://${edge.listen}`));
    onTestFinished(async () => {
      await Promise.all(clients.map((c) => c.destroy()));
    });
    const inFlight = clients.map((c) =>
      c.request({ path: '/hold', method: 'GET' }).then(
        async (r) => ({ ok: true, body: await r.body.text(), at: Date.now() }),
        () => ({ ok: false, body: '', at: Date.now() }),
      ),
    );
    while (held.length < 4) await sleep(20);
    const [victim, survivor] = workerPids(edge) as [number, number];
    const killedAt = Date.now();
    process.kill(victim, 'SIGKILL');
    const exited = await edge.waitFor((l) => l.msg === 'worker exited unexpectedly: starting a new one', 'the worker exit');
    expect(exited).toMatchObject({ workerPid: victim, signal: 'SIGKILL', code: null, level: 50 });
    // The killed worker's clients see their connection closed, long before the backend answers.
    await sleep(300);
    for (const release of held) release();
    const results = await Promise.all(inFlight);
    const failed = results.filter((r) => !r.ok);
    expect(failed.length).toBeGreaterThanOrEqual(1);
    expect(failed.length).toBeLessThan(4);
    for (const r of failed) expect(r.at - killedAt).toBeLessThan(300);
    for (const r of results.filter((x) => x.ok)) expect(r.body).toBe('released');

    const replacement = await edge.waitFor(
      (l) => l.msg === 'worker ready' && l.workerPid !== victim && l.workerPid !== survivor,
      'a new worker ready',
    );
    const fresh = replacement.workerPid as number;
    for (let i = 0; i < 6; i++) {
      const res = await request(`http://${edge.listen}/after`, { headers: { connection: 'close' } });
      expect(res.statusCode).toBe(200);
      expect(await res.body.text()).toBe('quick');
    }
    await edge.waitFor((l) => l.msg === 'request' && l.pid === fresh, 'a request served by the new worker');
    // The dead worker's counts stay in the sum: the counter never goes down.
    await edge.waitFor(() => edge.logs.filter((l) => l.msg === 'request' && l.path === '/after').length === 6, '6 access-log lines');
    const after = sample(await (await request(metricsUrl)).body.text(), 'outrider_http_requests_total{code="200",method="GET",route="*"}');
    expect(after).toBeGreaterThanOrEqual(before + 6);
  });

  it('replaces a worker that hit an uncaught exception, which finishes its in-flight requests first: none is lost', async () => {
    const held: (() => void)[] = [];
    const backend = await startBackend((req, res) => {
      if (req.url === '/hold') held.push(() => res.end('released'));
      else res.end('quick');
    });
    const edge = await startCli(`listen_addr = "127.0.0.1:0"\nauth_backend = "${backend.url}"\nworkers = 2\n`, [], {
      ...process.env,
      NODE_OPTIONS: `--import ${CRASH_FIXTURE}`,
    });
    // Four requests on four connections: round-robin puts two on each worker.
    const clients = Array.from({ length: 4 }, () => new Client(`http://${edge.listen}`));
    onTestFinished(async () => {
      await Promise.all(clients.map((c) => c.destroy()));
    });
    const inFlight = clients.map((c) =>
      c.request({ path: '/hold', method: 'GET' }).then(
        async (r) => ({ status: r.statusCode, body: await r.body.text() }),
        (err: Error) => ({ status: 0, body: err.message }),
      ),
    );
    while (held.length < 4) await sleep(20);
    const [victim] = workerPids(edge) as [number, number];
    process.kill(victim, 'SIGUSR2');
    const fatal = await edge.waitFor((l) => l.level === 60 && l.pid === victim, 'the fatal line');
    expect(fatal).toMatchObject({
      msg: 'uncaught exception: finishing the requests in flight, then exiting',
      err: { message: 'forced uncaught exception' },
    });
    await edge.waitFor((l) => l.msg === 'worker failed: starting a new one while it finishes its requests', 'the replacement');
    const replacement = await edge.waitFor(
      (l) =>
        l.msg === 'worker ready' &&
        !workerPids(edge)
          .slice(0, 2)
          .includes(l.workerPid as number),
      'a new worker',
    );
    // New connections are served meanwhile, by the survivor and the replacement.
    for (let i = 0; i < 4; i++) {
      const res = await request(`http://${edge.listen}/quick`, { headers: { connection: 'close' } });
      expect(res.statusCode).toBe(200);
      await res.body.dump();
    }
    // The failed worker's requests were kept: every held request is answered.
    for (const release of held) release();
    expect(await Promise.all(inFlight)).toEqual(Array.from({ length: 4 }, () => ({ status: 200, body: 'released' })));
    const stopped = await edge.waitFor((l) => l.msg === 'failed worker stopped', 'the failed worker exit');
    expect(stopped).toMatchObject({ workerPid: victim, code: 1 });
    // The failed worker itself answered some of them: it finished its own requests before it left.
    expect(edge.logs.filter((l) => l.msg === 'request' && l.path === '/hold' && l.pid === victim).length).toBeGreaterThanOrEqual(1);
    expect(replacement.workerPid).not.toBe(victim);
    edge.child.kill('SIGTERM');
    expect(await edge.exited).toBe(0);
  });

  it('shares a unix socket: the primary replaces a stale socket file once, and it is gone after shutdown', async () => {
    const backend = await startBackend((req, res) => res.end(`backend saw ${req.url}`));
    const socket = join(mkdtempSync(join(tmpdir(), 'outrider-cluster-')), 'edge.sock');
    writeFileSync(socket, 'stale');
    const edge = await startCli(`listen_addr = "unix:${socket}"\nauth_backend = "${backend.url}"\nworkers = 2\n`);
    expect(edge.listen).toBe(`unix:${socket}`);
    for (let i = 0; i < 4; i++) {
      const client = new Client('http://outrider.local', { socketPath: socket, pipelining: 0 });
      const res = await client.request({ path: `/u/${i}`, method: 'GET' });
      expect(await res.body.text()).toBe(`backend saw /u/${i}`);
      await client.close();
    }
    await edge.waitFor(() => edge.logs.filter((l) => l.msg === 'request').length === 4, '4 access-log lines');
    expect(requestPids(edge)).toEqual(new Set(workerPids(edge)));
    edge.child.kill('SIGTERM');
    expect(await edge.exited).toBe(0);
    expect(existsSync(socket)).toBe(false);
  });

  it('on SIGTERM every worker finishes its in-flight requests, new connections are refused, and the primary exits 0', async () => {
    const backend = await startBackend((req, res) => {
      if (req.url === '/slow') setTimeout(() => res.end('finished'), 700);
      else res.end('quick');
    });
    // --workers overrides the file's workers.
    const edge = await startCli(`listen_addr = "127.0.0.1:0"\nauth_backend = "${backend.url}"\nworkers = 1\n`, ['--workers', '2']);
    expect(edge.ready.workers).toBe(2);
    const url = `http://${edge.listen}`;
    const clients = [new Client(url), new Client(url)];
    onTestFinished(async () => {
      await Promise.all(clients.map((c) => c.destroy()));
    });
    const inFlight = clients.map((c) =>
      c.request({ path: '/slow', method: 'GET' }).then(async (r) => ({ status: r.statusCode, body: await r.body.text() })),
    );
    await sleep(200);
    const stopAt = Date.now();
    edge.child.kill('SIGTERM');
    await edge.waitFor((l) => l.msg === 'shutting down: draining every worker', 'the primary shutting down');
    await sleep(150);
    await expect(fetch(`${url}/new`, { headers: { connection: 'close' } })).rejects.toThrow();
    expect(await Promise.all(inFlight)).toEqual([
      { status: 200, body: 'finished' },
      { status: 200, body: 'finished' },
    ]);
    expect(await edge.exited).toBe(0);
    expect(Date.now() - stopAt).toBeLessThan(5000);
    const pids = workerPids(edge);
    for (const pid of pids) expect(edge.logs.some((l) => l.msg === 'stopped' && l.pid === pid)).toBe(true);
    expect(edge.logs.filter((l) => l.msg === 'worker stopped').map((l) => l.code)).toEqual([0, 0]);
    expect(edge.logs.at(-1)).toMatchObject({ msg: 'stopped', pid: edge.child.pid });
  });

  it('refuses a bad config with exit code 2 before forking, and stops with 1 when workers cannot listen', async () => {
    const bad = spawnSync(process.execPath, [CLI, '--config', configFile('workers = 2\n[image_resizer]\nmax_scaler_procs = 0\n')], {
      encoding: 'utf8',
      timeout: 10_000,
    });
    expect(bad.status).toBe(2);
    expect(bad.stderr).toContain('image_resizer.max_scaler_procs: expected a number of concurrent scaling jobs of at least 1');
    expect(bad.stdout).toBe('');
    const flag = spawnSync(process.execPath, [CLI, '--workers', '0'], { encoding: 'utf8', timeout: 10_000 });
    expect(flag.status).toBe(2);
    expect(flag.stderr).toBe(
      'outrider: command line: invalid config\n' +
        '  - --workers (workers): expected a number of worker processes from 1 to 64, or "auto" (one per CPU), got 0\n',
    );

    const taken = await startBackend((_req, res) => res.end());
    const busy = spawnSync(process.execPath, [CLI, '--config', configFile(`listen_addr = "127.0.0.1:${taken.port}"\nworkers = 2\n`)], {
      encoding: 'utf8',
      timeout: 10_000,
    });
    expect(busy.status).toBe(1);
    const lines = busy.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Line);
    expect(lines.some((l) => l.level === 60 && l.code === 'EADDRINUSE')).toBe(true);
    expect(lines.some((l) => l.msg === 'worker exited before Outrider was ready: stopping')).toBe(true);
  });
});
