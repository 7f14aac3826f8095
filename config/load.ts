import { readFileSync } from 'node:fs';
import { parse, TomlError } from 'smol-toml';
import type { z } from 'zod';
import { ConfigError } from './errors.js';
import { type Config, configSchema } from './schema.js';

/** A top-level key set from the command line, e.g. `--listen-addr` for `listen_addr`. */
export interface ConfigOverride {
  key: string;
  flag: string;
  value: unknown;
}

export interface LoadConfigOptions {
  /** Named in every message: the file path, or a description of where the text came from. */
  source?: string;
  overrides?: ConfigOverride[];
}

/** Parses and validates TOML text. Throws `ConfigError` with one readable message. */
export function loadConfig(text: string, opts: LoadConfigOptions = {}): Config {
  const source = opts.source ?? 'config';
  let raw: Record<string, unknown>;
  try {
    raw = parse(text);
  } catch (err) {
    if (err instanceof TomlError) {
      throw new ConfigError(`${source}: invalid TOML at line ${err.line}, column ${err.column}\n${err.message}`, {
        cause: err,
      });
    }
    throw err;
  }
  const flags = new Map<string, string>();
  for (const o of opts.overrides ?? []) {
    raw[o.key] = o.value;
    flags.set(o.key, o.flag);
  }
  const result = configSchema.safeParse(raw);
  if (!result.success) {
    const lines = result.error.issues.map((issue) => formatIssue(issue, flags));
    throw new ConfigError(`${source}: invalid config\n${lines.join('\n')}`, { cause: result.error });
  }
  return result.data;
}

/** Reads a TOML file; every message names the file. */
export function loadConfigFile(path: string, overrides: ConfigOverride[] = []): Config {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'unknown error';
    const why = code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : code;
    throw new ConfigError(`${path}: cannot read config file (${why})`, { cause: err });
  }
  return loadConfig(text, { source: path, overrides });
}

function formatIssue(issue: z.core.$ZodIssue, flags: Map<string, string>): string {
  const path = issue.path.map(String);
  if (issue.code === 'unrecognized_keys') {
    return issue.keys
      .map((k) => {
        const where = [...path, k].join('.');
        const section = path.length === 0 ? 'at the top level' : `in [${path.join('.')}]`;
        return `  - ${where}: unknown key ${section}`;
      })
      .join('\n');
  }
  const key = path.join('.') || '(top level)';
  const flag = path.length === 1 ? flags.get(path[0] as string) : undefined;
  const where = flag === undefined ? key : `${flag} (${key})`;
  return `  - ${where}: ${issue.message}`;
}
