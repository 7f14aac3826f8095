#!/usr/bin/env -S node --max-semi-space-size=4
import cluster from 'node:cluster';
import { parseArgs } from 'node:util';
import type { ConfigOverride } from '../config/load.js';
import type { Config } from '../config/schema.js';
import type { WorkerSetup } from './runtime/cluster.js';
import { VERSION } from './runtime/version.js';

// Only node: modules and the version load before the Node flags are settled below: everything
// else is imported once this process is the one that runs, so a re-executed start pays one Node
// start, not also the ~150 ms zod, pino and prom-client take to load (and --version takes 80 ms, not 240).

/**
 * The Node flags Outrider runs with however it is started. A 4 MiB young generation keeps RSS under
 * load ~40 MiB lower (README, Memory); V8 sizes it once, when the heap is set up, so
 * `v8.setFlagsFromString` at start has no effect (measured: new space still grows to 32 MiB on
 * Node 20, 64 MiB on Node 24). The shebang passes them to the `outrider` bin, `npx outrider` and
 * `./dist/proxy/cli.js`; `nodeFlags` covers `node dist/proxy/cli.js`.
 */
const NODE_FLAGS: readonly string[] = ['--max-semi-space-size=4'];

/** The flags of `NODE_FLAGS` this process was started without, on the command line or in NODE_OPTIONS: a value given there wins. */
function missingNodeFlags(): string[] {
  const given = [...process.execArgv, ...(process.env.NODE_OPTIONS ?? '').split(/\s+/)].map((arg) => arg.replace(/_/g, '-'));
  return NODE_FLAGS.filter((flag) => {
    const name = flag.split('=', 1)[0] as string;
    return !given.some((arg) => arg === name || arg.startsWith(`${name}=`));
  });
}

/** `process.execve` (Node 22.15, 23.11 and later, POSIX): the @types/node of Node 20 does not know it. */
type Execve = (file: string, args: readonly string[], env: NodeJS.ProcessEnv) => never;

/**
 * Makes sure the processes that serve run with `NODE_FLAGS`. Where Node can replace this process
 * (`process.execve`: same pid, same stdin/stdout/stderr, so signals, exit codes and a supervisor's
 * view are unchanged), a start without them re-executes itself once with them; cluster workers
 * inherit the primary's flags. On Node 20 a process cannot replace itself, and a parent staying up
 * only to relay signals would cost 43 MiB of RSS (10 MiB of it its own, measured) against the
 * ~40 MiB the flag saves, would get every terminal or systemd signal twice, and would not be the
 * pid a supervisor watches; so there workers are forked with the flags, and a single process
 * returns the flags it lacks for its log to name. Nothing is re-executed where more than stdio must
 * survive: a cluster worker, or a process with an IPC channel (pm2's fork mode).
 */
function nodeFlags(): string[] {
  const missing = missingNodeFlags();
  if (missing.length === 0) return [];
  const execve = (process as unknown as { execve?: Execve }).execve;
  if (typeof execve === 'function' && process.platform !== 'win32' && process.channel === undefined && process.argv[1] !== undefined) {
    try {
      execve.call(process, process.execPath, [process.execPath, ...process.execArgv, ...missing, ...process.argv.slice(1)], process.env);
    } catch {
      // execve(2) failed and this process runs on unchanged: as on Node 20, below.
    }
  }
  cluster.setupPrimary({ execArgv: [...process.execArgv, ...missing] });
  return missing;
}

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

type Flags = ReturnType<typeof parse>['values'];

/** The command line: `--help` and `--version` answer and exit here, before anything else loads. */
function readFlags(argv: string[]): Flags {
  let values: Flags;
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
  return values;
}

