import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { request } from 'undici';
import { describe, expect, it, onTestFinished } from 'vitest';
import type { Interceptor } from '../../../proxy/intercept/types.js';
import { startProxy } from '../../helpers/app.js';
import { startBackend } from '../../helpers/backend.js';

const CLI = fileURLToPath(new URL('../../../dist/proxy/cli.js', import.meta.url));
const CRASH_FIXTURE = fileURLToPath(new URL('../../fixtures/throw-on-sigusr2.mjs', import.meta.url));

/** A backend whose `/boom` answers carry a header the faulty interceptors below react to. */
async function backend() {
  return startBackend((req, res) => {
    res.writeHead(200, req.url === '/boom' ? { 'x-boom': '1' } : {}).end('fine');
  });
}

async function expectStillServing(url: string) {
  const res = await request(`${url}/ok`);
  expect(res.statusCode).toBe(200);
  expect(await res.body.text()).toBe('fine');
}

describe('an error thrown from a request callback', () => {
  it('from an interceptor that throws before its first await: 500, logged with the request id, the process serves on', async () => {
    const thrower: Interceptor = {
      name: 'thrower',
      match: (head) => head.headers.includes('x-boom'),
      serve() {
        throw new Error('interceptor defect');
      },
    };
    const logs: Record<string, unknown>[] = [];
    const proxy = await startProxy((await backend()).url, { interceptors: [thrower], logs });
    const res = await request(`${proxy.url}/boom`);
    expect(res.statusCode).toBe(500);
    expect(await res.body.text()).toBe('Internal Server Error\n');
    await expectStillServing(proxy.url);
    const access = logs.find((l) => l.msg === 'request' && l.path === '/boom');
    const fault = logs.find((l) => l.msg === 'interceptor failed');
    expect(fault).toMatchObject({ level: 50, requestId: access?.requestId, err: { message: 'interceptor defect' } });
  });

  it('from the header match itself: 500, logged with the request id, the process serves on', async () => {
    const badMatch: Interceptor = {
      name: 'bad-match',
      match(head) {
        if (head.headers.includes('x-boom')) throw new Error('match defect');
        return false;
      },
      async serve() {},
    };
    const logs: Record<string, unknown>[] = [];
    const proxy = await startProxy((await backend()).url, { interceptors: [badMatch], logs });
    const res = await request(`${proxy.url}/boom`);
    expect(res.statusCode).toBe(500);
    await res.body.dump();
    await expectStillServing(proxy.url);
    const access = logs.find((l) => l.msg === 'request' && l.path === '/boom');
    expect(logs.find((l) => l.msg === 'request callback threw: this request is ended')).toMatchObject({
      level: 50,
      requestId: access?.requestId,
      where: 'interceptor match',
      err: { message: 'match defect' },
    });
  });
});

describe('an uncaught exception in a single process (workers = 1)', () => {
  it('is logged, the request in flight is finished, and the process exits 1 for its supervisor to restart', async () => {
    const held: (() => void)[] = [];
    const origin = await startBackend((req, res) => {
      if (req.url === '/hold') held.push(() => res.end('released'));
      else res.end('quick');
    });
    const file = join(mkdtempSync(join(tmpdir(), 'outrider-guard-')), 'outrider.toml');
    writeFileSync(file, `listen_addr = "127.0.0.1:0"\nauth_backend = "${origin.url}"\n`);
    const child = spawn(process.execPath, [CLI, '--config', file], {
      stdio: ['ignore', 'pipe', 'inherit'],
      env: { ...process.env, NODE_OPTIONS: `--import ${CRASH_FIXTURE}` },
    });
    onTestFinished(() => {
      if (child.exitCode === null) child.kill('SIGKILL');
    });
    const lines: Record<string, unknown>[] = [];
    let buffer = '';
    child.stdout.on('data', (d: Buffer) => {
      buffer += d.toString();
      for (let nl = buffer.indexOf('\n'); nl >= 0; nl = buffer.indexOf('\n')) {
        lines.push(JSON.parse(buffer.slice(0, nl)) as Record<string, unknown>);
        buffer = buffer.slice(nl + 1);
      }
    });
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    while (!lines.some((l) => l.msg === 'outrider ready')) await sleep(20);
    const listen = lines.find((l) => l.msg === 'outrider ready')?.listen as string;
    const inFlight = request(`http://${listen}/hold`).then(async (r) => ({ status: r.statusCode, body: await r.body.text() }));
    while (held.length < 1) await sleep(20);
    child.kill('SIGUSR2');
    while (!lines.some((l) => l.level === 60)) await sleep(20);
    for (const release of held) release();
    expect(await inFlight).toEqual({ status: 200, body: 'released' });
    expect(await exited).toBe(1);
    expect(lines.find((l) => l.level === 60)).toMatchObject({ err: { message: 'forced uncaught exception' } });
  });
});
