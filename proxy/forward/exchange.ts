import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Measure } from '../observe/metrics/catalogue.js';

/**
 * One proxied request on its way through the pipeline (`proxy/pipeline.ts`): what every stage
 * needs of it, made once when it arrives and passed along, so nothing is hung on the request or
 * the response for a later stage to find.
 */
export class Exchange {
  readonly req: IncomingMessage;
  readonly res: ServerResponse;
  readonly requestId: string;
  /** The client's address, read when the request arrived: once it is done with, its socket may be detached. */
  readonly peer: string;
  /** `performance.now()` when the request arrived. */
  readonly started: number;
  /** Its metrics, when `prometheus_listen_addr` is set: the route and interceptor are named on it. */
  readonly measure: Measure | undefined;
  /**
   * The client sent `Expect: 100-continue` and holds its body back until it gets `100 Continue`,
   * which no one sent yet: the stage that wants the body sends it (`sendContinue`), and an answer
   * given before that leaves the body unsent (the connection then closes after the answer).
   */
  awaitingContinue: boolean;

  constructor(req: IncomingMessage, res: ServerResponse, requestId: string, measure?: Measure, awaitingContinue = false) {
    this.req = req;
    this.res = res;
    this.requestId = requestId;
    this.peer = peerAddress(req);
    this.started = performance.now();
    this.measure = measure;
    this.awaitingContinue = awaitingContinue;
  }

  /** Asks a client that sent `Expect: 100-continue` for its body, once; nothing for any other. */
  sendContinue(): void {
    if (!this.awaitingContinue) return;
    this.awaitingContinue = false;
    if (!this.res.headersSent && !this.res.destroyed) this.res.writeContinue();
  }
}

/** The connecting peer; a unix-socket peer counts as loopback, as in Workhorse. */
function peerAddress(req: IncomingMessage): string {
  // A destroyed request has no socket any more: read it when the request arrives.
  const addr = (req.socket as IncomingMessage['socket'] | null)?.remoteAddress;
  if (addr === undefined) return '127.0.0.1';
  return addr.startsWith('::ffff:') ? addr.slice(7) : addr;
}
