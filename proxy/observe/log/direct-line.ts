import type { FastifyBaseLogger } from 'fastify';
import pino from 'pino';

const S = pino.symbols;

/** A pino logger's fields, read by the symbols pino exports for them. */
type PinoInternals = Record<symbol, unknown>;

/** The parts of a pino logger's line that do not change from one line to the next. */
interface LineParts {
  info: number;
  level: string;
  time: () => string;
  bindings: string;
  msgKey: string;
  end: string;
  stream: { write(line: string): unknown };
}

/**
 * Writes the info line `log.child({ requestId }).info({ …fields }, msg)` would write, byte for
 * byte, put together directly from the logger's own pieces (level, time, bindings, end of line)
 * instead of through a child logger and pino's generic object serialisation. `fields` is the
 * JSON of the fields after the request id, each preceded by a comma; the caller writes only
 * values it knows need no escaping, or escapes them with `jsonString`.
 */
export interface DirectLine {
  /** False while the logger's level is above info: nothing would be written. */
  enabled(): boolean;
  write(requestId: string, fields: string): void;
}

/**
 * A direct writer of `msg` lines for `log`; undefined when pino would change the line (a mixin, a
 * log formatter, custom serialisers, a nested key, a message prefix, a write hook, a multistream)
 * or the line has fields a serialiser claims: then the caller logs through pino.
 */
export function createDirectLine(log: FastifyBaseLogger, msg: string, fieldNames: readonly string[]): DirectLine | undefined {
  const parts = lineParts(log, [...fieldNames, 'requestId']);
  if (parts === undefined) return undefined;
  const l = log as unknown as PinoInternals;
  const tail = `${parts.msgKey}${JSON.stringify(msg)}${parts.end}`;
  const head = parts.level;
  return {
    // The logger's level may change while it runs.
    enabled: () => (l[S.levelValSym] as number) <= parts.info,
    write(requestId, fields) {
      parts.stream.write(`${head}${parts.time()}${parts.bindings},"requestId":${jsonString(requestId)}${fields}${tail}`);
    },
  };
}

/** `log`'s fixed pieces of an info line; undefined when anything would make pino write it differently. */
function lineParts(log: FastifyBaseLogger, fieldNames: readonly string[]): LineParts | undefined {
  const l = log as unknown as PinoInternals;
  const levelCache = l[S.lsCacheSym] as Record<number, string> | undefined;
  const stream = l[S.streamSym] as (LineParts['stream'] & PinoInternals) | undefined;
  const formatters = l[S.formattersSym] as { log?: unknown } | undefined;
  const serializers = (l[S.serializersSym] ?? {}) as Record<string, unknown>;
  const hooks = l[S.hooksSym] as { streamWrite?: unknown } | undefined;
  const time = l[S.timeSym];
  const info = (log as unknown as { levels?: { values?: Record<string, number> } }).levels?.values?.info;
  if (
    levelCache === undefined ||
    info === undefined ||
    typeof levelCache[info] !== 'string' ||
    typeof time !== 'function' ||
    typeof l[S.levelValSym] !== 'number' ||
    typeof stream?.write !== 'function' ||
    stream[S.needsMetadataGsym] === true ||
    formatters?.log !== undefined ||
    l[S.mixinSym] ||
    l[S.nestedKeySym] ||
    l[(S as unknown as Record<string, symbol>).msgPrefixSym as symbol] ||
    hooks?.streamWrite !== undefined ||
    [...fieldNames, 'msg'].some((k) => k in serializers)
  ) {
    return undefined;
  }
  return {
    info,
    level: levelCache[info] as string,
    time: (time as () => string).bind(log),
    bindings: (l[S.chindingsSym] as string | undefined) ?? '',
    msgKey: `,${JSON.stringify(l[S.messageKeySym] ?? 'msg')}:`,
    end: (l[S.endSym] as string | undefined) ?? '}\n',
    stream,
  };
}

/** Characters a JSON string cannot hold as they are, and non-ASCII (left to JSON.stringify). */
const NEEDS_ESCAPE = /["\\\u0000-\u001f\u007f-\uffff]/;

/** `s` as a JSON string. */
export function jsonString(s: string): string {
  return NEEDS_ESCAPE.test(s) ? JSON.stringify(s) : `"${s}"`;
}

/** Milliseconds since `started` (a `performance.now()`), to the microsecond or, with `perMs` 100, to 10 µs. */
export function msSince(started: number, perMs = 1000): number {
  return Math.round((performance.now() - started) * perMs) / perMs;
}
