// An initial message naming a one-time prekey that an earlier initiator used up
// (PrekeyReused: the directory handed it out twice), as the real client receives it
// (src/app/client.ts #readMessage, src/app/peers.ts decrypt) against
// test/support/fakeServer.ts. It is no replay: it was dropped as one (no history line,
// no event, acknowledged), and so was every later message of that session.
import { afterEach, describe, expect, it, vi } from 'vitest';

import type { ClientEvent } from '../src/app/client.ts';
import { Device } from '../src/crypto/device.ts';
import { b64decode } from '../src/crypto/encoding.ts';
import { cleanUp, connected, people, texts, until } from './support/clients.ts';
import { MemoryVault } from './support/fakeServer.ts';

vi.mock('../src/app/vault.ts', async (importOriginal) => {
  const { MemoryVault } = await import('./support/fakeServer.ts');
  return { ...(await importOriginal<typeof import('../src/app/vault.ts')>()), Vault: MemoryVault };
});

afterEach(cleanUp);

describe('a one-time prekey used by two initiators', () => {
  it("the second initiator's messages are 'could not decrypt' lines with an event; a real replay is still dropped", async () => {
    const { server, bob, alice, carol } = await people();
    server.prekeyCounts = { one_time: 0, kem_one_time: 0 };
    await bob.topUp(); // bob's one-time prekeys, in the directory
    await connected(bob, server);
    const seen: ClientEvent[] = [];
    bob.on((e) => seen.push(e));

    const first = server.push(await alice.message(server, 'hi from alice', { oneTime: true }));
    await until('alice read', () => texts(bob, alice).length === 1);
    // Carol was handed the same prekeys: her first message, and the next one of that
    // session (still an initial message: bob never answered), cannot be read.
    const c1 = server.push(await carol.message(server, 'hi from carol', { oneTime: true }));
    const c2 = server.push(await carol.message(server, 'carol again', { oneTime: true }));
    await until('acknowledged', () => server.inbox.acked >= c2.seq);
    const lines = bob.history(carol.user.user_id);
    expect(lines.map((e) => [e.kind, e.text, e.server_id])).toEqual([
      ['error', '[could not decrypt: PrekeyReused]', c1.server_id],
      ['error', '[could not decrypt: PrekeyReused]', c2.server_id],
    ]);
    const failed = seen.filter((e) => e.type === 'error' && e.code === 'decrypt_failed');
    expect(failed).toHaveLength(2);

    // Alice's first message replayed by the relay (a new server id): a replay, dropped
    // without a line or an event, and acknowledged.
    const { seq: _seq, ...again } = first;
    const replay = server.push({ ...again, server_id: 'f'.repeat(32) });
    await until('acknowledged', () => server.inbox.acked >= replay.seq);
    expect(bob.history(alice.user.user_id)).toHaveLength(1);
    expect(seen.filter((e) => e.type === 'error')).toHaveLength(2);
    // Alice's session goes on.
    server.push(await alice.message(server, 'and more'));
    await until('alice read', () => texts(bob, alice).length === 2);
    expect(texts(bob, alice)).toEqual(['hi from alice', 'and more']);
  });
});

describe('one-time prekeys claimed and never used', () => {
  it('are forgotten past a batch at each top-up; the newest claimed and those the directory holds still start sessions', async () => {
    const { server, bob, alice } = await people();
    // Every one-time prekey claimed, five times over (someone claiming bob's bundles
    // and never writing): each top-up uploaded a batch, and kept them all.
    for (let round = 0; round < 5; round++) {
      server.prekeyCounts = { one_time: 0, kem_one_time: 0 };
      await bob.topUp();
    }
    const raw = (MemoryVault.stores.get(bob.vault.username) as Map<string, string>).get('device') as string;
    const device = await Device.fromBytes(b64decode(JSON.parse(raw) as string));
    // What the directory holds (the last batch) and a batch claimed before it.
    expect([device.oneTimePrekeyCount, device.kemPrekeyCount]).toEqual([200, 200]);
    // A first message on the oldest prekey still kept (the batch claimed before the
    // last top-up) is read.
    server.oneTimePrekeys.splice(0, server.oneTimePrekeys.length - 200);
    server.kemPrekeys.splice(0, server.kemPrekeys.length - 200);
    await connected(bob, server);
    server.push(await alice.message(server, 'on a kept prekey', { oneTime: true }));
    await until('alice read', () => texts(bob, alice).length === 1);
    expect(texts(bob, alice)).toEqual(['on a kept prekey']);
  });
});
