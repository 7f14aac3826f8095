import { openSync, writeSync } from 'node:fs';

/** The most log text held while the output cannot keep up; beyond it lines are dropped and counted. */
const MAX_PENDING_BYTES = 16 * 1024 * 1024;

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
export function createBatchedDestination(dest: number | string = 1): BatchedDestination {
  const fd = typeof dest === 'number' ? dest : openSync(dest, 'a');
  let pending: string[] = [];
  let pendingBytes = 0;
  let dropped = 0;
  let scheduled = false;

  const flushSync = () => {
    scheduled = false;
    if (pending.length === 0) return;
    let data = pending.join('');
    pending = [];
    pendingBytes = 0;
    if (dropped > 0) {
      data = `{"level":40,"time":${Date.now()},"msg":"log output could not keep up: ${dropped} lines dropped"}\n${data}`;
      dropped = 0;
    }
    let buf = Buffer.from(data);
    while (buf.length > 0) {
      try {
        buf = buf.subarray(writeSync(fd, buf));
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') throw err;
        // A full non-blocking pipe: keep the rest and retry soon.
        pending = [buf.toString()];
        pendingBytes = buf.length;
        scheduled = true;
        setTimeout(flushSync, 10).unref();
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
      try {
        flushSync();
        cb?.();
      } catch (err) {
        cb?.(err as Error);
      }
    },
  };
}
