import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { startBackend } from '../helpers/backend.js';

// The real `outrider` binary from dist/ (`npm test` builds first): what an operator sees when
// Outrider does not start. Every such failure is one text line on stderr, "outrider: …", exit
// code 2 for the configuration and 1 for the rest; stdout carries only JSON log lines.

const CLI = fileURLToPath(new URL('../../dist/proxy/cli.js', import.meta.url));

function tempDir(): string {
  return mkdtempSync(join(tmpdir(), 'outrider-start-'));
}

function configFile(toml: string): string {
  const file = join(tempDir(), 'outrider.toml');
  writeFileSync(file, toml);
  return file;
}

function run(args: string[]) {
  return spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 15_000 });
}

/** stdout as the JSON log lines it must consist of. */
function logLines(stdout: string): Record<string, unknown>[] {
  return stdout
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

describe('starting Outrider with a bad configuration', () => {
  it('exits 2 saying listen_addr = 8196 needs quotes, naming the file, with no stack trace', () => {
    const file = configFile('listen_addr = 8196\n');
    const res = run(['--config', file]);
    expect(res.status).toBe(2);
    expect(res.stderr).toBe(
      `outrider: ${file}: invalid config\n` +
        '  - listen_addr: expected a string such as "127.0.0.1:8181" or "unix:/run/outrider/outrider.sock", got the number 8196 — put it in quotes\n',
    );
    expect(res.stdout).toBe('');
  });

  it('exits 2 suggesting the key a typo meant', () => {
    const file = configFile('[image_resizer]\nmax_scaler_proc = 4\n');
    const res = run(['--config', file]);
    expect(res.status).toBe(2);
    expect(res.stderr).toBe(
      `outrider: ${file}: invalid config\n  - image_resizer.max_scaler_proc: unknown key in [image_resizer]; did you mean max_scaler_procs?\n`,
    );
  });

  it('exits 2 saying how to make the secret when an upload route needs one and it is missing', () => {
    const dir = tempDir();
    const secret = join(dir, 'secret');
    const file = configFile(
      `listen_addr = "127.0.0.1:0"\nsecret_path = "${secret}"\n[[uploads.routes]]\nmethod = "POST"\npath = "^/uploads/"\n`,
    );
    for (const workers of ['1', '2']) {
      const res = run(['--config', file, '--workers', workers]);
      expect(res.status, `workers = ${workers}`).toBe(2);
      expect(res.stderr, `workers = ${workers}`).toBe(
        `outrider: ${secret}: cannot read the secret (secret_path): no such file — make one with: ` +
          `(umask 077; head -c 32 /dev/urandom | base64 > ${secret}) and give the backend the same file\n`,
      );
      // stdout is the JSON log, and nothing else.
      logLines(res.stdout);
    }
  });
});

describe('starting Outrider where it cannot listen', () => {
  it('exits 1 with one line on stderr naming listen_addr and what holds the port, and a fatal JSON log line', async () => {
    const taken = await startBackend((_req, res) => res.end());
    const file = configFile(`listen_addr = "127.0.0.1:${taken.port}"\n`);
    const res = run(['--config', file]);
    expect(res.status).toBe(1);
    expect(res.stderr).toBe(
      `outrider: cannot listen on listen_addr 127.0.0.1:${taken.port}: listen EADDRINUSE: address already in use 127.0.0.1:${taken.port}` +
        ` — another process is listening on port ${taken.port} (see which with: ss -ltnp 'sport = :${taken.port}'); stop it or choose another port\n`,
    );
    const lines = logLines(res.stdout);
    expect(lines.find((l) => l.level === 60)).toMatchObject({ code: 'EADDRINUSE', msg: res.stderr.slice('outrider: '.length, -1) });
  });

  it('exits 1 the same way when the metrics listener’s port is taken, with one process or several', async () => {
    const taken = await startBackend((_req, res) => res.end());
    for (const workers of ['1', '2']) {
      const file = configFile(`listen_addr = "127.0.0.1:0"\nprometheus_listen_addr = "127.0.0.1:${taken.port}"\n`);
      const res = run(['--config', file, '--workers', workers]);
      expect(res.status, `workers = ${workers}`).toBe(1);
      expect(res.stderr, `workers = ${workers}`).toBe(
        `outrider: cannot listen on prometheus_listen_addr 127.0.0.1:${taken.port}: listen EADDRINUSE: address already in use 127.0.0.1:${taken.port}` +
          ` — another process is listening on port ${taken.port} (see which with: ss -ltnp 'sport = :${taken.port}'); stop it or choose another port\n`,
      );
      expect(logLines(res.stdout).some((l) => l.level === 60 && l.code === 'EADDRINUSE')).toBe(true);
    }
  });

  it('says the directory of a unix socket does not exist', () => {
    const dir = join(tempDir(), 'missing');
    const res = run(['--config', configFile(`listen_addr = "unix:${dir}/outrider.sock"\n`)]);
    expect(res.status).toBe(1);
    expect(res.stderr.startsWith(`outrider: cannot listen on listen_addr unix:${dir}/outrider.sock: `)).toBe(true);
    expect(res.stderr.endsWith(` — the directory ${dir} does not exist\n`)).toBe(true);
  });
});
