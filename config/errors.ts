import type { z } from 'zod';
import { DURATION, expectationFor } from './expectations.js';

/** A configuration that cannot be used. The message is meant for the operator, as is. */
export class ConfigError extends Error {
  override name = 'ConfigError';
}

/** What an issue is read against: the schema (for the keys each table knows), the parsed TOML, the command-line flags. */
export interface IssueContext {
  schema: z.core.$ZodType;
  /** The TOML document as parsed (before validation): what the operator wrote, shown in "got …". */
  raw: unknown;
  /** Top-level keys set from the command line, by key: the flag that set it. */
  flags: ReadonlyMap<string, string>;
}

/**
 * One line per problem, `  - <key>: <what was expected>, got <what was there> — <how to fix it>`,
 * from zod's issues. A wrong type names the value found and an example of a right one; an unknown
 * key gets the nearest known key at that level ("did you mean …?"), or the table it belongs in.
 */
export function formatIssues(issues: readonly z.core.$ZodIssue[], ctx: IssueContext): string[] {
  return issues.map((issue) => formatIssue(issue, ctx));
}

function formatIssue(issue: z.core.$ZodIssue, ctx: IssueContext): string {
  const path = issue.path.map((p) => (typeof p === 'symbol' ? String(p) : p));
  if (issue.code === 'unrecognized_keys') {
    return issue.keys.map((key) => `  - ${[...path, key].join('.')}: ${unknownKey(ctx.schema, path, key)}`).join('\n');
  }
  const key = path.join('.') || '(top level)';
  const flag = path.length === 1 ? ctx.flags.get(String(path[0])) : undefined;
  const where = flag === undefined ? key : `${flag} (${key})`;
  const value = valueAt(ctx.raw, path);
  if (issue.code === 'invalid_type') return `  - ${where}: ${wrongType(issue, path, value, flag !== undefined)}`;
  if (issue.code === 'invalid_value' && !issue.message.includes(', got ')) {
    const near =
      typeof value === 'string'
        ? nearest(
            value,
            issue.values.filter((v): v is string => typeof v === 'string'),
          )
        : undefined;
    const fix = near === undefined ? quoteHint(value) : `did you mean "${near}"?`;
    return `  - ${where}: ${issue.message}, got ${describe(value)}${fix === undefined ? '' : ` — ${fix}`}`;
  }
  return `  - ${where}: ${issue.message}`;
}

/** zod's own wording ("Invalid input: expected string, received number"), replaced by ours. */
const isZodDefault = (message: string) => message.startsWith('Invalid input');

function wrongType(issue: z.core.$ZodIssueInvalidType, path: readonly PropertyKey[], value: unknown, fromFlag: boolean): string {
  const known = expectationFor(path);
  const expected =
    known !== undefined
      ? `expected ${known}`
      : isZodDefault(issue.message)
        ? `expected ${GENERIC[issue.expected] ?? issue.expected}`
        : issue.message;
  // A missing key: what it is for says more than its TOML type.
  if (value === undefined) return `missing; ${isZodDefault(issue.message) ? expected : issue.message}`;
  if (expected.includes(', got ')) return expected;
  // Every value from the command line is a string: quotes are no hint there.
  const fix = fromFlag ? undefined : typeHint(issue.expected, value, known, path);
  return `${expected}, got ${describe(value)}${fix === undefined ? '' : ` — ${fix}`}`;
}

const GENERIC: Partial<Record<string, string>> = {
  string: 'a string (in quotes)',
  number: 'a number',
  int: 'a whole number',
  boolean: 'true or false',
  object: 'a table',
  array: 'a list',
};

/** How to turn what was written into what was expected, when that is a matter of TOML syntax. */
function typeHint(expected: string, value: unknown, known: string | undefined, path: readonly PropertyKey[]): string | undefined {
  if (expected === 'string' && known === DURATION && typeof value === 'number') {
    return `a duration needs a unit and quotes, such as "${value}s" or "${value}ms"`;
  }
  if (expected === 'string') return quoteHint(value);
  if ((expected === 'number' || expected === 'int') && typeof value === 'string' && /^[+-]?\d[\d_]*(\.\d+)?$/.test(value.trim())) {
    return 'remove the quotes';
  }
  if (expected === 'boolean' && (value === 'true' || value === 'false')) return 'remove the quotes';
  if (expected === 'array' && typeof value === 'string') return `write it as a list: [${JSON.stringify(value)}]`;
  if (expected === 'object' && !isTable(value)) {
    const names = path.filter((p): p is string => typeof p === 'string');
    const header = typeof path.at(-1) === 'number' ? `[[${names.join('.')}]]` : `[${names.join('.')}]`;
    return `write it as a ${header} section with its keys under it`;
  }
  return undefined;
}

