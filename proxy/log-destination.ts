import { openSync, writeSync } from 'node:fs';

/** The most log text held while the output cannot keep up; beyond it lines are dropped and counted. */
const MAX_PENDING_BYTES = 16 * 1024 * 1024;

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
 * A pino destination that collects the lines logged during one turn of the event loop and writes
 * them with one `writeSync` when the turn ends. Under load that is one system call for dozens of
 * access-log lines; when idle a line is out within the same tick. If the output is a non-blocking
 * pipe that is full, what is pending is retried shortly; past 16 MiB, lines are dropped and the
 * count of dropped lines is written once output resumes, never growing memory without bound.
 */
export function createBatchedDestination(dest: number | string = 1, opts: BatchedDestinationOptions = {}): BatchedDestination {
  const fd = typeof dest === 'number' ? dest : openSync(dest, 'a');
  const maxWrite = opts.maxWriteBytes ?? Number.POSITIVE_INFINITY;
  let pending: string[] = [];
  let pendingBytes = 0;
  // Bytes a full non-blocking pipe did not take yet; kept as bytes so no character is split.
  let leftover: Buffer | undefined;
  let dropped = 0;
  let scheduled = false;

  const flushSync = () => {
    scheduled = false;
    if (pending.length === 0 && leftover === undefined) return;
    let text = pending.join('');
    pending = [];
    pendingBytes = 0;
    if (dropped > 0) {
      text = `{"level":40,"time":${Date.now()},"msg":"log output could not keep up: ${dropped} lines dropped"}\n${text}`;
      dropped = 0;
    }
    let buf = leftover === undefined ? Buffer.from(text) : Buffer.concat([leftover, Buffer.from(text)]);
    leftover = undefined;
    while (buf.length > 0) {
      try {
        buf = buf.subarray(writeSync(fd, buf.length <= maxWrite ? buf : buf.subarray(0, lineCut(buf, maxWrite))));
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'EAGAIN') {
          // A full non-blocking pipe: keep the rest and retry soon.
          leftover = buf;
          pendingBytes = buf.length;
          scheduled = true;
          setTimeout(flushSync, 10).unref();
          return;
        }
        // The output is gone (EPIPE, a full disk…): logging must never take the proxy down.
        // These lines are lost; the count is reported if the output comes back.
        dropped += countLines(buf);
        return;
      }
    }
  };

  return {
    write(line) {
      if (pendingBytes > MAX_PENDING_BYTES) {
        dropped++;
        return true;
      }
      pending.push(line);
      pendingBytes += line.length;
      if (!scheduled) {
        scheduled = true;
        setImmediate(flushSync);
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
