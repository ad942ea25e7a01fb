// A tombstone signed with a key this client does not have, even after reading the keys
// again (a rolling deploy of delivery: the task that answered GET
// /delivery/v1/moderation/keys did not have the new key yet). Before: taken as forged,
// dropped and acknowledged: the removed message stayed on this device for good. Now it
// is kept in the vault (`tombstones_kept`) and acknowledged (the inbox reads on), tried
// again with the keys read again (a timer, and after each sync), and dropped only past
// moderation.ts TOMBSTONE_RETRY's tries or age. A bad signature under a key it knows is
// still dropped at once. The real client against test/support/fakeServer.ts.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';

import type { ParleyClient } from '../src/app/client.ts';
import { TOMBSTONE_RETRY, type KeptTombstone, keepTombstone, tombstonesDueIn, triedAgain, type TombstoneFrame } from '../src/app/moderation.ts';
import { FakeServer, FakeSocket, MemoryVault, Peer } from './support/fakeServer.ts';
import { cleanUp, connected, people, reopen, sleep, texts, until } from './support/clients.ts';

vi.mock('../src/app/vault.ts', async (importOriginal) => {
  const { MemoryVault } = await import('./support/fakeServer.ts');
  return { ...(await importOriginal<typeof import('../src/app/vault.ts')>()), Vault: MemoryVault };
});

const RETRY = { ...TOMBSTONE_RETRY };
beforeEach(() => {
  TOMBSTONE_RETRY.first = 50;
  TOMBSTONE_RETRY.longest = 200;
});
afterEach(() => {
  cleanUp();
  Object.assign(TOMBSTONE_RETRY, RETRY);
});

/** Whether any row of the client's vault holds `text` (rows are JSON in MemoryVault). */
const stored = (username: string, text: string): boolean => [...(MemoryVault.stores.get(username) ?? new Map<string, string>()).values()].some((v) => v.includes(text));

/** The vault's kept row (tombstones_kept) of `username`. */
const keptRow = (username: string): KeptTombstone[] => JSON.parse(MemoryVault.stores.get(username)?.get('tombstones_kept') ?? '[]') as KeptTombstone[];

/** Bob connected, with alice's message `text` read; its server id and conversation. */
async function withMessage(text: string): Promise<{ server: FakeServer; bob: ParleyClient; alice: Peer; serverId: string; conversation: string }> {
  const { server, bob, alice } = await people();
  await connected(bob, server);
  const message = server.push(await alice.message(server, text));
  await until('the message', () => texts(bob, alice).length === 1 && server.inbox.items.size === 0);
  return { server, bob, alice, serverId: message.server_id, conversation: message.conversation as string };
}

