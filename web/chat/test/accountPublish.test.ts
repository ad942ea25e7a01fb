/**
 * The account key is in the key directory once this browser holds it (setup): a sign-up
 * or a "Start a new identity" whose `PUT /keys/v1/account` failed (a 503, no answer, the
 * tab closed between) publishes it at the next log-in, instead of leaving the account
 * without keys for good (every send `identity_not_found`, or the old key's list:
 * UntrustedKeys). A publish is repeated only while the vault says it is not done.
 */
import { afterEach, expect, it, vi } from 'vitest';

import { setApiOrigin } from '../src/app/api.ts';
import { NeedsLink, ParleyClient } from '../src/app/client.ts';
import { AccountKey, Device, DeviceEntry, DeviceList, b64encode } from '../src/crypto/index.ts';
import { cleanUp } from './support/clients.ts';
import { FakeServer, FakeSocket, MemoryVault, Peer } from './support/fakeServer.ts';

vi.mock('../src/app/vault.ts', async (importOriginal) => {
  const { MemoryVault } = await import('./support/fakeServer.ts');
  return { ...(await importOriginal<typeof import('../src/app/vault.ts')>()), Vault: MemoryVault };
});
afterEach(cleanUp);

const noSecondFactor = () => Promise.reject(new Error('no second factor'));
let accounts = 0;

/** A fake server whose `PUT /keys/v1/account` fails `fail` times (a 503, or no answer
 * when `how` is 'network'); the answers of those PUTs are in `puts`. */
function serve(fail: number, how: 'http' | 'network' = 'http'): { server: FakeServer; puts: number[]; failMore: (n: number) => void } {
  const server = new FakeServer();
  const puts: number[] = [];
  const inner = server.fetch;
  const fetch = async (input: string | URL | Request, init?: RequestInit): Promise<Response> => {
    const url = new URL(String(input));
    if ((init?.method ?? 'GET') === 'PUT' && url.pathname === '/keys/v1/account') {
      if (fail-- > 0) {
        puts.push(how === 'http' ? 503 : 0);
        if (how === 'network') throw new TypeError('Failed to fetch');
        return new Response(JSON.stringify({ error: { code: 'service_unavailable', message: 'down' } }), { status: 503 });
      }
      puts.push(200);
    }
    return inner(input, init);
  };
  FakeSocket.server = server;
  vi.stubGlobal('WebSocket', FakeSocket);
  vi.stubGlobal('fetch', fetch);
  vi.stubGlobal('location', { protocol: 'http:', host: 'parley.test' });
  vi.stubGlobal('navigator', { locks: { request: (_n: string, _o: unknown, fn: (lock: unknown) => unknown) => Promise.resolve(fn({})) } });
  setApiOrigin('http://parley.test');
  return { server, puts, failMore: (n) => (fail = n) };
}

/** The user reloads: the passphrase reopens the vault's session. */
const reload = (name: string, options: { newIdentity?: boolean } = {}) => ParleyClient.login(name, '', 'a passphrase', noSecondFactor, options);

async function sendsToAlice(server: FakeServer, client: ParleyClient): Promise<string> {
  const alice = await Peer.create(server, `alice${accounts}`);
  await client.addContact(alice.user.username);
  return client.send(alice.user.user_id, 'hello').then((id) => `queued ${id.length > 0}`, (e: unknown) => `refused: ${(e as Error).message}`);
}

for (const how of ['http', 'network'] as const) {
  it(`a sign-up whose account PUT failed (${how}) publishes the key at the next log-in`, async () => {
    const { server, puts } = serve(1, how);
    const name = `dave${++accounts}`;
    await expect(ParleyClient.signup(name, 'dave@example.com', 'a password', 'a passphrase')).rejects.toThrow();
    const me = (server.me as { user_id: string }).user_id;
    expect(server.lists.has(me)).toBe(false);

    const again = await reload(name);
    try {
      const key = (await again.accountKey()) as AccountKey;
      expect(server.lists.get(me)?.account_key).toBe(b64encode(key.public));
      expect(puts).toEqual([how === 'http' ? 503 : 0, 200]);
      expect((await again.devices()).length).toBe(1);
      expect(await sendsToAlice(server, again)).toBe('queued true');
    } finally {
      again.close();
    }
    // Published: the next log-in sends no PUT.
    const third = await reload(name);
    third.close();
    expect(puts.length).toBe(2);
  });
}