/** A number or boolean written where a string was expected. */
function quoteHint(value: unknown): string | undefined {
  if (typeof value === 'number' || typeof value === 'boolean' || typeof value === 'bigint') {
    return 'put it in quotes';
  }
  return undefined;
}

const isTable = (value: unknown) => typeof value === 'object' && value !== null && !Array.isArray(value) && !(value instanceof Date);

/** What a TOML value is, for "got …": `the number 8196`, `the string "8196"`, `a list`, `a table`. */
export function describe(value: unknown): string {
  if (value === undefined) return 'nothing';
  if (typeof value === 'string') return `the string ${JSON.stringify(value.length > 60 ? `${value.slice(0, 57)}...` : value)}`;
  if (typeof value === 'number')
    return `the number ${Number.isNaN(value) ? 'nan' : Number.isFinite(value) ? value : value > 0 ? 'inf' : '-inf'}`;
  if (typeof value === 'bigint') return `the number ${value}`;
  if (typeof value === 'boolean') return String(value);
  if (value instanceof Date) return `the date ${String(value)}`;
  if (Array.isArray(value)) return value.length === 0 ? 'an empty list' : 'a list';
  return 'a table';
}

/** The value the operator wrote at `path`, if any. */
function valueAt(raw: unknown, path: readonly PropertyKey[]): unknown {
  let at = raw;
  for (const p of path) {
    if (typeof at !== 'object' || at === null) return undefined;
    at = (at as Record<PropertyKey, unknown>)[p];
  }
  return at;
}

/** An unknown key: the nearest known key at its level, or the table it belongs in, when there is one. */
function unknownKey(schema: z.core.$ZodType, path: readonly PropertyKey[], key: string): string {
  const names = path.filter((p): p is string => typeof p === 'string');
  const section = names.length === 0 ? 'at the top level' : `in [${names.join('.')}]`;
  const known = keysAt(schema, path) ?? [];
  const near = nearest(key, known);
  if (near !== undefined) return `unknown key ${section}; did you mean ${near}?`;
  // A key of another table: TOML puts every key after a [section] header in that section.
  const elsewhere = nearestElsewhere(schema, key, names.join('.'));
  if (elsewhere !== undefined) {
    const { name, header } = elsewhere;
    const spelled = name === key ? `${key} belongs` : `did you mean ${name}? It belongs`;
    return header === ''
      ? `unknown key ${section}; ${spelled} at the top level: move it above the first [section] header`
      : `unknown key ${section}; ${spelled} in ${header}`;
  }
  // A small table's keys fit on the line; the top level's are in config.example.toml.
  return known.length > 0 && known.length <= 5
    ? `unknown key ${section} (its keys: ${known.join(', ')})`
    : `unknown key ${section} (config.example.toml lists every key)`;
}

/** The candidate closest to `word` (case, "_" and "-" aside, or within a small edit distance), if one is close enough. */
export function nearest(word: string, candidates: readonly string[]): string | undefined {
  const norm = (s: string) => s.toLowerCase().replace(/[-_\s]/g, '');
  const same = candidates.find((c) => norm(c) === norm(word));
  if (same !== undefined) return same;
  // "warning" for warn, "information" for info: a known word with more after it.
  const longer = candidates.find((c) => c.length >= 3 && word.toLowerCase().startsWith(c.toLowerCase()));
  if (longer !== undefined) return longer;
  let best: string | undefined;
  let bestDistance = Number.POSITIVE_INFINITY;
  for (const c of candidates) {
    const d = editDistance(word.toLowerCase(), c.toLowerCase());
    if (d < bestDistance) {
      best = c;
      bestDistance = d;
    }
  }
  // One edit in four characters, at most three: "listen_adr" → listen_addr, not "port" → log_level.
  const allowed = Math.min(3, Math.max(1, Math.floor(word.length / 4)));
  return bestDistance <= allowed ? best : undefined;
}

