/**
 * What each key takes, in TOML as the operator writes it, with an example: the text of a
 * wrong-type message ("listen_addr: expected a string such as …, got the number 8196"). Keyed by
 * the key's dotted path, `*` for an entry of a list of tables. A test checks that every key the
 * schema knows is here and that every example is accepted.
 */

/** A Go-style duration: a string with a unit. */
export const DURATION = 'a duration string such as "30s", "500ms" or "5m"';
const BOOLEAN = 'true or false';
const BYTES = (example: number) => `a whole number of bytes such as ${example}`;
const ABSOLUTE_PATH = (example: string) => `a string such as "${example}" (an absolute path)`;
/** A section: the message's hint names its header. */
const TABLE = 'a table';
const SECRET = 'a string, or "" for none';

export const EXPECTATIONS: Readonly<Record<string, string>> = {
  listen_addr: 'a string such as "127.0.0.1:8181" or "unix:/run/outrider/outrider.sock"',
  auth_backend: 'a string such as "http://127.0.0.1:8080" (an http:// or https:// origin)',
  auth_socket: ABSOLUTE_PATH('/run/app/app.sock'),
  secret_path: 'a string such as "/etc/outrider/secret" (a file path)',
  proxy_headers_timeout: DURATION,
  client_body_timeout: DURATION,
  send_timeout: DURATION,
  shutdown_timeout: DURATION,
  propagate_correlation_id: BOOLEAN,
  log_level: 'a string such as "info" or "warn"',
  prometheus_listen_addr: 'a string such as "127.0.0.1:9229" or "unix:/run/outrider/metrics.sock"',
  metrics_namespace: 'a string such as "outrider" or "gitlab_workhorse"',
  health_on_metrics_listener: BOOLEAN,
  shutdown_delay: DURATION,
  document_root: ABSOLUTE_PATH('/srv/app/public'),
  workers: 'a whole number such as 4, or the string "auto"',
  image_resizer: TABLE,
  'image_resizer.max_scaler_procs': 'a whole number such as 4',
  'image_resizer.max_filesize': BYTES(250000),
  'image_resizer.max_scaler_wait': DURATION,
  'image_resizer.max_scaler_queue': 'a whole number such as 16',
  'image_resizer.formats': 'a list such as ["avif", "webp"], or [] for none',
  'image_resizer.formats.*': 'the string "avif" or "webp"',
  tls: TABLE,
  'tls.certificate': 'a string such as "/etc/outrider/tls/fullchain.pem" (a file path)',
  'tls.key': 'a string such as "/etc/outrider/tls/privkey.pem" (a file path)',
  'tls.min_version': 'the string "tls1.2" or "tls1.3"',
  'tls.max_version': 'the string "tls1.2" or "tls1.3"',
  'tls.http2': 'true or false',
  'image_resizer.shared_cache': TABLE,
  'image_resizer.shared_cache.url': 'a string such as "redis://127.0.0.1:6379/0"',
  'image_resizer.shared_cache.key_prefix': 'a string such as "outrider:img:"',
  'image_resizer.shared_cache.ttl': DURATION,
  'image_resizer.shared_cache.timeout': DURATION,
  'image_resizer.shared_cache.lease': DURATION,
  'image_resizer.shared_cache.lease_wait': DURATION,
  'image_resizer.shared_cache.failure_threshold': 'a whole number such as 3',
  'image_resizer.shared_cache.retry_after': DURATION,
  'image_resizer.max_width': 'a whole number of pixels such as 4096',
  'image_resizer.limit_input_pixels': 'a whole number of pixels such as 25000000',
  'image_resizer.cache_max_bytes': BYTES(67108864),
  outbound: TABLE,
  'outbound.allowed_hosts': 'a list of strings such as ["*.s3.amazonaws.com", "10.0.0.0/8"]',
  'outbound.allowed_hosts.*': 'a string such as "files.example.com", "*.example.com" or "10.0.0.0/8"',
  'outbound.connect_timeout': DURATION,
  'outbound.headers_timeout': DURATION,
  'outbound.body_timeout': DURATION,
  'outbound.max_redirects': 'a whole number such as 5',
  'outbound.max_response_bytes': BYTES(10737418240),
  uploads: TABLE,
  'uploads.temp_dir': ABSOLUTE_PATH('/var/tmp/outrider'),
  'uploads.max_files': 'a whole number such as 10',
  'uploads.file_mode': 'a string such as "0600" or "0640" (octal, in quotes)',
  'uploads.routes': 'a list of [[uploads.routes]] sections',
  'uploads.routes.*': TABLE,
  'uploads.routes.*.method': 'a string such as "POST" or "PUT"',
  'uploads.routes.*.path': 'a string such as "^/uploads/" (a regular expression on the path)',
  'uploads.routes.*.preauthorize': BOOLEAN,
  'uploads.routes.*.kind': 'the string "multipart" or "body"',
  'uploads.routes.*.strip_exif': BOOLEAN,
  object_storage: TABLE,
  'object_storage.provider': 'the string "AWS"',
  'object_storage.s3': TABLE,
  'object_storage.s3.aws_access_key_id': SECRET,
  'object_storage.s3.aws_secret_access_key': SECRET,
  'object_storage.s3.aws_session_token': SECRET,
  websocket: TABLE,
  'websocket.idle_timeout': DURATION,
  'websocket.max_tunnels': 'a whole number such as 10000, or 0 to refuse every upgrade',
};

/** What `path` (an issue's path) takes, when the table knows the key. */
export function expectationFor(path: readonly PropertyKey[]): string | undefined {
  return EXPECTATIONS[path.map((p) => (typeof p === 'number' ? '*' : String(p))).join('.')];
}
