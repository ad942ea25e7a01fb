// The client's tokens (src/app/tokens.ts, ParleyClient.accessToken and the socket's
// reconnects in src/app/client.ts): an access token's expiry judged by the server's
// clock, not only this device's; new tokens kept when the vault cannot write them; and
// a reconnect that goes on through an outage of the auth service, stopping only when
// the session is refused. The real client against test/support/fakeServer.ts.
import { afterEach, describe, expect, it, vi } from 'vitest';

import { REAUTH_EVERY } from '../src/app/client.ts';
import { TOKEN_SAVE_RETRY, expiresAt } from '../src/app/tokens.ts';
import { type FakeServer, FakeSocket, MemoryVault } from './support/fakeServer.ts';
import { cleanUp, connected, people, reopen, until } from './support/clients.ts';

vi.mock('../src/app/vault.ts', async (importOriginal) => {
  const { MemoryVault } = await import('./support/fakeServer.ts');
  return { ...(await importOriginal<typeof import('../src/app/vault.ts')>()), Vault: MemoryVault };
});

const saveRetry = { ...TOKEN_SAVE_RETRY };
const reauthEvery = REAUTH_EVERY.ms;
const realNow = Date.now.bind(Date);

afterEach(() => {
  cleanUp();
  Object.assign(TOKEN_SAVE_RETRY, saveRetry);
  REAUTH_EVERY.ms = reauthEvery;
  vi.restoreAllMocks();
});

function jwt(claims: Record<string, unknown>): string {
  const part = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');
  return `${part({ alg: 'none' })}.${part(claims)}.sig`;
}

/** The auth service's answers to refreshes, through `fetch`: 15-minute access tokens
 * stamped with the server's clock (`serverNow`), a new refresh token each time (as
 * services/auth rotates them); `down` answers 503, `refuse` a 401 with that code. What
 * each refresh presented is in `presented`. */
function authService(server: FakeServer, serverNow: () => number = realNow) {
  const auth = { presented: [] as string[], down: false, refuse: null as string | null, generation: 0 };
  vi.stubGlobal('fetch', async (input: string, init?: RequestInit) => {
    if (!String(input).endsWith('/auth/v1/token/refresh')) return server.fetch(input, init);
    auth.presented.push(JSON.parse(String(init?.body)).refresh_token);
    if (auth.down) return new Response('<html>503 Service Unavailable</html>', { status: 503 });
    if (auth.refuse) return new Response(JSON.stringify({ error: { code: auth.refuse, message: 'no' } }), { status: 401 });
    const body = await (await server.fetch(input, init)).json();
    const now = Math.floor(serverNow() / 1000);
    body.access_token = jwt({ sub: server.me!.user_id, did: 7, iat: now, exp: now + 900 });
    body.refresh_token = `refresh-gen-${++auth.generation}`;
    return new Response(JSON.stringify(body), { status: 200, headers: { 'Content-Type': 'application/json' } });
  });
  return auth;
}

describe("an access token's expiry", () => {
  it('is its lifetime from when it arrived, by this clock (else the answer\'s expires_in, else its exp)', () => {
    const token = jwt({ iat: 1_000, exp: 1_900 });
    expect(expiresAt(token, 5_000_000)).toBe(5_000_000 + 900_000);
    expect(expiresAt(jwt({ exp: 1_900 }), 5_000_000, 600)).toBe(5_000_000 + 600_000);
    expect(expiresAt(jwt({ exp: 1_900 }), 5_000_000)).toBe(1_900_000);
    expect(expiresAt('not a token', 5_000_000)).toBe(0);
  });

  it('a clock an hour ahead: not a refresh at every call', async () => {
    // Before: exp against Date.now(): every token looked expired, every call refreshed
    // (a rotation and a vault write each, until the auth service's limiter said 429).
    const { server, bob } = await people();
    const auth = authService(server);
    vi.spyOn(Date, 'now').mockImplementation(() => realNow() + 3_600_000);
    await bob.accessToken(true); // a token that arrives with the clock ahead
    for (let i = 0; i < 10; i++) await bob.authApi();
    expect(auth.presented).toHaveLength(1);
  });

  it('a clock an hour behind: an expired token is not used, it is refreshed', async () => {
    // Before: a token looked good for an hour past its exp (every call refused 401).
    const { server, bob } = await people();
    let elapsed = 0; // since the token arrived, in ms
    const start = realNow();
    const auth = authService(server, () => start + elapsed);
    vi.spyOn(Date, 'now').mockImplementation(() => start + elapsed - 3_600_000);
    await bob.accessToken(true);
    elapsed = 10 * 60_000; // 5 minutes to live: kept
    await bob.authApi();
    expect(auth.presented).toHaveLength(1);
    elapsed = 14 * 60_000; // within the 2-minute margin by the server's clock
    await bob.authApi();
    expect(auth.presented).toHaveLength(2);
  });
});

