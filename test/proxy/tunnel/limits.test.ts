import { mkdtempSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it, onTestFinished } from 'vitest';
import { startProxy } from '../../helpers/app.js';
import { closed, connect, nextMessage, refusedWith, startWsBackend, until } from '../../helpers/ws.js';

const tunnelLines = (logs: Record<string, unknown>[]) => logs.filter((l) => l.subsystem === 'tunnel');

/** A TCP listener that accepts connections and never answers. */
async function silentBackend(): Promise<string> {
  const sockets = new Set<import('node:net').Socket>();
  const server: Server = createServer((s) => {
    sockets.add(s);
    s.resume();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  onTestFinished(
    () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  );
  const address = server.address() as import('node:net').AddressInfo;
  return `http://127.0.0.1:${address.port}`;
}

/** A port nothing listens on. */
async function closedPort(): Promise<string> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as import('node:net').AddressInfo;
  await new Promise<void>((r) => server.close(() => r()));
  return `http://127.0.0.1:${port}`;
}

describe('tunnel limits and failures', () => {
  it('closes a tunnel that carried no byte either way for idle_timeout, and keeps a busy one open', async () => {
    const backend = await startWsBackend();
    const logs: Record<string, unknown>[] = [];
    const proxy = await startProxy(backend.url, { logs, toml: '[websocket]\nidle_timeout = "300ms"\n' });
    const idle = await connect(`${proxy.url}/idle`);
    const busy = await connect(`${proxy.url}/busy`);
    const started = Date.now();
    const ticker = setInterval(() => busy.send('tick'), 50);
    onTestFinished(() => clearInterval(ticker));
    expect(await closed(idle)).toBe(1006);
    expect(Date.now() - started).toBeGreaterThanOrEqual(250);
    await new Promise((r) => setTimeout(r, 400));
    expect(busy.readyState).toBe(busy.OPEN);
    expect((await nextMessage(busy)).toString()).toBe('tick');
    await until(() => tunnelLines(logs).length === 1, 5_000, 'the idle tunnel line');
    expect(tunnelLines(logs)[0]).toMatchObject({ path: '/idle', status: 101, reason: 'idle' });
  });

  it('refuses tunnels beyond max_tunnels with 503 before the backend sees them, and takes one again once one closes', async () => {
    const backend = await startWsBackend();
    const logs: Record<string, unknown>[] = [];
    const proxy = await startProxy(backend.url, { logs, toml: '[websocket]\nmax_tunnels = 2\n' });
    const a = await connect(`${proxy.url}/a`);
    await connect(`${proxy.url}/b`);
    const answer = await refusedWith(`${proxy.url}/c`);
    expect(answer.status).toBe(503);
    expect(answer.body).toBe('Service Unavailable: too many open connections\n');
    expect(backend.upgrades.map((r) => r.url)).toEqual(['/a', '/b']);
    await until(() => tunnelLines(logs).some((l) => l.path === '/c'), 5_000, 'the refusal line');
    expect(tunnelLines(logs).find((l) => l.path === '/c')).toMatchObject({ status: 503, reason: 'refused' });
    a.close();
    await until(() => tunnelLines(logs).some((l) => l.path === '/a'), 5_000, 'the first tunnel to close');
    await connect(`${proxy.url}/d`);
    expect(backend.upgrades.map((r) => r.url)).toEqual(['/a', '/b', '/d']);
  });

  it('answers 502 when the backend cannot be reached', async () => {
    const logs: Record<string, unknown>[] = [];
    const proxy = await startProxy(await closedPort(), { logs });
    const answer = await refusedWith(`${proxy.url}/-/cable`);
    expect(answer.status).toBe(502);
    expect(answer.body).toBe('Bad Gateway: the backend is not responding\n');
    await until(() => tunnelLines(logs).length === 1, 5_000, 'the tunnel line');
    expect(tunnelLines(logs)[0]).toMatchObject({ status: 502, reason: 'failed', error: 'ECONNREFUSED' });
  });

  it('answers 504 when the backend does not answer within proxy_headers_timeout', async () => {
    const logs: Record<string, unknown>[] = [];
    const proxy = await startProxy(await silentBackend(), { logs, toml: 'proxy_headers_timeout = "200ms"\n' });
    const started = Date.now();
    const answer = await refusedWith(`${proxy.url}/-/cable`);
    expect(answer.status).toBe(504);
    expect(Date.now() - started).toBeGreaterThanOrEqual(180);
    expect(answer.body).toBe('Gateway Timeout: the backend did not answer in time\n');
  });

  it('answers 502 when the backend switches to a protocol the client did not ask for', async () => {
    const backend = await startWsBackend();
    backend.server.removeAllListeners('upgrade');
    backend.server.on('upgrade', (_req, socket) => {
      socket.end('HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n');
    });
    const proxy = await startProxy(backend.url);
    expect((await refusedWith(`${proxy.url}/x`)).status).toBe(502);
  });

  it('refuses an upgrade request with a chunked body (400): its end cannot be found without decoding it', async () => {
    const backend = await startWsBackend();
    const proxy = await startProxy(backend.url);
    const answer = await refusedWith(`${proxy.url}/x`, { 'Transfer-Encoding': 'chunked' }).catch((err: Error) => err);
    // ws sends no body: the header alone makes the request one with a chunked body.
    expect(answer).toMatchObject({ status: 400, body: 'Bad Request: an upgrade request cannot have a chunked body\n' });
    expect(backend.upgrades).toEqual([]);
  });

  it('reaches a backend on a unix socket (auth_socket)', async () => {
    const path = join(mkdtempSync(join(tmpdir(), 'outrider-ws-')), 'app.sock');
    const backend = await startWsBackend({ socketPath: path });
    const proxy = await startProxy(backend.url, { toml: `auth_socket = "${path}"\n` });
    const ws = await connect(`${proxy.url}/over-unix`);
    ws.send('via unix');
    expect((await nextMessage(ws)).toString()).toBe('via unix');
    expect(backend.upgrades[0]?.url).toBe('/over-unix');
  });

  it('reaches a backend at an IPv6 address', async () => {
    const backend = await startWsBackend({ host: '::1' });
    const proxy = await startProxy(backend.url);
    const ws = await connect(`ws://127.0.0.1:${proxy.port}/cable`);
    const reply = nextMessage(ws);
    ws.send('over ipv6');
    expect((await reply).toString()).toBe('over ipv6');
    ws.close();
  });
});
