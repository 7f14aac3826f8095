import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { collectDefaultMetrics, Gauge, Registry } from 'prom-client';
import { injecterName, SCALED_IMG_PREFIX, SEND_URL_PREFIX } from '../../../protocol/send-data.js';
import { IMAGE_RESIZE_STATUS, SCALE_OUTCOMES, type ScaleOutcomeName } from '../../../scaler/outcomes.js';
import {
  type AnyFamily,
  type CounterChild,
  CounterFamily,
  type HistogramChild,
  HistogramFamily,
  lookup,
  registerFamily,
} from './families.js';

/**
 * `image_resize_requests_total{status}` values, all exported from the start at 0: the statuses of
 * the scaler's outcomes (`scaler/outcomes.ts`), once each, in the order of its table.
 */
const IMAGE_RESIZE_STATUSES = [...new Set(Object.values(IMAGE_RESIZE_STATUS))];

/**
 * `upload_requests_total{outcome}` and `upload_bytes_total{outcome}` values: stored and forwarded,
 * refused by the backend's authorize answer, rejected for the client's fault (a 4xx: too large,
 * malformed, an image whose metadata cannot be removed, a body that stopped arriving), failed on
 * Outrider's or a store's side (a 5xx: what an alert should watch).
 */
export const UPLOAD_OUTCOMES = ['stored', 'refused', 'rejected', 'failed'] as const;
export type UploadOutcome = (typeof UPLOAD_OUTCOMES)[number];

/** The `route` label of a request only the catch-all matched (plain proxying). */
export const CATCH_ALL_ROUTE = '*';

/** Workhorse's buckets (`internal/upstream/metrics.go`, `internal/imageresizer`). */
const DURATION_BUCKETS = [0.005, 0.025, 0.1, 0.5, 1, 10, 30, 60, 300];
const SIZE_BUCKETS = [10, 64, 256, 1024, 64 * 1024, 256 * 1024, 1024 * 1024, 64 * 1024 * 1024];
/**
 * What the byte families count: what the connection carried after the response's header block,
 * read from the socket's byte counter. That is the body, plus chunked-encoding framing (a few
 * bytes per chunk) when the response has no Content-Length.
 */
const AFTER_HEADERS = 'headers not included: the body, plus chunked-encoding framing when the response is chunked';
/** Distinct `width` label values per content type of `image_resize_duration_seconds`; then 'other'. */
const WIDTH_LABELS = 64;
const RESIZE_BUCKETS = [0.025, 0.05, 0.1, 0.2, 0.4, 0.8];

/**
 * The namespace whose names are GitLab Workhorse's, byte for byte, so GitLab's dashboards and
 * alerts read Outrider as they read Workhorse.
 */
const WORKHORSE_NAMESPACE = 'gitlab_workhorse';

/**
 * prom-client's default metrics that `promtool check metrics` refuses: gauges named `_total`.
 * Each is the sum of the labelled gauge beside it (`sum without (type) (nodejs_active_handles)`),
 * so they are dropped, not renamed: nothing is lost and no made-up name appears.
 */
const DROPPED_DEFAULT_METRICS = ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total'];

/**
 * The name of one of Workhorse's four counters that have no `_total` suffix (`senddata_responses`,
 * `senddata_response_bytes`, `sendfile_requests`, `sendfile_bytes`: named before client_golang
 * and promtool asked for it). Under `gitlab_workhorse` they keep Workhorse's exact names; under
 * any other namespace they end in `_total`, as Prometheus' naming rules want of a counter.
 */
function workhorseCounterName(namespace: string, name: string): string {
  return namespace === WORKHORSE_NAMESPACE ? `${namespace}_${name}` : `${namespace}_${name}_total`;
}