describe('new tokens the vault cannot write', () => {
  it('are kept, used at the next refresh, and written once the storage takes them', async () => {
    // Before: the failed write threw the new refresh token away, and the next refresh
    // presented the one just used up: the auth service revoked the session for reuse.
    const { server, bob } = await people();
    TOKEN_SAVE_RETRY.first = 20;
    const auth = authService(server);
    const errors: string[] = [];
    bob.on((e) => {
      if (e.type === 'error') errors.push(e.code);
    });
    await bob.accessToken(true);
    const vault = bob.vault as unknown as MemoryVault;
    const write = vault.putMany.bind(vault);
    vault.putMany = async () => {
      throw new DOMException('quota', 'QuotaExceededError');
    };
    const token = await bob.accessToken(true); // the storage is full: the call still works
    expect(token).toBe(bob.api.token);
    await bob.accessToken(true);
    expect(auth.presented).toEqual(['refresh', 'refresh-gen-1', 'refresh-gen-2']);
    expect(errors).toEqual(['storage']); // said once
    vault.putMany = write; // space freed
    const row = () => MemoryVault.stores.get(bob.vault.username)?.get('account') ?? '';
    await until('the tokens written', () => row().includes('refresh-gen-3'));
    const again = await reopen(bob); // a reload presents the newest
    await again.accessToken();
    expect(auth.presented.at(-1)).toBe('refresh-gen-3');
  });
});

describe('reconnecting', () => {
  it('goes on while the refresh meets a 503, and connects once the auth service is back', async () => {
    // Before: any failure of the refresh but "no answer" stopped the client for good.
    const { server, bob } = await people();
    await connected(bob, server);
    const auth = authService(server);
    vi.spyOn(Math, 'random').mockReturnValue(0.2);
    auth.down = true;
    const now = realNow();
    vi.spyOn(Date, 'now').mockImplementation(() => now + 3_600_000); // the token ran out meanwhile
    (server.open[0] as FakeSocket).drop(1006);
    await until('two refreshes refused', () => auth.presented.length >= 2, 5_000);
    expect(bob.connectionState).not.toBe('stopped');
    auth.down = false;
    await until('connected again', () => bob.connectionState === 'connected' && server.open.length === 1, 10_000);
    expect(auth.presented.at(-1)).toBe('refresh'); // (the 503s used up nothing)
  });

  it('a 4005 whose forced refresh meets a 503: the refresh is still owed when it is tried again', async () => {
    const { server, bob } = await people();
    await connected(bob, server);
    const auth = authService(server);
    vi.spyOn(Math, 'random').mockReturnValue(0.2);
    auth.down = true;
    (server.open[0] as FakeSocket).drop(4005);
    await until('a refresh refused', () => auth.presented.length >= 1);
    auth.down = false;
    await until('connected again', () => bob.connectionState === 'connected' && server.open.length === 1, 10_000);
    expect(auth.generation).toBe(1); // refreshed, not connected again with the token the socket refused
  });

  it('stops for good when the session is refused', async () => {
    const { server, bob } = await people();
    await connected(bob, server);
    const auth = authService(server);
    auth.refuse = 'token_revoked';
    (server.open[0] as FakeSocket).drop(4005);
    await until('stopped', () => bob.connectionState === 'stopped');
    expect(bob.loggedIn).toBe(false);
    expect(server.sockets).toHaveLength(1);
  });

  it("the token's renewal in place failing for now is no unhandled error, and the socket stays", async () => {
    // Before: the 4-minute renewal's refresh had no catch (an unhandled rejection).
    const { server, bob } = await people();
    const unhandled: unknown[] = [];
    const record = (e: unknown) => unhandled.push(e);
    process.on('unhandledRejection', record);
    try {
      REAUTH_EVERY.ms = 30;
      await connected(bob, server);
      const auth = authService(server);
      auth.down = true;
      // The token near its expiry (a renewal refreshes only then: test/reauth.test.ts).
      vi.spyOn(Date, 'now').mockImplementation(() => realNow() + 3_540_000);
      await until('two renewals refused', () => auth.presented.length >= 2);
      await new Promise((r) => setTimeout(r, 20));
      expect(unhandled).toEqual([]);
      expect(bob.connectionState).toBe('connected');
      auth.down = false;
      const before = auth.generation;
      await until('renewed', () => auth.generation > before);
    } finally {
      process.off('unhandledRejection', record);
    }
  });
});
