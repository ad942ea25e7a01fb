/**
 * The socket's renewal (an `auth` frame every REAUTH_EVERY) re-sends the access token
 * while it stays valid past the next renewal, and refreshes it only near its expiry (as
 * the Python SDK's `_reauth_loop`): a refresh rotates the refresh token, and a rotation
 * whose answer is lost ends the session (refresh_token_reused).
 */
import { afterEach, expect, it, vi } from 'vitest';

import { REAUTH_EVERY } from '../src/app/client.ts';
import { cleanUp, connected, people, sleep, until } from './support/clients.ts';
import { type FakeServer, FakeSocket } from './support/fakeServer.ts';

vi.mock('../src/app/vault.ts', async (importOriginal) => {
  const { MemoryVault } = await import('./support/fakeServer.ts');
  return { ...(await importOriginal<typeof import('../src/app/vault.ts')>()), Vault: MemoryVault };
});
afterEach(() => {
  vi.restoreAllMocks();
  cleanUp();
});

/** The refreshes asked of the fake server, and the tokens of the `auth` frames its sockets got. */
function watch(server: FakeServer): { refreshes: number[]; auths: string[] } {
  const refreshes: number[] = [];
  const auths: string[] = [];
  const inner = server.fetch;
  vi.stubGlobal('fetch', async (input: string | URL | Request, init?: RequestInit) => {
    if (new URL(String(input)).pathname === '/auth/v1/token/refresh') refreshes.push(Date.now());
    return inner(input, init);
  });
  const send = FakeSocket.prototype.send;
  vi.spyOn(FakeSocket.prototype, 'send').mockImplementation(function (this: FakeSocket, data: string) {
    const frame = JSON.parse(data) as { op: string; token?: string };
    if (frame.op === 'auth') auths.push(frame.token as string);
    return send.call(this, data);
  });
  return { refreshes, auths };
}

it('renewals re-send a valid token without refreshing it, and refresh it near its expiry', async () => {
  const { server, bob } = await people();
  const { refreshes, auths } = watch(server);
  const before = REAUTH_EVERY.ms;
  REAUTH_EVERY.ms = 100; // 4 minutes, shortened (the token lives 3600 s)
  try {
    await connected(bob, server);
    const atConnect = refreshes.length;
    const authsAtConnect = auths.length;
    await sleep(1050); // ten renewals
    expect(auths.length - authsAtConnect).toBeGreaterThanOrEqual(8); // renewed all the same
    expect(refreshes.length - atConnect).toBe(0);
    expect(new Set(auths).size).toBe(1); // the same, valid, token each time
    // Near its expiry (this clock an hour on, less a minute): one refresh, and the new
    // token sent; the renewals after it refresh no more.
    const realNow = Date.now();
    vi.spyOn(Date, 'now').mockImplementation(() => realNow + 3_540_000);
    await until('a refresh', () => refreshes.length > atConnect);
    await sleep(550);
    expect(refreshes.length - atConnect).toBe(1);
    expect(new Set(auths).size).toBe(2);
    expect(auths.at(-1)).not.toBe(auths[0]);
    expect(bob.connectionState).toBe('connected');
  } finally {
    REAUTH_EVERY.ms = before;
  }
});
