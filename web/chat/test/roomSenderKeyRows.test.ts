// A private room's sender keys in the web client (src/app/client.ts #group/#putGroup; as
// client/parley/rooms.py since 7895281, tests/client/test_room_sender_key_rows.py). Two
// defects of before:
//
// * a member offline while a sender rotated 6 times (6 members left) got the 6 new keys
//   from its inbox before the room's log: 5 chains a sender were kept, so the first was
//   dropped and its messages were kept waiting for ever, never shown;
// * the room's whole sender-key state was one vault row (`group:<ref>`), read, parsed and
//   written again for every room message received, every key and every send: ~1.3 MB a
//   message in a room of 1,000 member devices. Now `group:<ref>` holds this device's own
//   chain, `group_member:<ref>:<hmac>` one member device's chains and retired ids, and
//   `group_index:<ref>:<bucket>` (32) the names of the members with a row.
//
// The real client against test/support/fakeServer.ts, real sender-key ciphertexts; the
// vault's writes counted through the MemoryVault.
import { afterEach, describe, expect, it, vi } from 'vitest';

import type { ParleyClient } from '../src/app/client.ts';
import { memberKey, roomConversation, skdPayload } from '../src/app/rooms.ts';
import { b64encode, fromUtf8, utf8 } from '../src/crypto/encoding.ts';
import { GroupSession } from '../src/crypto/session.ts';
import type * as W from '../src/generated/contract.ts';
import { cleanUp, connected, reopen, until } from './support/clients.ts';
import { type FakeServer, MemoryVault, Peer } from './support/fakeServer.ts';
import { chain, teamRoom, texts } from './support/rooms.ts';

vi.mock('../src/app/vault.ts', async (importOriginal) => {
  const { MemoryVault } = await import('./support/fakeServer.ts');
  return { ...(await importOriginal<typeof import('../src/app/vault.ts')>()), Vault: MemoryVault };
});

afterEach(() => cleanUp());

const DROPPED = "error: [could not decrypt: its sender key was dropped]";
const rowsOf = (bob: ParleyClient) => MemoryVault.stores.get(bob.vault.username) as Map<string, string>;

/** The row name suffix of the room (its `group:`, `room:`... rows). */
async function roomRef(bob: ParleyClient, roomId: string): Promise<string> {
  return (await bob.vault.ref('peer', roomConversation(roomId))).slice('peer:'.length);
}

/** What `fn` writes through bob's vault (name, bytes), once `done`. */
async function writesOf(bob: ParleyClient, fn: () => Promise<void>, done: () => boolean): Promise<[string, number][]> {
  const vault = bob.vault as unknown as MemoryVault;
  const writes: [string, number][] = [];
  vault.writes = writes;
  try {
    await fn();
    await until('the change written', done, 30_000);
    await new Promise((r) => setTimeout(r, 100)); // and whatever it still writes
  } finally {
    vault.writes = null;
  }
  return writes;
}

/** `member`'s sender key (a distribution message) reaches bob's inbox, pushed. */
async function giveKey(server: FakeServer, member: Peer, roomId: string, dist: Uint8Array): Promise<void> {
  server.push(await member.message(server, skdPayload(roomId, b64encode(dist))));
}

/** `group` encrypts `text`, stored in the room's log as `member`'s (not pushed). */
async function say(server: FakeServer, roomId: string, member: Peer, group: GroupSession, text: string): Promise<W.RoomMessage> {
  return server.roomMessage(roomId, member.user.user_id, member.deviceId, await group.encrypt(utf8(text)));
}

async function settled(bob: ParleyClient, roomId: string, n: number, ms = 20_000): Promise<string[]> {
  await until(`${n} shown`, () => bob.roomHistory(roomId).length >= n, ms).catch(() => undefined);
  await new Promise((r) => setTimeout(r, 50));
  return texts(bob, roomId);
}

