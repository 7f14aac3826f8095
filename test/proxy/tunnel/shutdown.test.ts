import { describe, expect, it } from 'vitest';
import { startCli } from '../../helpers/cli.js';
import { closed, connect, nextMessage, startWsBackend } from '../../helpers/ws.js';

// The real `outrider` binary (`npm test` builds it first).

describe('tunnels on shutdown', () => {
  it('keeps an open tunnel working for shutdown_timeout after SIGTERM, then closes it and logs it as shutdown', async () => {
    const backend = await startWsBackend();
    const edge = await startCli(`listen_addr = "127.0.0.1:0"\nauth_backend = "${backend.url}"\nshutdown_timeout = "1s"\n`);
    const ws = await connect(`http://${edge.listen}/-/cable`);
    const bye = closed(ws);
    const started = Date.now();
    edge.child.kill('SIGTERM');
    await edge.waitFor((l) => l.msg === 'shutting down: finishing in-flight requests', 'the shutdown line');
    // Draining: the tunnel still carries messages both ways.
    await new Promise((r) => setTimeout(r, 300));
    ws.send('still open');
    expect((await nextMessage(ws)).toString()).toBe('still open');
    // A new one is refused meanwhile: the listener is closed.
    await expect(connect(`http://${edge.listen}/late`)).rejects.toThrow();
    expect(await bye).toBe(1006);
    expect(Date.now() - started).toBeGreaterThanOrEqual(900);
    const line = await edge.waitFor((l) => l.subsystem === 'tunnel', 'the tunnel line');
    expect(line).toMatchObject({ path: '/-/cable', status: 101, reason: 'shutdown' });
    expect(await edge.exited).toBe(0);
  });

  it('stops at once on SIGTERM when no tunnel is open (nothing is left waiting)', async () => {
    const backend = await startWsBackend();
    const edge = await startCli(`listen_addr = "127.0.0.1:0"\nauth_backend = "${backend.url}"\nshutdown_timeout = "10s"\n`);
    const ws = await connect(`http://${edge.listen}/-/cable`);
    ws.close();
    await closed(ws);
    await edge.waitFor((l) => l.subsystem === 'tunnel', 'the tunnel line');
    const started = Date.now();
    edge.child.kill('SIGTERM');
    expect(await edge.exited).toBe(0);
    expect(Date.now() - started).toBeLessThan(3_000);
  });
});