/** Damerau-Levenshtein (optimal string alignment): insertions, deletions, substitutions and swaps of neighbours. */
export function editDistance(a: string, b: string): number {
  const rows = a.length + 1;
  const cols = b.length + 1;
  const d: number[] = new Array(rows * cols).fill(0);
  const at = (i: number, j: number) => d[i * cols + j] as number;
  for (let i = 0; i < rows; i++) d[i * cols] = i;
  for (let j = 0; j < cols; j++) d[j] = j;
  for (let i = 1; i < rows; i++) {
    for (let j = 1; j < cols; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let v = Math.min(at(i - 1, j) + 1, at(i, j - 1) + 1, at(i - 1, j - 1) + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) v = Math.min(v, at(i - 2, j - 2) + 1);
      d[i * cols + j] = v;
    }
  }
  return at(a.length, b.length);
}

/** The parts of a zod 4 schema's definition this walk reads (`_zod.def`). */
interface SchemaDef {
  type: string;
  shape?: Record<string, z.core.$ZodType>;
  in?: z.core.$ZodType;
  innerType?: z.core.$ZodType;
  element?: z.core.$ZodType;
}

const defOf = (schema: z.core.$ZodType) => schema._zod.def as unknown as SchemaDef;

/** The schema under its wrappers: a transform's input, a default's or an optional's inner type. */
function unwrap(schema: z.core.$ZodType): z.core.$ZodType {
  let s = schema;
  for (;;) {
    const def = defOf(s);
    const next = def.type === 'pipe' ? def.in : def.innerType;
    if (next === undefined) return s;
    s = next;
  }
}

/** The keys of the table at `path` (list indexes walk into the list's tables), or undefined when there is none. */
export function keysAt(schema: z.core.$ZodType, path: readonly PropertyKey[]): string[] | undefined {
  let s = unwrap(schema);
  for (const p of path) {
    const def = defOf(s);
    if (def.type === 'array' && typeof p === 'number' && def.element !== undefined) s = unwrap(def.element);
    else if (def.type === 'object' && def.shape !== undefined && typeof p === 'string' && def.shape[p] !== undefined)
      s = unwrap(def.shape[p]);
    else return undefined;
  }
  const def = defOf(s);
  return def.type === 'object' && def.shape !== undefined ? Object.keys(def.shape) : undefined;
}

/** Every key path the schema knows, dotted, `*` for the tables of a list: `uploads.routes.*.method`. */
export function keyPaths(schema: z.core.$ZodType): string[] {
  const out: string[] = [];
  const walk = (s: z.core.$ZodType, prefix: string[]) => {
    const def = defOf(unwrap(s));
    if (def.type === 'array' && def.element !== undefined) {
      const element = defOf(unwrap(def.element));
      out.push([...prefix, '*'].join('.'));
      if (element.type === 'object') walk(def.element, [...prefix, '*']);
      return;
    }
    if (def.type !== 'object' || def.shape === undefined) return;
    for (const [key, child] of Object.entries(def.shape)) {
      out.push([...prefix, key].join('.'));
      walk(child, [...prefix, key]);
    }
  };
  walk(schema, []);
  return out;
}

/**
 * The one key of another table that `key` names (spelled alike, or nearly), with that table's
 * section header: '' for the top level, `[image_resizer]`, `[[uploads.routes]]`.
 */
function nearestElsewhere(schema: z.core.$ZodType, key: string, table: string): { name: string; header: string } | undefined {
  const others = keyPaths(schema)
    .map((p) => p.split('.'))
    .filter((parts) => parts.slice(0, -1).join('.').replaceAll('.*', '') !== table && parts.at(-1) !== '*');
  const name = nearest(
    key,
    others.map((parts) => parts.at(-1) as string),
  );
  const homes = others.filter((parts) => parts.at(-1) === name);
  if (name === undefined || homes.length !== 1) return undefined;
  const home = (homes[0] as string[]).slice(0, -1);
  const header = home.length === 0 ? '' : home.at(-1) === '*' ? `[[${home.slice(0, -1).join('.')}]]` : `[${home.join('.')}]`;
  return { name, header };
}

/** A path as a shell word: quoted only when it has to be. */
function shellWord(path: string): string {
  return /^[\w@%+=:,./-]+$/.test(path) ? path : `'${path.replaceAll("'", `'\\''`)}'`;
}

/**
 * What to do about a secret that cannot be used, appended to the message that says so: how to
 * make one (the standard base64 of 32 random bytes, which is what `protocol/secret.ts` accepts,
 * readable by its owner only), or, when it exists but cannot be read (`EACCES`), how to share it.
 */
export function secretHint(path: string, errno?: string): string {
  if (errno === 'EACCES') {
    return 'the user running Outrider cannot read it: give that user read access (for example its group, with mode 0640)';
  }
  return `make one with: (umask 077; head -c 32 /dev/urandom | base64 > ${shellWord(path)}) and give the backend the same file`;
}
