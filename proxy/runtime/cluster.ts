import cluster, { type Worker } from 'node:cluster';
import { deserialize, serialize } from 'node:v8';
import type { Logger } from 'pino';
import type { Config } from '../../config/schema.js';
import { createClusterMetrics } from '../observe/metrics/cluster.js';
import { createMetricsServer, type MetricsServer } from '../observe/metrics/server.js';
import { createHealth } from '../routes/health.js';
import { removeStaleSocket, reportStartFailure } from './listen.js';
import { VERSION } from './version.js';

/** Set on forked workers: the primary's validated `Config`, v8-serialized (RegExps survive), base64. */
const WORKER_ENV = 'OUTRIDER_WORKER';

/** worker → primary: listening, at this address ("host:port" or "unix:/path"). */
const READY = 'outrider:ready';
/** primary → worker: shut down as on this signal (`shutdown_delay`, then `shutdown_timeout`). */
const SHUTDOWN = 'outrider:shutdown';
/**
 * worker → primary: an uncaught exception; this worker takes no new connections and exits once its
 * requests are done. The primary starts its replacement at once.
 */
const FAILING = 'outrider:failing';

/** A worker that dies sooner than this after it was started counts as crashing at start. */
const STABLE_MS = 10_000;
/** Restart delays for a worker that keeps crashing at start: 100 ms, doubled each time, at most 5 s. */
const BACKOFF_FIRST_MS = 100;
const BACKOFF_MAX_MS = 5_000;
/** Beyond `shutdown_delay` + `shutdown_timeout`, how long the primary waits before it kills a worker. */
const SHUTDOWN_MARGIN_MS = 5_000;

export interface WorkerSetup {
  config: Config;
}

function isMessage<T extends { type: string }>(message: unknown, type: T['type']): message is T {
  return typeof message === 'object' && message !== null && (message as { type?: unknown }).type === type;
}

/** In a worker the primary forked: its config. Undefined in any other process. */
export function workerSetup(): WorkerSetup | undefined {
  const payload = process.env[WORKER_ENV];
  if (!cluster.isWorker || payload === undefined) return undefined;
  delete process.env[WORKER_ENV];
  return deserialize(Buffer.from(payload, 'base64')) as WorkerSetup;
}

/** Worker side: tells the primary this worker is listening. */
export function announceReady(listen: string): void {
  process.send?.({ type: READY, listen });
}

/** Worker side: tells the primary this worker failed and is draining; it forks a replacement now. */
export function announceFailing(): void {
  process.send?.({ type: FAILING });
}

/** Worker side: calls `stop` when the primary asks this worker to shut down. */
export function onShutdownRequest(stop: (signal: NodeJS.Signals) => void): void {
  process.on('message', (message: unknown) => {
    if (isMessage<{ type: typeof SHUTDOWN; signal: NodeJS.Signals }>(message, SHUTDOWN)) stop(message.signal);
  });
}

interface Slot {
  worker: Worker | undefined;
  startedAt: number;
  ready: boolean;
  /** Deaths in a row within `STABLE_MS` of starting. */
  quickDeaths: number;
  restart: NodeJS.Timeout | undefined;
}

const ignore = () => undefined;

/**
 * The cluster primary (`workers` > 1). It forks the workers, which share `listen_addr` through
 * node:cluster (the primary accepts and hands connections out round-robin, Node's default
 * everywhere but Windows; with port 0 every worker gets the port the first one bound, for as long
 * as one of them holds it), replaces a worker that dies (with a backoff when one keeps dying at
 * start), and on SIGTERM/SIGINT asks every worker to shut down as a single process would, waits
 * for them all, and exits 0. It serves no requests itself; it owns the metrics listener, whose
 * `/metrics` is the sum over the workers, and the health routes when they are on that listener.
 * `config` is validated, and the files workers read at start are checked, before this runs.
 */
