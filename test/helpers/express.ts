import type { AddressInfo } from 'node:net';
import type { Express } from 'express';
import { onTestFinished } from 'vitest';

export interface RunningExpress {
  url: string;
  port: number;
}

/** An Express app listening on 127.0.0.1 with an ephemeral port, closed when the test ends. */
export async function listenExpress(app: Express): Promise<RunningExpress> {
  const server = await new Promise<ReturnType<Express['listen']>>((resolve, reject) => {
    const s = app.listen(0, '127.0.0.1', (err?: Error) => (err === undefined ? resolve(s) : reject(err)));
  });
  const { port } = server.address() as AddressInfo;
  onTestFinished(
    () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  );
  return { url: `http://127.0.0.1:${port}`, port };
}
