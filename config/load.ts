import { readFileSync } from 'node:fs';
import { parse, TomlError } from 'smol-toml';
import { ConfigError, formatIssues } from './errors.js';
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
    const lines = formatIssues(result.error.issues, { schema: configSchema, raw, flags });
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