export async function runPrimary(config: Config, logger: Logger): Promise<void> {
  const addr = config.listenAddr;
  const slots: Slot[] = Array.from({ length: config.workers }, () => ({
    worker: undefined,
    startedAt: 0,
    ready: false,
    quickDeaths: 0,
    restart: undefined,
  }));
  let announced = false;
  let stopping = false;
  let cleanStop = true;
  let failed = false;
  /** Workers that failed and are finishing their requests, their replacements already forked. */
  const retiring = new Set<Worker>();
  const alive = () => [...slots.flatMap((s) => (s.worker === undefined ? [] : [s.worker])), ...retiring];
  const exit = (code: number) => logger.flush(() => process.exit(code));

  // The primary holds the shared socket: a stale socket file is removed here once, never by a worker.
  if (addr.kind === 'unix') removeStaleSocket(addr.path);

  const clusterMetrics = config.prometheusListenAddr === undefined ? undefined : createClusterMetrics(alive);
  const health = config.healthOnMetricsListener
    ? createHealth({ config, isClosing: () => stopping || !slots.some((s) => s.ready), log: logger })
    : undefined;
  let metricsServer: MetricsServer | undefined;
  if (clusterMetrics !== undefined && config.prometheusListenAddr !== undefined) {
    metricsServer = createMetricsServer({ addr: config.prometheusListenAddr, registry: clusterMetrics, health, log: logger });
    try {
      await metricsServer.listen();
    } catch (err) {
      logger.fatal({ code: (err as NodeJS.ErrnoException).code }, (err as Error).message);
      reportStartFailure((err as Error).message);
      process.exitCode = 1;
      return;
    }
  }

  const fork = (slot: Slot) => {
    const env = { [WORKER_ENV]: serialize({ config } satisfies WorkerSetup).toString('base64') };
    const worker = cluster.fork(env);
    slot.worker = worker;
    slot.startedAt = performance.now();
    slot.ready = false;
    // A fork that fails (EAGAIN, ENOMEM) is followed by its 'exit' event: replaced like a crash.
    worker.on('error', (err: Error) => logger.error({ err, worker: worker.id }, 'worker process error'));
    worker.on('message', (message: unknown) => {
      if (isMessage<{ type: typeof READY; listen: string }>(message, READY)) ready(slot, worker, message.listen);
      else if (isMessage<{ type: typeof FAILING }>(message, FAILING)) retire(slot, worker);
    });
  };

  /** A worker failed: it drains on its own while a new one takes its slot, and is killed if it has not exited in time. */
  const retire = (slot: Slot, worker: Worker) => {
    if (slot.worker !== worker || stopping) return;
    retiring.add(worker);
    const deadline = setTimeout(() => {
      logger.warn({ worker: worker.id, workerPid: worker.process.pid }, 'failed worker still running past shutdown_timeout: killing it');
      worker.process.kill('SIGKILL');
    }, config.shutdownTimeoutMs + SHUTDOWN_MARGIN_MS);
    deadline.unref();
    worker.once('exit', () => clearTimeout(deadline));
    slot.worker = undefined;
    slot.ready = false;
    replace(slot, { worker: worker.id, workerPid: worker.process.pid }, 'worker failed: starting a new one while it finishes its requests');
  };

  /** Forks a new worker into `slot`, with a backoff when the slot's workers keep dying soon after starting. */
  const replace = (slot: Slot, fields: Record<string, unknown>, message: string) => {
    slot.quickDeaths = performance.now() - slot.startedAt < STABLE_MS ? slot.quickDeaths + 1 : 0;
    const delayMs = slot.quickDeaths === 0 ? 0 : Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** (slot.quickDeaths - 1));
    logger.error({ ...fields, restartInMs: delayMs }, message);
    slot.restart = setTimeout(() => {
      slot.restart = undefined;
      fork(slot);
    }, delayMs);
  };

  const ready = (slot: Slot, worker: Worker, listen: string) => {
    slot.ready = true;
    logger.info({ worker: worker.id, workerPid: worker.process.pid }, 'worker ready');
    if (stopping) {
      // Forked before the signal, listening after it: it is told now.
      send(worker, { type: SHUTDOWN, signal: 'SIGTERM' });
      return;
    }
    if (announced || !slots.every((s) => s.ready)) return;
    announced = true;
    logger.info(
      {
        version: VERSION,
        listen,
        ...(config.tls === undefined ? {} : { tls: true, http2: config.tls.http2 }),
        metrics: metricsServer?.address(),
        backend: config.authSocket ?? config.authBackend,
        workers: config.workers,
      },
      'outrider ready',
    );
  };

  cluster.on('exit', (worker, code, signal) => {
    if (retiring.delete(worker)) {
      clusterMetrics?.retire(worker);
      logger.info({ worker: worker.id, workerPid: worker.process.pid, code, signal: signal ?? undefined }, 'failed worker stopped');
      if (stopping && alive().length === 0) finish();
      return;
    }
    const slot = slots.find((s) => s.worker === worker);
    if (slot === undefined) return;
    slot.worker = undefined;
    slot.ready = false;
    clusterMetrics?.retire(worker);
    if (failed) return;
    const fields = { worker: worker.id, workerPid: worker.process.pid, code, signal: signal ?? undefined };
    if (stopping) {
      if (code !== 0) cleanStop = false;
      logger.info(fields, 'worker stopped');
      if (alive().length === 0) finish();
      return;
    }
    if (!announced) {
      // As a single process would: a listener that cannot open (EADDRINUSE…) stops Outrider.
      logger.fatal(fields, 'worker exited before Outrider was ready: stopping');
      failed = true;
      stopping = true;
      for (const w of alive()) w.process.kill('SIGKILL');
      void metricsServer?.close();
      exit(code !== null && code !== 0 ? code : 1);
      return;
    }
    replace(slot, fields, 'worker exited unexpectedly: starting a new one');
  });

  let backstop: NodeJS.Timeout | undefined;
  const finish = () => {
    clearTimeout(backstop);
    void (metricsServer?.close() ?? Promise.resolve()).then(() => {
      logger.info('stopped');
      exit(cleanStop ? 0 : 1);
    });
  };

  const stop = (signal: NodeJS.Signals) => {
    if (stopping) {
      logger.warn({ signal }, 'second signal: exiting now');
      for (const w of alive()) w.process.kill('SIGKILL');
      exit(1);
      return;
    }
    stopping = true;
    health?.drain();
    for (const slot of slots) clearTimeout(slot.restart);
    const workers = alive();
    logger.info({ signal, workers: workers.length }, 'shutting down: draining every worker');
    // On Ctrl-C the workers got SIGINT too and are shutting down already: for them this is a no-op.
    for (const worker of workers) send(worker, { type: SHUTDOWN, signal });
    if (workers.length === 0) {
      finish();
      return;
    }
    backstop = setTimeout(
      () => {
        logger.warn('workers still running past shutdown_delay + shutdown_timeout: killing them');
        cleanStop = false;
        for (const w of alive()) w.process.kill('SIGKILL');
      },
      config.shutdownDelayMs + config.shutdownTimeoutMs + SHUTDOWN_MARGIN_MS,
    );
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  // systemctl reload signals the primary alone: each worker reloads its own TLS pair.
  process.on('SIGHUP', () => {
    for (const w of alive()) w.process.kill('SIGHUP');
  });

  for (const slot of slots) fork(slot);
}

/** Sends unless the worker's channel is gone (it is exiting; its 'exit' event follows). */
function send(worker: Worker, message: { type: string; signal: NodeJS.Signals }): void {
  if (worker.isConnected()) worker.send(message, ignore);
}
