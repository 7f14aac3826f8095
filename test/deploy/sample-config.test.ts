import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { loadConfigFile } from '../../config/load.js';
import { parseTimeSpan, parseUnit, SAMPLE_CONFIG, UNIT, unitValue } from './unit-file.js';

// deploy/outrider.toml is what the README installs as /etc/outrider/outrider.toml, next to
// deploy/outrider.service: each must hold up, and the two must agree.

/** How long the cluster primary waits past shutdown_delay + shutdown_timeout before it kills its workers (proxy/runtime/cluster.ts). */
const PRIMARY_MARGIN_MS = 5_000;
/** How long a stopping process waits for its log to flush before it exits anyway (proxy/cli.ts). */
const LOG_FLUSH_MS = 2_000;

describe('deploy/outrider.toml', () => {
  it('is a valid configuration with the backend on loopback', () => {
    const config = loadConfigFile(SAMPLE_CONFIG);
    expect(new URL(config.authBackend).hostname).toBe('127.0.0.1');
    expect(config.listenAddr).toEqual({ kind: 'tcp', host: '127.0.0.1', port: 8181 });
    expect(config.secretPath).toBe('/etc/outrider/secret');
    // Drains on SIGTERM: a load balancer sees readiness at 503 before the listener closes.
    expect(config.shutdownDelayMs).toBeGreaterThan(0);
  });

  it("gives outrider.service's TimeoutStopSec room for the whole drain before systemd kills", () => {
    const config = loadConfigFile(SAMPLE_CONFIG);
    const unit = parseUnit(readFileSync(UNIT, 'utf8'));
    const stopMs = parseTimeSpan(unitValue(unit, 'Service', 'TimeoutStopSec'));
    // Readiness at 503, in-flight requests finishing, a worker still running killed by the primary
    // (logged), the last lines flushed: all of it before systemd's SIGKILL.
    const drainMs = config.shutdownDelayMs + config.shutdownTimeoutMs + PRIMARY_MARGIN_MS + LOG_FLUSH_MS;
    expect(stopMs).toBeGreaterThan(drainMs);
    expect(unitValue(unit, 'Service', 'KillSignal')).toBe('SIGTERM');
  });
});
