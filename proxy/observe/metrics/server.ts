import { createServer, type ServerResponse } from 'node:http';
import type { FastifyBaseLogger } from 'fastify';
import type { ListenAddr } from '../../../config/schema.js';
import type { Health } from '../../routes/health.js';
import { boundAddress, describeAddr, ListenError, removeStaleSocket } from '../../runtime/listen.js';

export const METRICS_PATH = '/metrics';

/** What `/metrics` answers: a prom-client `Registry`, or the cluster primary's sum over its workers. */
export interface MetricsSource {
  readonly contentType: string;
  metrics(): Promise<string>;
}

export interface MetricsServerOptions {
  addr: ListenAddr;
  registry: MetricsSource;
  /** `health_on_metrics_listener`: the health routes are answered here instead of on the proxy. */
  health: Health | undefined;
  log: FastifyBaseLogger;
}

export interface MetricsServer {
  listen(): Promise<void>;
  close(): Promise<void>;
  /** Where it listens once listening: "host:port" ("[::1]:port" for IPv6) or "unix:/path". */
  address(): string | undefined;
}

/**
 * The Prometheus listener (`prometheus_listen_addr`, Workhorse's `-prometheusListenAddr`): its own
 * server, so scrapes never queue behind proxied traffic and the endpoint is not exposed where the
 * proxy is. `GET /metrics` in Prometheus' text format, the health routes when asked, 404 for
 * anything else.
 */
export function createMetricsServer(opts: MetricsServerOptions): MetricsServer {
  const { registry } = opts;
  const server = createServer((req, res) => {
    if (opts.health?.serve(req, res)) return;
    const url = req.url ?? '/';
    const q = url.indexOf('?');
    if ((q === -1 ? url : url.slice(0, q)) !== METRICS_PATH) {
      plain(res, 404, 'Not Found\n');
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      plain(res, 405, 'Method Not Allowed\n', ['allow', 'GET, HEAD']);
      return;
    }
    registry.metrics().then(
      (text) => {
        res.writeHead(200, [
          'content-type',
          registry.contentType,
          'content-length',
          String(Buffer.byteLength(text)),
          'cache-control',
          'no-store',
        ]);
        res.end(text);
      },
      (err: unknown) => {
        opts.log.error({ err, subsystem: 'metrics' }, 'metrics could not be collected');
        plain(res, 500, 'Internal Server Error\n');
      },
    );
  });
  server.keepAliveTimeout = 75_000;
  const where = describeAddr(opts.addr);

  return {
    listen() {
      const addr = opts.addr;
      if (addr.kind === 'unix') removeStaleSocket(addr.path);
      return new Promise((resolve, reject) => {
        const onError = (err: NodeJS.ErrnoException) => reject(new ListenError(`prometheus_listen_addr ${where}`, err, addr));
        server.once('error', onError);
        const ready = () => {
          server.off('error', onError);
          server.on('error', (err) => opts.log.error({ err, subsystem: 'metrics' }, 'metrics listener failed'));
          resolve();
        };
        if (addr.kind === 'unix') server.listen(addr.path, ready);
        else server.listen(addr.port, addr.host, ready);
      });
    },
    close() {
      if (!server.listening) return Promise.resolve();
      return new Promise((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
    },
    address() {
      return boundAddress(server.address());
    },
  };
}

function plain(res: ServerResponse, status: number, body: string, extra: string[] = []): void {
  res.writeHead(status, ['content-type', 'text/plain; charset=utf-8', 'content-length', String(Buffer.byteLength(body)), ...extra]);
  res.end(body);
}