/** The interceptors counted as send-data injecters (`senddata_responses_total{injecter}`); X-Sendfile has its own family. */
const INJECTERS = [injecterName(SEND_URL_PREFIX), injecterName(SCALED_IMG_PREFIX)];
const SENDFILE = 'sendfile';
/** Workhorse's `sendfile_requests{type}`: artifact downloads apart from the rest. */
const ARTIFACTS = /builds\/[0-9]+\/artifacts/;

export interface MetricsOptions {
  /** `metrics_namespace`: every Outrider family is `<namespace>_<name>`. */
  namespace: string;
  /** `[image_resizer] max_scaler_procs`, exported as `image_resize_max_processes`. */
  maxScalerProcs: number;
  /** Scaling jobs running now, read at scrape time. */
  scalerRunning: () => number;
  /** `[image_resizer.shared_cache]` is set: its families are exported. */
  sharedCache?: boolean;
}

/** `image_shared_cache_requests_total{result}` values: what a lookup in the shared tier found. */
const SHARED_CACHE_RESULTS = ['hit', 'miss', 'error', 'skipped'] as const;
/** `image_shared_cache_lease_waits_total{result}` values: how a wait for another node's scaling ended. */
const LEASE_WAIT_RESULTS = ['filled', 'gone', 'timeout'] as const;

/**
 * `tunnels_closed_total{reason}` values. A tunnel (the backend answered 101) ends as `client` or
 * `backend` (that side's connection ended first, or was reset), `idle` (`[websocket]
 * idle_timeout`), `error` (any other socket error) or `shutdown` (still open when
 * `shutdown_timeout` ran out). An upgrade request that never became one ends as `refused`
 * (`max_tunnels` reached, or shutting down: 503), `rejected` (a request Outrider cannot forward:
 * 400), `declined` (the backend answered without switching, relayed as it came), `failed` (the
 * backend could not be reached, did not answer in time, or switched to another protocol: 502,
 * 504) or `client` (the client left before the answer).
 */
const TUNNEL_CLOSE_REASONS = ['client', 'backend', 'idle', 'error', 'shutdown', 'refused', 'rejected', 'declined', 'failed'] as const;
export type TunnelCloseReason = (typeof TUNNEL_CLOSE_REASONS)[number];

/** Where the tunnel families are read at scrape time (the tunnels' owner). */
export interface TunnelTotals {
  /** Tunnels open now: a count, no walk. */
  open(): number;
  /** Bytes carried so far, open tunnels included (walks them, once per scrape): client to backend
   * after the request head, backend to client after the 101 head. */
  bytes(): { upstream: number; downstream: number };
}

/**
 * What Outrider measures, recorded where it happens. `begin` makes one small `Measure` per request;
 * every other call is a few additions on numbers that already exist: label children are made once
 * per label combination and kept, and prom-client reads them only when Prometheus scrapes. Built only when `prometheus_listen_addr` is set; callers hold
 * `Metrics | undefined` and measure nothing otherwise.
 */
export interface Metrics {
  readonly registry: Registry;
  /**
   * Starts measuring one request: in flight until its response closes, labelled `route` (the
   * catch-all by default). The stages it goes through name its route and interceptor on the
   * `Measure` returned.
   */
  begin(req: IncomingMessage, res: ServerResponse, route?: string): Measure;
  /** One scaled-image request, counted under its outcome's status (`IMAGE_RESIZE_STATUS`). */
  imageResize(outcome: ScaleOutcomeName): void;
  /** Time spent on a scaled image or a 304 for one, by the image's type and the width asked for. */
  imageResizeDuration(contentType: string, width: number, seconds: number): void;
  /** All scaling slots were busy: the original was served. */
  imageResizeLimitExceeded(): void;
  /** A lookup in the shared tier (Redis): found, not found, failed, or skipped (unavailable). */
  sharedCacheLookup(result: (typeof SHARED_CACHE_RESULTS)[number]): void;
  /** A wait for another node's scaling ended. */
  sharedCacheLeaseWait(result: (typeof LEASE_WAIT_RESULTS)[number]): void;
  /** Scaled-image bytes read from or written to the shared tier. */
  sharedCacheBytes(direction: 'read' | 'written', bytes: number): void;
  /** The shared tier became available (connected, breaker closed) or not. */
  sharedCacheAvailable(available: boolean): void;
  /** An upload request's outcome, with the bytes read from the client for it so far. */
  upload(outcome: UploadOutcome, req: IncomingMessage): void;
  /** The backend switched protocols (101): a tunnel is open. */
  tunnelOpened(): void;
  /** An upgrade request ended: a tunnel closed, or a request that never became one. */
  tunnelClosed(reason: TunnelCloseReason): void;
  /** Where the open-tunnel gauge and the byte counters are read from at scrape time (the tunnels' owner). */
  readTunnels(source: TunnelTotals): void;
}

