import type { FastifyBaseLogger } from 'fastify';
import type { ModernFormat, Scaler } from '../../scaler/index.js';
import type { Metrics } from '../observe/metrics/catalogue.js';
import type { Outbound } from '../outbound/client.js';
import { blockInternalApi } from './internal-api.js';
import { createScaledImg } from './scaled-img.js';
import { createSendUrl } from './send-url.js';
import { sendfile } from './sendfile.js';
import type { Interceptor } from './types.js';

/** The single registration list, in match order; the first match wins. */
export function createInterceptors(deps: {
  outbound: Outbound;
  scaler: Scaler;
  maxWidth: number;
  /** `[image_resizer] formats`: what a scaled image may be converted to by Accept. */
  formats?: readonly ModernFormat[];
  log?: FastifyBaseLogger;
  metrics?: Metrics | undefined;
}): Interceptor[] {
  return [
    blockInternalApi,
    sendfile,
    createScaledImg(deps.scaler, { maxWidth: deps.maxWidth, formats: deps.formats ?? [], log: deps.log, metrics: deps.metrics }),
    createSendUrl(deps.outbound),
  ];
}