describe('a tombstone under a key not published yet', () => {
  it('is kept and acknowledged, the inbox reads on, and it removes the message once the key is published', async () => {
    const { server, bob, alice, serverId, conversation } = await withMessage('regrettable text');
    const A = alice.user.user_id;
    server.unpublished.add('k2'); // the keys come from an old task: only k1
    const socket = server.open[0] as FakeSocket;
    const calls = server.moderationCalls;
    const tomb = server.push(await server.tombstone(serverId, A, conversation, false, 'k2'));
    await until('acknowledged', () => server.inbox.acked >= tomb.seq);
    expect(server.moderationCalls).toBeGreaterThan(calls); // read again for the unknown kid
    expect(bob.keptTombstones).toBe(1);
    expect(socket.closedWith).toBeNull();
    server.push(await alice.message(server, 'after the tombstone'));
    await until('the next message', () => texts(bob, alice).length === 2);
    expect(bob.history(A).map((e) => e.kind)).toEqual(['message', 'message']);
    await until('tried again', () => server.moderationCalls >= calls + 3);
    expect(bob.keptTombstones).toBe(1);
    server.unpublished.delete('k2'); // the deploy is done
    await until('removed', () => bob.history(A)[0]?.kind === 'removed');
    expect(bob.history(A).map((e) => [e.kind, e.text])).toEqual([
      ['removed', 'Message removed by its sender'],
      ['message', 'after the tombstone'],
    ]);
    expect(bob.keptTombstones).toBe(0);
    expect(stored(bob.vault.username, 'regrettable text')).toBe(false);
    expect(server.inbox.lost).toEqual([]);
  });

  it('is kept across a reload and tried after the next sync', async () => {
    const { server, bob, alice, serverId, conversation } = await withMessage('regrettable text');
    const A = alice.user.user_id;
    server.unpublished.add('k2');
    TOMBSTONE_RETRY.first = 60_000; // no timer: the sync's try
    TOMBSTONE_RETRY.longest = 60_000;
    const tomb = server.push(await server.tombstone(serverId, A, conversation, false, 'k2'));
    await until('acknowledged', () => server.inbox.acked >= tomb.seq);
    await until('kept', () => bob.keptTombstones === 1);
    const again = await reopen(bob);
    expect(again.keptTombstones).toBe(1);
    server.unpublished.delete('k2');
    await connected(again, server);
    await until('removed', () => again.history(A)[0]?.kind === 'removed');
    expect(again.keptTombstones).toBe(0);
  });

  it('that no published key ever verifies is dropped after its tries, the message kept', async () => {
    const { server, bob, alice, serverId, conversation } = await withMessage('stays');
    TOMBSTONE_RETRY.tries = 3;
    server.unpublished.add('k9');
    const calls = server.moderationCalls;
    server.push(await server.tombstone(serverId, alice.user.user_id, conversation, false, 'k9'));
    await until('kept', () => bob.keptTombstones === 1);
    await until('dropped', () => bob.keptTombstones === 0);
    expect(server.moderationCalls - calls).toBe(1 + 3); // its arrival, then its tries
    expect(texts(bob, alice)).toEqual(['stays']);
    expect(MemoryVault.stores.get(bob.vault.username)?.has('tombstones_kept')).toBe(false);
  });

  it('whose keys cannot be read at a try counts no try', async () => {
    const { server, bob, alice, serverId, conversation } = await withMessage('regrettable text');
    TOMBSTONE_RETRY.tries = 2;
    server.unpublished.add('k2');
    server.push(await server.tombstone(serverId, alice.user.user_id, conversation, false, 'k2'));
    await until('kept', () => bob.keptTombstones === 1);
    server.moderationDown = true; // tries that cannot read the keys: not counted
    const calls = server.moderationCalls;
    await until('tries under way', () => server.moderationCalls >= calls + 3);
    expect(bob.keptTombstones).toBe(1);
    server.moderationDown = false;
    server.unpublished.delete('k2');
    await until('removed', () => bob.history(alice.user.user_id)[0]?.kind === 'removed');
  });

  it('counts no try per reconnect: its tries are spread over their waits, not used up by syncs', async () => {
    // Before: each sync (every connect) counted a try, so a flaky connection used up the
    // 12 tries in minutes and the removal was lost if the rolling deploy lasted longer.
    // Now a sync's round reads the keys (and takes the tombstone once its key is
    // published) but counts a try only for one that is due (30 s after it came, then
    // the wait doubling to 10 min).
    const { server, bob, alice, serverId, conversation } = await withMessage('regrettable text');
    const A = alice.user.user_id;
    TOMBSTONE_RETRY.first = 60_000; // not due during the test
    TOMBSTONE_RETRY.longest = 60_000;
    TOMBSTONE_RETRY.tries = 3;
    server.unpublished.add('k2');
    const tomb = server.push(await server.tombstone(serverId, A, conversation, false, 'k2'));
    await until('acknowledged', () => server.inbox.acked >= tomb.seq);
    await until('kept', () => bob.keptTombstones === 1);
    for (let i = 0; i < 6; i++) {
      const calls = server.moderationCalls;
      bob.close();
      await connected(bob, server);
      await until("the sync's round", () => server.moderationCalls > calls);
    }
    await sleep(50);
    expect(bob.keptTombstones).toBe(1); // before: dropped after 3 reconnects
    expect(keptRow(bob.vault.username).map((k) => k.tries)).toEqual([0]);
    server.unpublished.delete('k2'); // the deploy is done: the next sync's round takes it
    bob.close();
    await connected(bob, server);
    await until('removed', () => bob.history(A)[0]?.kind === 'removed');
    expect(bob.keptTombstones).toBe(0);
  });

  it('runs one round at a time: a sync while a round awaits the keys starts no second one', async () => {
    // Before: the sync's #tombstonesSoon(true) started a round while one was still
    // awaiting the keys, and both counted a try.
    const { server, bob, alice, serverId, conversation } = await withMessage('regrettable text');
    TOMBSTONE_RETRY.first = 60_000;
    TOMBSTONE_RETRY.longest = 60_000;
    server.unpublished.add('k2');
    const tomb = server.push(await server.tombstone(serverId, alice.user.user_id, conversation, false, 'k2'));
    await until('acknowledged', () => server.inbox.acked >= tomb.seq);
    await until('kept', () => bob.keptTombstones === 1);
    let reading = 0;
    let most = 0;
    const fetch = server.fetch;
    vi.stubGlobal('fetch', async (input: string | URL | Request, init?: RequestInit): Promise<Response> => {
      if (!new URL(String(input)).pathname.endsWith('/moderation/keys')) return fetch(input, init);
      most = Math.max(most, ++reading);
      try {
        await sleep(150); // the keys are slow to come
        return await fetch(input, init);
      } finally {
        reading--;
      }
    });
    const calls = server.moderationCalls;
    const socket = server.open[0] as FakeSocket;
    for (let i = 0; i < 4; i++) {
      socket.deliver({ op: 'resync', reason: 'routing_restored' }); // a sync, then its round
      await sleep(40);
    }
    await until('the rounds', () => server.moderationCalls >= calls + 2 && reading === 0);
    await sleep(400);
    expect(most).toBe(1); // before: 2, rounds overlapping
    expect(reading).toBe(0);
    expect(server.moderationCalls - calls).toBe(2); // the first sync's round, then one for those asked meanwhile
    expect(keptRow(bob.vault.username).map((k) => k.tries)).toEqual([0]);
  });

  it('a bad signature under a known key is still dropped at once', async () => {
    const { server, bob, alice, serverId, conversation } = await withMessage('stays');
    const tomb = server.push(await server.tombstone(serverId, alice.user.user_id, conversation, true, 'k1'));
    await until('acknowledged', () => server.inbox.acked >= tomb.seq);
    expect(bob.keptTombstones).toBe(0);
    expect(texts(bob, alice)).toEqual(['stays']);
  });
});

