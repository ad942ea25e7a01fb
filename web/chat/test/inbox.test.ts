// The inbox on the wire, as ParleyClient (src/app/client.ts) syncs and acknowledges it
// (docs/protocol.md "ack", "sync", "resync"; web/chat/README.md "Receiving"): the real
// client against test/support/fakeServer.ts, whose inbox deletes what a cumulative ack
// covers and counts as `lost` an item deleted before it was ever sent to the client.
import { afterEach, describe, expect, it, vi } from 'vitest';

import { FakeServer, FakeSocket, Peer } from './support/fakeServer.ts';
import { type ParleyClient } from '../src/app/client.ts';
import { backlog, cleanUp, connected, people, signUp, sleep, texts, until, waiting } from './support/clients.ts';

vi.mock('../src/app/vault.ts', async (importOriginal) => {
  const { MemoryVault } = await import('./support/fakeServer.ts');
  return { ...(await importOriginal<typeof import('../src/app/vault.ts')>()), Vault: MemoryVault };
});

afterEach(cleanUp);

describe('closing the client', () => {
  it('ends a sync waiting for its page, so pushes are acknowledged again after connect()', async () => {
    // The sync's page never came (the socket closed by close() is not the client's any
    // more, so its close event settled nothing): its count of running syncs stayed up,
    // and after connect() again no push moved last_seq or was acknowledged.
    const { server, bob, alice } = await people();
    await connected(bob, server);
    let release: (() => void) | null = null;
    server.sync.before = (n) =>
      n === 2
        ? new Promise<void>((r) => {
            release = r;
          })
        : undefined;
    (server.open[0] as FakeSocket).deliver({ op: 'resync', reason: 'routing_restored' });
    await until('the held page', () => release !== null);
    bob.close();
    (release as unknown as () => void)();
    delete server.sync.before;
    await connected(bob, server);
    const acks = server.inbox.acks.length;
    server.push(await alice.message(server, 'after the reconnect'));
    await until('its ack', () => server.inbox.acks.length > acks);
    expect(texts(bob, alice)).toEqual(['after the reconnect']);
  });
});

describe('a resync cut short by the socket closing', () => {
  it('lets no push still being handled move last_seq past the pages not read', async () => {
    // Audit finding: the close settled the resync's page with an error (its count of
    // running syncs fell to 0) while the client still counted as synced, so the push
    // still on the frame chain moved last_seq to 501; the next socket synced after it
    // and its ack deleted 201-500 unread.
    const { server, bob, alice, carol } = await people();
    await connected(bob, server);
    await backlog(server, alice);
    const pushed = await carol.message(server, 'pushed mid-resync');
    vi.spyOn(Math, 'random').mockReturnValue(0.99); // reconnect after ~0.5 s
    server.sync.before = async (n, socket) => {
      if (n !== 3) return; // the resync's second page
      server.push(pushed);
      await new Promise((r) => setTimeout(r, 0)); // the push reaches the frame chain
      socket.drop();
    };
    (server.open[0] as FakeSocket).deliver({ op: 'resync', reason: 'routing_restored' });
    await until('everything acknowledged', () => server.inbox.items.size === 0, 20_000);
    expect(server.inbox.lost).toEqual([]);
    expect(texts(bob, alice)).toEqual(waiting(500));
    expect(texts(bob, carol)).toEqual(['pushed mid-resync']);
  });
});

describe("a new contact's name", () => {
  it('that could not be looked up is looked up again at its next message', async () => {
    // Audit finding: the id's first characters were saved as the contact's name when
    // the auth service did not answer at its first message, and never looked up again.
    const { server, bob, alice } = await people();
    await connected(bob, server);
    server.usersDown = true;
    server.push(await alice.message(server, 'first'));
    await until('read', () => texts(bob, alice).length === 1);
    const id = alice.user.user_id;
    expect(bob.contacts().find((c) => c.user_id === id)?.username).toBe(id.slice(0, 8));
    server.usersDown = false;
    server.push(await alice.message(server, 'second'));
    await until('read', () => texts(bob, alice).length === 2);
    expect(bob.contacts().find((c) => c.user_id === id)?.username).toBe(alice.user.username);
    expect(bob.contacts().find((c) => c.user_id === id)?.unnamed).toBeUndefined();
  });
});

