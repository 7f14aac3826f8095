import { errors } from 'undici';
import { describe, expect, it } from 'vitest';
import { toEdgeError } from '../../proxy/errors.js';

describe('mapping backend failures to statuses', () => {
  it('answers 504 only when the backend accepted the request and then did not answer in time', () => {
    expect(toEdgeError(new errors.HeadersTimeoutError()).statusCode).toBe(504);
    expect(toEdgeError(new errors.BodyTimeoutError()).statusCode).toBe(504);
  });

  it('answers 502 when the backend cannot be reached at all, however that fails', () => {
    expect(toEdgeError(new errors.ConnectTimeoutError()).statusCode).toBe(502);
    expect(toEdgeError(new errors.SocketError('other side closed')).statusCode).toBe(502);
    expect(toEdgeError(Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' })).statusCode).toBe(502);
    // reply-from style wrapping: the cause's code decides.
    expect(toEdgeError(Object.assign(new Error('wrapped'), { cause: new errors.HeadersTimeoutError() })).statusCode).toBe(504);
  });

  it('answers 400 when undici refuses a header the client sent', () => {
    expect(toEdgeError(new errors.InvalidArgumentError('invalid header')).statusCode).toBe(400);
  });
});
