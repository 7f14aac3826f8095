import { createAccessLog } from '../proxy/observe/log/access-line.js';
import { createLogger } from '../proxy/observe/log/logger.js';

/**
 * `npm run bench:log`: CPU per access-log line in this process, to /dev/null through Outrider's
 * own destination (proxy/observe/log/destination.ts): the line written directly (proxy/observe/log/access-line.ts) against pino's
 * generic `log.info` of the same fields. Microseconds per line, median of 5 rounds.
 */
const log = createLogger({ logLevel: 'info' }, '/dev/null');
const accessLine = createAccessLog(log);
const req = { method: 'GET', url: '/avatar.png?width=64' } as never;
const res = { headersSent: true, statusCode: 200, writableFinished: true } as never;
const requestId = 'a4b7f8e2-1234-4cde-9abc-0123456789ab';

const cases: [string, () => void][] = [
  ['access line, direct', () => accessLine(req, res, { requestId, started: performance.now(), peer: '127.0.0.1', bytes: 1024 })],
  [
    'access line, pino log.info',
    () =>
      log.info(
        { requestId, method: 'GET', path: '/avatar.png?width=64', status: 200, durationMs: 0.123, bytes: 1024, remoteAddress: '127.0.0.1' },
        'request',
      ),
  ],
];

const N = 300_000;
const rows = cases.map(([name, run]) => {
  const rounds: number[] = [];
  for (let r = 0; r < 6; r++) {
    const t = performance.now();
    for (let i = 0; i < N; i++) run();
    // The first round warms up the JIT and is not counted.
    if (r > 0) rounds.push(((performance.now() - t) / N) * 1000);
  }
  rounds.sort((a, b) => a - b);
  return { line: name, 'µs per line (median)': Number((rounds[2] as number).toFixed(2)) };
});
console.table(rows);
