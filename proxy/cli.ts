#!/usr/bin/env -S node --max-semi-space-size=4
import { parseArgs } from 'node:util';
import { ConfigError } from '../config/errors.js';
import { type ConfigOverride, loadConfig, loadConfigFile } from '../config/load.js';
import type { Config } from '../config/schema.js';
import { PIPE_BUF } from './observe/log/destination.js';
import { createLogger } from './observe/log/logger.js';
import { announceFailing, announceReady, onShutdownRequest, runPrimary, type WorkerSetup, workerSetup } from './runtime/cluster.js';
import { boundAddress, describeAddr, ListenError, removeStaleSocket } from './runtime/listen.js';
import { checkStartFiles } from './runtime/start-files.js';
import { VERSION } from './runtime/version.js';

const USAGE = `Usage: outrider [--config FILE] [--listen-addr ADDR] [--auth-backend URL] [--secret-path FILE] [--workers N]

Outrider: a reverse proxy in front of a backend app that serves scaled images,
files and uploads the backend asks it to (GitLab Workhorse's protocol).

Options:
  --config FILE         TOML configuration (every key has a default; see config.example.toml)
  --listen-addr ADDR    where to listen: "host:port" or "unix:/path" (overrides listen_addr)
  --auth-backend URL    the backend's origin, e.g. http://localhost:8080 (overrides auth_backend)
  --secret-path FILE    the secret shared with the backend (overrides secret_path)
  --workers N           processes sharing the listener: a number, or "auto" for one per CPU (overrides workers)
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
  if (values.workers !== undefined) {
    // A number on the command line is a string: "4" means 4; anything else is left for the schema to refuse.
    const value = /^\d{1,3}$/.test(values.workers) ? Number(values.workers) : values.workers;
    overrides.push({ key: 'workers', flag: '--workers', value });
  }
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
      workers: { type: 'string' },
      version: { type: 'boolean', short: 'v' },
      help: { type: 'boolean', short: 'h' },
    },
  });
}

async function main(): Promise<void> {
  // A cluster worker runs the config its primary validated; it never reads files or flags again.
  const worker = workerSetup();
  if (worker !== undefined) return serve(worker.config, worker);
  const config = readConfig(process.argv.slice(2));
  // libuv's pool runs both sharp jobs and file reads: size it so max_scaler_procs busy scaling
  // jobs still leave 4 threads for X-Sendfile and image reads (set before the pool starts). Cluster
  // workers inherit it: each has a pool of its own.
  process.env.UV_THREADPOOL_SIZE ??= String(Math.min(1024, config.imageResizer.maxScalerProcs + 4));
  if (config.workers === 1) return serve(config, undefined);
  try {
    checkStartFiles(config);
  } catch (err) {
    if (err instanceof ConfigError) fail(err.message);
    throw err;
  }
  return runPrimary(config, createLogger(config, 1, { maxWriteBytes: PIPE_BUF }));
}

/**
 * One process serving `listen_addr`: the whole of Outrider with `workers = 1`, or one cluster
 * worker. A worker shares the primary's socket (so it never removes a socket file), reports
 * "ready" to the primary instead of logging it, and shuts down when the primary asks as on a signal.
 */
async function serve(config: Config, worker: WorkerSetup | undefined): Promise<void> {
  // Loaded here, not at the top: the cluster primary never serves, so it never loads fastify or sharp.
  const { buildServer } = await import('./server.js');
  // Workers and their primary share stdout: writes of whole lines up to PIPE_BUF never interleave.
  const logger = createLogger(config, 1, worker === undefined ? {} : { maxWriteBytes: PIPE_BUF });
  let app: ReturnType<typeof buildServer>;
  try {
    app = buildServer(config, { logger, clusterWorker: worker !== undefined });
  } catch (err) {
    // The secret is read at start when an upload route needs it: a missing or bad one is a config error.
    if (err instanceof ConfigError) fail(err.message);
    throw err;
  }
  const exit = (code: number) => {
    logger.flush(() => process.exit(code));
    // A log destination that never calls back (it may be what failed) must not keep the process up.
    setTimeout(() => process.exit(code), 2_000).unref();
  };
  let ready = false;
  let requested: NodeJS.Signals | undefined;
  let stopping = false;
  let signals = 0;
  /** The exit code once stopped: 1 after an uncaught exception, so a supervisor sees the failure. */
  let stopCode = 0;
  // A request's own callbacks end only that request (endOnFault, proxy/errors.ts). What still escapes may have
  // left this process in any state: it takes no new connections, finishes the requests it has
  // (with shutdown_timeout as the bound) and exits 1. A cluster worker's primary starts its
  // replacement at once, so no request is refused meanwhile; a single process is restarted by
  // its supervisor (systemd's Restart=on-failure).
  process.on('uncaughtException', (err, origin) => {
    try {
      logger.fatal({ err, origin }, 'uncaught exception: finishing the requests in flight, then exiting');
    } catch {
      // nothing left to log with
    }
    if (!ready) {
      logger.flush();
      process.exit(1);
    }
    if (stopCode !== 0) return;
    stopCode = 1;
    if (worker !== undefined) announceFailing();
    // No shutdown_delay: this process must stop taking connections now, not in a while.
    if (stopping) return;
    stopping = true;
    close('SIGTERM');
  });
  const onSignal = (signal: NodeJS.Signals) => {
    if (++signals > 1) {
      logger.warn({ signal }, 'second signal: exiting now');
      logger.flush();
      process.exit(1);
    }
    begin(signal);
  };
  // A signal, or the primary's request: either starts the one shutdown, and the other is then a
  // no-op (on Ctrl-C the terminal signals the primary and every worker at once). Asked for while
  // a worker is still starting, it waits until the worker listens.
  const begin = (signal: NodeJS.Signals) => {
    if (!ready) {
      requested ??= signal;
      return;
    }
    if (stopping) return;
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
      exit(stopCode);
    }, config.shutdownTimeoutMs);
    deadline.unref();
    app.close().then(
      () => {
        logger.info('stopped');
        exit(stopCode);
      },
      (err: unknown) => {
        logger.error({ err }, 'error while stopping');
        exit(1);
      },
    );
  };
  if (worker !== undefined) {
    onShutdownRequest(begin);
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
  }

  const addr = config.listenAddr;
  try {
    if (addr.kind === 'unix') {
      // The primary removes a stale socket once: a worker doing it would delete the live one.
      if (worker === undefined) removeStaleSocket(addr.path);
      await app.listen({ path: addr.path });
    } else {
      await app.listen({ host: addr.host, port: addr.port });
    }
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const message =
      err instanceof ListenError ? err.message : `cannot listen on ${addr.kind === 'unix' ? addr.path : describeAddr(addr)}: ${e.message}`;
    logger.fatal({ code: e.code }, message);
    // The metrics listener may be open already: close everything, or the process would stay up.
    await app.close().catch(() => undefined);
    logger.flush();
    // A worker's channel to the primary would keep it up.
    if (worker !== undefined) exit(1);
    process.exitCode = 1;
    return;
  }
  const listening = boundAddress(app.server.address()) ?? '';
  ready = true;
  if (worker !== undefined) {
    // The primary logs "outrider ready" once every worker is listening.
    announceReady(listening);
  } else {
    logger.info(
      { version: VERSION, listen: listening, metrics: app.outrider.metricsAddress(), backend: config.authSocket ?? config.authBackend },
      'outrider ready',
    );
    logger.flush();
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
  }
  if (requested !== undefined) begin(requested);
}

main().catch((err: unknown) => {
  process.stderr.write(`outrider: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
