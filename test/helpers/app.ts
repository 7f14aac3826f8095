import { Writable } from 'node:stream';
import type { FastifyInstance } from 'fastify';
import pino from 'pino';
import { request } from 'undici';
import { onTestFinished } from 'vitest';
import { loadConfig } from '../../config/load.js';
import type { Config } from '../../config/schema.js';
import type { Interceptor } from '../../proxy/intercept/types.js';
import { LOG_REDACT } from '../../proxy/observe/log/logger.js';
import { buildServer } from '../../proxy/server.js';

export interface ProxyOptions {
  /** Extra TOML lines (auth_backend is set from `backend`). */
  toml?: string;
  interceptors?: Interceptor[];
  /** Collect log lines (parsed JSON) instead of discarding logs. */
  logs?: Record<string, unknown>[];
}

export interface RunningProxy {
  app: FastifyInstance;
  url: string;
  port: number;
  config: Config;
}

/**
 * Test origins (object stores, image hosts, send-url targets) listen on 127.0.0.1, which the
 * outbound policy refuses by default: a test that sets no `[outbound]` of its own opens that
 * address only. Tests of the policy set their own.
 */
const LOOPBACK_ORIGINS = '\n[outbound]\nallowed_hosts = ["127.0.0.1"]\n';

export function testConfig(backendUrl: string, toml = ''): Config {
  const outbound = /^\[outbound\]/m.test(toml) ? '' : LOOPBACK_ORIGINS;
  return loadConfig(`auth_backend = "${backendUrl}"\n${toml}${outbound}`, { source: 'test' });
}

/** A logger whose lines land, parsed, in `lines`, with the production redaction rules. */
export function captureLogger(lines: Record<string, unknown>[]) {
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString().split('\n')) if (line !== '') lines.push(JSON.parse(line) as Record<string, unknown>);
      cb();
    },
  });
  return pino({ level: 'info', redact: LOG_REDACT }, stream);
}

/** Builds Outrider in front of `backendUrl`; not listening (for `inject`). Closed when the test ends. */
export function buildProxy(backendUrl: string, opts: ProxyOptions = {}): FastifyInstance {
  const config = testConfig(backendUrl, opts.toml);
  const app = buildServer(config, {
    logger: opts.logs === undefined ? false : captureLogger(opts.logs),
    interceptors: opts.interceptors,
  });
  onTestFinished(() => app.close());
  return app;
}

/** Outrider listening on 127.0.0.1 with an ephemeral port, for tests that need real sockets. */
export async function startProxy(backendUrl: string, opts: ProxyOptions = {}): Promise<RunningProxy> {
  const app = buildProxy(backendUrl, opts);
  await app.listen({ port: 0, host: '127.0.0.1' });
  const address = app.server.address();
  const port = typeof address === 'object' && address !== null ? address.port : 0;
  return { app, url: `http://127.0.0.1:${port}`, port, config: testConfig(backendUrl, opts.toml) };
}

/** GET through a real socket; returns status, headers and the whole body as text. */
export async function get(url: string, headers: Record<string, string> = {}) {
  const res = await request(url, { headers });
  return { status: res.statusCode, headers: res.headers, body: await res.body.text() };
}
