import { writeFileSync } from 'node:fs';
import type { IncomingMessage } from 'node:http';
import { constants } from 'node:http2';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import sharp from 'sharp';
import { Agent, request } from 'undici';
import { describe, expect, it, onTestFinished } from 'vitest';
import { sendScaledImage } from '../../../backend/index.js';
import { startProxy } from '../../helpers/app.js';
import { readBody, startBackend } from '../../helpers/backend.js';
import { H2WebSocket, h2Connect, h2Request } from '../../helpers/h2.js';
import { photo } from '../../helpers/images.js';
import { certificate, pem, tlsDir, tlsToml } from '../../helpers/tls.js';
import { startWsBackend, until } from '../../helpers/ws.js';
import { localAnswer, newDir, type Received, routesToml, uploadBackend } from '../upload/setup.js';

const pair = certificate('edge-h2');
const ca = pem(pair.cert);

/** The protocol ALPN settles on for a TLS connection offering `protocols`. */
function negotiated(port: number, protocols: string[]): Promise<string | false> {
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({ host: '127.0.0.1', port, ca, ALPNProtocols: protocols }, () => {
      resolve(socket.alpnProtocol ?? false);
      socket.destroy();
    });
    socket.once('error', reject);
  });
}

/** Outrider with `[tls]` (HTTP/2 on by default) in front of `backendUrl`. */
async function edge(backendUrl: string, toml = '', logs?: Record<string, unknown>[]) {
  const proxy = await startProxy(backendUrl, { toml: `${toml}\n${tlsToml(pair)}`, logs });
  return { ...proxy, session: await h2Connect(proxy.port, ca) };
}