describe('a sender who rotated while this device was offline', () => {
  it('six rotations, the six keys taken before the log is read: every message is shown', async () => {
    const roomId = 'a7'.repeat(12);
    const { server, bob, alice } = await teamRoom(roomId);
    const g = await GroupSession.create(roomId);
    await giveKey(server, alice, roomId, await g.distributionMessage());
    await until('the key taken', () => server.inbox.items.size === 0);
    await say(server, roomId, alice, g, 'm0');
    expect(await bob.readRoomLog(roomId)).toBe(1);
    expect(texts(bob, roomId)).toEqual(['m0']);
    await say(server, roomId, alice, g, 'm1'); // still the first chain
    const dists: Uint8Array[] = [];
    for (let i = 2; i < 8; i++) {
      dists.push(await g.rotate()); // a member left
      await say(server, roomId, alice, g, `m${i}`);
    }
    for (const d of dists) await giveKey(server, alice, roomId, d);
    await until('the keys taken', () => server.inbox.items.size === 0);
    await bob.readRoomLog(roomId);
    expect(await settled(bob, roomId, 8)).toEqual(['m0', 'm1', 'm2', 'm3', 'm4', 'm5', 'm6', 'm7']);
    expect(bob.roomPending(roomId)).toBe(0);
  });

  it('past 64 rotations the first chain is dropped: its message is shown as could-not-decrypt, not kept for ever; a key not come yet still waits', async () => {
    const roomId = 'a8'.repeat(12);
    const { server, bob, alice, carol, A } = await teamRoom(roomId);
    server.rooms.set(roomId, { name: 'team', members: [bob.me, A, carol.user.user_id] });
    const g = await GroupSession.create(roomId);
    await giveKey(server, alice, roomId, await g.distributionMessage());
    await until('the key taken', () => server.inbox.items.size === 0);
    const first = await say(server, roomId, alice, g, 'first chain');
    const dists: Uint8Array[] = [];
    for (let i = 0; i < 64; i++) dists.push(await g.rotate());
    await say(server, roomId, alice, g, 'newest chain');
    const c = await chain(server, roomId, carol);
    await c.say("carol's");
    for (const d of dists) await giveKey(server, alice, roomId, d);
    await until('the keys taken', () => server.inbox.items.size === 0, 30_000);
    expect(await bob.readRoomLog(roomId)).toBe(3);
    expect(await settled(bob, roomId, 2)).toEqual([DROPPED, 'newest chain']);
    expect(bob.roomMessageState(roomId, first.server_id)).not.toBe('pending');
    expect(bob.roomPending(roomId)).toBe(1); // carol's: her key may still come
    await c.key();
    expect(await settled(bob, roomId, 3)).toEqual([DROPPED, 'newest chain', "carol's"]);
    expect(bob.roomPending(roomId)).toBe(0);
  }, 60_000);
});

/** A whole state with `n` member devices, each with 6 chains, written as the code before
 * wrote it (one `group:<ref>` row, base64 of `toBytes()`); alice's real chain among them. */
async function oldWholeState(n: number, roomId: string, aliceMember: string, alice: GroupSession): Promise<GroupSession> {
  const state = await GroupSession.create(roomId);
  const filler = await GroupSession.create(roomId);
  const fill = [await filler.distributionMessage()];
  for (let i = 0; i < 5; i++) fill.push(await filler.rotate());
  for (let i = 0; i < n - 1; i++) for (const d of fill) await state.processDistribution(memberKey(i.toString(16).padStart(32, '0'), 1), d);
  await state.processDistribution(aliceMember, await alice.distributionMessage());
  for (let i = 0; i < 5; i++) await state.processDistribution(aliceMember, await alice.rotate());
  return state;
}

