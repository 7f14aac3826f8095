import { type ClientHttp2Session, type ClientHttp2Stream, connect, type IncomingHttpHeaders, type OutgoingHttpHeaders } from 'node:http2';
import { onTestFinished } from 'vitest';

/** An HTTP/2 session (`node:http2`) to a TLS listener on 127.0.0.1 trusting `ca`; closed when the test ends. */
export async function h2Connect(port: number, ca: Buffer): Promise<ClientHttp2Session> {
  const session = connect(`https://127.0.0.1:${port}`, { ca });
  onTestFinished(() => {
    session.destroy();
  });
  // Connected once the server's SETTINGS arrived (what it allows, extended CONNECT among them).
  await new Promise<void>((resolve, reject) => {
    session.once('remoteSettings', () => resolve());
    session.once('error', reject);
  });
  return session;
}

export interface H2Answer {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
  /** Interim (1xx) header blocks, in order, before the final one. */
  informational: IncomingHttpHeaders[];
  /** Node's client saw the stream end without END_STREAM from the server (a reset before the answer was complete). */
  aborted: boolean;
  /** The RST_STREAM code the stream closed with (0: NO_ERROR). */
  rstCode: number;
}

/** One request on `session`: its final status, headers and whole body, and the 1xx blocks before them. */
export function h2Request(
  session: ClientHttp2Session,
  headers: OutgoingHttpHeaders,
  body?: Buffer | string | ((stream: ClientHttp2Stream) => void),
): Promise<H2Answer> {
  const stream = session.request(headers, { endStream: body === undefined });
  const informational: IncomingHttpHeaders[] = [];
  stream.on('headers', (h) => informational.push(h));
  if (typeof body === 'function') body(stream);
  else if (body !== undefined) stream.end(body);
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let head: IncomingHttpHeaders | undefined;
    stream.once('response', (h) => {
      head = h;
    });
    let aborted = false;
    stream.once('aborted', () => {
      aborted = true;
    });
    stream.on('data', (c: Buffer) => chunks.push(c));
    // Settled when the stream is closed, so that how it closed is known.
    stream.once('close', () => {
      // A reset the client API reports with no error (Node's 'error' comes first when there is one).
      if (stream.rstCode !== 0 && stream.rstCode !== undefined && !aborted)
        return reject(new Error(`stream reset, code ${stream.rstCode}`));
      resolve({
        status: Number(head?.[':status']),
        headers: head ?? {},
        body: Buffer.concat(chunks),
        informational,
        aborted,
        rstCode: stream.rstCode,
      });
    });
    stream.once('error', reject);
  });
}

/**
 * A WebSocket peer over one HTTP/2 stream (RFC 8441): frames written masked as a client must, the
 * server's frames read back. Just enough framing for tests: text, binary, close; no extensions.
 */
export class H2WebSocket {
  readonly stream: ClientHttp2Stream;
  readonly response: IncomingHttpHeaders;
  private buffered = Buffer.alloc(0);
  private readonly waiting: ((frame: { opcode: number; payload: Buffer }) => void)[] = [];
  private readonly frames: { opcode: number; payload: Buffer }[] = [];

  private constructor(stream: ClientHttp2Stream, response: IncomingHttpHeaders) {
    this.stream = stream;
    this.response = response;
    stream.on('data', (chunk: Buffer) => this.read(chunk));
  }

  /** Sends the extended CONNECT and resolves once the final answer came (any status: check `response`). */
  static open(session: ClientHttp2Session, path: string, headers: OutgoingHttpHeaders = {}): Promise<H2WebSocket> {
    const stream = session.request({
      ':method': 'CONNECT',
      ':protocol': 'websocket',
      ':scheme': 'https',
      ':path': path,
      'sec-websocket-version': '13',
      ...headers,
    });
    return new Promise((resolve, reject) => {
      stream.once('response', (h) => resolve(new H2WebSocket(stream, h)));
      stream.once('error', reject);
    });
  }

  get status(): number {
    return Number(this.response[':status']);
  }

  send(data: string | Buffer): void {
    const payload = typeof data === 'string' ? Buffer.from(data) : data;
    const opcode = typeof data === 'string' ? 1 : 2;
    this.stream.write(frame(opcode, payload));
  }

  close(code = 1000): void {
    const payload = Buffer.alloc(2);
    payload.writeUInt16BE(code);
    this.stream.write(frame(8, payload));
  }

  /** The next frame the server sent. */
  next(): Promise<{ opcode: number; payload: Buffer }> {
    const ready = this.frames.shift();
    if (ready !== undefined) return Promise.resolve(ready);
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  private read(chunk: Buffer): void {
    this.buffered = Buffer.concat([this.buffered, chunk]);
    for (;;) {
      const b = this.buffered;
      if (b.length < 2) return;
      let length = (b[1] as number) & 0x7f;
      let offset = 2;
      if (length === 126) {
        if (b.length < 4) return;
        length = b.readUInt16BE(2);
        offset = 4;
      } else if (length === 127) {
        if (b.length < 10) return;
        length = Number(b.readBigUInt64BE(2));
        offset = 10;
      }
      if (b.length < offset + length) return;
      const f = { opcode: (b[0] as number) & 0x0f, payload: b.subarray(offset, offset + length) };
      this.buffered = b.subarray(offset + length);
      const waiter = this.waiting.shift();
      if (waiter !== undefined) waiter(f);
      else this.frames.push(f);
    }
  }
}

/** One final, masked client frame (RFC 6455 §5.2). */
function frame(opcode: number, payload: Buffer): Buffer {
  const mask = Buffer.from([0x11, 0x22, 0x33, 0x44]);
  const size = payload.length;
  const head = size < 126 ? Buffer.from([0x80 | opcode, 0x80 | size]) : size < 65536 ? Buffer.alloc(4) : Buffer.alloc(10);
  if (size >= 126 && size < 65536) {
    head[0] = 0x80 | opcode;
    head[1] = 0x80 | 126;
    head.writeUInt16BE(size, 2);
  } else if (size >= 65536) {
    head[0] = 0x80 | opcode;
    head[1] = 0x80 | 127;
    head.writeBigUInt64BE(BigInt(size), 2);
  }
  const masked = Buffer.alloc(size);
  for (let i = 0; i < size; i++) masked[i] = (payload[i] as number) ^ (mask[i % 4] as number);
  return Buffer.concat([head, mask, masked]);
}
