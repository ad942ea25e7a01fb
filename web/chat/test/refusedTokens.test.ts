// Review of the reconnect and token fixes (2026-12-07): a gateway that refuses every
// fresh token (close 4001 before the socket synced) is tried again after the backoff,
// not at once for ever; and a refresh answered after this client signed out is not
// taken (it made the signed-out client logged in again). The real client against
// test/support/fakeServer.ts.
import { afterEach, describe, expect, it, vi } from 'vitest';

import { type FakeServer, FakeSocket } from './support/fakeServer.ts';
import { cleanUp, people, sleep } from './support/clients.ts';

vi.mock('../src/app/vault.ts', async (importOriginal) => {
  const { MemoryVault } = await import('./support/fakeServer.ts');
  return { ...(await importOriginal<typeof import('../src/app/vault.ts')>()), Vault: MemoryVault };
});

const realNow = Date.now.bind(Date);
const send = FakeSocket.prototype.send;

afterEach(() => {
  FakeSocket.prototype.send = send;
  cleanUp();
  vi.restoreAllMocks();
});

function jwt(claims: Record<string, unknown>): string {
  const part = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');
  return `${part({ alg: 'none' })}.${part(claims)}.sig`;
}

/** The auth service's refresh, counted; its answers delayed by `delay` ms. */
function refreshes(server: FakeServer): { count: number; delay: number } {
  const auth = { count: 0, delay: 0 };
  vi.stubGlobal('fetch', async (input: string, init?: RequestInit) => {
    if (String(input).includes('/auth/v1/sessions/') && init?.method === 'DELETE') {
      await sleep(50); // the session is ended while a refresh is on its way
      return new Response(null, { status: 204 });
    }
    if (!String(input).endsWith('/auth/v1/token/refresh')) return server.fetch(input, init);
    auth.count++;
    const body = await (await server.fetch(input, init)).json();
    const now = Math.floor(realNow() / 1000);
    body.access_token = jwt({ sub: server.me!.user_id, did: 7, iat: now, exp: now + 900 });
    if (auth.delay) await sleep(auth.delay);
    return new Response(JSON.stringify(body), { status: 200, headers: { 'Content-Type': 'application/json' } });
  });
  return auth;
}

describe('refused tokens', () => {
  it('a gateway refusing every fresh token is tried again after a growing backoff', async () => {
    const { server, bob } = await people();
    const auth = refreshes(server);
    FakeSocket.prototype.send = function (this: FakeSocket, data: string) {
      if (JSON.parse(data).op === 'auth') {
        this.drop(4001);
        return;
      }
      return send.call(this, data);
    };
    bob.connect();
    await sleep(1500);
    bob.close();
    // Before: a refresh and a socket at once after every 4001, hundreds a second until
    // the auth service's limiter answered 429. The backoff (0.5 s doubling, jittered)
    // allows a handful in 1.5 s.
    expect(auth.count).toBeGreaterThan(0);
    expect(auth.count).toBeLessThan(10);
  });

  it('a refresh answered after signing out is not taken', async () => {
    const { server, bob } = await people();
    const auth = refreshes(server);
    await bob.accessToken(true);
    const ending = bob.revokeSession(bob.sessionId!); // its DELETE on its way
    await sleep(5);
    auth.delay = 200;
    const late = bob.accessToken(true).then(
      () => 'taken',
      (error: Error) => error.message,
    ); // say the 4-minute renewal, now
    expect(await ending).toBe('signed_out');
    expect(await late).toMatch(/Signed out/);
    expect(bob.loggedIn).toBe(false);
    expect(bob.api.token).toBeNull();
    await expect(bob.accessToken()).rejects.toThrow(/logged out/);
  });
});