describe('the kept row', () => {
  const frame: TombstoneFrame = { kind: 'tombstone', seq: 1, server_id: 's', from: 'a', conversation: null, by: 'admin', at: 1, kid: 'k9', signature: 'x' };
  it('keeps a frame once, and at most TOMBSTONE_RETRY.kept', () => {
    const row = keepTombstone(keepTombstone([], frame, 5), frame, 6);
    expect(row).toEqual([{ frame, first: 5, tries: 0 }]);
    TOMBSTONE_RETRY.kept = 2;
    const full = [2, 3, 4].reduce((r, seq) => keepTombstone(r, { ...frame, seq }, seq), row);
    expect(full.map((k) => k.frame.seq)).toEqual([3, 4]);
  });
  it('drops one past its tries or its age', () => {
    TOMBSTONE_RETRY.tries = 3;
    expect(triedAgain({ frame, first: 0, tries: 1 }, 100)).toEqual({ frame, first: 0, tries: 2, last: 100 });
    expect(triedAgain({ frame, first: 0, tries: 2, last: 100 }, 300)).toBeNull();
    expect(triedAgain({ frame, first: 0, tries: 0 }, TOMBSTONE_RETRY.keepMs)).toBeNull();
    expect(triedAgain({ frame, first: 0, tries: 0 }, TOMBSTONE_RETRY.keepMs, false)).toBeNull(); // the keys not read: the age still counts
  });
  it('counts a try only once it is due: the first wait after it came, then doubling to the longest', () => {
    // first 50 ms, longest 200 ms (beforeEach)
    const kept = { frame, first: 1000, tries: 0 };
    expect(tombstonesDueIn([kept], 1000)).toBe(45); // 5 ms early still counts (a timer)
    expect(triedAgain(kept, 1010)).toEqual(kept); // a sync's round: no try
    expect(triedAgain(kept, 1050, false)).toEqual(kept); // the keys not read: no try
    const once = triedAgain(kept, 1050);
    expect(once).toEqual({ frame, first: 1000, tries: 1, last: 1050 });
    expect(triedAgain(once!, 1100)).toEqual(once); // the next wait is 100 ms
    const twice = triedAgain(once!, 1150);
    expect(twice).toEqual({ frame, first: 1000, tries: 2, last: 1150 });
    expect(tombstonesDueIn([twice!, once!], 1150)).toBe(0); // the first due decides
    expect(tombstonesDueIn([twice!], 1150)).toBe(200 - 20);
    expect(tombstonesDueIn([{ ...twice!, tries: 9 }], 1150)).toBe(200 - 20); // up to the longest
  });
});
