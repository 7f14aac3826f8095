import { connect } from 'node:net';

/** One raw exchange on a fresh connection. */
export interface Exchange {
  /** What is written, in order: bytes, or a pause in milliseconds. */
  parts: (Buffer | string | number)[];
  /** Destroy the connection once everything is written, without waiting for an answer (a client that vanishes). */
  abort?: boolean;
  /** Never read the answer (a slow reader), then vanish: with `abort`. */
  noRead?: boolean;
  /** Pipelined requests: how many answers to count. */
  pipelined?: number;
}

/**
 * What became of an exchange: the first answer's status (`"413"`), with `-cut` when the
 * connection closed before its whole body arrived (a cut, never a truncated answer taken for
 * whole); `closed` when it closed with no answer at all; `timeout` when nothing ended it within
 * the bound (a hang: always a failure); `aborted` for exchanges the client itself cut short;
 * `<n>/<m> answered` for pipelined ones.
 */
export type Outcome = string;

export function exchange(port: number, ex: Exchange, timeoutMs: number): Promise<Outcome> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    let settled = false;
    const finish = (outcome: Outcome) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve(outcome);
    };
    const timer = setTimeout(() => finish('timeout'), timeoutMs);
    socket.on('error', () => undefined);
    if (ex.noRead) socket.pause();
    else socket.on('data', (d: Buffer) => chunks.push(d));
    socket.on('close', () => {
      const text = Buffer.concat(chunks).toString('latin1');
      if (ex.pipelined !== undefined) finish(`${(text.match(/HTTP\/1\.1 200 /g) ?? []).length}/${ex.pipelined} answered`);
      else finish(judge(text));
    });
    socket.once('connect', async () => {
      for (const part of ex.parts) {
        if (settled || socket.destroyed) return;
        if (typeof part === 'number') await new Promise((r) => setTimeout(r, part));
        // A server that answered early and closed makes writes fail: what it said is still read.
        else if (!socket.write(part)) await new Promise((r) => socket.once('drain', r).once('close', r));
      }
      if (ex.abort) finish('aborted');
    });
  });
}

/** The first answer's status, and whether its body arrived whole before the connection closed. */
function judge(all: string): Outcome {
  // Interim answers (100 Continue) come before the one that counts.
  let text = all;
  while (/^HTTP\/1\.[01] 1\d\d /.test(text) && text.includes('\r\n\r\n')) text = text.slice(text.indexOf('\r\n\r\n') + 4);
  if (text === '') return 'closed';
  const end = text.indexOf('\r\n\r\n');
  const status = /^HTTP\/1\.[01] (\d{3})/.exec(text)?.[1];
  if (status === undefined) return 'not-http';
  if (end === -1) return `${status}-cut`;
  const head = text.slice(0, end).toLowerCase();
  const body = text.slice(end + 4);
  const length = /\r\ncontent-length: *(\d+)/.exec(head)?.[1];
  const code = Number(status);
  if (code === 204 || code === 304 || code < 200) return status;
  if (length !== undefined) return body.length >= Number(length) ? status : `${status}-cut`;
  if (/\r\ntransfer-encoding: *chunked/.test(head)) return /(^|\r\n)0\r\n\r\n/.test(body) ? status : `${status}-cut`;
  // Delimited by the close itself.
  return status;
}

/** Runs `tasks` with at most `concurrency` under way at once. */
export async function pool<T>(tasks: (() => Promise<T>)[], concurrency: number): Promise<T[]> {
  const results: T[] = new Array(tasks.length);
  let next = 0;
  const worker = async () => {
    while (next < tasks.length) {
      const i = next++;
      results[i] = await (tasks[i] as () => Promise<T>)();
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  return results;
}
