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

export type BodyResult = { complete: true } | { complete: false; started: boolean; err?: unknown };

/**
 * Streams `body` into `res` and ends the response only when exactly `length` bytes (the promised
 * Content-Length, when there is one) went through. Anything else (a source that fails or ends
 * short, a client that leaves) cuts the connection: a client never takes a short body for a whole one.
 *
 * `writeHead` writes the response's head; it is called once the first byte of the body is in hand
 * (at once when `length` is 0), so a source that fails or turns out empty before that (a file that
 * shrank after its stat) leaves the response unstarted: the result says `started: false`, nothing
 * was written, and the caller still answers with an error status.
 */
export async function sendBody(
  body: Readable,
  res: ServerResponse,
  length: number | undefined,
  writeHead: () => void,
): Promise<BodyResult> {
  let sent = 0;
  // The source may fail between its first chunk and the pipeline below: the pipeline reports it.
  body.on('error', ignore);
  if (length !== 0) {
    let first: Buffer | null;
    try {
      first = await firstChunk(body);
    } catch (err) {
      body.destroy();
      return { complete: false, started: false, err };
    }
    if (first === null) {
      if (length !== undefined) return { complete: false, started: false, err: new Error(`the source ended after 0 of ${length} bytes`) };
      writeHead();
      res.end();
      return { complete: true };
    }
    writeHead();
    // Back at the front of the stream: the pipeline sends it first, with backpressure as for the rest.
    body.unshift(first);
  } else {
    // Nothing promised, nothing read: a file that grew after its stat must not put bytes after the
    // head, where a keep-alive client would take them for the start of its next response.
    body.destroy();
    writeHead();
    res.end();
    return { complete: true };
  }
  body.on('data', (chunk: Buffer) => {
    sent += chunk.length;
    // More than promised (a source that grew): cut before the excess is written.
    if (length !== undefined && sent > length) res.destroy();
  });
  try {
    await pipeline(body, res, { end: false });
  } catch (err) {
    res.destroy();
    return { complete: false, started: true, err };
  }
  if (length !== undefined && sent !== length) {
    res.destroy();
    return { complete: false, started: true, err: new Error(`the source ended after ${sent} of ${length} bytes`) };
  }
  res.end();
  return { complete: true };
}

const ignore = () => undefined;

/** The first chunk `body` gives, or null when it ends without one; rejects when it fails or closes first. */
function firstChunk(body: Readable): Promise<Buffer | null> {
  // Settled already: no event would come.
  if (body.errored !== null) return Promise.reject(body.errored);
  if (body.readableEnded) return Promise.resolve(null);
  if (body.destroyed) return Promise.reject(new Error('the source closed before its first byte'));
  return new Promise((resolve, reject) => {
    const done = () => {
      body.off('data', onData);
      body.off('end', onEnd);
      body.off('error', onError);
      body.off('close', onClose);
    };
    const onData = (chunk: Buffer) => {
      // Held here until the head is written; the pipeline resumes it.
      body.pause();
      done();
      resolve(chunk);
    };
    const onEnd = () => {
      done();
      resolve(null);
    };
    const onError = (err: Error) => {
      done();
      reject(err);
    };
    const onClose = () => {
      done();
      reject(new Error('the source closed before its first byte'));
    };
    body.on('data', onData);
    body.on('end', onEnd);
    body.on('error', onError);
    body.on('close', onClose);
  });
}
