import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Pool } from 'undici';
import { describe, expect, it, onTestFinished } from 'vitest';
import { Exchange } from '../../../proxy/forward/exchange.js';
import { createForwarder } from '../../../proxy/forward/forwarder.js';
import { captureLogger } from '../../helpers/app.js';
import { startBackend } from '../../helpers/backend.js';
import { rawRequest } from '../../helpers/raw.js';

describe('while shutting down', () => {
  it('answers a new request on an open connection with 503 and Connection: close, logged, without calling the backend', async () => {
    const backend = await startBackend((_req, res) => res.end('should not be reached'));
    const logs: Record<string, unknown>[] = [];
    const upstream = new Pool(backend.url);
    const forward = createForwarder({ upstream, interceptors: [], version: 'test', log: captureLogger(logs), isClosing: () => true });
    const server = createServer((req, res) => forward(new Exchange(req, res, 'req-1')));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    onTestFinished(async () => {
      server.closeAllConnections();
      server.close();
      await upstream.close();
    });
    const res = await rawRequest((server.address() as AddressInfo).port, 'GET /late HTTP/1.1\r\nHost: x\r\n\r\n');
    expect(res.status).toBe(503);
    expect(res.header('connection')).toBe('close');
    expect(res.header('content-type')).toBe('text/plain; charset=utf-8');
    expect(res.body).toBe('Service Unavailable: shutting down\n');
    expect(backend.requests).toHaveLength(0);
    await new Promise((r) => setTimeout(r, 20));
    expect(logs.find((l) => l.msg === 'request')).toMatchObject({ requestId: 'req-1', path: '/late', status: 503 });
  });
});
