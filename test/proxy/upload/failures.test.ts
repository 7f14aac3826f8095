import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { startProxy } from '../../helpers/app.js';
import { startBackend } from '../../helpers/backend.js';
import { API_TYPE } from '../../helpers/uploads.js';
import { form, newDir, routesToml, uploadBackend } from './setup.js';

describe('upload failures upstream', () => {
  it('answers 502 when the backend cannot be asked, and 504 when object storage outlives RemoteObject.Timeout', async () => {
    const dead = await startBackend(() => undefined);
    const deadUrl = dead.url;
    await dead.close();
    const proxy = await startProxy(deadUrl, { toml: routesToml(newDir()) });
    const down = await request(`${proxy.url}/uploads/user`, { method: 'POST', body: form([['file', { data: 'x', filename: 'a' }]]) });
    expect(down.statusCode).toBe(502);
    expect(await down.body.text()).toBe('Bad Gateway: the backend is not responding\n');

    const silent = await startBackend((req) => req.resume()); // takes the PUT and never answers
    const backend = await uploadBackend(() => ({
      status: 200,
      type: API_TYPE,
      body: JSON.stringify({ RemoteObject: { ID: 'o', StoreURL: `${silent.url}/o`, Timeout: 0.3 } }),
    }));
    const proxy2 = await startProxy(backend.url, { toml: routesToml(newDir()) });
    const started = Date.now();
    const slow = await request(`${proxy2.url}/uploads/user`, { method: 'POST', body: form([['file', { data: 'x', filename: 'a' }]]) });
    expect(slow.statusCode).toBe(504);
    expect(await slow.body.text()).toBe('Gateway Timeout: the upload could not be stored in time\n');
    expect(Date.now() - started).toBeLessThan(3000);
    expect(backend.received).toHaveLength(0);
  });
});
