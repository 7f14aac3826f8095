import type { AddressInfo } from 'node:net';
import { createServer as createNetServer, type Socket } from 'node:net';
import { describe, expect, it, onTestFinished } from 'vitest';
import { startProxy } from '../../helpers/app.js';
import { startBackend } from '../../helpers/backend.js';
import { converse } from './conversation.js';

/**
 * A backend written byte by byte: `answer` gets each request's socket once its head has arrived
 * (what an HTTP server library would not send: odd 1xx, Link values Node refuses).
 */
async function rawBackend(answer: (socket: Socket) => void) {
  const sockets = new Set<Socket>();
  const server = createNetServer((socket) => {
    sockets.add(socket);
    let head = '';
    socket.on('data', (chunk: Buffer) => {
      head += chunk.toString('latin1');
      if (head.includes('\r\n\r\n')) {
        head = '';
        answer(socket);
      }
    });
    socket.on('error', () => undefined);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  onTestFinished(
    () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  );
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` };
}

const GET = 'GET /page HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n';

describe('1xx informational answers', () => {
  it('a backend’s 103 Early Hints reaches the client, Link headers and all, before the final answer is made', async () => {
    let finish: () => void = () => undefined;
    const backend = await startBackend((_req, res) => {
      res.writeEarlyHints({ link: ['</app.css>; rel=preload; as=style', '</app.js>; rel=preload; as=script'] });
      finish = () => res.writeHead(200, { 'content-type': 'text/html', 'content-length': 11 }).end('<p>page</p>');
    });
    const proxy = await startProxy(backend.url);
    const client = await converse(proxy.port);
    client.socket.write(GET);
    // Seen by the client while the backend has not answered yet.
    await client.waitFor(/^HTTP\/1\.1 103 Early Hints\r\n[\s\S]*\r\n\r\n$/);
    expect(client.text()).toBe(
      'HTTP/1.1 103 Early Hints\r\nLink: </app.css>; rel=preload; as=style, </app.js>; rel=preload; as=script\r\n\r\n',
    );
    finish();
    await client.closed;
    expect(client.text()).toMatch(/\r\n\r\nHTTP\/1\.1 200 OK\r\n[\s\S]*\r\n\r\n<p>page<\/p>$/);
  });

  it('relays Link values Node’s own writeEarlyHints would refuse, and every 1xx but 100 and 101, in order', async () => {
    const backend = await rawBackend((socket) => {
      socket.write(
        'HTTP/1.1 102 Processing\r\n\r\n' +
          'HTTP/1.1 103 Early Hints\r\n' +
          'Link: </a.css>; rel=preload; as=style, </b.woff2>; rel=preload; as=font; crossorigin\r\n' +
          'Link: </c.js>; rel=preload; title="two words"\r\n' +
          'Gitlab-Workhorse-Send-Data: git-blob:secret\r\n' +
          'Connection: X-Hop\r\nX-Hop: 1\r\n\r\n' +
          'HTTP/1.1 199 Whatever\r\nX-Note: kept\r\n\r\n' +
          'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok',
      );
    });
    const proxy = await startProxy(backend.url);
    const client = await converse(proxy.port);
    client.socket.write(GET);
    await client.closed;
    const text = client.text();
    expect(
      text.startsWith(
        'HTTP/1.1 102 Processing\r\n\r\n' +
          'HTTP/1.1 103 Early Hints\r\n' +
          'Link: </a.css>; rel=preload; as=style, </b.woff2>; rel=preload; as=font; crossorigin\r\n' +
          'Link: </c.js>; rel=preload; title="two words"\r\n\r\n' +
          'HTTP/1.1 199 Whatever\r\nX-Note: kept\r\n\r\n' +
          'HTTP/1.1 200 OK\r\n',
      ),
    ).toBe(true);
    expect(text).not.toMatch(/git-blob|X-Hop/i);
    expect(text.endsWith('\r\n\r\nok')).toBe(true);
  });

  it('an HTTP/1.0 client gets no 1xx, only the final answer', async () => {
    const backend = await startBackend((_req, res) => {
      res.writeEarlyHints({ link: '</app.css>; rel=preload; as=style' });
      res.end('done');
    });
    const proxy = await startProxy(backend.url);
    const client = await converse(proxy.port);
    client.socket.write('GET /page HTTP/1.0\r\nHost: app.test\r\n\r\n');
    await client.closed;
    expect(client.text()).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
    expect(client.text()).not.toContain('103');
  });

  it('a backend that sends more 1xx than Go’s transport allows is a 502', async () => {
    const backend = await rawBackend((socket) => {
      socket.write(
        `${'HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n'.repeat(6)}HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n`,
      );
    });
    const proxy = await startProxy(backend.url);
    const client = await converse(proxy.port);
    client.socket.write(GET);
    await client.closed;
    expect(client.text().match(/HTTP\/1\.1 103 /g)).toHaveLength(5);
    expect(client.text()).toMatch(/\r\n\r\nHTTP\/1\.1 502 Bad Gateway\r\n/);
  });

  it('a 103 sent while the backend weighs an Expect: 100-continue reaches the client before its 100', async () => {
    const backend = await startBackend((req, res) => {
      req.resume();
      req.on('end', () => res.end('stored'));
    });
    backend.server.on('checkContinue', (req, res) => {
      res.writeEarlyHints({ link: '</done.css>; rel=preload; as=style' });
      res.writeContinue();
      backend.server.emit('request', req, res);
    });
    const proxy = await startProxy(backend.url);
    const client = await converse(proxy.port);
    client.socket.write('POST /up HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n');
    await client.waitFor('HTTP/1.1 100 Continue\r\n\r\n');
    client.socket.write('abc');
    await client.closed;
    expect(client.text()).toMatch(
      /^HTTP\/1\.1 103 Early Hints\r\nLink: <\/done\.css>; rel=preload; as=style\r\n\r\nHTTP\/1\.1 100 Continue\r\n\r\nHTTP\/1\.1 200 OK\r\n[\s\S]*stored$/,
    );
  });
});