describe('HTTP/2 on the TLS listener', () => {
  it('offers h2 and http/1.1 by ALPN, and http/1.1 only with http2 = false', async () => {
    const backend = await startBackend((_req, res) => res.writeHead(200).end('ok'));
    const on = await startProxy(backend.url, { toml: tlsToml(pair) });
    expect(await negotiated(on.port, ['h2', 'http/1.1'])).toBe('h2');
    const session = await h2Connect(on.port, ca);
    expect(session.remoteSettings.maxConcurrentStreams).toBe(250);
    expect(await negotiated(on.port, ['http/1.1'])).toBe('http/1.1');
    const off = await startProxy(backend.url, { toml: tlsToml(pair, 'http2 = false\n') });
    expect(await negotiated(off.port, ['h2', 'http/1.1'])).toBe('http/1.1');
    // HTTP/1.1 over TLS on the HTTP/2 listener is the same proxy.
    const dispatcher = new Agent({ connect: { ca } });
    onTestFinished(() => dispatcher.close());
    const res = await request(`https://127.0.0.1:${on.port}/x`, { dispatcher });
    expect(res.statusCode).toBe(200);
    expect(await res.body.text()).toBe('ok');
  });

  it('forwards a stream as an HTTP/1.1 request: Host from :authority, cookies joined, Workhorse headers, no pseudo-headers', async () => {
    let seen: IncomingMessage | undefined;
    const backend = await startBackend((req, res) => {
      seen = req;
      res.writeHead(200, [
        'content-type',
        'text/plain',
        'set-cookie',
        'a=1; Path=/',
        'set-cookie',
        'b=2; Path=/',
        'connection',
        'keep-alive',
        'keep-alive',
        'timeout=5',
      ]);
      res.write('first ');
      setTimeout(() => res.end('second'), 50);
    });
    const { session } = await edge(backend.url);
    const answer = await h2Request(session, {
      ':path': '/stream?q=1',
      ':authority': 'app.example:8443',
      cookie: ['one=1', 'two=2'],
      'x-request-id': 'forged',
    });
    expect(answer.status).toBe(200);
    expect(answer.body.toString()).toBe('first second');
    expect(answer.headers['set-cookie']).toEqual(['a=1; Path=/', 'b=2; Path=/']);
    expect(answer.headers.connection).toBeUndefined();
    const req = seen as IncomingMessage;
    expect(req.url).toBe('/stream?q=1');
    expect(req.httpVersion).toBe('1.1');
    expect(req.headers.host).toBe('app.example:8443');
    expect(req.headers.cookie).toBe('one=1; two=2');
    expect(req.rawHeaders.filter((h) => h.startsWith(':'))).toEqual([]);
    expect(req.headers['gitlab-workhorse']).toBeDefined();
    expect(req.headers['x-forwarded-for']).toBe('127.0.0.1');
    expect(req.headers['x-request-id']).not.toBe('forged');
  });

  it('streams request bodies with and without Content-Length to the backend whole', async () => {
    const backend = await startBackend(async (req, res) => {
      const body = await readBody(req);
      res
        .writeHead(200, { 'content-type': 'application/json' })
        .end(
          JSON.stringify({ length: body.length, te: req.headers['transfer-encoding'] ?? null, cl: req.headers['content-length'] ?? null }),
        );
    });
    const { session } = await edge(backend.url);
    const big = Buffer.alloc(3 * 1024 * 1024, 7);
    // No Content-Length: HTTP/2 ends the body with the stream; the backend gets it chunked.
    const chunked = await h2Request(session, { ':method': 'POST', ':path': '/upload' }, (stream) => {
      stream.write(big.subarray(0, 1024 * 1024));
      setTimeout(() => stream.end(big.subarray(1024 * 1024)), 30);
    });
    expect(JSON.parse(chunked.body.toString())).toEqual({ length: big.length, te: 'chunked', cl: null });
    const sized = await h2Request(session, { ':method': 'PUT', ':path': '/upload', 'content-length': String(big.length) }, big);
    expect(JSON.parse(sized.body.toString())).toEqual({ length: big.length, te: null, cl: String(big.length) });
    const empty = await h2Request(session, { ':method': 'POST', ':path': '/upload' });
    // No body at all (END_STREAM with the headers) is not taken for one of unknown length.
    expect(JSON.parse(empty.body.toString())).toMatchObject({ length: 0, te: null });
  });

  it('serves instructions over HTTP/2: X-Sendfile, scaled images with their 304, and Outrider routes', async () => {
    const file = join(tlsDir, 'h2-file.txt');
    writeFileSync(file, 'from disk\n');
    const image = join(tlsDir, 'h2-avatar.png');
    writeFileSync(image, await photo(200, 200, 'png'));
    const backend = await startBackend((req, res) => {
      if (req.url === '/file') return void res.writeHead(200, { 'x-sendfile': file }).end();
      const { name, value } = sendScaledImage({ location: image, width: 32, contentType: 'image/png' });
      res.writeHead(200, { [name]: value }).end();
    });
    const { session } = await edge(backend.url);
    const sent = await h2Request(session, { ':path': '/file' });
    expect(sent.status).toBe(200);
    expect(sent.body.toString()).toBe('from disk\n');
    const scaled = await h2Request(session, { ':path': '/avatar', accept: 'image/webp,*/*' });
    expect(scaled.status).toBe(200);
    expect(scaled.headers['content-type']).toBe('image/webp');
    expect((await sharp(scaled.body).metadata()).width).toBe(32);
    const revalidated = await h2Request(session, {
      ':path': '/avatar',
      accept: 'image/webp,*/*',
      'if-modified-since': String(scaled.headers['last-modified']),
    });
    expect(revalidated.status).toBe(304);
    expect(revalidated.body.length).toBe(0);
    const health = await h2Request(session, { ':path': '/-/health' });
    expect(health.status).toBe(200);
  });

  it('accelerates a multipart upload sent over HTTP/2', async () => {
    const dir = newDir();
    const backend = await uploadBackend(localAnswer(dir));
    const { session } = await edge(backend.url, routesToml(newDir()));
    const boundary = 'h2-boundary';
    const body = [
      `--${boundary}\r\nContent-Disposition: form-data; name="token"\r\n\r\ntest\r\n`,
      `--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="h2.txt"\r\nContent-Type: text/plain\r\n\r\nover h2\r\n`,
      `--${boundary}--\r\n`,
    ].join('');
    const answer = await h2Request(
      session,
      { ':method': 'POST', ':path': '/uploads/user', 'content-type': `multipart/form-data; boundary=${boundary}` },
      body,
    );
    expect(answer.status).toBe(201);
    const got = backend.received[0] as Received;
    expect(Object.fromEntries(got.fields)).toMatchObject({ token: 'test', 'file.name': 'h2.txt', 'file.size': '7' });
    expect(got.files['file.path']?.toString()).toBe('over h2');
  });

  it('relays 103 Early Hints ahead of the answer, and 100-continue lets the backend refuse a body it never gets', async () => {
    let bodyBytes = 0;
    const backend = await startBackend((req, res) => {
      if (req.url === '/hints') {
        res.writeEarlyHints({ link: '</app.css>; rel=preload; as=style' });
        setTimeout(() => res.writeHead(200, { 'content-type': 'text/plain' }).end('page'), 50);
        return;
      }
      req.on('data', (c: Buffer) => {
        bodyBytes += c.length;
      });
      res.writeHead(413, { 'content-type': 'text/plain' }).end('too large');
    });
    // The backend judges the body by its head, before asking for it (Node's server sends 100 unless told).
    backend.server.on('checkContinue', (req: IncomingMessage, res) => {
      req.on('data', (c: Buffer) => {
        bodyBytes += c.length;
      });
      res.writeHead(413, { 'content-type': 'text/plain' }).end('too large');
    });
    const { session } = await edge(backend.url);
    const hinted = await h2Request(session, { ':path': '/hints' });
    expect(hinted.informational.map((h) => h[':status'])).toEqual([103]);
    expect(hinted.informational[0]?.link).toBe('</app.css>; rel=preload; as=style');
    expect(hinted.body.toString()).toBe('page');

    let continued = false;
    const refused = await h2Request(
      session,
      { ':method': 'POST', ':path': '/big', expect: '100-continue', 'content-length': String(2 * 1024 * 1024) },
      (stream) => {
        stream.once('continue', () => {
          continued = true;
          stream.end(Buffer.alloc(2 * 1024 * 1024));
        });
      },
    );
    expect(refused.status).toBe(413);
    expect(continued).toBe(false);
    expect(bodyBytes).toBe(0);
    // The refused stream is over and the connection goes on.
    const after = await h2Request(session, { ':method': 'POST', ':path': '/small', 'content-length': '2' }, 'ok');
    expect(after.status).toBe(413);
  });

  it('carries WebSocket over HTTP/2 (RFC 8441): echo both ways, large messages, a refusal relayed, a non-switch refused', async () => {
    const ws = await startWsBackend({
      refuse: (req) => (req.url === '/denied' ? { status: 403, reason: 'Forbidden', body: 'no\n' } : undefined),
    });
    const logs: Record<string, unknown>[] = [];
    const { session } = await edge(ws.url, '', logs);
    expect(session.remoteSettings.enableConnectProtocol).toBe(true);

    const socket = await H2WebSocket.open(session, '/cable', { origin: 'https://app.example' });
    expect(socket.status).toBe(200);
    expect(socket.response['sec-websocket-accept']).toBeUndefined();
    const upgrade = ws.upgrades[0] as IncomingMessage;
    expect(upgrade.method).toBe('GET');
    expect(upgrade.headers.upgrade).toBe('websocket');
    expect(upgrade.headers.origin).toBe('https://app.example');
    expect(upgrade.headers['gitlab-workhorse']).toBeDefined();
    socket.send('hello');
    expect((await socket.next()).payload.toString()).toBe('hello');
    const large = Buffer.alloc(2 * 1024 * 1024, 3);
    socket.send(large);
    const back = await socket.next();
    expect(back.opcode).toBe(2);
    expect(back.payload.equals(large)).toBe(true);
    // The backend speaks first too.
    const server = [...ws.clients][0];
    server?.send('pushed');
    expect((await socket.next()).payload.toString()).toBe('pushed');
    socket.close(1000);
    expect((await socket.next()).opcode).toBe(8);
    await until(() => logs.some((l) => l.subsystem === 'tunnel' && l.msg === 'tunnel closed'), 3000, 'the tunnel log line');
    const line = logs.find((l) => l.subsystem === 'tunnel');
    expect(line).toMatchObject({ method: 'CONNECT', path: '/cable', upgrade: 'websocket', status: 200, httpVersion: '2' });
    expect(line?.upstreamBytes).toBeGreaterThan(large.length);
    expect(line?.downstreamBytes).toBeGreaterThan(large.length);

    const denied = await H2WebSocket.open(session, '/denied');
    expect(denied.status).toBe(403);

    // A plain HTTP backend that ignores Upgrade answers 200: on a CONNECT stream that would open a tunnel.
    const plain = await startBackend((_req, res) => res.writeHead(200, { 'content-type': 'text/plain' }).end('page'));
    const other = await edge(plain.url);
    const notSwitched = await H2WebSocket.open(other.session, '/cable');
    expect(notSwitched.status).toBe(502);

    // CONNECT without :protocol is forward-proxy CONNECT: refused.
    const forward = await h2Request(other.session, { ':method': 'CONNECT', ':authority': 'example.com:443' });
    expect(forward.status).toBe(405);
  });

  it('closes the backend side of an HTTP/2 WebSocket whose client vanishes, and closes open ones at shutdown', async () => {
    const ws = await startWsBackend();
    const logs: Record<string, unknown>[] = [];
    const { app, port } = await edge(ws.url, '', logs);
    const gone = await h2Connect(port, ca);
    const first = await H2WebSocket.open(gone, '/cable');
    first.send('ping');
    await first.next();
    gone.destroy();
    await until(() => ws.clients.size === 0, 3000, 'the backend socket to close');
    await until(() => logs.some((l) => l.subsystem === 'tunnel' && l.reason === 'client'), 3000, 'the tunnel log line');

    const kept = await h2Connect(port, ca);
    const second = await H2WebSocket.open(kept, '/cable');
    second.send('ping');
    await second.next();
    expect(ws.clients.size).toBe(1);
    const closed = new Promise<void>((resolve) => second.stream.once('close', () => resolve()));
    app.outrider.closeTunnels();
    await closed;
    await until(() => ws.clients.size === 0, 3000, 'the backend socket to close');
    expect(logs.filter((l) => l.subsystem === 'tunnel').map((l) => l.reason)).toEqual(['client', 'shutdown']);
  });

  it('aborts the backend request when an HTTP/2 client cancels its stream, and logs it as aborted', async () => {
    let backendClosed = false;
    const backend = await startBackend((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      const chunk = Buffer.alloc(64 * 1024, 1);
      const timer = setInterval(() => res.write(chunk), 5);
      res.once('close', () => {
        clearInterval(timer);
        backendClosed = true;
      });
    });
    const logs: Record<string, unknown>[] = [];
    const { session } = await edge(backend.url, '', logs);
    const stream = session.request({ ':path': '/endless' });
    await new Promise((resolve) => stream.once('data', resolve));
    stream.close(constants.NGHTTP2_CANCEL);
    await until(() => backendClosed, 3000, 'the backend request to be aborted');
    await until(() => logs.some((l) => l.msg === 'request'), 3000, 'the access line');
    expect(logs.find((l) => l.msg === 'request')).toMatchObject({ path: '/endless', aborted: true });
  });

  it('ends a stream answered before its body arrived with the whole answer, then RST_STREAM NO_ERROR; the connection goes on', async () => {
    const backend = await startBackend((req, res) => {
      if (req.url === '/closing') return void res.writeHead(413, { 'content-type': 'text/plain', connection: 'close' }).end('too large');
      res.writeHead(413, { 'content-type': 'text/plain' }).end('too large');
    });
    const logs: Record<string, unknown>[] = [];
    const { session } = await edge(backend.url, '', logs);
    const big = Buffer.alloc(2 * 1024 * 1024, 5);
    const early = await h2Request(session, { ':method': 'POST', ':path': '/early', 'content-length': String(big.length) }, big);
    // END_STREAM came before the reset: a complete answer, not an aborted one.
    expect(early).toMatchObject({ status: 413, aborted: false, rstCode: 0 });
    expect(early.body.toString()).toBe('too large');
    // A backend that closes its connection before reading the body: Outrider's 502, complete as well.
    const closing = await h2Request(session, { ':method': 'POST', ':path': '/closing', 'content-length': String(big.length) }, big);
    expect(closing.aborted).toBe(false);
    expect([413, 502]).toContain(closing.status);
    await until(() => logs.filter((l) => l.msg === 'request').length === 2, 3000, 'both access lines');
    const next = await h2Request(session, { ':path': '/after' });
    expect(next.status).toBe(413);
  });

  it('cuts, never ends cleanly, an HTTP/2 answer the backend breaks off, and fails a body the client cancels', async () => {
    const seen: string[] = [];
    const backend = await startBackend((req, res) => {
      if (req.url === '/broken') {
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.write('partial body');
        setTimeout(() => res.socket?.destroy(), 50);
        return;
      }
      let bytes = 0;
      req.on('data', (c: Buffer) => {
        bytes += c.length;
      });
      req.once('end', () => seen.push(`complete ${bytes}`));
      req.once('aborted', () => seen.push('aborted'));
      req.once('error', () => seen.push('error'));
    });
    const { session } = await edge(backend.url);
    // The client must not take the cut answer for a whole one (curl would exit 0 with NO_ERROR).
    await expect(h2Request(session, { ':path': '/broken' })).rejects.toThrow(/NGHTTP2_INTERNAL_ERROR|stream error/i);

    // An upload of unknown length (chunked to the backend) that the client cancels halfway.
    const upload = session.request({ ':method': 'POST', ':path': '/upload' }, { endStream: false });
    upload.on('error', () => undefined);
    upload.write(Buffer.alloc(100_000, 1));
    await new Promise((r) => setTimeout(r, 200));
    // Destroyed, Node's client resets the stream without ending it (its close() sends END_STREAM
    // first, which completes the body as far as any server can tell).
    upload.destroy(new Error('the user cancelled'));
    await until(() => seen.length > 0, 3000, 'the backend to see the upload end');
    expect(seen[0]).not.toMatch(/^complete/);
  });

  it('applies send_timeout to one stalled stream and client_body_timeout to one silent body, whatever else the connection carries', async () => {
    let downloads = 0;
    let uploads = 0;
    const backend = await startBackend((req, res) => {
      if (req.url === '/download') {
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(64 * 1024 * 1024) });
        const chunk = Buffer.alloc(256 * 1024, 2);
        const pump = () => {
          while (res.write(chunk)) if (res.writableLength > 8 * 1024 * 1024) break;
        };
        res.on('drain', pump);
        pump();
        res.once('close', () => downloads++);
        return;
      }
      req.resume();
      req.once('end', () => res.writeHead(200, { 'content-type': 'text/plain' }).end('stored'));
      res.once('close', () => {
        if (!res.writableFinished) uploads++;
      });
    });
    const logs: Record<string, unknown>[] = [];
    const { session } = await edge(backend.url, 'send_timeout = "1s"\nclient_body_timeout = "1s"', logs);
    // A download the client never reads: its flow-control window shuts, the stream stalls.
    const stalled = session.request({ ':path': '/download' });
    stalled.pause();
    // A body that stops after its first bytes, while PINGs keep the connection itself busy.
    const silent = session.request({ ':method': 'POST', ':path': '/upload', 'content-length': '1000' }, { endStream: false });
    silent.write(Buffer.alloc(10));
    const silentAnswer = new Promise<number>((resolve) => silent.once('response', (h) => resolve(Number(h[':status']))));
    const pings = setInterval(() => session.ping(() => undefined), 200);
    onTestFinished(() => clearInterval(pings));
    expect(await silentAnswer).toBe(408);
    await until(() => downloads === 1, 5000, 'the stalled download to be cut');
    await until(() => uploads === 1, 3000, 'the silent upload to be dropped at the backend');
    expect(logs.some((l) => l.msg === 'send timeout: the client stopped reading' && l.path === '/download')).toBe(true);
    // The connection is still good for other streams.
    expect((await h2Request(session, { ':method': 'POST', ':path': '/upload' }, 'x')).status).toBe(200);
  });

  it('refuses WebSocket over HTTP/2 past max_tunnels and on a wrong handshake, and closes an idle one', async () => {
    const ws = await startWsBackend();
    const logs: Record<string, unknown>[] = [];
    const { session } = await edge(ws.url, '[websocket]\nmax_tunnels = 1\nidle_timeout = "1s"', logs);
    const first = await H2WebSocket.open(session, '/cable');
    expect(first.status).toBe(200);
    const second = await H2WebSocket.open(session, '/cable');
    expect(second.status).toBe(503);
    // Idle for the limit: closed and logged as idle; a new one may open.
    await until(() => logs.some((l) => l.subsystem === 'tunnel' && l.reason === 'idle'), 4000, 'the idle close');
    const third = await H2WebSocket.open(session, '/cable');
    expect(third.status).toBe(200);

    // A backend whose handshake answer does not match the key Outrider sent.
    const liar = await startBackend(() => undefined);
    liar.server.on('upgrade', (_req: IncomingMessage, socket: Socket) => {
      socket.end('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: bogus\r\n\r\n');
    });
    const other = await edge(liar.url);
    expect((await H2WebSocket.open(other.session, '/cable')).status).toBe(502);
  });

  it('cuts every connection on closeAllConnections (the shutdown deadline), HTTP/2 and HTTP/1.1 over TLS alike', async () => {
    const backend = await startBackend((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('begun');
    });
    const { app, port, session } = await edge(backend.url);
    const h2 = h2Request(session, { ':path': '/never-ends' }).catch((err: Error) => err);
    const dispatcher = new Agent({ connect: { ca } });
    onTestFinished(() => dispatcher.close());
    const h1 = request(`https://127.0.0.1:${port}/never-ends`, { dispatcher })
      .then((res) => res.body.text())
      .catch((err: Error) => err);
    await until(() => backend.requests.length === 2, 3000, 'both requests at the backend');
    app.outrider.closeAllConnections();
    // Both connections are cut: neither answer completes.
    await until(() => session.destroyed || session.closed, 3000, 'the HTTP/2 connection to close');
    // The HTTP/2 request fails (it would wait forever on a connection left open).
    expect(await h2).toBeInstanceOf(Error);
    expect(await h1).toBeInstanceOf(Error);
    await app.close();
  });

  it('finishes open streams on shutdown with GOAWAY and closes the listener', async () => {
    const backend = await startBackend((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('begun ');
      setTimeout(() => res.end('and finished'), 300);
    });
    const { app, session } = await edge(backend.url);
    const slow = h2Request(session, { ':path': '/slow' });
    await new Promise((r) => setTimeout(r, 100));
    const goaway = new Promise<void>((resolve) => session.once('goaway', () => resolve()));
    const closed = app.close();
    await goaway;
    const answer = await slow;
    expect(answer.body.toString()).toBe('begun and finished');
    await closed;
  });
});
