import { spawnSync } from 'node:child_process';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { onTestFinished, type TestContext } from 'vitest';

/** The files under deploy/ the tests read, and the built CLI (`npm test` builds first). */
export const DEPLOY = fileURLToPath(new URL('../../deploy/', import.meta.url));
export const UNIT = join(DEPLOY, 'outrider.service');
export const DROP_IN_DIR = join(DEPLOY, 'outrider.service.d');
export const SAMPLE_CONFIG = join(DEPLOY, 'outrider.toml');
export const CLI = fileURLToPath(new URL('../../dist/proxy/cli.js', import.meta.url));

/** What the unit starts: the installed `outrider` bin with the config the README installs. */
export const INSTALLED_EXEC_START = '/usr/local/bin/outrider --config /etc/outrider/outrider.toml';

/** One `Key=value` line of a unit file, in order (a key may repeat, as SystemCallFilter= does). */
export interface UnitEntry {
  section: string;
  key: string;
  value: string;
}

/** The entries of a systemd unit file: comments and blank lines skipped, no line continuations. */
export function parseUnit(text: string): UnitEntry[] {
  const entries: UnitEntry[] = [];
  let section = '';
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const header = /^\[(.+)\]$/.exec(line);
    if (header !== null) {
      section = header[1] as string;
      continue;
    }
    if (line.endsWith('\\')) throw new Error(`unit line continuations are not handled here: ${line}`);
    const eq = line.indexOf('=');
    if (eq < 1) throw new Error(`not a Key=value line: ${line}`);
    entries.push({ section, key: line.slice(0, eq).trim(), value: line.slice(eq + 1).trim() });
  }
  return entries;
}

/** The values of `key` in `section`, in order. */
export function unitValues(entries: UnitEntry[], section: string, key: string): string[] {
  return entries.filter((e) => e.section === section && e.key === key).map((e) => e.value);
}

/** The one value of `key` in `section`; throws when it is absent or repeated. */
export function unitValue(entries: UnitEntry[], section: string, key: string): string {
  const values = unitValues(entries, section, key);
  if (values.length !== 1) throw new Error(`expected one ${key}= in [${section}], found ${values.length}`);
  return values[0] as string;
}

const SPAN_UNITS: Record<string, number> = { ms: 1, msec: 1, s: 1000, sec: 1000, m: 60_000, min: 60_000, h: 3_600_000, hr: 3_600_000 };

/** A systemd time span ("90s", "1min 30s", "90": seconds) in milliseconds. */
export function parseTimeSpan(text: string): number {
  const parts = text.trim().split(/\s+/);
  let ms = 0;
  for (const part of parts) {
    const m = /^(\d+)([a-z]*)$/.exec(part);
    const unit = m === null ? undefined : SPAN_UNITS[m[2] === '' ? 's' : (m[2] as string)];
    if (m === null || unit === undefined) throw new Error(`not a time span this test reads: "${text}"`);
    ms += Number(m[1]) * unit;
  }
  return ms;
}

/** Whether a command runs here (`cmd --version` succeeds). */
export function installed(cmd: string): boolean {
  const res = spawnSync(cmd, ['--version'], { encoding: 'utf8' });
  return res.error === undefined && res.status === 0;
}

/**
 * Skips the test when `cmd` is missing, except under CI=true, where that is a failure: `.ci/run`
 * installs the Debian package `pkg`.
 */
export function need(ctx: TestContext, cmd: string, pkg: string): void {
  if (installed(cmd)) return;
  if (process.env.CI === 'true') throw new Error(`${cmd} is not installed and CI=true requires it (Debian: apt-get install ${pkg})`);
  ctx.skip(`${cmd} is not installed (Debian: apt-get install ${pkg}): skipped here; with CI=true this test fails instead`);
}

/** A new temporary directory, removed when the test ends. */
export function scratchDir(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  onTestFinished(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/**
 * deploy/outrider.service with its drop-ins, copied into a new directory with one change:
 * ExecStart runs the CLI built in this checkout (`node <checkout>/dist/proxy/cli.js`), because
 * `systemd-analyze verify` checks that the program exists and `/usr/local/bin/outrider` is not
 * installed here. Everything else is byte for byte the same. Returns the copied unit's path.
 */
export function unitCopyForThisCheckout(): string {
  const text = readFileSync(UNIT, 'utf8');
  const line = `ExecStart=${INSTALLED_EXEC_START}\n`;
  if (text.split(line).length !== 2) throw new Error(`expected exactly one line "${line.trim()}" in ${UNIT}`);
  const dir = scratchDir('outrider-unit-');
  const unit = join(dir, 'outrider.service');
  writeFileSync(unit, text.replace(line, `ExecStart=${process.execPath} ${CLI} --config /etc/outrider/outrider.toml\n`));
  cpSync(DROP_IN_DIR, join(dir, 'outrider.service.d'), { recursive: true });
  return unit;
}
