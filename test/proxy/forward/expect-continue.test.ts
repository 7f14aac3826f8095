import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { describe, expect, it, onTestFinished } from 'vitest';
import { startProxy } from '../../helpers/app.js';
import { readBody, startBackend } from '../../helpers/backend.js';
import { converse, sleep } from './conversation.js';

const CONTINUE = 'HTTP/1.1 100 Continue\r\n\r\n';

/**
 * A backend that decides on the headers of an `Expect: 100-continue` request itself (as a Go
 * server does): `decide` answers it, or returns true to have the body (100 sent, then `onBody`).
 */
async function decidingBackend(
  decide: (req: IncomingMessage, res: ServerResponse) => boolean | Promise<boolean>,
  onBody: (req: IncomingMessage, res: ServerResponse) => void = echoLength,
) {
  const seen: { expect: string | undefined; bodyBytes: number }[] = [];
  const server = createServer((req, res) => onBody(req, res));
  server.on('checkContinue', async (req: IncomingMessage, res: ServerResponse) => {
    const entry = { expect: req.headers.expect, bodyBytes: 0 };
    seen.push(entry);
    req.on('data', (chunk: Buffer) => {
      entry.bodyBytes += chunk.length;
    });
    if (await decide(req, res)) {
      res.writeContinue();
      onBody(req, res);
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  onTestFinished(
    () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  );
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, seen };
}

function echoLength(req: IncomingMessage, res: ServerResponse): void {
  void readBody(req).then((body) => res.end(`got ${body.length}`));
}

const head = (path: string, length: number, extra = '') =>
  `POST ${path} HTTP/1.1\r\nHost: app.test\r\nContent-Length: ${length}\r\nExpect: 100-continue\r\n${extra}\r\n`;

describe('Expect: 100-continue', () => {
  it('a backend that refuses on the headers answers the client, which never sends its body', async () => {
    const backend = await decidingBackend((_req, res) => {
      res.writeHead(413, { 'content-type': 'text/plain' }).end('too big');
      return false;
    });
    const proxy = await startProxy(backend.url);
    const client = await converse(proxy.port);
    const started = performance.now();
    client.socket.write(head('/big', 50_000_000));
    await client.waitFor('too big');
    // Well before the 1 s after which Outrider would have asked for the body anyway.
    expect(performance.now() - started).toBeLessThan(900);
    expect(client.text()).toMatch(/^HTTP\/1\.1 413 /);
    expect(client.text()).not.toContain('100 Continue');
    expect(client.text()).toMatch(/\r\nconnection: close\r\n/i);
    expect(backend.seen).toEqual([{ expect: '100-continue', bodyBytes: 0 }]);
    // Nothing more is read from this connection: the body it declared would come next.
    await client.closed;
  });

  it('the client gets 100 only once the backend sent it, then its body reaches the backend', async () => {
    let release: () => void = () => undefined;
    const decision = new Promise<boolean>((resolve) => {
      release = () => resolve(true);
    });
    const backend = await decidingBackend(() => decision);
    const proxy = await startProxy(backend.url);
    const client = await converse(proxy.port);
    client.socket.write(head('/upload', 5, 'Connection: close\r\n'));
    await sleep(300);
    expect(client.text()).toBe('');
    release();
    await client.waitFor(CONTINUE);
    client.socket.write('hello');
    await client.closed;
    expect(client.text()).toMatch(/^HTTP\/1\.1 100 Continue\r\n\r\nHTTP\/1\.1 200 OK\r\n/);
    expect(client.text()).toMatch(/\r\n\r\ngot 5$/);
    expect(backend.seen).toEqual([{ expect: '100-continue', bodyBytes: 5 }]);
  });

  it('a backend that answers 100 at once (Node, Puma) gets a chunked body through, and the connection stays open', async () => {
    const backend = await startBackend(echoLength);
    const proxy = await startProxy(backend.url);
    const client = await converse(proxy.port);
    client.socket.write('PUT /chunks HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n');
    await client.waitFor(CONTINUE, 900);
    client.socket.write('3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n');
    await client.waitFor('got 7');
    // The same connection serves the next request.
    client.socket.write('GET /next HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n');
    await client.closed;
    expect(client.text().match(/HTTP\/1\.1 200 OK/g)).toHaveLength(2);
    expect(backend.requests[0]?.headers.expect).toBe('100-continue');
  });

  it('a backend that never answers the expectation gets the body after 1 s, as from Go’s transport', async () => {
    // Reads the body without sending 100: only Outrider's own 100 gets the client to send it.
    const backend = await decidingBackend((req, res) => {
      echoLength(req, res);
      return false;
    }, echoLength);
    const proxy = await startProxy(backend.url);
    const client = await converse(proxy.port);
    const started = performance.now();
    client.socket.write(head('/slow', 3, 'Connection: close\r\n'));
    await client.waitFor(CONTINUE, 2_000);
    expect(performance.now() - started).toBeGreaterThan(900);
    client.socket.write('abc');
    await client.closed;
    expect(client.text()).toMatch(/\r\n\r\ngot 3$/);
  });

  it('a client that sends its body without waiting for 100 (curl after 1 s) is answered', async () => {
    const backend = await startBackend(echoLength);
    const proxy = await startProxy(backend.url);
    const client = await converse(proxy.port);
    client.socket.write(`${head('/eager', 4, 'Connection: close\r\n')}body`);
    await client.closed;
    expect(client.text()).toMatch(/HTTP\/1\.1 200 OK\r\n[\s\S]*\r\n\r\ngot 4$/);
  });

  it('a backend that refuses after reading part of the body still answers the client', async () => {
    const backend = await decidingBackend(
      () => true,
      (req, res) => {
        req.once('data', () => res.writeHead(401, { 'content-type': 'text/plain' }).end('who are you'));
      },
    );
    const proxy = await startProxy(backend.url);
    const client = await converse(proxy.port);
    client.socket.write(head('/partial', 1_000_000));
    await client.waitFor(CONTINUE);
    client.socket.write(Buffer.alloc(64 * 1024, 1));
    await client.waitFor('who are you');
    expect(client.text()).toMatch(/HTTP\/1\.1 401 Unauthorized\r\n/);
    await client.closed;
  });

  it('Outrider’s own refusal goes out without asking for the body', async () => {
    const backend = await startBackend(echoLength);
    const proxy = await startProxy(backend.url);
    const client = await converse(proxy.port);
    // An absolute-form target is never forwarded (400).
    client.socket.write(head('http://other.test/x', 50_000_000));
    await client.closed;
    expect(client.text()).toMatch(/^HTTP\/1\.1 400 /);
    expect(client.text()).not.toContain('100 Continue');
    expect(backend.requests).toHaveLength(0);
  });

  it('a backend that cannot be reached is a 502 to a client that never sent its body', async () => {
    const backend = await startBackend(echoLength);
    const proxy = await startProxy(backend.url);
    await backend.close();
    const client = await converse(proxy.port);
    client.socket.write(head('/gone', 50_000_000));
    await client.closed;
    expect(client.text()).toMatch(/^HTTP\/1\.1 502 /);
    expect(client.text()).not.toContain('100 Continue');
  });

  it('Outrider’s own routes answer the expectation themselves', async () => {
    const backend = await startBackend(echoLength);
    const proxy = await startProxy(backend.url);
    const client = await converse(proxy.port);
    client.socket.write(
      'GET /-/outrider/liveness HTTP/1.1\r\nHost: app.test\r\nContent-Length: 2\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n',
    );
    await client.waitFor(CONTINUE);
    client.socket.write('{}');
    await client.closed;
    expect(client.text()).toMatch(/^HTTP\/1\.1 100 Continue\r\n\r\nHTTP\/1\.1 200 /);
    expect(backend.requests).toHaveLength(0);
  });
});
