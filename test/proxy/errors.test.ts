import { errors } from 'undici';
import { describe, expect, it } from 'vitest';
import { DirectiveError } from '../../protocol/send-data.js';
import { EdgeSendfileMissing, type Peer, toEdgeError } from '../../proxy/errors.js';
import { OutboundRefusedError } from '../../proxy/outbound/client.js';
import { StoreError } from '../../proxy/upload/store/errors.js';
import { ScaleError } from '../../scaler/index.js';

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

describe('the one switch from internal errors to the catalogue', () => {
  const edge = (err: unknown, peer?: Peer) => {
    const e = toEdgeError(err, peer);
    return { status: e.statusCode, code: e.code, message: e.message };
  };

  it('maps each upload store failure by its reason, never by a status the store chose', () => {
    expect(edge(new StoreError('too-large', 'the file is larger than the 10 bytes allowed'))).toEqual({
      status: 413,
      code: 'EDGE_UPLOAD_TOO_LARGE',
      message: 'Request Entity Too Large: the file is larger than the 10 bytes allowed',
    });
    expect(edge(new StoreError('invalid', 'the multipart body is malformed'))).toMatchObject({ status: 400, code: 'EDGE_UPLOAD_INVALID' });
    expect(edge(new StoreError('timeout', 'x'))).toMatchObject({ status: 504, code: 'EDGE_UPLOAD_STORE_TIMEOUT' });
    expect(edge(new StoreError('disk', 'x'))).toMatchObject({ status: 500, code: 'EDGE_INTERNAL' });
    expect(edge(new StoreError('object-storage', 'x'))).toMatchObject({ status: 502, code: 'EDGE_UPLOAD_STORE_FAILED' });
  });

  it('maps scaler and send-data failures without naming anything internal', () => {
    expect(edge(new ScaleError('EDGE_DIRECTIVE_INVALID', 'send-scaled-img: /etc/secret'))).toEqual({
      status: 502,
      code: 'EDGE_DIRECTIVE_INVALID',
      message: 'Bad Gateway: the backend sent an invalid instruction',
    });
    expect(edge(new ScaleError('EDGE_SOURCE_UNAVAILABLE', '/srv/avatars/1.png'))).toMatchObject({
      status: 502,
      code: 'EDGE_SOURCE_UNAVAILABLE',
    });
    expect(edge(new DirectiveError('send-url: payload is not JSON'))).toMatchObject({ status: 502, code: 'EDGE_DIRECTIVE_INVALID' });
    expect(edge(new OutboundRefusedError('host a.example is not in [outbound] allowed_hosts'), 'origin')).toMatchObject({
      status: 502,
      code: 'EDGE_SOURCE_UNAVAILABLE',
    });
  });

  it('holds one timeout rule for a third-party origin as for the backend: 504 only once it accepted the request', () => {
    expect(edge(new errors.ConnectTimeoutError(), 'origin')).toMatchObject({ status: 502, code: 'EDGE_SOURCE_UNAVAILABLE' });
    expect(edge(new errors.SocketError('other side closed'), 'origin')).toMatchObject({ status: 502, code: 'EDGE_SOURCE_UNAVAILABLE' });
    expect(edge(new errors.HeadersTimeoutError(), 'origin')).toMatchObject({ status: 504 });
    // Headers the origin refuses are not the client's fault towards the backend: still the source failing.
    expect(edge(new errors.InvalidArgumentError('invalid header'), 'origin')).toMatchObject({ status: 502 });
  });

  it("maps what Node's parser could not read on a client connection to 431, 408 or 400", () => {
    const parser = (code: string) => edge(Object.assign(new Error('Parse Error'), { code }), 'client');
    expect(parser('HPE_HEADER_OVERFLOW')).toEqual({
      status: 431,
      code: 'EDGE_HEADERS_TOO_LARGE',
      message: 'Request Header Fields Too Large: the request headers are too large',
    });
    expect(parser('ERR_HTTP_REQUEST_TIMEOUT')).toMatchObject({ status: 408, code: 'EDGE_HEADERS_TIMEOUT' });
    expect(parser('HPE_INVALID_METHOD')).toEqual({
      status: 400,
      code: 'EDGE_REQUEST_MALFORMED',
      message: 'Bad Request: the request is not valid HTTP',
    });
  });

  it('passes a catalogue error through as it is, whoever the peer', () => {
    const missing = new EdgeSendfileMissing();
    expect(toEdgeError(missing, 'origin')).toBe(missing);
    expect(toEdgeError(missing, 'client')).toBe(missing);
  });
});
