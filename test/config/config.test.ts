import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError } from '../../config/errors.js';
import { loadConfig, loadConfigFile } from '../../config/load.js';
import { DEFAULT_MAX_SCALER_PROCS, MAX_WORKERS, parseListenAddr } from '../../config/schema.js';

function errorOf(text: string): string {
  try {
    loadConfig(text, { source: 'outrider.toml' });
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as Error).message;
  }
  throw new Error('expected the config to be refused');
}

describe('configuration', () => {
  it('has Workhorse-compatible defaults when the file is empty', () => {
    expect(loadConfig('')).toEqual({
      listenAddr: { kind: 'tcp', host: 'localhost', port: 8181 },
      authBackend: 'http://localhost:8080',
      authSocket: undefined,
      secretPath: '.gitlab_workhorse_secret',
      proxyHeadersTimeoutMs: 300_000,
      clientBodyTimeoutMs: 60_000,
      sendTimeoutMs: 60_000,
      shutdownTimeoutMs: 60_000,
      propagateCorrelationId: false,
      logLevel: 'info',
      prometheusListenAddr: undefined,
      metricsNamespace: 'outrider',
      healthOnMetricsListener: false,
      shutdownDelayMs: 0,
      documentRoot: undefined,
      workers: 1,
      imageResizer: {
        maxScalerProcs: DEFAULT_MAX_SCALER_PROCS,
        maxFilesize: 250_000,
        maxScalerWaitMs: 1000,
        maxScalerQueue: DEFAULT_MAX_SCALER_PROCS * 8,
        formats: ['avif', 'webp'],
        maxWidth: 4096,
        limitInputPixels: 25_000_000,
        cacheMaxBytes: 64 * 1024 * 1024,
      },
      outbound: {
        allowedHosts: [],
        connectTimeoutMs: 10_000,
        headersTimeoutMs: 30_000,
        bodyTimeoutMs: 300_000,
        maxRedirects: 5,
        maxResponseBytes: 10 * 1024 ** 3,
      },
      uploads: { tempDir: '/var/tmp/outrider', maxFiles: 10, fileMode: 0o600, routes: [] },
      objectStorage: undefined,
      websocket: { idleTimeoutMs: 600_000, maxTunnels: 10_000 },
    });
    expect(DEFAULT_MAX_SCALER_PROCS).toBeGreaterThanOrEqual(2);
  });

  it('documents every key with its default in config.example.toml', () => {
    const text = readFileSync(new URL('../../config.example.toml', import.meta.url), 'utf8');
    const example = loadConfig(text, { source: 'config.example.toml' });
    // max_scaler_procs depends on the machine; everything else is exactly the default.
    expect({ ...example, imageResizer: { ...example.imageResizer, maxScalerProcs: 0, maxScalerQueue: 0 } }).toEqual({
      ...loadConfig(''),
      imageResizer: { ...loadConfig('').imageResizer, maxScalerProcs: 0, maxScalerQueue: 0 },
    });
    for (const key of [
      'listen_addr',
      'auth_backend',
      'auth_socket',
      'secret_path',
      'proxy_headers_timeout',
      'shutdown_timeout',
      'propagate_correlation_id',
      'log_level',
      'shutdown_delay',
      'prometheus_listen_addr',
      'metrics_namespace',
      'health_on_metrics_listener',
      'document_root',
      'workers',
      'max_scaler_procs',
      'max_filesize',
      'max_scaler_wait',
      'max_scaler_queue',
      'formats',
      'url',
      'key_prefix',
      'ttl',
      'timeout',
      'lease',
      'lease_wait',
      'failure_threshold',
      'retry_after',
      'certificate',
      'min_version',
      'max_version',
      'http2',
      'max_width',
      'limit_input_pixels',
      'cache_max_bytes',
      'allowed_hosts',
      'connect_timeout',
      'headers_timeout',
      'body_timeout',
      'max_redirects',
      'max_response_bytes',
      'temp_dir',
      'max_files',
      'file_mode',
      'method',
      'path',
      'preauthorize',
      'kind',
      'strip_exif',
      'provider',
      'aws_access_key_id',
      'aws_secret_access_key',
      'aws_session_token',
      'idle_timeout',
      'max_tunnels',
    ]) {
      expect(text).toMatch(new RegExp(`^#? ?${key} = `, 'm'));
    }
  });

  it('reads durations, addresses and sections', () => {
    const c = loadConfig(`
listen_addr = "unix:/run/outrider.sock"
auth_backend = "https://app.internal:3000"
auth_socket = "/run/app.sock"
proxy_headers_timeout = "1m30s"
shutdown_timeout = "0"
propagate_correlation_id = true
[image_resizer]
max_scaler_procs = 8
max_filesize = 0
`);
    expect(c.listenAddr).toEqual({ kind: 'unix', path: '/run/outrider.sock' });
    expect(c.authBackend).toBe('https://app.internal:3000');
    expect(c.authSocket).toBe('/run/app.sock');
    expect(c.proxyHeadersTimeoutMs).toBe(90_000);
    expect(c.shutdownTimeoutMs).toBe(0);
    expect(c.propagateCorrelationId).toBe(true);
    expect(c.imageResizer).toMatchObject({ maxScalerProcs: 8, maxFilesize: 0 });
    expect(parseListenAddr('[::1]:8181')).toEqual({ kind: 'tcp', host: '::1', port: 8181 });
    expect(parseListenAddr(':8181')).toEqual({ kind: 'tcp', host: '0.0.0.0', port: 8181 });
    expect(parseListenAddr('localhost:99999')).toBeUndefined();
    expect(parseListenAddr('unix:relative.sock')).toBeUndefined();
  });

  it('refuses unknown keys, naming the key and where it is', () => {
    expect(errorOf('listen_adr = "x:1"')).toBe(
      'outrider.toml: invalid config\n  - listen_adr: unknown key at the top level; did you mean listen_addr?',
    );
    expect(errorOf('[image_resizer]\nmax_filesise = 1')).toBe(
      'outrider.toml: invalid config\n  - image_resizer.max_filesise: unknown key in [image_resizer]; did you mean max_filesize?',
    );
    expect(errorOf('[uploads]\ntmp_dir = "/tmp"')).toContain('uploads.tmp_dir: unknown key in [uploads]');
    expect(errorOf('[[uploads.routes]]\nmethod = "POST"\npath = "^/u"\npre_authorize = true')).toContain(
      'uploads.routes.0.pre_authorize: unknown key in [uploads.routes]',
    );
    expect(errorOf('[imageresizer]\nmax_filesize = 1')).toContain('imageresizer: unknown key at the top level');
  });

  it('refuses wrong types and impossible values, saying what was expected', () => {
    expect(errorOf('listen_addr = 8181')).toContain('listen_addr: expected a string such as "127.0.0.1:8181"');
    expect(errorOf('listen_addr = "localhost"')).toContain(
      'listen_addr: expected "host:port" (port 0-65535) or "unix:/absolute/path", got "localhost"',
    );
    expect(errorOf('auth_backend = "localhost:8080"')).toContain('auth_backend: expected an http:// or https:// origin');
    expect(errorOf('auth_backend = "http://app/prefix"')).toContain('auth_backend: expected an http:// or https:// origin');
    expect(errorOf('auth_socket = "app.sock"')).toContain('auth_socket: expected an absolute path to a unix socket');
    expect(errorOf('proxy_headers_timeout = "5"')).toContain(
      'proxy_headers_timeout: expected the backend response-header timeout as a duration like "500ms", "30s" or "5m", got "5"',
    );
    expect(errorOf('proxy_headers_timeout = "0s"')).toContain(
      'proxy_headers_timeout: expected the backend response-header timeout greater than zero',
    );
    expect(errorOf('shutdown_timeout = "30d"')).toContain('shutdown_timeout: expected the shutdown grace period as a duration');
    expect(errorOf('shutdown_timeout = "1000h"')).toContain('shutdown_timeout: expected the shutdown grace period of at most "24h"');
    expect(errorOf('proxy_headers_timeout = "25h"')).toContain('of at most "24h"');
    expect(errorOf('shutdown_timeout = 60')).toContain('shutdown_timeout: expected a duration string such as "30s"');
    expect(errorOf('propagate_correlation_id = "yes"')).toContain('propagate_correlation_id: expected true or false');
    expect(errorOf('log_level = "loud"')).toContain('log_level: expected one of');
    expect(errorOf('[image_resizer]\nmax_scaler_procs = 0')).toContain(
      'image_resizer.max_scaler_procs: expected a number of concurrent scaling jobs of at least 1',
    );
    expect(errorOf('[image_resizer]\nmax_scaler_procs = 2.5')).toContain('expected a whole number such as 4, got the number 2.5');
    expect(errorOf('[image_resizer]\nmax_filesize = -1')).toContain('image_resizer.max_filesize: expected a size in bytes of at least 0');
    for (const mode of ['"0644x"', '"0400"', '"0755"', '"0666"']) {
      expect(errorOf(`[uploads]\nfile_mode = ${mode}`), mode).toContain(
        'uploads.file_mode: expected an octal file mode like "0600" or "0640"',
      );
    }
    expect(errorOf('[uploads]\nfile_mode = 640')).toContain(
      'uploads.file_mode: expected a string such as "0600" or "0640" (octal, in quotes), got the number 640 — put it in quotes',
    );
    expect(loadConfig('[uploads]\nfile_mode = "0640"').uploads.fileMode).toBe(0o640);
    expect(errorOf('[outbound]\nallowed_hosts = ["http://x"]')).toContain(
      'outbound.allowed_hosts.0: expected "*" (any public host), a host name, "*.example.com", an IP address or a CIDR range like "10.0.0.0/8", got "http://x"',
    );
    expect(errorOf('[outbound]\nallowed_hosts = ["10.0.0.0/33"]')).toContain('outbound.allowed_hosts.0: expected "*"');
    expect(errorOf('[outbound]\nmax_response_bytes = 0')).toContain('outbound.max_response_bytes: expected a size in bytes of at least 1');
    expect(errorOf('[outbound]\nmax_redirects = 50')).toContain('outbound.max_redirects: expected at most 20 redirects');
    expect(errorOf('image_resizer = 3')).toContain('image_resizer: expected a table, got the number 3');
  });

  it("reads [object_storage] with Workhorse's key names: static keys, or none for the default credential chain", () => {
    expect(loadConfig('[object_storage]\nprovider = "AWS"').objectStorage).toEqual({ provider: 'AWS', credentials: undefined });
    // Empty keys are no keys, as omnibus writes them.
    expect(
      loadConfig('[object_storage]\nprovider = "s3"\n[object_storage.s3]\naws_access_key_id = ""\naws_secret_access_key = ""')
        .objectStorage,
    ).toEqual({
      provider: 'AWS',
      credentials: undefined,
    });
    expect(
      loadConfig('[object_storage]\nprovider = "AWS"\n[object_storage.s3]\naws_access_key_id = "AKID"\naws_secret_access_key = "SECRET"')
        .objectStorage,
    ).toEqual({ provider: 'AWS', credentials: { accessKeyId: 'AKID', secretAccessKey: 'SECRET' } });
    expect(errorOf('[object_storage]\nprovider = "AzureRM"')).toContain(
      'object_storage.provider: expected "AWS" (the one provider Outrider has a client for), got "AzureRM"',
    );
    expect(errorOf('[object_storage.s3]\naws_access_key_id = "AKID"')).toContain('object_storage.provider: missing; expected "AWS"');
    expect(errorOf('[object_storage]\nprovider = "AWS"\n[object_storage.s3]\naws_access_key_id = "AKID"')).toContain(
      'object_storage.s3: expected aws_access_key_id and aws_secret_access_key together, or neither (the default credential chain)',
    );
    expect(errorOf('[object_storage]\nprovider = "AWS"\n[object_storage.s3]\naws_acess_key_id = "AKID"')).toContain('aws_acess_key_id');
  });

  it('reads workers as a count from 1 to 64 or "auto", one per CPU', () => {
    expect(loadConfig('workers = 4').workers).toBe(4);
    expect(loadConfig('workers = "auto"').workers).toBe(Math.min(availableParallelism(), MAX_WORKERS));
    const expected = 'expected a number of worker processes from 1 to 64, or "auto" (one per CPU)';
    expect(errorOf('workers = 0')).toBe(`outrider.toml: invalid config\n  - workers: ${expected}, got 0`);
    expect(errorOf('workers = 65')).toContain(`workers: ${expected}, got 65`);
    expect(errorOf('workers = 1.5')).toContain(`workers: ${expected}, got 1.5`);
    expect(errorOf('workers = "all"')).toContain(`workers: ${expected}, got "all"`);
    expect(() => loadConfig('', { source: 'edge.toml', overrides: [{ key: 'workers', flag: '--workers', value: 'many' }] })).toThrow(
      `  - --workers (workers): ${expected}, got "many"`,
    );
  });

  it('reports every problem at once', () => {
    const message = errorOf('listen_addr = "nope"\nlog_level = 3\n[image_resizer]\nmax_filesize = "big"');
    expect(message.split('\n')).toHaveLength(4);
  });

  it('reports TOML syntax errors with line and column', () => {
    expect(errorOf('listen_addr = "a:1"\nauth_backend = ')).toMatch(/^outrider\.toml: invalid TOML at line 2, column \d+\n/);
  });

  it('names the file in every message when loading from disk', () => {
    const dir = mkdtempSync(join(tmpdir(), 'outrider-config-'));
    const file = join(dir, 'edge.toml');
    writeFileSync(file, '[image_resizer]\nmax_filesize = -5\n');
    expect(() => loadConfigFile(file)).toThrow(`${file}: invalid config\n  - image_resizer.max_filesize:`);
    expect(() => loadConfigFile(join(dir, 'missing.toml'))).toThrow(`${join(dir, 'missing.toml')}: cannot read config file (no such file)`);
  });

  it('names the command-line flag when an override is invalid', () => {
    expect(() =>
      loadConfig('', { source: 'edge.toml', overrides: [{ key: 'listen_addr', flag: '--listen-addr', value: 'nowhere' }] }),
    ).toThrow('edge.toml: invalid config\n  - --listen-addr (listen_addr): expected "host:port"');
  });
});
