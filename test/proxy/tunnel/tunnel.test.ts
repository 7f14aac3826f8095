import { randomBytes } from 'node:crypto';
import { connect as tcpConnect } from 'node:net';
import { describe, expect, it } from 'vitest';
import { startProxy } from '../../helpers/app.js';
import { closed, connect, nextMessage, refusedWith, startWsBackend, until } from '../../helpers/ws.js';

// Real `ws` backends and clients through a real Outrider on 127.0.0.1:0.

const tunnelLines = (logs: Record<string, unknown>[]) => logs.filter((l) => l.subsystem === 'tunnel');

describe('WebSocket tunnels', () => {
  it('echoes text and binary messages both ways through Outrider', async () => {
    const backend = await startWsBackend();
    const proxy = await startProxy(backend.url);
    const ws = await connect(`${proxy.url}/cable`);
    ws.send('hello');
    expect((await nextMessage(ws)).toString()).toBe('hello');
    const binary = randomBytes(1000);
    ws.send(binary);
    expect(await nextMessage(ws)).toEqual(binary);
    // And the backend speaks first too.
    const [server] = [...backend.clients];
    server?.send('from the backend');
    expect((await nextMessage(ws)).toString()).toBe('from the backend');
  });

  it('carries messages of several MiB each way intact', async () => {
    const backend = await startWsBackend();
    const proxy = await startProxy(backend.url);
    const ws = await connect(`${proxy.url}/big`);
    const server = backend.clients.values().next().value;
    const up = randomBytes(8 * 1024 * 1024);
    // The backend stops echoing for this one: it answers with a different large message.
    server?.removeAllListeners('message');
    const received = new Promise<Buffer>((resolve) => server?.once('message', (d) => resolve(d as Buffer)));
    ws.send(up);
    expect((await received).equals(up)).toBe(true);
    const down = randomBytes(6 * 1024 * 1024);
    server?.send(down);
    expect((await nextMessage(ws)).equals(down)).toBe(true);
  });

  it('delivers 20000 messages sent at once, in order', async () => {
    const backend = await startWsBackend();
    const proxy = await startProxy(backend.url);
    const ws = await connect(`${proxy.url}/many`);
    const count = 20_000;
    const got: number[] = [];
    const all = new Promise<void>((resolve) =>
      ws.on('message', (d) => {
        got.push((d as Buffer).readUInt32BE(0));
        if (got.length === count) resolve();
      }),
    );
    const payload = Buffer.alloc(1024);
    for (let i = 0; i < count; i++) {
      const m = Buffer.from(payload);
      m.writeUInt32BE(i, 0);
      ws.send(m);
    }
    await all;
    expect(got).toEqual(Array.from({ length: count }, (_, i) => i));
  });

  it('holds the backend back while the client does not read, instead of buffering its output', async () => {
    const backend = await startWsBackend();
    const proxy = await startProxy(backend.url);
    const connected = backend.nextConnection();
    const ws = await connect(`${proxy.url}/firehose`);
    const server = await connected;
    ws.pause();
    const chunk = Buffer.alloc(1024 * 1024, 7);
    for (let i = 0; i < 48; i++) server.send(chunk);
    await new Promise((r) => setTimeout(r, 500));
    // What the kernel buffers on both hops is a few MiB; the rest waits in the backend's own buffer.
    expect(server.bufferedAmount).toBeGreaterThan(24 * 1024 * 1024);
    let got = 0;
    const all = new Promise<void>((resolve) =>
      ws.on('message', (d) => {
        got += (d as Buffer).length;
        if (got === 48 * chunk.length) resolve();
      }),
    );
    ws.resume();
    await all;
    expect(server.bufferedAmount).toBe(0);
  });

  it('gives the backend the Workhorse headers and request id of any request, and the WebSocket headers', async () => {
    const backend = await startWsBackend();
    const logs: Record<string, unknown>[] = [];
    const proxy = await startProxy(backend.url, { logs });
    const ws = await connect(
      `${proxy.url}/-/cable?x=1`,
      { 'X-Request-Id': 'spoofed', 'Gitlab-Workhorse': 'spoofed', Cookie: 'session=abc' },
      ['actioncable-v1-json'],
    );
    expect(ws.protocol).toBe('actioncable-v1-json');
    const req = backend.upgrades[0];
    expect(req?.url).toBe('/-/cable?x=1');
    expect(req?.headers.upgrade).toBe('websocket');
    expect(req?.headers.connection).toBe('Upgrade');
    expect(req?.headers['sec-websocket-version']).toBe('13');
    expect(req?.headers['sec-websocket-key']).toMatch(/^[A-Za-z0-9+/]{22}==$/);
    expect(req?.headers['sec-websocket-protocol']).toBe('actioncable-v1-json');
    expect(req?.headers.cookie).toBe('session=abc');
    expect(req?.headers.host).toBe(`127.0.0.1:${proxy.port}`);
    expect(req?.headers['gitlab-workhorse']).toMatch(/^0\./);
    expect(req?.headers['x-forwarded-for']).toBe('127.0.0.1');
    expect(req?.headers['x-sendfile-type']).toBe('X-Sendfile');
    expect(req?.headers['gitlab-workhorse-proxy-start']).toMatch(/^\d+$/);
    const requestId = req?.headers['x-request-id'];
    expect(requestId).toMatch(/^[0-9a-f-]{36}$/);
    ws.close();
    await until(() => tunnelLines(logs).length === 1, 5_000, 'the tunnel line');
    expect(tunnelLines(logs)[0]).toMatchObject({ requestId, path: '/-/cable?x=1', status: 101, upgrade: 'websocket' });
  });

  it('relays a refusal (403 with its body) as a plain answer and closes the connection', async () => {
    const backend = await startWsBackend({
      refuse: () => ({
        status: 403,
        reason: 'Forbidden',
        body: 'not your cable\n',
        headers: { 'x-why': 'no session', 'x-sendfile': '/etc/passwd' },
      }),
    });
    const logs: Record<string, unknown>[] = [];
    const proxy = await startProxy(backend.url, { logs });
    const answer = await refusedWith(`${proxy.url}/-/cable`);
    expect(answer.status).toBe(403);
    expect(answer.body).toBe('not your cable\n');
    expect(answer.headers['x-why']).toBe('no session');
    expect(answer.headers['x-sendfile']).toBeUndefined();
    expect(answer.headers.connection).toBe('close');
    await until(() => tunnelLines(logs).length === 1, 5_000, 'the tunnel line');
    expect(tunnelLines(logs)[0]).toMatchObject({ status: 403, reason: 'declined' });
  });

  it('relays a plain 200 from a backend that does not switch', async () => {
    const backend = await startWsBackend({ refuse: () => ({ status: 200, reason: 'OK', body: 'no websockets here' }) });
    const proxy = await startProxy(backend.url);
    const answer = await refusedWith(`${proxy.url}/`);
    expect(answer).toMatchObject({ status: 200, body: 'no websockets here' });
  });

  it('passes a close handshake the backend starts to the client, with its code', async () => {
    const backend = await startWsBackend();
    const logs: Record<string, unknown>[] = [];
    const proxy = await startProxy(backend.url, { logs });
    const ws = await connect(`${proxy.url}/bye`);
    backend.clients.values().next().value?.close(4001, 'done');
    expect(await closed(ws)).toBe(4001);
    // Whose TCP connection ended first names the reason: here the client's (ws ends its side
    // as soon as it has answered the close frame, before the server reads that answer).
    await until(() => tunnelLines(logs).length === 1, 5_000, 'the tunnel line');
    expect(tunnelLines(logs)[0]).toMatchObject({ status: 101 });
  });

  it('closes the client when the backend drops the connection', async () => {
    const backend = await startWsBackend();
    const logs: Record<string, unknown>[] = [];
    const proxy = await startProxy(backend.url, { logs });
    const ws = await connect(`${proxy.url}/bye`);
    backend.clients.values().next().value?.terminate();
    expect(await closed(ws)).toBe(1006);
    await until(() => tunnelLines(logs).length === 1, 5_000, 'the tunnel line');
    expect(tunnelLines(logs)[0]).toMatchObject({ status: 101, reason: 'backend' });
  });

  it('closes the backend when the client vanishes without a close frame', async () => {
    const backend = await startWsBackend();
    const logs: Record<string, unknown>[] = [];
    const proxy = await startProxy(backend.url, { logs });
    const connected = backend.nextConnection();
    const ws = await connect(`${proxy.url}/gone`);
    const server = await connected;
    ws.terminate();
    expect(await closed(server)).toBe(1006);
    await until(() => tunnelLines(logs).length === 1, 5_000, 'the tunnel line');
    expect(tunnelLines(logs)[0]).toMatchObject({ status: 101, reason: 'client' });
  });

  it('counts bytes each way in the tunnel line', async () => {
    const backend = await startWsBackend();
    const logs: Record<string, unknown>[] = [];
    const proxy = await startProxy(backend.url, { logs });
    const ws = await connect(`${proxy.url}/count`);
    ws.send(Buffer.alloc(100_000));
    await nextMessage(ws);
    ws.close();
    await until(() => tunnelLines(logs).length === 1, 5_000, 'the tunnel line');
    const line = tunnelLines(logs)[0] as { upstreamBytes: number; downstreamBytes: number; durationMs: number };
    // 100000 bytes of payload each way, plus framing (a masked frame up, an unmasked one down) and the close frames.
    expect(line.upstreamBytes).toBeGreaterThanOrEqual(100_000);
    expect(line.upstreamBytes).toBeLessThan(100_100);
    expect(line.downstreamBytes).toBeGreaterThanOrEqual(100_000);
    expect(line.downstreamBytes).toBeLessThan(100_100);
  });

  it('passes bytes the client sent right behind its request head, and a Content-Length body, to the backend', async () => {
    const backend = await startWsBackend({
      refuse: () => undefined,
      onConnection: () => undefined,
    });
    // A non-WebSocket protocol: the backend switches by hand and reads what follows.
    backend.server.removeAllListeners('upgrade');
    const seen: Buffer[] = [];
    let body = '';
    backend.server.on('upgrade', (req, socket, head) => {
      body = head.subarray(0, Number(req.headers['content-length'])).toString();
      socket.write('HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo/1\r\n\r\nready');
      seen.push(head.subarray(body.length));
      socket.on('data', (d: Buffer) => {
        seen.push(d);
        socket.write(d);
      });
    });
    const proxy = await startProxy(backend.url);
    const client = tcpConnect(proxy.port, '127.0.0.1');
    const received: Buffer[] = [];
    client.on('data', (d: Buffer) => received.push(d));
    client.write(`POST /raw HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo/1\r\nContent-Length: 4\r\n\r\nbodyearly-bytes`);
    await until(() => Buffer.concat(received).toString().includes('readyearly-bytes'), 5_000, 'the echo of the early bytes');
    const text = Buffer.concat(received).toString();
    expect(text).toMatch(/^HTTP\/1\.1 101 Switching Protocols\r\n/);
    expect(text).toContain('\r\nUpgrade: echo/1\r\n');
    expect(body).toBe('body');
    expect(Buffer.concat(seen).toString()).toBe('early-bytes');
    client.destroy();
  });
});