it('a log-in whose publish fails again is refused, and the next one publishes', async () => {
  const { server, puts } = serve(2);
  const name = `erin${++accounts}`;
  await expect(ParleyClient.signup(name, 'erin@example.com', 'a password', 'a passphrase')).rejects.toThrow();
  await expect(reload(name)).rejects.toThrow(); // the directory still away: said so
  const again = await reload(name);
  again.close();
  expect(puts).toEqual([503, 503, 200]);
  expect(server.lists.get((server.me as { user_id: string }).user_id)?.account_key).toBe(b64encode(((await again.accountKey()) as AccountKey).public));
});

it('a successful sign-up publishes once, and a reload sends no PUT', async () => {
  const { puts } = serve(0);
  const name = `fay${++accounts}`;
  const client = await ParleyClient.signup(name, 'fay@example.com', 'a password', 'a passphrase');
  client.close();
  const again = await reload(name);
  again.close();
  expect(puts).toEqual([200]);
});

/** A browser whose store is no device of the account (its account key and list gone: a
 * log-in told to link), the directory holding the account's old key. */
async function notADevice(name: string): Promise<string> {
  const client = await ParleyClient.signup(name, 'x@example.com', 'a password', 'a passphrase');
  client.close();
  const rows = MemoryVault.stores.get(name) as Map<string, string>;
  for (const row of [...rows.keys()]) if (row === 'account_key' || row === 'device_list' || row.startsWith('account_pub')) rows.delete(row);
  return client.me;
}

it('a new identity whose account PUT failed is published (a reset) at the next log-in', async () => {
  const { server, puts, failMore } = serve(0);
  const name = `gus${++accounts}`;
  const me = await notADevice(name);
  const oldKey = server.lists.get(me)?.account_key;
  await expect(reload(name)).rejects.toThrow(NeedsLink);
  failMore(1);
  await expect(reload(name, { newIdentity: true })).rejects.toThrow();
  expect(server.lists.get(me)?.account_key).toBe(oldKey); // the old key still there
  const again = await reload(name);
  try {
    const key = b64encode(((await again.accountKey()) as AccountKey).public);
    expect(key).not.toBe(oldKey);
    expect(server.lists.get(me)?.account_key).toBe(key);
    expect(puts).toEqual([200, 503, 200]);
    expect(await sendsToAlice(server, again)).toBe('queued true');
  } finally {
    again.close();
  }
});

it('an unpublished key is not published over a key another device registered since', async () => {
  const { server, puts } = serve(1);
  const name = `hal${++accounts}`;
  await expect(ParleyClient.signup(name, 'hal@example.com', 'a password', 'a passphrase')).rejects.toThrow();
  const me = (server.me as { user_id: string }).user_id;
  // Meanwhile another browser of the account became its first device, under its key.
  const other = await AccountKey.generate();
  const device = await Device.generate();
  const signed = await new DeviceList(me, 1, [DeviceEntry.of(99, 'other', device.identity)]).sign(other);
  server.lists.set(me, { user_id: me, account_key: b64encode(other.public), ...signed.toJson() });
  // This browser is no device of the account: told to link, its key (never published) dropped.
  await expect(reload(name)).rejects.toThrow(NeedsLink);
  expect(server.lists.get(me)?.account_key).toBe(b64encode(other.public));
  expect(puts).toEqual([503]);
  await expect(reload(name)).rejects.toThrow(NeedsLink);
  expect(puts).toEqual([503]);
});

it('a store from before the publish mark, whose key the directory lacks, publishes it once', async () => {
  const { server, puts } = serve(1);
  const name = `ida${++accounts}`;
  await expect(ParleyClient.signup(name, 'ida@example.com', 'a password', 'a passphrase')).rejects.toThrow();
  const rows = MemoryVault.stores.get(name) as Map<string, string>;
  for (const row of [...rows.keys()]) if (row.startsWith('account_pub')) rows.delete(row); // as an older client left it
  const again = await reload(name);
  again.close();
  const me = (server.me as { user_id: string }).user_id;
  expect(server.lists.get(me)?.account_key).toBe(b64encode(((await again.accountKey()) as AccountKey).public));
  expect(puts).toEqual([503, 200]);
  const third = await reload(name);
  third.close();
  expect(puts).toEqual([503, 200]);
});
