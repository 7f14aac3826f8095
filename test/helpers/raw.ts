import { connect } from 'node:net';

export interface RawResponse {
  statusLine: string;
  status: number;
  /** Header lines as sent, names lower-cased, in order. */
  headers: [string, string][];
  header: (name: string) => string | undefined;
  body: string;
}

/**
 * Sends bytes exactly as given on a fresh TCP connection and reads until the server closes it
 * (the request should carry `Connection: close`). For what an HTTP client library would
 * normalise: odd paths, hop-by-hop headers, duplicate headers.
 */
export function rawRequest(port: number, text: string): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    socket.on('data', (d) => chunks.push(d));
    socket.on('error', reject);
    socket.on('end', () => resolve(parseResponse(Buffer.concat(chunks).toString('latin1'))));
    socket.write(text);
  });
}

export function parseResponse(raw: string): RawResponse {
  const split = raw.indexOf('\r\n\r\n');
  const head = raw.slice(0, split).split('\r\n');
  const statusLine = head[0] ?? '';
  const headers = head.slice(1).map((line): [string, string] => {
    const i = line.indexOf(':');
    return [line.slice(0, i).toLowerCase(), line.slice(i + 1).trim()];
  });
  let body = raw.slice(split + 4);
  if (headers.some(([n, v]) => n === 'transfer-encoding' && v === 'chunked')) body = dechunk(body);
  return {
    statusLine,
    status: Number(statusLine.split(' ')[1]),
    headers,
    header: (name) => headers.find(([n]) => n === name)?.[1],
    body,
  };
}

function dechunk(body: string): string {
  let out = '';
  let rest = body;
  for (;;) {
    const eol = rest.indexOf('\r\n');
    const size = Number.parseInt(rest.slice(0, eol), 16);
    if (!(size > 0)) return out;
    out += rest.slice(eol + 2, eol + 2 + size);
    rest = rest.slice(eol + 2 + size + 2);
  }
}
