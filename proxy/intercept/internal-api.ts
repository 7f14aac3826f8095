import { API_CONTENT_TYPE } from '../../protocol/headers.js';
import { EdgeUpstreamInternalApi } from '../errors.js';
import type { Interceptor } from './types.js';

/** Internal API answers (pre-authorize JSON) must never reach a client (Workhorse `api.Block`). */
export const blockInternalApi: Interceptor = {
  name: 'internal-api-block',
  match(head) {
    const type = head.contentType;
    return (
      type !== undefined &&
      type.length >= API_CONTENT_TYPE.length &&
      type.slice(0, API_CONTENT_TYPE.length).toLowerCase() === API_CONTENT_TYPE
    );
  },
  async serve(ctx) {
    ctx.log.warn({ subsystem: 'proxy', status: ctx.head.statusCode }, 'blocked a backend response with an internal API content type');
    ctx.fail(new EdgeUpstreamInternalApi());
  },
};
