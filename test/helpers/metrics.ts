import { spawnSync } from 'node:child_process';
import type { FastifyInstance } from 'fastify';
import { request } from 'undici';

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export interface Scrape {
  text: string;
  samples: Sample[];
  /** Samples of `name` whose labels include `labels`. */
  series(name: string, labels?: Record<string, string>): Sample[];
  /** The one sample of `name` with exactly these label values among its labels (0 when absent). */
  value(name: string, labels?: Record<string, string>): number;
}

/** The metrics listener's URL (`prometheus_listen_addr`), once the app is ready. */
export function metricsUrl(app: FastifyInstance): string {
  const addr = app.outrider.metricsAddress();
  if (addr === undefined) throw new Error('no metrics listener');
  return `http://${addr}`;
}

/** GET /metrics on the metrics listener, parsed from Prometheus' text format. */
export async function scrape(app: FastifyInstance): Promise<Scrape> {
  // A response is counted when it closes on the server, a moment after the client has read it.
  await new Promise((r) => setTimeout(r, 20));
  const res = await request(`${metricsUrl(app)}/metrics`);
  if (res.statusCode !== 200) throw new Error(`/metrics answered ${res.statusCode}`);
  const text = await res.body.text();
  return parseMetrics(text);
}

const LINE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

export function parseMetrics(text: string): Scrape {
  const samples: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = LINE.exec(line);
    if (m === null) throw new Error(`not a sample: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(LABEL))
      labels[l[1] as string] = (l[2] as string).replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c));
    samples.push({ name: m[1] as string, labels, value: Number(m[3]) });
  }
  const series = (name: string, labels: Record<string, string> = {}) =>
    samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  return {
    text,
    samples,
    series,
    value(name, labels = {}) {
      const found = series(name, labels);
      if (found.length > 1) throw new Error(`${found.length} samples of ${name} match ${JSON.stringify(labels)}`);
      return found[0]?.value ?? 0;
    },
  };
}

/** What `promtool check metrics` said about a scrape: its exit status and its complaints, one a line. */
export interface PromtoolResult {
  status: number;
  output: string;
}

/**
 * Runs Prometheus' own linter, `promtool check metrics`, on a scrape's text. Undefined when
 * promtool is not installed (Debian: `apt-get install prometheus`).
 */
export function promtoolCheck(text: string): PromtoolResult | undefined {
  const res = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8', timeout: 10_000 });
  if ((res.error as NodeJS.ErrnoException | undefined)?.code === 'ENOENT') return undefined;
  if (res.error !== undefined) throw res.error;
  return { status: res.status ?? -1, output: `${res.stdout}${res.stderr}`.trim() };
}