describe('a sync pages by its own cursor', () => {
  it('a message pushed during the first sync skips nothing, and nothing is acknowledged unread', async () => {
    // Before: the next page started after the highest seq processed, the push's (501):
    // 201-500 were never fetched, and the ack of 501 deleted them on the server.
    const { server, bob, alice, carol } = await people();
    await backlog(server, alice);
    const pushed = await carol.message(server, 'pushed mid-sync');
    server.sync.between = (n) => {
      if (n === 1) server.push(pushed); // read by the client before the first page's end
    };
    await connected(bob, server);
    expect(server.inbox.lost).toEqual([]);
    expect(texts(bob, alice)).toEqual(waiting(500));
    expect(texts(bob, carol)).toEqual(['pushed mid-sync']);
    expect(server.syncs).toBe(3); // 200 + 200 + 101 (the push's item again, shown once)
    expect(server.unknown).toEqual([]);
  });

  it('a sync cut short after a push starts again where its last page ended', async () => {
    // The push (501) must not move last_seq while the sync runs: the next connection
    // would sync after it, and the ack after that sync would delete 201-500 unread.
    const { server, bob, alice, carol } = await people();
    await backlog(server, alice);
    const pushed = await carol.message(server, 'pushed mid-sync');
    server.sync.between = (n) => {
      if (n === 1) server.push(pushed);
    };
    server.sync.before = (n, socket) => {
      if (n === 2) socket.drop(); // the pod goes away before the second page
    };
    await connected(bob, server);
    expect(server.sockets.length).toBe(2);
    expect(server.inbox.lost).toEqual([]);
    expect(texts(bob, alice)).toEqual(waiting(500));
    expect(texts(bob, carol)).toEqual(['pushed mid-sync']);
  });

  it('a resync sends no ack while its pages are read, even for a message pushed meanwhile', async () => {
    // Before: during a resync the client counted as synced, so the push's ack went out
    // 0.2 s later, past the pages not read yet (and the cursor jumped too).
    const { server, bob, alice, carol } = await people();
    await connected(bob, server);
    // Routing lost: 500 items stored, none pushed; then the pod says so.
    await backlog(server, alice);
    const pushed = await carol.message(server, 'pushed mid-resync');
    const acksBefore = server.inbox.acks.length;
    server.sync.between = (n) => {
      if (n === 2) server.push(pushed);
    };
    // The second page of the resync is slow: an ack past the first page's end (200)
    // sent meanwhile would come first.
    server.sync.before = async (n) => {
      if (n !== 3) return;
      const end = Date.now() + 1000;
      while (server.inbox.acked <= 200 && Date.now() < end) await sleep(10);
    };
    const socket = server.open[0] as FakeSocket;
    socket.deliver({ op: 'resync', reason: 'routing_restored' });
    await until('the resync', () => server.inbox.items.size === 0);
    await until('the history', () => texts(bob, alice).length === 500 || server.inbox.lost.length > 0);
    expect(server.inbox.lost).toEqual([]);
    expect(texts(bob, alice)).toEqual(waiting(500));
    expect(texts(bob, carol)).toEqual(['pushed mid-resync']);
    expect(server.inbox.acks.slice(acksBefore)).toEqual([200, 400, 501]); // each page's end
    expect(socket.closedWith).toBeNull(); // the socket stayed open
  });
});

describe('a failed resync', () => {
  it('drops the socket: the next one syncs again, and no push acknowledges past the gap', async () => {
    // Before: the failure was swallowed, and the next push's cumulative ack deleted the
    // 500 items the resync was to read.
    const { server, bob, alice, carol } = await people();
    await connected(bob, server);
    await backlog(server, alice);
    server.sync.answer = (n) => (n === 2 ? { op: 'error', code: 'service_unavailable', message: 'try again' } : null);
    const first = server.open[0] as FakeSocket;
    first.deliver({ op: 'resync', reason: 'routing_restored' });
    await until('the refused resync', () => server.syncs >= 2);
    await sleep(50);
    server.push(await carol.message(server, 'pushed after the failure'));
    await until('the next sync', () => server.inbox.items.size === 0);
    await until('the history', () => texts(bob, alice).length === 500 || server.inbox.lost.length > 0);
    expect(server.inbox.lost).toEqual([]);
    expect(texts(bob, alice)).toEqual(waiting(500));
    expect(texts(bob, carol)).toEqual(['pushed after the failure']);
    expect(first.closedWith).toBe(4000);
    expect(bob.connectionState).toBe('connected');
  });
});

describe('a tombstone', () => {
  async function withMessage(): Promise<{ server: FakeServer; bob: ParleyClient; alice: Peer; serverId: string; conversation: string }> {
    const server = new FakeServer();
    const bob = await signUp(server);
    const alice = await Peer.create(server, 'alice');
    await connected(bob, server);
    const message = server.push(await alice.message(server, 'to be removed'));
    await until('the message', () => texts(bob, alice).length === 1 && server.inbox.items.size === 0);
    return { server, bob, alice, serverId: message.server_id, conversation: message.conversation as string };
  }

  it('whose keys cannot be read now is not acknowledged: it comes again and removes the message', async () => {
    // Before: taken as forged, dropped and acknowledged: the message stayed visible.
    const { server, bob, alice, serverId, conversation } = await withMessage();
    server.moderationDown = true;
    const first = server.open[0] as FakeSocket;
    const tomb = server.push(await server.tombstone(serverId, alice.user.user_id, conversation));
    server.push(await alice.message(server, 'after the tombstone'));
    await until('the key read', () => server.moderationCalls >= 1);
    await sleep(400); // an ack would have gone by now (0.2 s)
    expect(Math.max(0, ...server.inbox.acks)).toBeLessThan(tomb.seq);
    expect(first.closedWith).toBe(4000);
    server.moderationDown = false;
    await until('the tombstone again', () => server.inbox.items.size === 0);
    expect(server.inbox.lost).toEqual([]);
    const entries = bob.history(alice.user.user_id);
    expect(entries.map((e) => [e.kind, e.text])).toEqual([
      ['removed', 'Message removed by its sender'],
      ['message', 'after the tombstone'],
    ]);
  });

  it('that does not verify is dropped and acknowledged (the socket stays)', async () => {
    const { server, bob, alice, serverId, conversation } = await withMessage();
    const socket = server.open[0] as FakeSocket;
    const tomb = server.push(await server.tombstone(serverId, alice.user.user_id, conversation, true));
    await until('its ack', () => server.inbox.acked >= tomb.seq);
    expect(texts(bob, alice)).toEqual(['to be removed']);
    expect(socket.closedWith).toBeNull();
    expect(server.inbox.lost).toEqual([]);
  });
});