describe("at size (999 member devices, 6 chains each): a message reads and writes its sender's row only", () => {
  it('a pushed message, a key, a newcomer and a send write a few KB (before: the whole ~1.3 MB row each)', async () => {
    const roomId = 'a9'.repeat(12);
    const found = await teamRoom(roomId);
    const { server, alice, carol, A } = found;
    let bob = found.bob;
    const aliceMember = memberKey(A, 1);
    const g = await GroupSession.create(roomId);
    const old = await oldWholeState(999, roomId, aliceMember, g);
    const blob = await old.toBytes();
    expect(blob.length).toBeGreaterThan(900_000);
    await bob.openRoom(roomId);
    const ref = await roomRef(bob, roomId);
    rowsOf(bob).set(`group:${ref}`, JSON.stringify(b64encode(blob)));
    bob = await reopen(bob);
    await connected(bob, server);

    const push = async (text: string) => {
      const frame = await say(server, roomId, alice, g, text);
      for (const socket of server.open) socket.deliver(frame);
      return frame;
    };
    // The first message moves the whole row into rows (once).
    const moved = await writesOf(bob, () => push('m0').then(() => undefined), () => bob.roomHistory(roomId).length === 1);
    expect(texts(bob, roomId)).toEqual(['m0']);
    expect(moved.filter(([name]) => name.startsWith('group_member:'))).toHaveLength(999);
    const own = rowsOf(bob).get(`group:${ref}`) as string;
    expect(own.length).toBeLessThan(1_000);

    const sum = (writes: [string, number][]) => writes.reduce((s, [, n]) => s + n, 0);
    const keyRows = (writes: [string, number][]) => writes.map(([name]) => name).filter((name) => name.startsWith('group'));
    const mine = keyRows(moved).find((name) => name.startsWith('group_member:') && (rowsOf(bob).get(name) as string).includes(A));

    const pushed = await writesOf(bob, () => push('m1').then(() => undefined), () => bob.roomHistory(roomId).length === 2);
    expect(texts(bob, roomId)).toEqual(['m0', 'm1']);
    expect(keyRows(pushed)).toEqual([mine]); // alice's row only: not the own row, nor the 998 others
    expect(sum(pushed)).toBeLessThan(12_000);

    // A member's next key (a rotation): its row only.
    const keyed = await writesOf(bob, async () => giveKey(server, alice, roomId, await g.rotate()), () => server.inbox.items.size === 0);
    expect(keyRows(keyed)).toEqual([mine]);
    expect(sum(keyed)).toBeLessThan(20_000);

    // A member device new to the room: its row and one of the 32 index rows.
    const c = await chain(server, roomId, carol);
    const newcomer = await writesOf(bob, () => c.key(), () => server.inbox.items.size === 0);
    const written = keyRows(newcomer);
    expect(written.filter((n) => n.startsWith('group_member:'))).toHaveLength(1);
    expect(written.filter((n) => n.startsWith('group_index:'))).toHaveLength(1);
    expect(written).toHaveLength(2);
    expect(sum(newcomer)).toBeLessThan(20_000);

    // This device's send: its own row, no member's.
    server.rooms.set(roomId, { name: 'team', members: [bob.me, A] });
    await bob.sendRoom(roomId, 'hello');
    const sent = await writesOf(bob, async () => void (await bob.sendRoom(roomId, 'again')), () => true);
    expect(keyRows(sent)).toEqual([`group:${ref}`]);
    expect(sum(sent)).toBeLessThan(20_000);

    // Nothing lost: every member's row, 1,000 of them with carol's, and the index.
    const rows = [...rowsOf(bob).keys()];
    expect(rows.filter((n) => n.startsWith(`group_member:${ref}:`))).toHaveLength(1000);
    const indexed = rows.filter((n) => n.startsWith(`group_index:${ref}:`)).flatMap((n) => JSON.parse(rowsOf(bob).get(n) as string) as string[]);
    expect(indexed).toHaveLength(1000);
    expect(new Set(indexed).has(aliceMember)).toBe(true);
    // And after a reload alice's next message still opens (its row read back).
    bob = await reopen(bob);
    await connected(bob, server);
    await push('m2');
    expect((await settled(bob, roomId, 5)).filter((t) => t.startsWith('m'))).toEqual(['m0', 'm1', 'm2']);
  }, 180_000);
});