/** One request being measured, from `Metrics.begin` until its response closes. */
export interface Measure {
  /** Names the route pattern that matched: an upload route's `RegExp.source`. */
  route(route: string): void;
  /** The backend's response was taken over by this interceptor: counted by send-data injecter or as X-Sendfile. */
  intercepted(interceptor: string): void;
}

/** The four HTTP families' children for one route, method and status, resolved once. */
interface HttpSeries {
  requests: CounterChild;
  duration: HistogramChild;
  requestSize: HistogramChild;
  responseSize: HistogramChild;
}

/** A connection's byte counters when its previous request ended: each request's sizes are the differences. */
interface SocketMark {
  read: number;
  written: number;
}

/** Bytes read from the client for the request on this socket so far (request line, headers and body). */
function bytesReadFor(socket: Socket | null | undefined, marks: WeakMap<Socket, SocketMark>): number {
  const read = socket?.bytesRead;
  return typeof read === 'number' ? read - (marks.get(socket as Socket)?.read ?? 0) : 0;
}

export function createMetrics(opts: MetricsOptions): Metrics {
  const registry = new Registry();
  const ns = opts.namespace;
  const register = <T extends AnyFamily>(family: T): T => registerFamily(registry, family);
  const httpLabels = ['code', 'method', 'route'];
  const requests = register(new CounterFamily(`${ns}_http_requests_total`, 'How many HTTP requests Outrider has handled.', httpLabels));
  const duration = register(
    new HistogramFamily(
      `${ns}_http_request_duration_seconds`,
      'How long Outrider took to handle a request, until its response was complete.',
      httpLabels,
      DURATION_BUCKETS,
    ),
  );
  const requestSize = register(
    new HistogramFamily(
      `${ns}_http_request_size_bytes`,
      'Bytes read from the client per request: request line, headers and body.',
      httpLabels,
      SIZE_BUCKETS,
    ),
  );
  const responseSize = register(
    new HistogramFamily(
      `${ns}_http_response_size_bytes`,
      `Bytes sent to the client per request, ${AFTER_HEADERS}.`,
      httpLabels,
      SIZE_BUCKETS,
    ),
  );
  let inFlight = 0;
  new Gauge({
    name: `${ns}_http_in_flight_requests`,
    help: 'Requests being handled now.',
    registers: [registry],
    collect() {
      this.set(inFlight);
    },
  });

  const resizeRequests = register(
    new CounterFamily(`${ns}_image_resize_requests_total`, 'Scaled-image requests (send-scaled-img) by outcome.', ['status']),
  );
  for (const status of IMAGE_RESIZE_STATUSES) resizeRequests.child(status);
  const resizeByOutcome = new Map<string, CounterChild>(SCALE_OUTCOMES.map((o) => [o, resizeRequests.child(IMAGE_RESIZE_STATUS[o])]));
  const resizeDuration = register(
    new HistogramFamily(
      `${ns}_image_resize_duration_seconds`,
      'Time to serve a scaled image or a 304 for one, data transfer included.',
      ['content_type', 'width'],
      RESIZE_BUCKETS,
    ),
  );
  const resizeLimit = register(
    new CounterFamily(
      `${ns}_image_resize_concurrency_limit_exceeds_total`,
      'Scaled-image requests served the original because every scaling slot was busy.',
      [],
    ),
  ).child();
  new Gauge({
    name: `${ns}_image_resize_processes`,
    help: 'Scaling jobs running now.',
    registers: [registry],
    collect() {
      this.set(opts.scalerRunning());
    },
  });
  new Gauge({
    name: `${ns}_image_resize_max_processes`,
    help: 'Scaling jobs allowed at once (max_scaler_procs, summed over worker processes).',
    registers: [registry],
  }).set(opts.maxScalerProcs);

  const senddataResponses = register(
    new CounterFamily(workhorseCounterName(ns, 'senddata_responses'), 'Backend responses taken over by a send-data injecter.', [
      'injecter',
    ]),
  );
  const senddataBytes = register(
    new CounterFamily(
      workhorseCounterName(ns, 'senddata_response_bytes'),
      `Bytes sent to the client by send-data injecters, ${AFTER_HEADERS}.`,
      ['injecter'],
    ),
  );
  const injecters = new Map(
    INJECTERS.map((name) => [name, { responses: senddataResponses.child(name), bytes: senddataBytes.child(name) }]),
  );
  const sendfileRequests = register(
    new CounterFamily(workhorseCounterName(ns, 'sendfile_requests'), 'X-Sendfile responses served.', ['type']),
  );
  const sendfileBytes = register(
    new CounterFamily(workhorseCounterName(ns, 'sendfile_bytes'), `Bytes sent to the client for X-Sendfile, ${AFTER_HEADERS}.`, ['type']),
  );
  const sendfileByType = new Map(
    ['artifacts', 'other'].map((type) => [type, { requests: sendfileRequests.child(type), bytes: sendfileBytes.child(type) }]),
  );

  // The shared tier's families exist only when it is configured; each counter starts at 0.
  let sharedLookup = new Map<string, CounterChild>();
  let sharedWait = new Map<string, CounterChild>();
  let sharedBytesBy: Partial<Record<'read' | 'written', CounterChild>> = {};
  let sharedAvailable = 0;
  if (opts.sharedCache === true) {
    const lookups = register(
      new CounterFamily(`${ns}_image_shared_cache_requests_total`, 'Lookups in the shared scaled-image cache (Redis) by result.', [
        'result',
      ]),
    );
    sharedLookup = new Map(SHARED_CACHE_RESULTS.map((r) => [r, lookups.child(r)]));
    const waits = register(
      new CounterFamily(
        `${ns}_image_shared_cache_lease_waits_total`,
        "Waits for another node's scaling of the same image (its lease), by how they ended.",
        ['result'],
      ),
    );
    sharedWait = new Map(LEASE_WAIT_RESULTS.map((r) => [r, waits.child(r)]));
    const bytes = register(
      new CounterFamily(`${ns}_image_shared_cache_bytes_total`, 'Scaled-image bytes read from or written to the shared cache.', [
        'direction',
      ]),
    );
    sharedBytesBy = { read: bytes.child('read'), written: bytes.child('written') };
    new Gauge({
      name: `${ns}_image_shared_cache_available`,
      help: 'Processes whose shared cache is usable now (connected, circuit breaker closed).',
      registers: [registry],
      collect() {
        this.set(sharedAvailable);
      },
    });
  }

  const uploadRequests = register(new CounterFamily(`${ns}_upload_requests_total`, 'Accelerated upload requests by outcome.', ['outcome']));
  const uploadBytes = register(
    new CounterFamily(
      `${ns}_upload_bytes_total`,
      'Bytes read from clients for accelerated upload requests, by outcome (headers, multipart framing and files).',
      ['outcome'],
    ),
  );
  const uploads = new Map(UPLOAD_OUTCOMES.map((o) => [o, { requests: uploadRequests.child(o), bytes: uploadBytes.child(o) }]));

  const tunnelsOpened = register(
    new CounterFamily(`${ns}_tunnels_opened_total`, 'Upgrade requests the backend switched (101): tunnels opened.', []),
  ).child();
  const tunnelsClosed = register(
    new CounterFamily(
      `${ns}_tunnels_closed_total`,
      'Upgrade requests ended, by reason: tunnels closed (client, backend, idle, error, shutdown), or never opened (refused, rejected, declined, failed, client).',
      ['reason'],
    ),
  );
  const tunnelClosedBy = new Map(TUNNEL_CLOSE_REASONS.map((r) => [r, tunnelsClosed.child(r)]));
  let tunnels: TunnelTotals = { open: () => 0, bytes: () => ({ upstream: 0, downstream: 0 }) };
  new Gauge({
    name: `${ns}_tunnels_open`,
    help: 'Tunnels open now.',
    registers: [registry],
    collect() {
      this.set(tunnels.open());
    },
  });
  const tunnelBytes = register(
    new SampledCounterFamily(
      `${ns}_tunnel_bytes_total`,
      'Bytes carried by tunnels after the heads: upstream (client to backend) and downstream (backend to client), open tunnels included.',
      ['direction'],
      (family) => {
        const totals = tunnels.bytes();
        family.child('upstream').value = totals.upstream;
        family.child('downstream').value = totals.downstream;
      },
    ),
  );
  tunnelBytes.child('upstream');
  tunnelBytes.child('downstream');

  collectDefaultMetrics({ register: registry });
  for (const name of DROPPED_DEFAULT_METRICS) registry.removeSingleMetric(name);

  // route → method → status → series. Every level is bounded: routes are the configured patterns,
  // methods the ones Node's parser accepts, statuses three digits.
  const table = new Map<string, Map<string, Map<number, HttpSeries>>>();
  const seriesFor = (route: string, method: string, status: number): HttpSeries => {
    const byStatus = lookup(
      lookup(table, route, () => new Map()),
      method,
      () => new Map<number, HttpSeries>(),
    );
    let series = byStatus.get(status);
    if (series === undefined) {
      const code = String(status);
      series = {
        requests: requests.child(code, method, route),
        duration: duration.child(code, method, route),
        requestSize: requestSize.child(code, method, route),
        responseSize: responseSize.child(code, method, route),
      };
      byStatus.set(status, series);
    }
    return series;
  };

  const marks = new WeakMap<Socket, SocketMark>();

  /** Records one request's series when its response closes. */
  function finish(m: RequestMeasure): void {
    inFlight--;
    const res = m.res;
    const req = res.req;
    const status = res.headersSent ? res.statusCode : 499;
    const series = seriesFor(m.routeLabel, req.method as string, status);
    series.requests.inc();
    series.duration.observe((performance.now() - m.start) / 1000);
    // Sizes from the connection's byte counters since its previous request ended: exact for
    // HTTP/1.1 keep-alive, with no per-chunk work. The response's header block is not body.
    const socket = m.socket;
    let body = 0;
    if (socket !== null && typeof socket.bytesRead === 'number') {
      const read = socket.bytesRead;
      const written = socket.bytesWritten;
      const header = (res as ServerResponse & { _header?: string | null })._header;
      let mark = marks.get(socket);
      if (mark === undefined) {
        mark = { read: 0, written: 0 };
        marks.set(socket, mark);
      }
      series.requestSize.observe(read - mark.read);
      body = Math.max(0, written - mark.written - (typeof header === 'string' ? header.length : 0));
      series.responseSize.observe(body);
      mark.read = read;
      mark.written = written;
    }
    const interceptor = m.interceptor;
    if (interceptor === undefined) return;
    if (interceptor === SENDFILE) {
      const counters = sendfileByType.get(ARTIFACTS.test(req.url as string) ? 'artifacts' : 'other');
      counters?.requests.inc();
      counters?.bytes.inc(body);
      return;
    }
    const injecter = injecters.get(interceptor);
    injecter?.responses.inc();
    injecter?.bytes.inc(body);
  }

  const resizeDurations = new Map<string, Map<number, HistogramChild>>();
  // `RegExp.source` escapes every "/": the label shows the pattern as configured. One entry per route.
  const routeLabels = new Map<string, string>();

  return {
    registry,
    begin(req, res, route = CATCH_ALL_ROUTE) {
      inFlight++;
      return new RequestMeasure(req, res, route, routeLabels, finish);
    },
    imageResize(outcome) {
      resizeByOutcome.get(outcome)?.inc();
    },
    imageResizeDuration(contentType, width, seconds) {
      // The type comes from the backend's instruction: anything but the two scaled formats is one value.
      const type = contentType === 'image/png' || contentType === 'image/jpeg' ? contentType : 'other';
      const byWidth = lookup(resizeDurations, type, () => new Map());
      // Widths are Workhorse's exact label values, for the first WIDTH_LABELS seen: a backend that
      // passes any ?width= through must not make thousands of series; later ones share 'other'.
      const key = byWidth.has(width) || byWidth.size < WIDTH_LABELS ? width : 0;
      lookup(byWidth, key, () => resizeDuration.child(type, key === 0 ? 'other' : String(width))).observe(seconds);
    },
    imageResizeLimitExceeded() {
      resizeLimit.inc();
    },
    sharedCacheLookup(result) {
      sharedLookup.get(result)?.inc();
    },
    sharedCacheLeaseWait(result) {
      sharedWait.get(result)?.inc();
    },
    sharedCacheBytes(direction, bytes) {
      sharedBytesBy[direction]?.inc(bytes);
    },
    sharedCacheAvailable(available) {
      sharedAvailable = available ? 1 : 0;
    },
    upload(outcome, req) {
      const counters = uploads.get(outcome);
      counters?.requests.inc();
      counters?.bytes.inc(req.httpVersionMajor === 2 ? 0 : bytesReadFor(req.socket as Socket | null, marks));
    },
    tunnelOpened() {
      tunnelsOpened.inc();
    },
    tunnelClosed(reason) {
      tunnelClosedBy.get(reason)?.inc();
    },
    readTunnels(source) {
      tunnels = source;
    },
  };
}

