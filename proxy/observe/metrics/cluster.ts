import cluster, { type Worker } from 'node:cluster';
import { AggregatorRegistry, type Registry } from 'prom-client';
import type { MetricsSource } from './server.js';

const REQUEST = 'outrider:metrics-request';
const RESPONSE = 'outrider:metrics-response';

/** How long a scrape waits for every worker's registry; a worker slower than that fails the scrape. */
const SCRAPE_TIMEOUT_MS = 3_000;

/** One registry's metrics as `getMetricsAsJSON()` gives them. */
type Snapshot = Awaited<ReturnType<Registry['getMetricsAsJSON']>>;

interface MetricsRequest {
  type: typeof REQUEST;
  id: number;
}

interface MetricsResponse {
  type: typeof RESPONSE;
  id: number;
  metrics?: Snapshot;
  error?: string;
}

function isMessage<T extends { type: string }>(message: unknown, type: T['type']): message is T {
  return typeof message === 'object' && message !== null && (message as { type?: unknown }).type === type;
}

/**
 * Worker side: answers the primary's scrape requests with this worker's registry (as JSON, the
 * form prom-client aggregates). Returns a function that stops answering.
 */
export function answerMetricsRequests(registry: Registry): () => void {
  const onMessage = (message: unknown) => {
    if (!isMessage<MetricsRequest>(message, REQUEST)) return;
    registry.getMetricsAsJSON().then(
      (metrics) => process.send?.({ type: RESPONSE, id: message.id, metrics } satisfies MetricsResponse),
      (err: unknown) => process.send?.({ type: RESPONSE, id: message.id, error: (err as Error).message } satisfies MetricsResponse),
    );
  };
  process.on('message', onMessage);
  return () => process.off('message', onMessage);
}

export interface ClusterMetrics extends MetricsSource {
  /** A worker exited: its counters and histograms, as last scraped, stay in every later sum. */
  retire(worker: Worker): void;
}

/**
 * Primary side: one scrape asks every connected worker for its registry and sums them with
 * prom-client's `AggregatorRegistry.aggregate` (each family's `aggregator`: Outrider's are all
 * `sum`, so in-flight requests and running scaling jobs add up across workers, and so do the
 * counters). Not `AggregatorRegistry.clusterMetrics()`: that one waits its full 5 s and fails the
 * scrape when a worker dies mid-scrape, and keeps every timed-out request forever.
 *
 * A worker that dies takes its counts with it, and a sum that drops reads as a counter reset to
 * Prometheus: `rate()` would show a spike of the whole remaining total. So the counters and
 * histograms of a worker that exits are kept as last scraped and added to every later sum; only
 * the increments since that scrape are lost. Gauges of a dead worker are dropped.
 */
export function createClusterMetrics(workers: () => Worker[]): ClusterMetrics {
  let nextId = 0;
  const pending = new Map<number, { waiting: Set<number>; responses: Map<number, Snapshot>; done: (err?: Error) => void }>();
  const last = new Map<number, Snapshot>();
  let retired: Promise<Snapshot> = Promise.resolve([]);

  cluster.on('message', (worker, message: unknown) => {
    if (!isMessage<MetricsResponse>(message, RESPONSE)) return;
    const scrape = pending.get(message.id);
    if (scrape === undefined || !scrape.waiting.delete(worker.id)) return;
    if (message.error !== undefined || message.metrics === undefined) {
      scrape.done(new Error(`worker ${worker.id}: ${message.error ?? 'no metrics'}`));
      return;
    }
    scrape.responses.set(worker.id, message.metrics);
    if (scrape.waiting.size === 0) scrape.done();
  });
  // Registered before the primary's own 'exit' listener, which retires the worker next.
  cluster.on('exit', (worker) => {
    for (const scrape of pending.values()) {
      // A worker that died mid-scrape is not waited for: what it had goes to `retired`. One that
      // answered this scrape and then died is retired with that answer, and left out of the sum
      // here, so it is neither counted twice now nor missing (a counter drop) at the next scrape.
      const answered = scrape.responses.get(worker.id);
      if (answered !== undefined) {
        scrape.responses.delete(worker.id);
        last.set(worker.id, answered);
      }
      if (scrape.waiting.delete(worker.id) && scrape.waiting.size === 0) scrape.done();
    }
  });

  const collect = (): Promise<Map<number, Snapshot>> =>
    new Promise((resolve, reject) => {
      const id = nextId++;
      const scrape = {
        waiting: new Set<number>(),
        responses: new Map<number, Snapshot>(),
        done: (err?: Error) => {
          clearTimeout(timer);
          pending.delete(id);
          if (err === undefined) resolve(scrape.responses);
          else reject(err);
        },
      };
      const timer = setTimeout(() => scrape.done(new Error(`workers did not answer within ${SCRAPE_TIMEOUT_MS} ms`)), SCRAPE_TIMEOUT_MS);
      pending.set(id, scrape);
      for (const worker of workers()) {
        if (!worker.isConnected()) continue;
        scrape.waiting.add(worker.id);
        // An exiting worker's send fails: its 'exit' event drops it from the scrape.
        worker.send({ type: REQUEST, id } satisfies MetricsRequest, () => undefined);
      }
      if (scrape.waiting.size === 0) scrape.done();
    });

  return {
    contentType: AggregatorRegistry.PROMETHEUS_CONTENT_TYPE,
    async metrics() {
      const responses = await collect();
      for (const [id, snapshot] of responses) last.set(id, snapshot);
      const snapshots = [...responses.values(), await retired];
      return AggregatorRegistry.aggregate(snapshots).metrics();
    },
    retire(worker) {
      const snapshot = last.get(worker.id);
      last.delete(worker.id);
      if (snapshot === undefined) return;
      const kept = snapshot.filter((m) => String(m.type) === 'counter' || String(m.type) === 'histogram');
      retired = retired.then((before) => AggregatorRegistry.aggregate([before, kept]).getMetricsAsJSON() as Promise<Snapshot>);
    },
  };
}
