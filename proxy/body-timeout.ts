import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';

/**
 * `client_body_timeout`, in the spirit of nginx's: a request body that stops arriving for that long
 * is given up on. Only silence counts, never a slow body: the clock runs while Outrider is reading
 * the body and no byte arrives; it restarts at every byte the socket receives, and it stands still
 * while Outrider is not reading (waiting for the pre-authorize answer, or held back because the
 * backend, the disk or object storage is slower than the client). So a client that keeps sending,
 * however slowly overall, is never cut.
 *
 * One timer serves every request; each watched request costs an entry in a set and nothing per
 * chunk (progress is read from the socket's byte counter, so no `data` listener changes how the
 * body flows).
 */
export interface BodyWatch {
  readonly timeoutMs: number;
  /** Watches `req` until its body has arrived whole or it is gone; `onStall` runs at most once. */
  watch(req: IncomingMessage, onStall: () => void): void;
  /** Stops the timer (server shutdown); nothing more is watched. */
  close(): void;
}

interface Watched {
  req: IncomingMessage;
  socket: Socket;
  onStall: () => void;
  lastRead: number;
  /** `performance.now()` of the last progress, or of the last moment Outrider was not reading. */
  since: number;
}

export function createBodyWatch(timeoutMs: number): BodyWatch {
  const watched = new Set<Watched>();
  // Fires within a tenth of the timeout (at most a second) after it is reached.
  const tickMs = Math.min(1000, Math.max(10, Math.floor(timeoutMs / 10)));
  let timer: NodeJS.Timeout | undefined;
  let closed = false;

  const tick = () => {
    const now = performance.now();
    for (const w of watched) {
      const req = w.req;
      if (req.complete || req.destroyed || w.socket.destroyed) {
        watched.delete(w);
        continue;
      }
      const read = w.socket.bytesRead;
      // Reading means flowing with room in the buffer; anything else is Outrider holding back.
      const reading = req.readableFlowing === true && req.readableLength < req.readableHighWaterMark;
      if (read !== w.lastRead || !reading) {
        w.lastRead = read;
        w.since = now;
        continue;
      }
      if (now - w.since < timeoutMs) continue;
      watched.delete(w);
      // The owner's callback is written not to throw; a defect in it must not stop the others.
      try {
        w.onStall();
      } catch {
        req.destroy();
      }
    }
    if (watched.size === 0) {
      clearInterval(timer);
      timer = undefined;
    }
  };

  return {
    timeoutMs,
    watch(req, onStall) {
      const socket = req.socket;
      if (closed || req.complete || socket === null) return;
      watched.add({ req, socket, onStall, lastRead: socket.bytesRead, since: performance.now() });
      if (timer === undefined) {
        timer = setInterval(tick, tickMs);
        timer.unref();
      }
    },
    close() {
      closed = true;
      watched.clear();
      clearInterval(timer);
      timer = undefined;
    },
  };
}
