/**
 * The real ParleyClient (src/app/client.ts) against test/support/fakeServer.ts: signed
 * up, connected, and waited on. A test file that uses these mocks the vault first
 * (vi.mock of src/app/vault.ts to MemoryVault, as test/inbox.test.ts does) and calls
 * `cleanUp` after each test.
 */
import { vi } from 'vitest';

import { setApiOrigin } from '../../src/app/api.ts';
import { ParleyClient } from '../../src/app/client.ts';
import { FakeServer, FakeSocket, Peer } from './fakeServer.ts';

const clients: ParleyClient[] = [];
let accounts = 0;

/** Close the clients made, and unstub what signUp stubbed. */
export function cleanUp(): void {
  for (const c of clients.splice(0)) c.close();
  FakeSocket.server = null;
  setApiOrigin('');
  vi.unstubAllGlobals();
}

/** A signed-up client of `server` (not connected yet). */
export async function signUp(server: FakeServer): Promise<ParleyClient> {
  FakeSocket.server = server;
  vi.stubGlobal('WebSocket', FakeSocket);
  vi.stubGlobal('fetch', server.fetch);
  vi.stubGlobal('location', { protocol: 'http:', host: 'parley.test' });
  vi.stubGlobal('navigator', { locks: { request: (_n: string, _o: unknown, fn: (lock: unknown) => unknown) => Promise.resolve(fn({})) } });
  setApiOrigin('http://parley.test');
  const client = await ParleyClient.signup(`bob${++accounts}`, 'bob@example.com', 'a password', 'a passphrase');
  clients.push(client);
  return client;
}

/** A new client on `client`'s vault (a reload: the passphrase alone reopens the
 * session), `client` closed first; not connected yet. */
export async function reopen(client: ParleyClient): Promise<ParleyClient> {
  client.close();
  const again = await ParleyClient.login(client.vault.username, '', 'a passphrase', () => Promise.reject(new Error('no second factor')));
  clients.push(again);
  return again;
}

export async function until(what: string, done: () => boolean, ms = 15_000): Promise<void> {
  const end = Date.now() + ms;
  while (!done()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The texts of a conversation's received messages. */
export function texts(client: ParleyClient, peer: Peer): string[] {
  return client.history(peer.user.user_id).filter((e) => e.kind === 'message').map((e) => e.text);
}

/** Connected, its first sync done and every ack sent. */
export async function connected(client: ParleyClient, server: FakeServer): Promise<void> {
  client.connect();
  await until('the client to connect', () => client.connectionState === 'connected');
  await until('the acks', () => server.inbox.items.size === 0);
}

export const waiting = (n: number) => Array.from({ length: n }, (_, i) => `waiting ${i}`);

/** Bob (signed up, not connected), and two contacts who write to him. */
export async function people(): Promise<{ server: FakeServer; bob: ParleyClient; alice: Peer; carol: Peer }> {
  const server = new FakeServer();
  const bob = await signUp(server);
  return { server, bob, alice: await Peer.create(server, 'alice'), carol: await Peer.create(server, 'carol') };
}

/** 500 of alice's messages wait in bob's inbox. */
export async function backlog(server: FakeServer, alice: Peer): Promise<void> {
  for (const text of waiting(500)) server.inbox.add(await alice.message(server, text));
}