async function readConfig(values: Flags): Promise<Config> {
  const { ConfigError } = await import('../config/errors.js');
  const { loadConfig, loadConfigFile } = await import('../config/load.js');
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
  if (cluster.isWorker) {
    const worker = (await import('./runtime/cluster.js')).workerSetup();
    if (worker !== undefined) return serve(worker.config, worker, []);
  }
  const flags = readFlags(process.argv.slice(2));
  const missing = nodeFlags();
  const config = await readConfig(flags);
  // libuv's pool runs both sharp jobs and file reads: size it so max_scaler_procs busy scaling
  // jobs still leave 4 threads for X-Sendfile and image reads (set before the pool starts). Cluster
  // workers inherit it: each has a pool of its own.
  process.env.UV_THREADPOOL_SIZE ??= String(Math.min(1024, config.imageResizer.maxScalerProcs + 4));
  if (config.workers === 1) return serve(config, undefined, missing);
  const { ConfigError } = await import('../config/errors.js');
  const { checkStartFiles } = await import('./runtime/start-files.js');
  try {
    checkStartFiles(config);
  } catch (err) {
    if (err instanceof ConfigError) fail(err.message);
    throw err;
  }
  const { runPrimary } = await import('./runtime/cluster.js');
  const { PIPE_BUF } = await import('./observe/log/destination.js');
  const { createLogger } = await import('./observe/log/logger.js');
  return runPrimary(config, createLogger(config, 1, { maxWriteBytes: PIPE_BUF }));
}

/**
 * One process serving `listen_addr`: the whole of Outrider with `workers = 1`, or one cluster
 * worker. A worker shares the primary's socket (so it never removes a socket file), reports
 * "ready" to the primary instead of logging it, and shuts down when the primary asks as on a signal.
 */
async function serve(config: Config, worker: WorkerSetup | undefined, missingFlags: readonly string[]): Promise<void> {
  // Loaded here, not at the top: the cluster primary never serves, so it never loads fastify or sharp.
  const { buildServer } = await import('./server.js');
  const { ConfigError } = await import('../config/errors.js');
  const { PIPE_BUF } = await import('./observe/log/destination.js');
  const { createLogger } = await import('./observe/log/logger.js');
  const { announceFailing, announceReady, onShutdownRequest } = await import('./runtime/cluster.js');
  const { boundAddress, describeAddr, ListenError, removeStaleSocket, reportStartFailure } = await import('./runtime/listen.js');
  // Workers and their primary share stdout: writes of whole lines up to PIPE_BUF never interleave.
  const logger = createLogger(config, 1, worker === undefined ? {} : { maxWriteBytes: PIPE_BUF });
  if (missingFlags.length > 0) {
    logger.warn(
      { missing: missingFlags, node: process.version },
      `started without ${missingFlags.join(' ')} (README, Memory) and could not re-execute itself with it (Node 22.15 or later can): run the outrider bin, or give node the flag or NODE_OPTIONS=${missingFlags.join(' ')}`,
    );
  }
  let app: ReturnType<typeof buildServer>;
  try {
    app = buildServer(config, { logger, clusterWorker: worker !== undefined });
  } catch (err) {
    // The secret is read at start when an upload route needs it: a missing or bad one is a config error.
    if (err instanceof ConfigError) fail(err.message);
    throw err;
  }
  // SIGHUP (systemctl reload): the TLS certificate and key are read again for new connections; a
  // bad pair is logged and the one in use kept. Nothing else is reloaded, and the process stays up.
  process.on('SIGHUP', () => {
    try {
      const result = app.outrider.reloadTls();
      logger.info({ signal: 'SIGHUP' }, result === 'reloaded' ? 'tls certificate reloaded' : 'SIGHUP: nothing to reload (no [tls])');
    } catch (err) {
      logger.error({ signal: 'SIGHUP', err: { message: (err as Error).message } }, 'tls reload failed: keeping the certificate in use');
    }
  });
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
      reportStartFailure(`uncaught exception while starting: ${(err as Error).message} (the fatal log line on stdout has the stack)`);
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
      app.outrider.closeTunnels();
      app.outrider.closeAllConnections();
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
    const failure =
      err instanceof ListenError ? err : new ListenError(`listen_addr ${describeAddr(addr)}`, err as NodeJS.ErrnoException, addr);
    logger.fatal({ code: failure.code }, failure.message);
    // Said on stderr too, where a configuration error is said.
    reportStartFailure(failure.message);
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
    // Before the ready line: a supervisor may signal as soon as it reads it.
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
    logger.info(
      {
        version: VERSION,
        listen: listening,
        // With [tls] the listener speaks HTTPS (HTTP/2 and HTTP/1.1 unless [tls] http2 = false).
        ...(config.tls === undefined ? {} : { tls: true, http2: config.tls.http2 }),
        metrics: app.outrider.metricsAddress(),
        backend: config.authSocket ?? config.authBackend,
      },
      'outrider ready',
    );
    logger.flush();
  }
  if (requested !== undefined) begin(requested);
}

main().catch((err: unknown) => {
  process.stderr.write(`outrider: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
