import { spawnSync } from 'node:child_process';
import { statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { startBackend } from '../helpers/backend.js';
import { commandLine, SEMI_SPACE_FLAG, startEdge, workerPids } from './edge.js';

// `npm test` builds first (pretest): these tests run the built command however a user may start it.
const CLI = fileURLToPath(new URL('../../dist/proxy/cli.js', import.meta.url));
/** Node 22.15, 23.11 and later can replace a process (`process.execve`); Node 20 cannot. */
const canReexecute = typeof (process as unknown as { execve?: unknown }).execve === 'function';

/** The environment without NODE_OPTIONS, so a flag there in the test runner's own environment proves nothing. */
function cleanEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const { NODE_OPTIONS: _, ...env } = process.env;
  return { ...env, ...extra };
}

async function backendArgs(): Promise<string[]> {
  const backend = await startBackend((_req, res) => res.end('from the backend'));
  return ['--listen-addr', '127.0.0.1:0', '--auth-backend', backend.url];
}

describe('the outrider command keeps its Node flag however it is started', () => {
  it('is built executable, and started as ./dist/proxy/cli.js it runs Node with the flag of its shebang', async () => {
    expect(statSync(CLI).mode & 0o111).toBe(0o111);
    const edge = await startEdge(CLI, await backendArgs(), cleanEnv());
    expect(edge.ready.pid).toBe(edge.pid);
    expect(commandLine(edge.pid)).toContain(SEMI_SPACE_FLAG);
    const res = await fetch(`http://${String(edge.ready.listen)}/`);
    expect(await res.text()).toBe('from the backend');
    expect(await edge.stop()).toBe(0);
  });

  it('started as `node dist/proxy/cli.js` with workers, every worker runs with the flag', async () => {
    const edge = await startEdge(process.execPath, [CLI, ...(await backendArgs()), '--workers', '2'], cleanEnv());
    const workers = workerPids(edge);
    expect(workers).toHaveLength(2);
    for (const pid of workers) expect(commandLine(pid)).toContain(SEMI_SPACE_FLAG);
    expect(await edge.stop()).toBe(0);
  });

  it(
    canReexecute
      ? 'started as `node dist/proxy/cli.js` as one process, it re-executes itself with the flag under the same pid'
      : 'started as `node dist/proxy/cli.js` as one process on a Node that cannot re-execute itself, its log names the missing flag',
    async () => {
      const edge = await startEdge(process.execPath, [CLI, ...(await backendArgs())], cleanEnv());
      expect(edge.ready.pid).toBe(edge.pid);
      const warning = edge.logs.find((l) => l.level === 40 && Array.isArray(l.missing));
      if (canReexecute) {
        expect(commandLine(edge.pid)).toEqual([process.execPath, SEMI_SPACE_FLAG, CLI, ...commandLine(edge.pid).slice(3)]);
        expect(warning).toBeUndefined();
      } else {
        expect(commandLine(edge.pid)).not.toContain(SEMI_SPACE_FLAG);
        expect(warning).toMatchObject({ missing: [SEMI_SPACE_FLAG], node: process.version });
        expect(warning?.msg).toContain(`NODE_OPTIONS=${SEMI_SPACE_FLAG}`);
      }
      const res = await fetch(`http://${String(edge.ready.listen)}/`);
      expect(await res.text()).toBe('from the backend');
      expect(await edge.stop()).toBe(0);
    },
  );

  it('a value given to node, or in NODE_OPTIONS, wins: nothing is added, re-executed or warned about', async () => {
    const given = await startEdge(process.execPath, ['--max-semi-space-size=8', CLI, ...(await backendArgs())], cleanEnv());
    expect(commandLine(given.pid).filter((a) => a.startsWith('--max-semi-space-size'))).toEqual(['--max-semi-space-size=8']);
    expect(given.logs.filter((l) => (l.level as number) >= 40)).toEqual([]);
    expect(await given.stop()).toBe(0);

    const options = await startEdge(
      process.execPath,
      [CLI, ...(await backendArgs())],
      cleanEnv({ NODE_OPTIONS: '--max-semi-space-size=8' }),
    );
    expect(commandLine(options.pid)).toEqual([process.execPath, CLI, ...commandLine(options.pid).slice(2)]);
    expect(options.logs.filter((l) => (l.level as number) >= 40)).toEqual([]);
    expect(await options.stop()).toBe(0);
  });

  it('a configuration error still exits 2 with its message on stderr when the command re-executed itself', () => {
    const res = spawnSync(process.execPath, [CLI, '--config', '/nonexistent/outrider.toml'], { encoding: 'utf8', env: cleanEnv() });
    expect(res.status).toBe(2);
    expect(res.stderr).toBe('outrider: /nonexistent/outrider.toml: cannot read config file (no such file)\n');
    expect(res.stdout).toBe('');
  });
});
