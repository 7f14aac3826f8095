/** One autocannon run: which server it targets and what it asks for. */
export interface Scenario {
  name: string;
  /**
   * `direct` hits the origin backend; `edge` goes through Outrider with the scaled-image cache off
   * (every scale request runs sharp), `edge-warm` through one with the default cache (`edge-b`: a second Outrider with
   * BENCH_B_CONFIG / BENCH_B_NODE_ARGS / BENCH_B_NODE and the default cache, when set); `bare` through the bare Node
   * forward (bench/bare-proxy.ts, the floor for a Node proxy); `nginx` through nginx (when installed).
   * `edge-auto` (Outrider with `workers = "auto"`) and `nginx-auto` (`worker_processes auto`) are
   * started only when a scenario of theirs is selected.
   */
  target: 'direct' | 'edge' | 'edge-warm' | 'edge-b' | 'bare' | 'nginx' | 'edge-auto' | 'nginx-auto';
  /** `{copy}` in the path is replaced by a counter (mod COPIES) on every request: no two alike. */
  path: string;
  method?: 'GET' | 'POST' | 'PUT';
  /** A multipart/form-data upload of one file of this many bytes, sent with every request. */
  uploadBytes?: number;
  connections: number;
  /** The scenario whose requests/s this one is compared with, measured in the same round. */
  baseline?: string;
  headers?: Record<string, string>;
  /** The status every response should have (default: any 2xx). */
  expectStatus?: number;
  /** Run only when BENCH_ONLY names it: its servers are started for it alone. */
  optIn?: boolean;
}

const MiB = 1024 * 1024;

export const scenarios: Scenario[] = [
  { name: 'direct-1k', target: 'direct', path: '/1k', connections: 50 },
  { name: 'proxy-1k', target: 'edge', path: '/1k', connections: 50, baseline: 'direct-1k' },
  { name: 'proxy-b-1k', target: 'edge-b', path: '/1k', connections: 50, baseline: 'direct-1k' },
  { name: 'warm-b-png-64', target: 'edge-b', path: '/avatar.png?width=64', connections: 50, baseline: 'proxy-b-1k' },
  { name: 'bare-node-1k', target: 'bare', path: '/1k', connections: 50, baseline: 'direct-1k' },
  { name: 'nginx-1k', target: 'nginx', path: '/1k', connections: 50, baseline: 'direct-1k' },
  // One process per CPU on both sides; only when named: BENCH_ONLY=proxy-auto-1k,nginx-auto-1k.
  { name: 'nginx-auto-1k', target: 'nginx-auto', path: '/1k', connections: 50, baseline: 'direct-1k', optIn: true },
  { name: 'proxy-auto-1k', target: 'edge-auto', path: '/1k', connections: 50, baseline: 'nginx-auto-1k', optIn: true },
  // Cold scaling: the cache is off and every request names another copy, so each one runs sharp.
  { name: 'scale-png-64', target: 'edge', path: '/avatar.png?width=64&copy={copy}', connections: 8 },
  { name: 'nginx-png-64', target: 'nginx', path: '/nginx-scale/avatar.png', connections: 8, baseline: 'scale-png-64' },
  { name: 'scale-jpeg-64', target: 'edge', path: '/avatar.jpg?width=64&copy={copy}', connections: 8 },
  { name: 'nginx-jpeg-64', target: 'nginx', path: '/nginx-scale/avatar.jpg', connections: 8, baseline: 'scale-jpeg-64' },
  {
    name: 'scale-304',
    target: 'edge',
    path: '/avatar.png?width=64',
    connections: 50,
    baseline: 'proxy-1k',
    headers: { 'if-modified-since': 'Fri, 01 Jan 2100 00:00:00 GMT' },
    expectStatus: 304,
  },
  // Warm: the default cache, the same avatar again and again.
  { name: 'warm-png-64', target: 'edge-warm', path: '/avatar.png?width=64', connections: 50, baseline: 'proxy-1k' },
  { name: 'warm-jpeg-64', target: 'edge-warm', path: '/avatar.jpg?width=64', connections: 50, baseline: 'proxy-1k' },
  // The same from the cache as the formats a browser accepts (chosen by Accept, cached per format).
  {
    name: 'warm-avif-64',
    target: 'edge-warm',
    path: '/avatar.png?width=64',
    connections: 50,
    baseline: 'proxy-1k',
    headers: { accept: 'image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8' },
  },
  {
    name: 'warm-webp-64',
    target: 'edge-warm',
    path: '/avatar.jpg?width=64',
    connections: 50,
    baseline: 'proxy-1k',
    headers: { accept: 'image/webp,*/*' },
  },
  // The 114 KB PNG original: from the backend itself, then by X-Sendfile through Outrider.
  { name: 'direct-png-114k', target: 'direct', path: '/static/avatar.png', connections: 50 },
  { name: 'sendfile-png-114k', target: 'edge', path: '/sendfile/avatar.png', connections: 50, baseline: 'direct-png-114k' },
  // Uploads: straight to the backend's sink, then through Outrider's accelerated route (stored to disk, all four digests).
  { name: 'direct-upload-1m', target: 'direct', path: '/uploads/1m', method: 'POST', uploadBytes: MiB, connections: 8 },
  {
    name: 'upload-1m',
    target: 'edge',
    path: '/uploads/1m',
    method: 'POST',
    uploadBytes: MiB,
    connections: 8,
    baseline: 'direct-upload-1m',
  },
  { name: 'direct-upload-100m', target: 'direct', path: '/uploads/100m', method: 'POST', uploadBytes: 100 * MiB, connections: 2 },
  {
    name: 'upload-100m',
    target: 'edge',
    path: '/uploads/100m',
    method: 'POST',
    uploadBytes: 100 * MiB,
    connections: 2,
    baseline: 'direct-upload-100m',
  },
];