describe('a room whose sender keys are one whole row (the layout before rows)', () => {
  it('is split into rows at its first use, and nothing is lost: chains, retired ids, this device\'s chain', async () => {
    const roomId = 'aa'.repeat(12);
    const found = await teamRoom(roomId);
    const { server, alice, carol, A } = found;
    let bob = found.bob;
    const dave = await Peer.create(server, 'dave');
    const erin = await Peer.create(server, 'erin');
    const [C, D, E] = [carol.user.user_id, dave.user.user_id, erin.user.user_id];
    server.rooms.set(roomId, { name: 'team', members: [bob.me, A, C, D, E] });
    const [ga, gc, gd, ge] = [await GroupSession.create(roomId), await GroupSession.create(roomId), await GroupSession.create(roomId), await GroupSession.create(roomId)];
    // Bob's state as the code before kept it: alice's chain, carol's two, dave's retired
    // (removed), bob's own chain one message on.
    const erinKey = await ge.distributionMessage(); // opens her messages from the first
    const old = await GroupSession.create(roomId);
    await old.processDistribution(memberKey(A, 1), await ga.distributionMessage());
    await old.processDistribution(memberKey(C, 1), await gc.distributionMessage());
    const daveKey = await gd.distributionMessage();
    await old.processDistribution(memberKey(D, 1), daveKey);
    await old.removeMember(memberKey(D, 1));
    await old.encrypt(utf8('bob sent one'));
    await say(server, roomId, alice, ga, 'a1');
    await say(server, roomId, carol, gc, 'c1 (her first chain)');
    await old.processDistribution(memberKey(C, 1), await gc.rotate());
    const blob = await old.toBytes();
    await say(server, roomId, carol, gc, 'c2 (her second)');
    await say(server, roomId, erin, ge, 'e1 (no key yet)');
    await say(server, roomId, alice, ga, 'a2');
    await say(server, roomId, dave, gd, 'd1 (a dropped chain)');

    await bob.openRoom(roomId);
    const ref = await roomRef(bob, roomId);
    rowsOf(bob).set(`group:${ref}`, JSON.stringify(b64encode(blob)));
    bob = await reopen(bob);
    await connected(bob, server);
    await bob.readRoomLog(roomId);
    expect(await settled(bob, roomId, 5)).toEqual(['a1', 'c1 (her first chain)', 'c2 (her second)', 'a2', DROPPED]);
    expect(bob.roomPending(roomId)).toBe(1);
    const ownRow = rowsOf(bob).get(`group:${ref}`) as string;
    expect(ownRow.length).toBeLessThan(1_000);
    await giveKey(server, erin, roomId, erinKey);
    expect(await settled(bob, roomId, 6)).toEqual(['a1', 'c1 (her first chain)', 'c2 (her second)', 'e1 (no key yet)', 'a2', DROPPED]);
    expect(bob.roomPending(roomId)).toBe(0);

    // Dave's retired chain stays refused: his old key again opens nothing.
    await giveKey(server, dave, roomId, daveKey);
    await until('the key handled', () => server.inbox.items.size === 0);
    const before = JSON.parse(fromUtf8(blob)) as { own: unknown; retired: Record<string, number[]>; receivers: Record<string, unknown[]> };
    const members = [...rowsOf(bob).keys()].filter((n) => n.startsWith(`group_member:${ref}:`)).map((n) => JSON.parse(JSON.parse(rowsOf(bob).get(n) as string) as string) as { member: string; chains: unknown[]; retired: number[] });
    const byName = new Map(members.map((m) => [m.member, m]));
    expect([...byName.keys()].sort()).toEqual([memberKey(A, 1), memberKey(C, 1), memberKey(D, 1), memberKey(E, 1)].sort());
    expect(byName.get(memberKey(D, 1))?.retired).toEqual(before.retired[memberKey(D, 1)]);
    expect(byName.get(memberKey(D, 1))?.chains).toEqual([]);
    expect(byName.get(memberKey(C, 1))?.chains).toHaveLength(2);
    // This device's chain goes on where it was (the same chain, its iteration kept).
    expect((JSON.parse(JSON.parse(rowsOf(bob).get(`group:${ref}`) as string) as string) as { own: unknown }).own).toEqual(before.own);
    // And a reload reads the rows as they are.
    bob = await reopen(bob);
    expect(texts(bob, roomId)).toHaveLength(6);
  }, 60_000);
});
