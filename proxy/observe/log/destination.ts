import { openSync, writeSync } from 'node:fs';

/** The most log text held while the output cannot keep up; beyond it lines are dropped and counted. */
const MAX_PENDING_BYTES = 16 * 1024 * 1024;
/** How long a line may wait for the ones after it, so that one system call writes them all. */
export const FLUSH_DELAY_MS = 5;
/** The buffer lines are copied into as they are logged; full, it is written at once. */
const BUFFER_BYTES = 64 * 1024;

/**
 * Writes of at most this many bytes to a pipe are atomic (POSIX `PIPE_BUF`, 4096 on Linux): when
 * several processes share one stdout (cluster workers), lines written in chunks this size never
 * interleave mid-line.
 */
export const PIPE_BUF = 4096;

export interface BatchedDestinationOptions {
  /**
   * Largest single write, cut at line ends (a longer line still goes out whole). Unlimited by
   * default; `PIPE_BUF` when other processes write to the same output.
   */
  maxWriteBytes?: number;
}

export interface BatchedDestination {
  write(line: string): boolean;
  /** Writes everything pending now (on exit, before a fatal message). */
  flushSync(): void;
  /** pino's `logger.flush(cb)` calls this. */
  flush(cb?: (err?: Error) => void): void;
}

/**
 * A pino destination that copies each line into one 64 KiB buffer as it is logged and writes the
 * buffer with one `writeSync` 5 ms after the first line in it, or as soon as it is full. Under
 * load that is one system call for a hundred access-log lines (flushing at the end of every
 * event-loop turn wrote about ten), and no line is kept as a string after the call that logged
 * it. A line is never out later than 5 ms after it was logged. If the output is
 * a non-blocking pipe that is full, what is pending is retried shortly; past 16 MiB, lines are
 * dropped and the count of dropped lines is written once output resumes, never growing memory
 * without bound.
 */
export function createBatchedDestination(dest: number | string = 1, opts: BatchedDestinationOptions = {}): BatchedDestination {
  const fd = typeof dest === 'number' ? dest : openSync(dest, 'a');
  const maxWrite = opts.maxWriteBytes ?? Number.POSITIVE_INFINITY;
  const buffer = Buffer.allocUnsafeSlow(BUFFER_BYTES);
  let used = 0;
  // Bytes waiting while a full non-blocking pipe does not take them (copies, in order).
  let backlog: Buffer[] = [];
  let backlogBytes = 0;
  // Only a full pipe leaves a backlog behind a flush.
  const blocked = () => backlog.length > 0;
  let dropped = 0;
  let scheduled = false;

  const flushSync = () => {
    scheduled = false;
    if (used === 0 && backlog.length === 0) return;
    const chunks = backlog;
    if (used > 0) chunks.push(buffer.subarray(0, used));
    if (dropped > 0) {
      chunks.unshift(Buffer.from(`{"level":40,"time":${Date.now()},"msg":"log output could not keep up: ${dropped} lines dropped"}\n`));
      dropped = 0;
    }
    backlog = [];
    backlogBytes = 0;
    for (let i = 0; i < chunks.length; i++) {
      let chunk = chunks[i] as Buffer;
      while (chunk.length > 0) {
        try {
          chunk = chunk.subarray(writeSync(fd, chunk.length <= maxWrite ? chunk : chunk.subarray(0, lineCut(chunk, maxWrite))));
        } catch (err) {
          const rest = [chunk, ...chunks.slice(i + 1)];
          if ((err as NodeJS.ErrnoException).code === 'EAGAIN') {
            // A full non-blocking pipe: keep the rest and retry soon. Only what still lies in the
            // reused buffer is copied; backlog chunks are copies already.
            backlog = rest.map((b) => (b.buffer === buffer.buffer ? Buffer.from(b) : b));
            backlogBytes = backlog.reduce((n, b) => n + b.length, 0);
            used = 0;
            scheduled = true;
            setTimeout(flushSync, 10).unref();
            return;
          }
          // The output is gone (EPIPE, a full disk…): logging must never take the proxy down.
          // These lines are lost; the count is reported if the output comes back.
          dropped += rest.reduce((n, b) => n + countLines(b), 0);
          used = 0;
          return;
        }
      }
    }
    used = 0;
  };

  /** Makes room for `bytes` more in the buffer; false when the line must be dropped instead. */
  const room = (bytes: number): boolean => {
    if (used + bytes <= BUFFER_BYTES) return true;
    if (!blocked()) {
      flushSync();
      return true;
    }
    if (backlogBytes + used > MAX_PENDING_BYTES) return false;
    backlog.push(Buffer.from(buffer.subarray(0, used)));
    backlogBytes += used;
    used = 0;
    return true;
  };

  return {
    write(line) {
      // A UTF-16 code unit is at most 3 bytes of UTF-8.
      const most = line.length * 3;
      if (!room(most)) {
        dropped++;
        return true;
      }
      if (most > BUFFER_BYTES) {
        // A line longer than the buffer goes out on its own, after what is pending.
        const wasBlocked = blocked();
        const bytes = Buffer.from(line);
        backlog.push(bytes);
        backlogBytes += bytes.length;
        if (!wasBlocked) flushSync();
        return true;
      }
      used += buffer.write(line, used);
      if (!scheduled) {
        scheduled = true;
        setTimeout(flushSync, FLUSH_DELAY_MS);
      }
      return true;
    },
    flushSync,
    flush(cb) {
      flushSync();
      cb?.();
    },
  };
}

/** Bytes to write of `buf`: whole lines up to `max`, or the first line whole when it alone is longer. */
function lineCut(buf: Buffer, max: number): number {
  const last = buf.lastIndexOf(10, max - 1);
  if (last !== -1) return last + 1;
  const first = buf.indexOf(10, max);
  return first === -1 ? buf.length : first + 1;
}

function countLines(buf: Buffer): number {
  let n = 0;
  for (let i = buf.indexOf(10); i !== -1; i = buf.indexOf(10, i + 1)) n++;
  return Math.max(n, 1);
}
