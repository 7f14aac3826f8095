import { readdirSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { startProxy } from '../../helpers/app.js';
import { localAnswer, newDir, routesToml, uploadBackend } from '../upload/setup.js';
import { converse, sleep } from './conversation.js';

const CONTINUE = 'HTTP/1.1 100 Continue\r\n\r\n';
const BOUNDARY = 'xYzZY';
const multipart = (content: string) =>
  `--${BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\nContent-Type: text/plain\r\n\r\n${content}\r\n--${BOUNDARY}--\r\n`;
const uploadHead = (path: string, length: number) =>
  `POST ${path} HTTP/1.1\r\nHost: app.test\r\nContent-Type: multipart/form-data; boundary=${BOUNDARY}\r\n` +
  `Content-Length: ${length}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n`;

describe('Expect: 100-continue on accelerated uploads', () => {
  it('asks for the body once the backend authorized the upload, then stores and forwards it', async () => {
    const dir = newDir();
    let authorized = false;
    const backend = await uploadBackend(() => {
      authorized = true;
      return localAnswer(dir)();
    });
    const proxy = await startProxy(backend.url, { toml: routesToml(newDir()) });
    const body = multipart('file content');
    const client = await converse(proxy.port);
    client.socket.write(uploadHead('/uploads/x', Buffer.byteLength(body)));
    await client.waitFor(CONTINUE);
    expect(authorized).toBe(true);
    expect(backend.authorizeCalls[0]?.headers.expect).toBeUndefined();
    client.socket.write(body);
    await client.closed;
    expect(client.text()).toMatch(/^HTTP\/1\.1 100 Continue\r\n\r\nHTTP\/1\.1 201 Created\r\n[\s\S]*\r\ncreated\r\n/);
    expect(backend.received[0]?.files['file.path']?.toString()).toBe('file content');
    // The rewritten request is Outrider's own: no expectation goes with it.
    expect(backend.received[0]?.headers.expect).toBeUndefined();
  });

  it('the client waits, unasked, while the backend is still authorizing', async () => {
    const dir = newDir();
    const backend = await uploadBackend(localAnswer(dir));
    const slow = backend.server.listeners('request')[0] as (...args: unknown[]) => void;
    backend.server.removeAllListeners('request');
    backend.server.on('request', (...args: unknown[]) => setTimeout(() => slow(...args), 300));
    const proxy = await startProxy(backend.url, { toml: routesToml(newDir()) });
    const body = multipart('late');
    const client = await converse(proxy.port);
    client.socket.write(uploadHead('/uploads/x', Buffer.byteLength(body)));
    await sleep(200);
    expect(client.text()).toBe('');
    await client.waitFor(CONTINUE);
    client.socket.write(body);
    await client.waitFor('created');
  });

  it('a refused authorization reaches the client, which never sends its body', async () => {
    const backend = await uploadBackend(() => ({ status: 403, type: 'text/plain', body: 'not yours' }));
    const proxy = await startProxy(backend.url, { toml: routesToml(newDir()) });
    const client = await converse(proxy.port);
    client.socket.write(uploadHead('/uploads/x', 50_000_000));
    await client.closed;
    expect(client.text()).toMatch(/^HTTP\/1\.1 403 Forbidden\r\n[\s\S]*not yours$/);
    expect(client.text()).not.toContain('100 Continue');
    expect(backend.received).toHaveLength(0);
  });

  it('a body upload over the authorized MaximumSize is refused before its body is asked for', async () => {
    const dir = newDir();
    const backend = await uploadBackend(localAnswer(dir, { MaximumSize: 10 }));
    const proxy = await startProxy(backend.url, { toml: routesToml(newDir()) });
    const client = await converse(proxy.port);
    client.socket.write('PUT /packages/x HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5000000\r\nExpect: 100-continue\r\n\r\n');
    await client.closed;
    expect(client.text()).toMatch(/^HTTP\/1\.1 413 /);
    expect(client.text()).not.toContain('100 Continue');
    expect(readdirSync(dir)).toEqual([]);
  });
});
