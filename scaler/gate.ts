import pLimit from 'p-limit';

export interface GateOptions {
  /** Jobs that may run at once (`max_scaler_procs`). */
  concurrency: number;
  /** How long a job may wait for a slot (`max_scaler_wait`); 0: refuse at once when all are busy. */
  maxWaitMs: number;
  /** Jobs allowed to wait at the same time; more are refused at once. */
  maxQueue: number;
}

export type GateResult<T> = { admitted: true; value: T } | { admitted: false; reason: 'busy' | 'timeout' | 'aborted' };

export interface Gate {
  run<T>(job: () => Promise<T>, signal?: AbortSignal): Promise<GateResult<T>>;
  /** Jobs running now. */
  readonly running: number;
  /** Jobs waiting for a slot now. */
  readonly waiting: number;
}

/**
 * Bounds scaling work: p-limit runs at most `concurrency` jobs, and admission is decided
 * synchronously so a burst can never queue without bound (Workhorse `tryIncrement` refuses; here a
 * job may also wait up to `maxWaitMs` in a queue of at most `maxQueue`). A refused job is the
 * caller's cue to serve the original image instead.
 */
export function createGate(opts: GateOptions): Gate {
  const limit = pLimit(opts.concurrency);
  // Slots taken, counted from the moment of admission (p-limit starts jobs a microtask later).
  let slots = 0;
  let waiting = 0;

  const start = async <T>(job: () => Promise<T>): Promise<GateResult<T>> => {
    try {
      return { admitted: true, value: await job() };
    } finally {
      slots--;
    }
  };

  return {
    get running() {
      return slots;
    },
    get waiting() {
      return waiting;
    },
    run(job, signal) {
      if (signal?.aborted) return Promise.resolve({ admitted: false, reason: 'aborted' });
      if (slots < opts.concurrency && waiting === 0) {
        slots++;
        return limit(() => start(job));
      }
      if (opts.maxWaitMs <= 0 || waiting >= opts.maxQueue) return Promise.resolve({ admitted: false, reason: 'busy' });
      waiting++;
      return new Promise((resolve, reject) => {
        let settled = false;
        const settle = () => {
          settled = true;
          waiting--;
          clearTimeout(timer);
          signal?.removeEventListener('abort', onAbort);
        };
        const leave = (reason: 'timeout' | 'aborted') => {
          if (settled) return;
          settle();
          resolve({ admitted: false, reason });
        };
        const onAbort = () => leave('aborted');
        const timer = setTimeout(() => leave('timeout'), opts.maxWaitMs);
        signal?.addEventListener('abort', onAbort, { once: true });
        // A waiter that timed out stays in p-limit's queue as a no-op and frees its turn at once.
        void limit(async () => {
          if (settled) return;
          settle();
          slots++;
          const outcome = start(job);
          outcome.then(resolve, reject);
          // Hold p-limit's slot until the job is over, whichever way it ends.
          await outcome.catch(() => undefined);
        });
      });
    },
  };
}
