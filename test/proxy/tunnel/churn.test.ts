import { describe, expect, it } from 'vitest';
import { startProxy } from '../../helpers/app.js';
import { promtoolCheck, scrape } from '../../helpers/metrics.js';
import { closed, connect, nextMessage, openFds, startWsBackend, until } from '../../helpers/ws.js';

const TUNNELS = 1000;
const BATCH = 50;

describe('tunnel churn', () => {
  it('opens and closes 1000 tunnels with no file descriptor left behind, the open gauge back at 0, and metrics promtool accepts', async () => {
    const backend = await startWsBackend();
    const logs: Record<string, unknown>[] = [];
    const proxy = await startProxy(backend.url, { logs, toml: 'prometheus_listen_addr = "127.0.0.1:0"\n' });
    // Warm up once: lazily opened files (the metrics listener's first scrape, module loads) are not leaks.
    const first = await connect(`${proxy.url}/warm`);
    first.close();
    await closed(first);
    await scrape(proxy.app);
    await until(() => logs.filter((l) => l.subsystem === 'tunnel').length === 1, 5_000, 'the warm-up tunnel line');
    const before = openFds();

    for (let done = 0; done < TUNNELS; done += BATCH) {
      const batch = await Promise.all(Array.from({ length: BATCH }, (_, i) => connect(`${proxy.url}/churn/${done + i}`)));
      // Half close cleanly from the client, half are dropped by the backend.
      await Promise.all(
        batch.map(async (ws, i) => {
          ws.send(`m${i}`);
          expect((await nextMessage(ws)).toString()).toBe(`m${i}`);
        }),
      );
      const servers = [...backend.clients];
      batch.forEach((ws, i) => {
        if (i % 2 === 0) ws.close();
      });
      for (const [i, s] of servers.entries()) if (i % 2 === 1) s.terminate();
      await Promise.all(batch.map((ws) => closed(ws)));
    }
    await until(() => logs.filter((l) => l.subsystem === 'tunnel').length === TUNNELS + 1, 10_000, 'every tunnel line');
    await until(() => backend.clients.size === 0, 5_000, 'the backend to see every socket close');
    // Sockets are released a tick after their close events.
    await until(() => openFds() <= before + 5, 5_000, `file descriptors back near ${before} (now ${openFds()})`);

    const metrics = await scrape(proxy.app);
    expect(metrics.value('outrider_tunnels_open')).toBe(0);
    expect(metrics.value('outrider_tunnels_opened_total')).toBe(TUNNELS + 1);
    const closedTotal = metrics.series('outrider_tunnels_closed_total').reduce((sum, s) => sum + s.value, 0);
    expect(closedTotal).toBe(TUNNELS + 1);
    expect(metrics.value('outrider_tunnels_closed_total', { reason: 'refused' })).toBe(0);
    // Each tunnel carried one small message each way, plus the close frames.
    expect(metrics.value('outrider_tunnel_bytes_total', { direction: 'upstream' })).toBeGreaterThan(TUNNELS * 6);
    expect(metrics.value('outrider_tunnel_bytes_total', { direction: 'downstream' })).toBeGreaterThan(TUNNELS * 4);
    // promtool is what CI installs; a machine without it checks the rest (the promtool tests say so).
    const lint = promtoolCheck(metrics.text);
    if (lint === undefined) expect(process.env.CI, 'promtool is missing: apt-get install prometheus').not.toBe('true');
    else expect(lint.output.split('\n').filter((l) => /tunnel/.test(l))).toEqual([]);
  }, 60_000);

  it('counts the bytes of a tunnel still open at scrape time, and the open gauge', async () => {
    const backend = await startWsBackend();
    const proxy = await startProxy(backend.url, { toml: 'prometheus_listen_addr = "127.0.0.1:0"\n' });
    const ws = await connect(`${proxy.url}/open`);
    ws.send(Buffer.alloc(50_000));
    await nextMessage(ws);
    const metrics = await scrape(proxy.app);
    expect(metrics.value('outrider_tunnels_open')).toBe(1);
    expect(metrics.value('outrider_tunnel_bytes_total', { direction: 'upstream' })).toBeGreaterThanOrEqual(50_000);
    expect(metrics.value('outrider_tunnel_bytes_total', { direction: 'downstream' })).toBeGreaterThanOrEqual(50_000);
    ws.close();
    await closed(ws);
    await until(() => backend.clients.size === 0);
    const after = await scrape(proxy.app);
    expect(after.value('outrider_tunnels_open')).toBe(0);
    expect(after.value('outrider_tunnel_bytes_total', { direction: 'upstream' })).toBeGreaterThanOrEqual(
      metrics.value('outrider_tunnel_bytes_total', { direction: 'upstream' }),
    );
  });
});
