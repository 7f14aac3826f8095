import { spawnSync } from 'node:child_process';
import { appendFileSync, existsSync, mkdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CLI, DEPLOY, need, parseUnit, scratchDir, UNIT, unitCopyForThisCheckout, unitValue } from './unit-file.js';

// deploy/: the systemd unit, its drop-in, and the sysusers.d and tmpfiles.d entries it relies on,
// checked with systemd's own tools (Debian package "systemd"; nothing here needs systemd running).

const SYSUSERS = join(DEPLOY, 'sysusers.d', 'outrider.conf');
const TMPFILES = join(DEPLOY, 'tmpfiles.d', 'outrider.conf');

function run(cmd: string, args: string[]) {
  const res = spawnSync(cmd, args, { encoding: 'utf8', env: { ...process.env, SYSTEMD_COLORS: '0', SYSTEMD_PAGER: '' } });
  if (res.error !== undefined) throw res.error;
  return { status: res.status, output: `${res.stdout}${res.stderr}` };
}

describe('deploy/outrider.service', () => {
  it('passes systemd-analyze verify with its drop-in and not a single warning', (ctx) => {
    need(ctx, 'systemd-analyze', 'systemd');
    expect(existsSync(CLI), `${CLI} is missing: run npm run build (npm test does)`).toBe(true);
    const unit = unitCopyForThisCheckout();
    expect(run('systemd-analyze', ['verify', unit])).toEqual({ status: 0, output: '' });

    // The check is real: a mistyped setting in the drop-in is reported (verify still exits 0).
    appendFileSync(join(unit, '..', 'outrider.service.d', 'backend.conf'), 'KillMod=mixed\n');
    expect(run('systemd-analyze', ['verify', unit]).output).toMatch(/backend\.conf:\d+: Unknown key 'KillMod' in section \[Service\]/);
  });

  it('keeps the exposure systemd-analyze security reports at 2.0 or lower', (ctx) => {
    need(ctx, 'systemd-analyze', 'systemd');
    const unit = unitCopyForThisCheckout();
    // --threshold is in tenths: above 2.0 ("OK" and below) the command fails.
    const res = run('systemd-analyze', ['security', '--offline=true', '--threshold=20', '--no-pager', unit]);
    const exposure = Number(/Overall exposure level for outrider\.service: ([\d.]+)/.exec(res.output)?.[1]);
    expect(exposure, res.output).toBeLessThanOrEqual(2);
    expect(res.status, res.output).toBe(0);
  });
});

describe('deploy/sysusers.d and deploy/tmpfiles.d', () => {
  it('create the user the unit runs as, with no login shell, and /etc/outrider readable by its group only', (ctx) => {
    need(ctx, 'systemd-sysusers', 'systemd');
    const entries = parseUnit(readFileSync(UNIT, 'utf8'));
    const user = unitValue(entries, 'Service', 'User');
    expect(unitValue(entries, 'Service', 'Group')).toBe(user);

    const root = scratchDir('outrider-sysroot-');
    mkdirSync(join(root, 'etc'));
    expect(run('systemd-sysusers', [`--root=${root}`, SYSUSERS]).status).toBe(0);
    const passwd = readFileSync(join(root, 'etc', 'passwd'), 'utf8').split('\n');
    const entry = passwd.find((line) => line.startsWith(`${user}:`))?.split(':');
    expect(entry?.[6]).toBe('/usr/sbin/nologin');
    const gid = Number(entry?.[3]);
    expect(readFileSync(join(root, 'etc', 'group'), 'utf8')).toContain(`${user}:x:${gid}:`);

    if (process.getuid?.() !== 0) {
      ctx.skip('systemd-tmpfiles needs root to give /etc/outrider its group: checked when the tests run as root (CI)');
    }
    const tmpfiles = run('systemd-tmpfiles', [`--root=${root}`, '--create', TMPFILES]);
    expect(tmpfiles).toEqual({ status: 0, output: '' });
    const etc = statSync(join(root, 'etc', 'outrider'));
    expect({ mode: (etc.mode & 0o7777).toString(8), uid: etc.uid, gid: etc.gid }).toEqual({ mode: '750', uid: 0, gid });
  });
});
