import { instructions, MAX_UPLOAD, RAW_FAULTS } from './backend.js';
import type { Exchange } from './client.js';

export const NEVER_READS = 'reader of a 32 MiB file that never reads';

/** One generated case: its kind (what the report counts), the outcomes allowed, and the bytes. */
export interface Case {
  kind: string;
  /** The side the fault comes from, for the report. */
  side: 'client' | 'backend';
  expect: readonly string[];
  exchange: Exchange;
}

/** A small seeded PRNG (mulberry32): the corpus is the same on every run. */
export function seeded(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

type Header = [string, string];

function head(method: string, target: string, headers: Header[]): string {
  return `${method} ${target} HTTP/1.1\r\n${headers.map(([n, v]) => `${n}: ${v}\r\n`).join('')}\r\n`;
}

/** A request with a body sent with its Content-Length, or chunked in pieces of `chunk` bytes. */
function request(method: string, target: string, headers: Header[], body: Buffer, chunked?: number): Buffer {
  const base: Header[] = [['Host', 'faults'], ['Connection', 'close'], ...headers];
  if (chunked === undefined)
    return Buffer.concat([Buffer.from(head(method, target, [...base, ['Content-Length', String(body.length)]])), body]);
  const pieces: Buffer[] = [Buffer.from(head(method, target, [...base, ['Transfer-Encoding', 'chunked']]))];
  for (let at = 0; at < body.length; at += chunked) {
    const piece = body.subarray(at, at + chunked);
    pieces.push(Buffer.from(`${piece.length.toString(16)}\r\n`), piece, Buffer.from('\r\n'));
  }
  pieces.push(Buffer.from('0\r\n\r\n'));
  return Buffer.concat(pieces);
}

interface Part {
  name: string;
  filename?: string;
  data: Buffer | string;
  extraHeaders?: string;
}

function multipart(boundary: string, parts: Part[], close = true): Buffer {
  const out: Buffer[] = [];
  for (const p of parts) {
    const file = p.filename === undefined ? '' : `; filename="${p.filename}"`;
    out.push(Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="${p.name}"${file}\r\n${p.extraHeaders ?? ''}\r\n`));
    out.push(Buffer.isBuffer(p.data) ? p.data : Buffer.from(p.data), Buffer.from('\r\n'));
  }
  if (close) out.push(Buffer.from(`--${boundary}--\r\n`));
  return Buffer.concat(out);
}

const MULTIPART = (boundary: string): Header => ['Content-Type', `multipart/form-data; boundary=${boundary}`];

/** Every case of the corpus, `scale` times each (some kinds weigh more or less), in a seeded order. */
export function buildCorpus(opts: { scale: number; seed: number; closedPort: number; files: Parameters<typeof instructions>[0] }): Case[] {
  const rand = seeded(opts.seed);
  const int = (lo: number, hi: number) => lo + Math.floor(rand() * (hi - lo + 1));
  const bytes = (n: number) => Buffer.from(Array.from({ length: n }, () => int(0, 255)));
  const cases: Case[] = [];
  const add = (kind: string, side: Case['side'], expect: readonly string[], times: number, make: () => Exchange) => {
    for (let i = 0; i < Math.max(1, Math.round(times * opts.scale)); i++) cases.push({ kind, side, expect, exchange: make() });
  };
  const file = (size: number) => ({ name: 'file', filename: `f${int(0, 1e6)}.bin`, data: bytes(size) });
  const B = () => `b${int(0, 1e9)}`;

  // ---- Client: uploads that must work (the control group) ----
  add('upload multipart', 'client', ['201'], 40, () => {
    const b = B();
    return { parts: [request('POST', '/uploads/x', [MULTIPART(b)], multipart(b, [{ name: 'title', data: 'x' }, file(int(1, 20_000))]))] };
  });
  add('upload multipart, chunked', 'client', ['201'], 20, () => {
    const b = B();
    return { parts: [request('POST', '/uploads/x', [MULTIPART(b)], multipart(b, [file(int(1, 20_000))]), int(1, 4096))] };
  });
  add('upload multipart, no pre-authorize', 'client', ['200'], 20, () => {
    const b = B();
    return { parts: [request('POST', '/open/x', [MULTIPART(b)], multipart(b, [file(int(1, 5_000))]))] };
  });
  add('upload body', 'client', ['201'], 20, () => ({ parts: [request('PUT', '/packages/x', [], bytes(int(0, 20_000)))] }));
  add('upload body, Expect: 100-continue', 'client', ['201'], 10, () => ({
    parts: [request('PUT', '/packages/x', [['Expect', '100-continue']], bytes(int(1, 5_000)))],
  }));

  // ---- Client: malformed multipart ----
  add('multipart: boundary mismatch', 'client', ['400'], 30, () => ({
    parts: [request('POST', '/uploads/x', [MULTIPART('declared')], multipart('other', [file(100)]))],
  }));
  add('multipart: no boundary', 'client', ['400'], 20, () => ({
    parts: [request('POST', '/uploads/x', [['Content-Type', 'multipart/form-data']], multipart('b', [file(100)]))],
  }));
  add('multipart: not terminated', 'client', ['400'], 30, () => {
    const b = B();
    return { parts: [request('POST', '/uploads/x', [MULTIPART(b)], multipart(b, [file(int(1, 5000))], false))] };
  });
  // busboy keeps the first 80 KiB of a part's headers and reads on, as Go's multipart reader (10 MiB) would.
  add('multipart: part header of 100 KB', 'client', ['201', '400', '413'], 15, () => {
    const b = B();
    return {
      parts: [
        request('POST', '/uploads/x', [MULTIPART(b)], multipart(b, [{ ...file(10), extraHeaders: `X-Huge: ${'h'.repeat(100_000)}\r\n` }])),
      ],
    };
  });
  add('multipart: 1,100 fields', 'client', ['400'], 10, () => {
    const b = B();
    const fields = Array.from({ length: 1100 }, (_, i) => ({ name: `f${i}`, data: 'v' }));
    return { parts: [request('POST', '/uploads/x', [MULTIPART(b)], multipart(b, fields))] };
  });
  add('multipart: 12 files (max_files 10)', 'client', ['400'], 15, () => {
    const b = B();
    const files = Array.from({ length: 12 }, (_, i) => ({ name: `file${i}`, filename: `a${i}.txt`, data: 'x' }));
    return { parts: [request('POST', '/uploads/x', [MULTIPART(b)], multipart(b, files))] };
  });
  add('multipart: file over MaximumSize', 'client', ['413'], 20, () => {
    const b = B();
    return { parts: [request('POST', '/uploads/x', [MULTIPART(b)], multipart(b, [file(MAX_UPLOAD + int(1, 200_000))]))] };
  });
  add('multipart: file over MaximumSize, chunked', 'client', ['413'], 20, () => {
    const b = B();
    return { parts: [request('POST', '/uploads/x', [MULTIPART(b)], multipart(b, [file(MAX_UPLOAD + int(1, 200_000))]), int(512, 16_384))] };
  });
  add('multipart: field named like a rewritten one', 'client', ['400'], 15, () => {
    const b = B();
    return { parts: [request('POST', '/uploads/x', [MULTIPART(b)], multipart(b, [file(10), { name: 'file.path', data: '/etc/passwd' }]))] };
  });
  add('multipart: file name ".."', 'client', ['400'], 10, () => {
    const b = B();
    return { parts: [request('POST', '/uploads/x', [MULTIPART(b)], multipart(b, [{ name: 'file', filename: '..', data: 'x' }]))] };
  });
  add('multipart: random bytes', 'client', ['400'], 30, () => ({
    parts: [request('POST', '/uploads/x', [MULTIPART(B())], bytes(int(1, 20_000)))],
  }));

  // ---- Client: bodies over the limit, lying lengths, bad chunks, aborts ----
  add('body: declared over MaximumSize', 'client', ['413'], 15, () => ({
    parts: [request('PUT', '/packages/x', [], bytes(MAX_UPLOAD + int(1, 100_000)))],
  }));
  add('body: over MaximumSize, chunked', 'client', ['413'], 20, () => ({
    parts: [request('PUT', '/packages/x', [], bytes(MAX_UPLOAD + int(1, 100_000)), int(512, 16_384))],
  }));
  for (const [route, method, type] of [
    ['/uploads/x', 'POST', MULTIPART('b')],
    ['/packages/x', 'PUT', undefined],
    ['/plain', 'POST', undefined],
  ] as const) {
    const headers: Header[] = type === undefined ? [] : [type];
    add(`lying length: declares more than it sends (${route})`, 'client', ['408'], 10, () => {
      const body = type === undefined ? bytes(100) : multipart('b', [file(100)], false);
      const full = request(method, route, headers, Buffer.concat([body, Buffer.alloc(5000)]));
      return { parts: [full.subarray(0, full.length - 5000), 3000] };
    });
    // The request read in full is answered; the bytes after it are not HTTP, so the connection then closes.
    add(`lying length: sends more than it declares (${route})`, 'client', [route === '/plain' ? '200' : '201'], 10, () => {
      const body = type === undefined ? bytes(100) : multipart('b', [file(100)]);
      return { parts: [request(method, route, headers, body), bytes(int(1, 300))] };
    });
    add(`bad chunk size (${route})`, 'client', ['400', 'closed'], 15, () => {
      const h = head(method, route, [['Host', 'faults'], ['Connection', 'close'], ...headers, ['Transfer-Encoding', 'chunked']]);
      return { parts: [h, `${int(0, 1) === 0 ? 'zz' : 'fffffffffffffffffff'}\r\nhello\r\n0\r\n\r\n`] };
    });
    add(`abort at a random offset (${route})`, 'client', ['aborted'], 30, () => {
      const body = type === undefined ? bytes(int(1, 50_000)) : multipart('b', [file(int(1, 50_000))]);
      const full = request(method, route, headers, body, int(0, 1) === 0 ? undefined : int(100, 8000));
      return { parts: [full.subarray(0, int(1, full.length - 1))], abort: true };
    });
  }

  // ---- Client: HTTP-level abuse ----
  const smuggled = 'GET /smuggled HTTP/1.1\r\nHost: faults\r\n\r\n';
  const smuggling: [string, string][] = [
    ['CL + TE', `Content-Length: ${5 + smuggled.length}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n${smuggled}`],
    ['TE: xchunked + CL', `Content-Length: 4\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n${smuggled}`],
    ['TE: chunked, identity', `Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n${smuggled}`],
    ['TE with a space before the colon', `Transfer-Encoding : chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n${smuggled}`],
    ['two TE headers', `Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n${smuggled}`],
    ['two different CLs', `Content-Length: 0\r\nContent-Length: ${smuggled.length}\r\n\r\n${smuggled}`],
    ['CL with a sign', `Content-Length: +${smuggled.length}\r\n\r\n${smuggled}`],
    ['CL as a list', `Content-Length: 0, ${smuggled.length}\r\n\r\n${smuggled}`],
    ['TE folded onto a second line', `Content-Length: 4\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n${smuggled}`],
    ['bare LF line ends', `Transfer-Encoding: chunked\n\n0\n\n${smuggled}`],
  ];
  for (const [name, rest] of smuggling) {
    // The only way /smuggled reaches the backend is a desync; the backend records it if it does.
    add(`smuggling: ${name}`, 'client', ['200', '400', 'closed'], 10, () => ({
      parts: [`POST /plain HTTP/1.1\r\nHost: faults\r\n${rest}`, 300],
    }));
  }
  add('header of 20 KB', 'client', ['431'], 15, () => ({
    parts: [
      head('GET', '/plain', [
        ['Host', 'faults'],
        ['X-Big', 'b'.repeat(20_000)],
      ]),
    ],
  }));
  add('3,000 headers', 'client', ['431', '400'], 10, () => ({
    parts: [head('GET', '/plain', [['Host', 'faults'], ...Array.from({ length: 3000 }, (_, i): Header => [`X-H${i}`, 'v'])])],
  }));
  add('absolute-form target', 'client', ['400'], 15, () => ({
    parts: [
      head('GET', 'http://evil.example/plain', [
        ['Host', 'faults'],
        ['Connection', 'close'],
      ]),
    ],
  }));
  add('asterisk-form target', 'client', ['400'], 10, () => ({
    parts: [
      head('OPTIONS', '*', [
        ['Host', 'faults'],
        ['Connection', 'close'],
      ]),
    ],
  }));
  add('CONNECT', 'client', ['400', 'closed'], 10, () => ({ parts: [head('CONNECT', 'evil.example:443', [['Host', 'evil.example:443']])] }));
  add('garbage request line', 'client', ['400', 'closed'], 15, () => ({
    parts: [Buffer.concat([bytes(int(1, 200)), Buffer.from('\r\n\r\n')])],
  }));
  add('HTTP/9.9', 'client', ['400', '505', 'closed'], 10, () => ({ parts: ['GET /plain HTTP/9.9\r\nHost: faults\r\n\r\n'] }));
  add('NUL in a header', 'client', ['400', 'closed'], 10, () => ({
    parts: ['GET /plain HTTP/1.1\r\nHost: faults\r\nX-A: a\u0000b\r\n\r\n'],
  }));
  add('bare CR in a header', 'client', ['400', 'closed'], 10, () => ({
    parts: ['GET /plain HTTP/1.1\r\nHost: faults\r\nX-A: a\rb\r\n\r\n'],
  }));
  add('obs-fold header', 'client', ['400', 'closed'], 10, () => ({
    parts: ['GET /plain HTTP/1.1\r\nHost: faults\r\nX-A: a\r\n b\r\n\r\n'],
  }));
  add('two Content-Type headers (upload route)', 'client', ['400'], 15, () => {
    const b = B();
    const body = multipart(b, [file(100)]);
    return { parts: [request('POST', '/uploads/x', [['Content-Type', 'text/plain'], MULTIPART(b)], body)] };
  });
  add('two Content-Type headers (plain route)', 'client', ['400'], 10, () => ({
    parts: [
      request(
        'POST',
        '/plain',
        [
          ['Content-Type', 'text/plain'],
          ['Content-Type', 'application/json'],
        ],
        Buffer.from('{}'),
      ),
    ],
  }));
  add('two Host headers', 'client', ['400'], 10, () => ({
    parts: ['GET /plain HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n'],
  }));
  add('slowloris: headers a byte at a time, then gone', 'client', ['aborted'], 5, () => ({
    parts: [...'GET /plain HTTP/1.1\r\nHost: faults\r\nX-Slow: '.split('').flatMap((c): (string | number)[] => [c, 50])],
    abort: true,
  }));
  add('slow reader of a 32 MiB file, then gone', 'client', ['aborted'], 5, () => ({
    parts: [head('GET', '/large', [['Host', 'faults']]), 1500],
    noRead: true,
    abort: true,
  }));
  // send_timeout (2 s in this suite) closes the connection long before this client gives up at 9 s
  // (room for a machine under load): the suite matches Outrider's 'send timeout' lines to it by path.
  add(NEVER_READS, 'client', ['aborted'], 5, () => ({
    parts: [head('GET', `/large?never-reads=${int(0, 1e9)}`, [['Host', 'faults']]), 9000],
    noRead: true,
    abort: true,
  }));
  const pipelined = Math.max(10, Math.round(2000 * opts.scale));
  add('10,000 pipelined requests (5 connections)', 'client', [`${pipelined}/${pipelined} answered`], 5 / opts.scale, () => ({
    parts: [
      Buffer.from(
        `${'GET /plain HTTP/1.1\r\nHost: faults\r\n\r\n'.repeat(pipelined - 1)}GET /plain HTTP/1.1\r\nHost: faults\r\nConnection: close\r\n\r\n`,
      ),
    ],
    pipelined,
  }));

  // ---- Backend faults ----
  const raw: Record<string, readonly string[]> = {
    'chunked-then-death': ['200-cut'],
    'death-mid-body': ['200-cut'],
    'hang-before-headers': ['504'],
    'hang-mid-body': ['200-cut'],
    'internal-api-type': ['500'],
  };
  for (const name of Object.keys(RAW_FAULTS)) {
    const times = name.startsWith('hang') ? 6 : 25;
    add(`backend: ${name}`, 'backend', raw[name] ?? ['502'], times, () => ({
      parts: [
        head('GET', `/fault/${name}`, [
          ['Host', 'faults'],
          ['Connection', 'close'],
        ]),
      ],
    }));
  }
  const instructed: Record<string, readonly string[]> = {
    'sendfile-missing': ['404'],
    'sendfile-directory': ['404'],
    'sendfile-dev-zero': ['200'],
    'sendfile-changing': ['200', '502'],
    'senddata-unknown-prefix': ['200'],
    'scaled-pixel-bomb': ['200'],
    'scaled-garbage-image': ['200'],
  };
  for (const name of Object.keys(instructions(opts.files, opts.closedPort))) {
    add(`backend: ${name}`, 'backend', instructed[name] ?? ['502'], 20, () => ({
      parts: [
        head('GET', `/instruct/${name}`, [
          ['Host', 'faults'],
          ['Connection', 'close'],
        ]),
      ],
    }));
  }

  // Shuffled, so every kind runs beside every other.
  for (let i = cases.length - 1; i > 0; i--) {
    const j = int(0, i);
    [cases[i], cases[j]] = [cases[j] as Case, cases[i] as Case];
  }
  return cases;
}