/**
 * A counter family whose values are read from their owner when Prometheus scrapes (bytes of
 * tunnels still open keep counting), not added to as things happen. The owner keeps them monotonic.
 */
class SampledCounterFamily extends CounterFamily {
  private readonly sample: (family: CounterFamily) => void;
  constructor(name: string, help: string, labelNames: readonly string[], sample: (family: CounterFamily) => void) {
    super(name, help, labelNames);
    this.sample = sample;
  }
  override async get() {
    this.sample(this);
    return super.get();
  }
}

/** One measured request: what its series are chosen by once its response closes. */
class RequestMeasure implements Measure {
  readonly res: ServerResponse;
  readonly start = performance.now();
  routeLabel: string;
  interceptor: string | undefined = undefined;
  /** Read at the start: undici sets `req.socket` to null when it is done with a request body it forwarded. */
  readonly socket: Socket | null;
  private readonly routeLabels: Map<string, string>;

  constructor(
    req: IncomingMessage,
    res: ServerResponse,
    route: string,
    routeLabels: Map<string, string>,
    finish: (m: RequestMeasure) => void,
  ) {
    this.res = res;
    this.routeLabel = route;
    // An HTTP/2 connection's counters are shared by its streams: they measure no one request.
    this.socket = req.httpVersionMajor === 2 ? null : (req.socket as Socket | null);
    this.routeLabels = routeLabels;
    res.on('close', () => finish(this));
  }

  route(route: string): void {
    // `RegExp.source` escapes every "/": the label shows the pattern as configured. One entry per route.
    this.routeLabel = lookup(this.routeLabels, route, () => route.replaceAll('\\/', '/'));
  }

  intercepted(interceptor: string): void {
    this.interceptor = interceptor;
  }
}
