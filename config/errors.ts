/** A configuration that cannot be used. The message is meant for the operator, as is. */
export class ConfigError extends Error {
  override name = 'ConfigError';
}
