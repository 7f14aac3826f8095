#!/usr/bin/env node
import { unlinkSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { ConfigError } from '../config/errors.js';
import { type ConfigOverride, loadConfig, loadConfigFile } from '../config/load.js';
import type { Config } from '../config/schema.js';
import { createLogger } from './logger.js';
import { ListenError } from './metrics-server.js';
import { buildServer } from './server.js';
import { VERSION } from './version.js';

const USAGE = `Usage: outrider [--config FILE] [--listen-addr ADDR] [--auth-backend URL] [--secret-path FILE]

Outrider: a reverse proxy in front of a backend app that serves scaled images,
files and uploads the backend asks it to (GitLab Workhorse's protocol).

Options:
  --config FILE         TOML configuration (every key has a default; see config.example.toml)
  --listen-addr ADDR    where to listen: "host:port" or "unix:/path" (overrides listen_addr)
  --auth-backend URL    the backend's origin, e.g. http://localhost:8080 (overrides auth_backend)
  --secret-path FILE    the secret shared with the backend (overrides secret_path)
  --version             print the version and exit
  --help                print this help and exit
`;

function fail(message: string): never {
  process.stderr.write(`outrider: ${message}\n`);
  process.exit(2);
}

function readConfig(argv: string[]): Config {
  let values: ReturnType<typeof parse>['values'];
  try {
    values = parse(argv).values;
  } catch (err) {
    fail(`${(err as Error).message}\n\n${USAGE}`);
  }
  if (values.help) {
    process.stdout.write(USAGE);
    process.exit(0);
  }
  if (values.version) {
    process.stdout.write(`outrider ${VERSION}\n`);
    process.exit(0);
  }
  const overrides: ConfigOverride[] = [];
  if (values['listen-addr'] !== undefined) overrides.push({ key: 'listen_addr', flag: '--listen-addr', value: values['listen-addr'] });
  if (values['auth-backend'] !== undefined) overrides.push({ key: 'auth_backend', flag: '--auth-backend', value: values['auth-backend'] });
  if (values['secret-path'] !== undefined) overrides.push({ key: 'secret_path', flag: '--secret-path', value: values['secret-path'] });
  try {
    return values.config === undefined ? loadConfig('', { source: 'command line', overrides }) : loadConfigFile(values.config, overrides);
  } catch (err) {
    if (err instanceof ConfigError) fail(err.message);
    throw err;
  }
}

function parse(argv: string[]) {
  return parseArgs({
    args: argv,
    strict: true,
    allowPositionals: false,
    options: {
      config: { type: 'string', short: 'c' },
      'listen-addr': { type: 'string' },
      'auth-backend': { type: 'string' },
      'secret-path': { type: 'string' },
      version: { type: 'boolean', short: 'v' },
      help: { type: 'boolean', short: 'h' },
    },
  });
}

async function main(): Promise<void> {
  const config = readConfig(process.argv.slice(2));
  // libuv's pool runs both sharp jobs and file reads: size it so max_scaler_procs busy scaling
  // jobs still leave 4 threads for X-Sendfile and image reads (set before the pool starts).
  process.env.UV_THREADPOOL_SIZE ??= String(Math.min(1024, config.imageResizer.maxScalerProcs + 4));
  const logger = createLogger(config);
  let app: ReturnType<typeof buildServer>;
  try {
    app = buildServer(config, { logger });
  } catch (err) {
    // The secret is read at start when an upload route needs it: a missing or bad one is a config error.
    if (err instanceof ConfigError) fail(err.message);
    throw err;
  }
  const addr = config.listenAddr;
  try {
    if (addr.kind === 'unix') {
      try {
        unlinkSync(addr.path);
      } catch {
        // no stale socket
      }
      await app.listen({ path: addr.path });
    } else {
      await app.listen({ host: addr.host, port: addr.port });
    }
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const message =
      err instanceof ListenError
        ? err.message
        : `cannot listen on ${addr.kind === 'unix' ? addr.path : `${addr.host}:${addr.port}`}: ${e.message}`;
    logger.fatal({ code: e.code }, message);
    // The metrics listener may be open already: close everything, or the process would stay up.
    await app.close().catch(() => undefined);
    logger.flush();
    process.exitCode = 1;
    return;
  }
  const bound = app.server.address();
  const listening =
    typeof bound === 'string'
      ? `unix:${bound}`
      : bound === null
        ? ''
        : `${bound.family === 'IPv6' ? `[${bound.address}]` : bound.address}:${bound.port}`;
  logger.info(
    { version: VERSION, listen: listening, metrics: app.outrider.metricsAddress(), backend: config.authSocket ?? config.authBackend },
    'outrider ready',
  );
  logger.flush();

  let stopping = false;
  const stop = (signal: NodeJS.Signals) => {
    if (stopping) {
      logger.warn({ signal }, 'second signal: exiting now');
      logger.flush();
      process.exit(1);
    }
    stopping = true;
    if (config.shutdownDelayMs > 0) {
      // Readiness says 503 while everything still works, so load balancers stop sending first.
      app.outrider.drain();
      logger.info({ signal, delayMs: config.shutdownDelayMs }, 'draining: readiness answers 503 until shutdown begins');
      setTimeout(() => close(signal), config.shutdownDelayMs);
    } else {
      close(signal);
    }
  };
  const close = (signal: NodeJS.Signals) => {
    logger.info({ signal, graceMs: config.shutdownTimeoutMs }, 'shutting down: finishing in-flight requests');
    const deadline = setTimeout(() => {
      logger.warn('shutdown timeout reached: closing the remaining connections');
      app.server.closeAllConnections();
      exit(0);
    }, config.shutdownTimeoutMs);
    deadline.unref();
    app.close().then(
      () => {
        logger.info('stopped');
        exit(0);
      },
      (err: unknown) => {
        logger.error({ err }, 'error while stopping');
        exit(1);
      },
    );
  };
  const exit = (code: number) => {
    logger.flush(() => process.exit(code));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((err: unknown) => {
  process.stderr.write(`outrider: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
