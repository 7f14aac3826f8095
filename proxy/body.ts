import { ReadStream } from 'node:fs';
import type { ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';

/**
 * Resolves once a file stream has its file open, rejects with the open error otherwise; any other
 * stream is ready at once. Waiting lets a vanished file become a 404 instead of a 200 cut short.
 */
export function whenOpen(stream: Readable): Promise<void> {
  if (!(stream instanceof ReadStream) || !stream.pending) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const onReady = () => {
      stream.off('error', onError);
      resolve();
    };
    const onError = (err: Error) => {
      stream.off('ready', onReady);
      reject(err);
    };
    stream.once('ready', onReady);
    stream.once('error', onError);
  });
}

export type BodyResult = { complete: true } | { complete: false; err?: unknown };

/**
 * Streams `body` into `res` and ends the response only when exactly `length` bytes (the promised
 * Content-Length, when there is one) went through. Anything else (a source that fails or ends
 * short, a client that leaves) cuts the connection: a client never takes a short body for a whole one.
 */
export async function sendBody(body: Readable, res: ServerResponse, length: number | undefined): Promise<BodyResult> {
  let sent = 0;
  body.on('data', (chunk: Buffer) => {
    sent += chunk.length;
  });
  try {
    await pipeline(body, res, { end: false });
  } catch (err) {
    res.destroy();
    return { complete: false, err };
  }
  if (length !== undefined && sent !== length) {
    res.destroy();
    return { complete: false, err: new Error(`the source ended after ${sent} of ${length} bytes`) };
  }
  res.end();
  return { complete: true };
}
