import { connect, type Socket } from 'node:net';
import { onTestFinished } from 'vitest';

/** One raw TCP connection to a server, read as it goes: for exchanges an HTTP client library would hide (1xx answers, a withheld body). */
export interface Conversation {
  socket: Socket;
  /** Everything received so far, as latin1 text. */
  text: () => string;
  /** Resolves once the text received contains `what`; rejects after `ms`. */
  waitFor: (what: string | RegExp, ms?: number) => Promise<void>;
  /** Resolves once the server has closed the connection. */
  closed: Promise<void>;
}

export async function converse(port: number): Promise<Conversation> {
  const socket = connect(port, '127.0.0.1');
  onTestFinished(() => {
    socket.destroy();
  });
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  let received = '';
  const waiters = new Set<() => void>();
  socket.on('data', (chunk: Buffer) => {
    received += chunk.toString('latin1');
    for (const check of waiters) check();
  });
  // A reset after the answer (a body the server did not want) is not what these tests are about.
  socket.on('error', () => undefined);
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  const has = (what: string | RegExp) => (typeof what === 'string' ? received.includes(what) : what.test(received));
  return {
    socket,
    text: () => received,
    closed,
    waitFor: (what, ms = 3_000) =>
      new Promise<void>((resolve, reject) => {
        if (has(what)) return resolve();
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`not received within ${ms} ms: ${String(what)}; got ${JSON.stringify(received)}`));
        }, ms);
        const check = () => {
          if (!has(what)) return;
          clearTimeout(timer);
          waiters.delete(check);
          resolve();
        };
        waiters.add(check);
      }),
  };
}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
