// A message unsent (or removed by an admin) while it waits on this device, its verified
// tombstone acknowledged meanwhile, is shown removed when it is read at last, never with
// its text (client/parley/moderation.py `apply` keeps a "removed" marker for a message
// it does not have; docs/moderation-messages.md). The audit's finding: the tombstone of a
// message kept aside (its sending device's list could not be read) or of a private
// room's message waiting for its sender key changed nothing, was acknowledged, and the
// message was then shown, and kept, with its text. The real client against
// test/support/fakeServer.ts.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';

import { ASIDE_ASK, ASIDE_RETRY } from '../src/app/aside.ts';
import { REMOVED_KEPT } from '../src/app/client.ts';
import { skdPayload } from '../src/app/rooms.ts';
import { b64encode, utf8 } from '../src/crypto/index.ts';
import { GroupSession } from '../src/crypto/session.ts';
import type * as W from '../src/generated/contract.ts';
import { cleanUp, connected, people, reopen, until } from './support/clients.ts';
import { MemoryVault } from './support/fakeServer.ts';
import { teamRoom } from './support/rooms.ts';

vi.mock('../src/app/vault.ts', async (importOriginal) => {
  const { MemoryVault } = await import('./support/fakeServer.ts');
  return { ...(await importOriginal<typeof import('../src/app/vault.ts')>()), Vault: MemoryVault };
});

const RETRY = { ...ASIDE_RETRY };
const ASK = { ...ASIDE_ASK };
beforeEach(() => {
  ASIDE_RETRY.first = 50;
  ASIDE_RETRY.longest = 200;
  ASIDE_ASK.everyMs = 0;
});
afterEach(() => {
  cleanUp();
  Object.assign(ASIDE_RETRY, RETRY);
  Object.assign(ASIDE_ASK, ASK);
});

/** Whether any row of the client's vault holds `text` (rows are JSON in MemoryVault). */
const stored = (username: string, text: string): boolean => [...(MemoryVault.stores.get(username) ?? new Map<string, string>()).values()].some((v) => v.includes(text));

describe('a tombstone for a message not read yet', () => {
  it('kept aside (its device list could not be read): read later, it is a "removed" marker', async () => {
    const { server, bob, alice } = await people();
    const A = alice.user.user_id;
    await connected(bob, server);
    server.listsDown = true; // the key directory is away for a moment
    const message = server.push(await alice.message(server, 'regrettable text'));
    await until('kept aside', () => bob.keptAside === 1);
    // alice unsends it: the server's signed tombstone reaches bob's inbox, and is acknowledged
    server.push(await server.tombstone(message.server_id, A, message.conversation as string));
    await until('the tombstone acknowledged', () => server.inbox.items.size === 0);
    expect(bob.history(A)).toEqual([]);
    server.listsDown = false;
    await until('read at last', () => bob.keptAside === 0);
    expect(bob.history(A).map((e) => [e.kind, e.text, e.removed_by, e.server_id])).toEqual([
      ['removed', 'Message removed by its sender', 'sender', message.server_id],
    ]);
    expect(stored(bob.vault.username, 'regrettable text')).toBe(false);
    // It started alice's session: her next message reads as usual.
    server.push(await alice.message(server, 'next one'));
    await until('the next one', () => bob.history(A).length === 2);
    expect(bob.history(A).map((e) => [e.kind, e.text])).toEqual([
      ['removed', 'Message removed by its sender'],
      ['message', 'next one'],
    ]);
    // And so it stays after a reload.
    const again = await reopen(bob);
    expect(again.history(A).map((e) => e.kind)).toEqual(['removed', 'message']);
  });

  it("a private room's, waiting for its sender key: opened by the key, it is a \"removed\" marker", async () => {
    const roomId = 'd5'.repeat(12);
    const { server, bob, alice, A } = await teamRoom(roomId);
    const group = await GroupSession.create(roomId); // alice's chain in the room
    const distribution = await group.distributionMessage();
    const first = await group.encrypt(utf8('regrettable room text'));
    const second = await group.encrypt(utf8('a second one'));
    const frame = (seq: number, body: Uint8Array): W.RoomMessage => ({
      op: 'room_message', room: roomId, seq, server_id: `room-${seq}`, from: A, from_device: 1, body: b64encode(body), sent_at: Date.now(),
    });
    for (const socket of server.open) socket.deliver(frame(1, first)); // before its key: it waits
    await until('taken (pending)', () => bob.roomCursor(roomId) === 1);
    expect(bob.roomHistory(roomId)).toEqual([]);
    server.push(await server.tombstone('room-1', A, `room:${roomId}`));
    await until('the tombstone acknowledged', () => server.inbox.items.size === 0);
    server.push(await alice.message(server, skdPayload(roomId, b64encode(distribution))));
    await until('the key taken', () => server.inbox.items.size === 0 && bob.roomHistory(roomId).length === 1);
    expect(bob.roomHistory(roomId).map((e) => [e.kind, e.text, e.removed_by, e.seq])).toEqual([['removed', 'Message removed by its sender', 'sender', 1]]);
    expect(stored(bob.vault.username, 'regrettable room text')).toBe(false);
    for (const socket of server.open) socket.deliver(frame(2, second));
    await until('the next one', () => bob.roomHistory(roomId).length === 2);
    expect(bob.roomHistory(roomId).map((e) => [e.kind, e.text])).toEqual([
      ['removed', 'Message removed by its sender'],
      ['message', 'a second one'],
    ]);
  });

  it('is remembered for the newest REMOVED_KEPT ids only, once each', async () => {
    // A sender may unsend made-up ids of the conversation (each a signed tombstone): they
    // show nothing, and what is remembered of them is bounded.
    const { server, bob, alice } = await people();
    const A = alice.user.user_id;
    await connected(bob, server);
    const conversation = `dm:${[A, bob.me].sort().join(':')}`;
    for (const id of ['made-up-1', 'made-up-2', 'made-up-1']) server.push(await server.tombstone(id, A, conversation));
    await until('acknowledged', () => server.inbox.items.size === 0);
    const rows = MemoryVault.stores.get(bob.vault.username) as Map<string, string>;
    expect(JSON.parse(rows.get('removed_ids') as string)).toEqual([
      ['made-up-1', 'sender'],
      ['made-up-2', 'sender'],
    ]);
    expect(bob.history(A)).toEqual([]);
    // Full: the oldest goes.
    rows.set('removed_ids', JSON.stringify(Array.from({ length: REMOVED_KEPT }, (_, i) => [`old-${i}`, 'admin'])));
    const again = await reopen(bob);
    await connected(again, server);
    server.push(await server.tombstone('made-up-3', A, conversation));
    await until('acknowledged', () => server.inbox.items.size === 0);
    await until('written', () => (rows.get('removed_ids') as string).includes('made-up-3'));
    const kept = JSON.parse(rows.get('removed_ids') as string) as [string, string][];
    expect(kept.length).toBe(REMOVED_KEPT);
    expect(kept[0]).toEqual(['old-1', 'admin']);
    expect(kept.at(-1)).toEqual(['made-up-3', 'sender']);
  });
});
