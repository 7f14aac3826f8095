import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';

/**
 * The two ways a client can hold a connection, and what it costs, for as long as it likes by
 * going silent, bounded in the spirit of nginx's `client_body_timeout` and `send_timeout`:
 *
 * - **A body that stops arriving** (`client_body_timeout`). The clock runs while Outrider is
 *   reading a request body and no byte arrives; it restarts at every byte the socket receives,
 *   and it stands still while Outrider is not reading (waiting for the pre-authorize answer, or
 *   held back because the backend, the disk or object storage is slower than the client). So a
 *   client that keeps sending, however slowly overall, is never cut.
 * - **An answer the client stops reading** (`send_timeout`). The clock runs while bytes wait to
 *   be sent on a connection and none of them leaves; when it runs out the connection is closed.
 *   Nothing is counted while Outrider waits for the backend. Bytes are seen leaving when the
 *   kernel takes more of them, as nginx sees them between two of its writes: a client that reads
 *   at least a socket buffer's worth (a few MiB at most) per timeout is never cut.
 *
 * One timer serves every request and connection. A watched body costs an entry in a set, a
 * connection an entry in a map; nothing is done per chunk: progress is read from the socket's
 * byte counters, so no `data` listener changes how a body flows.
 */
export interface StallWatch {
  readonly bodyTimeoutMs: number;
  readonly sendTimeoutMs: number;
  /** Watches `req` until its body has arrived whole or it is gone; `onStall` runs at most once. */
  body(req: IncomingMessage, onStall: () => void): void;
  /** Watches a client connection until it closes; `onStall` runs (and the socket is destroyed) when it stops reading. */
  connection(socket: Socket, onStall: (socket: Socket) => void): void;
  /** Stops the timer (server shutdown); nothing more is watched. */
  close(): void;
}

interface Body {
  req: IncomingMessage;
  socket: Socket;
  onStall: () => void;
  lastRead: number;
  /** `performance.now()` of the last progress, or of the last moment Outrider was not reading. */
  since: number;
  /** An HTTP/2 request's own byte count (its connection's counters belong to every stream on it). */
  h2: StreamCount | undefined;
}

/** Bytes an HTTP/2 stream delivered, counted once Node's own reader listens to it (a listener before would start the flow). */
interface StreamCount {
  stream: NodeJS.ReadableStream;
  read: number;
  counting: boolean;
}

/** Bytes of its body the client has sent so far, as far as can be told without changing how it flows. */
function bytesIn(w: Body): number {
  const h2 = w.h2;
  if (h2 === undefined) return w.socket.bytesRead;
  if (!h2.counting && h2.stream.listenerCount('data') > 0) {
    h2.counting = true;
    h2.stream.on('data', (chunk: Buffer) => {
      h2.read += chunk.length;
    });
  }
  return h2.read;
}

interface Connection {
  onStall: (socket: Socket) => void;
  lastPending: number;
  lastQueued: number;
  since: number;
}

/** Bytes libuv still holds for the kernel: it falls as the client reads, even inside one large write. */
function queued(socket: Socket): number {
  return (socket as Socket & { _handle?: { writeQueueSize?: number } | null })._handle?.writeQueueSize ?? 0;
}

export function createStallWatch(opts: { bodyTimeoutMs: number; sendTimeoutMs: number }): StallWatch {
  const { bodyTimeoutMs, sendTimeoutMs } = opts;
  const bodies = new Set<Body>();
  const connections = new Map<Socket, Connection>();
  // Fires within a tenth of the shorter timeout (at most a second) after it is reached.
  const tickMs = Math.min(1000, Math.max(10, Math.floor(Math.min(bodyTimeoutMs, sendTimeoutMs) / 10)));
  let timer: NodeJS.Timeout | undefined;
  let closed = false;

  const tick = () => {
    const now = performance.now();
    for (const w of bodies) {
      const req = w.req;
      if (req.complete || req.destroyed || w.socket.destroyed) {
        bodies.delete(w);
        continue;
      }
      const read = bytesIn(w);
      // Reading means flowing with room in the buffer; anything else is Outrider holding back.
      const reading = req.readableFlowing === true && req.readableLength < req.readableHighWaterMark;
      if (read !== w.lastRead || !reading) {
        w.lastRead = read;
        w.since = now;
        continue;
      }
      if (now - w.since < bodyTimeoutMs) continue;
      bodies.delete(w);
      // The owner's callback is written not to throw; a defect in it must not stop the others.
      try {
        w.onStall();
      } catch {
        req.destroy();
      }
    }
    for (const [socket, c] of connections) {
      // Bytes leave only as the client reads them. Nothing waiting is no stall; a change in what
      // libuv holds (it falls with every partial write to the kernel, even inside one large
      // buffer) or in what Node buffers (a producer writes again only after a drain) is progress.
      const pending = socket.writableLength;
      const inKernelQueue = queued(socket);
      if (pending === 0 || pending !== c.lastPending || inKernelQueue !== c.lastQueued) {
        c.lastPending = pending;
        c.lastQueued = inKernelQueue;
        c.since = now;
        continue;
      }
      if (now - c.since < sendTimeoutMs) continue;
      connections.delete(socket);
      try {
        c.onStall(socket);
      } catch {
        // A callback that throws must not stop the others, nor keep this connection open.
      }
      socket.destroy();
    }
    if (bodies.size === 0 && connections.size === 0) stop();
  };
  const start = () => {
    if (timer !== undefined) return;
    timer = setInterval(tick, tickMs);
    timer.unref();
  };
  const stop = () => {
    clearInterval(timer);
    timer = undefined;
  };

  return {
    bodyTimeoutMs,
    sendTimeoutMs,
    body(req, onStall) {
      const socket = req.socket;
      if (closed || req.complete || socket === null) return;
      const h2 =
        req.httpVersionMajor === 2
          ? { stream: (req as IncomingMessage & { stream: NodeJS.ReadableStream }).stream, read: 0, counting: false }
          : undefined;
      const w: Body = { req, socket, onStall, lastRead: 0, since: performance.now(), h2 };
      w.lastRead = bytesIn(w);
      bodies.add(w);
      start();
    },
    connection(socket, onStall) {
      if (closed || socket.destroyed) return;
      connections.set(socket, { onStall, lastPending: 0, lastQueued: 0, since: performance.now() });
      socket.once('close', () => connections.delete(socket));
      start();
    },
    close() {
      closed = true;
      bodies.clear();
      connections.clear();
      stop();
    },
  };
}
