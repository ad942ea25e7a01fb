// A private room's messages that wait for their sender key (rooms.ts MAX_PENDING; as
// client/parley/rooms.py since 2734886, docs/client.md "Rooms"): past the cap nothing is
// dropped. The review's finding: the room's pending list kept the newest MAX_PENDING
// (`.slice(-MAX_PENDING)`) while the cursor went past all of them, so the oldest were gone
// for good, nothing shown. Now the oldest MAX_PENDING are kept, the lowest number of those
// not kept is remembered (`room_unkept`), and a sender key for the room puts the cursor
// back before it and reads the room's log again; a read under way then leaves the cursor
// where it was put. The real client against test/support/fakeServer.ts (its room log
// paged as delivery pages it); the keys and messages are real sender-key ciphertexts.
import { afterEach, describe, expect, it, vi } from 'vitest';

import type { ClientEvent, ParleyClient } from '../src/app/client.ts';
import { MAX_PENDING, PENDING } from '../src/app/rooms.ts';
import type * as W from '../src/generated/contract.ts';
import { cleanUp, connected, reopen, until } from './support/clients.ts';
import { type FakeServer, MemoryVault } from './support/fakeServer.ts';
import { chain, logReads, state, teamRoom, texts } from './support/rooms.ts';

vi.mock('../src/app/vault.ts', async (importOriginal) => {
  const { MemoryVault } = await import('./support/fakeServer.ts');
  return { ...(await importOriginal<typeof import('../src/app/vault.ts')>()), Vault: MemoryVault };
});

afterEach(() => {
  cleanUp();
  PENDING.max = MAX_PENDING;
});

/** Push room messages to bob's sockets, each taken (the cursor at it) before the next. */
async function pushed(server: FakeServer, bob: ParleyClient, frames: W.RoomMessage[]): Promise<void> {
  for (const frame of frames) {
    for (const socket of server.open) socket.deliver(frame);
    await until(`push ${frame.seq} taken`, () => bob.roomCursor(frame.room) >= frame.seq);
  }
}


/** The room's texts once `n` are shown and the cursor is at `cursor` (the read again done),
 * and still so a moment later (nothing shown twice by a late take); after `ms` without
 * that, as they are (the test's comparison says what is missing). */
async function settled(bob: ParleyClient, roomId: string, n: number, cursor: number, ms = 10_000): Promise<string[]> {
  const done = () => bob.roomHistory(roomId).length >= n && bob.roomCursor(roomId) === cursor;
  await until(`${n} shown, the cursor at ${cursor}`, done, ms).catch(() => undefined);
  await new Promise((r) => setTimeout(r, 50));
  return texts(bob, roomId);
}

describe('a private room past MAX_PENDING messages waiting for their sender key', () => {
  it('1,005 of one chain (1,000 read from the log, 5 pushed) before its key: all 1,005 decrypted, once each, in the room order', async () => {
    const roomId = 'e1'.repeat(12);
    const { server, bob, alice } = await teamRoom(roomId);
    const total = MAX_PENDING + 5;
    const a = await chain(server, roomId, alice);
    const frames: W.RoomMessage[] = [];
    for (let i = 1; i <= total; i++) frames.push(await a.say(`m${i}`));
    server.roomLogs.set(roomId, frames.slice(0, MAX_PENDING)); // the last 5 not stored yet
    expect(await bob.readRoomLog(roomId)).toBe(MAX_PENDING);
    server.roomLogs.set(roomId, frames);
    await pushed(server, bob, frames.slice(MAX_PENDING));
    // The oldest 1,000 kept, the first one past them remembered; the cursor went on (later
    // messages of other chains flow on), nothing shown.
    expect(state(bob, roomId)).toEqual({ pending: MAX_PENDING, unkept: MAX_PENDING + 1, cursor: total });
    expect(bob.roomHistory(roomId)).toEqual([]);

    const shown: string[] = [];
    bob.on((e: ClientEvent) => void (e.type === 'room_message' && shown.push(e.text)));
    await a.key();
    const all = Array.from({ length: total }, (_, i) => `m${i + 1}`);
    expect(await settled(bob, roomId, total, total, 60_000)).toEqual(all); // once each, in the room's order
    expect(shown).toEqual(all); // decrypted in the room's order too
    expect(bob.roomHistory(roomId).map((e) => e.seq)).toEqual(frames.map((f) => f.seq));
    expect(state(bob, roomId)).toEqual({ pending: 0, unkept: null, cursor: total });
    expect(logReads(server, roomId)).toEqual([0, 200, 400, 600, 800, MAX_PENDING]); // then again from before the first not kept
  }, 120_000);
});

describe('two senders past the cap (PENDING.max 3), pushes in between', () => {
  /** Bob in a room with alice and carol: a1..a3 then c1..c3 in its log, read. */
  async function twoSenders(roomId: string) {
    PENDING.max = 3;
    const found = await teamRoom(roomId);
    const { server, bob, alice, carol, A } = found;
    server.rooms.set(roomId, { name: 'team', members: [bob.me, A, carol.user.user_id] });
    const a = await chain(server, roomId, alice);
    const c = await chain(server, roomId, carol);
    for (const t of ['a1', 'a2', 'a3']) await a.say(t);
    for (const t of ['c1', 'c2', 'c3']) await c.say(t);
    expect(await bob.readRoomLog(roomId)).toBe(6);
    // alice's fill the places; carol's are not kept, the first of them (4) remembered.
    expect(state(bob, roomId)).toEqual({ pending: 3, unkept: 4, cursor: 6 });
    expect(bob.roomHistory(roomId)).toEqual([]);
    return { ...found, a, c };
  }

  it("carol's key first (hers come back from the log), then alice's", async () => {
    const roomId = 'e2'.repeat(12);
    const { server, bob, a, c } = await twoSenders(roomId);
    await c.key();
    expect(await settled(bob, roomId, 3, 6)).toEqual(['c1', 'c2', 'c3']);
    expect(logReads(server, roomId)).toEqual([0, 3]); // read again from before the first not kept
    expect(state(bob, roomId)).toEqual({ pending: 3, unkept: null, cursor: 6 });

    // A push of alice's, past the cap again; then one of carol's, which opens.
    await pushed(server, bob, [await a.say('a4'), await c.say('c4')]);
    expect(texts(bob, roomId)).toEqual(['c1', 'c2', 'c3', 'c4']);
    expect(state(bob, roomId)).toEqual({ pending: 3, unkept: 7, cursor: 8 });

    await a.key();
    expect(await settled(bob, roomId, 8, 8)).toEqual(['a1', 'a2', 'a3', 'c1', 'c2', 'c3', 'a4', 'c4']);
    expect(state(bob, roomId)).toEqual({ pending: 0, unkept: null, cursor: 8 });
    expect(logReads(server, roomId)).toEqual([0, 3, 6]);
  });

  it("alice's key first (nothing of hers was left out: nothing read again; carol's stay remembered), then carol's", async () => {
    const roomId = 'e3'.repeat(12);
    const { server, bob, a, c } = await twoSenders(roomId);
    await a.key();
    expect(await settled(bob, roomId, 3, 6)).toEqual(['a1', 'a2', 'a3']);
    // None of alice's was left out, so her key reads nothing again; carol's number stays
    // (only her key can open them: read again now, they would only be kept waiting).
    await new Promise((r) => setTimeout(r, 100));
    expect(state(bob, roomId)).toEqual({ pending: 0, unkept: 4, cursor: 6 });
    expect(logReads(server, roomId)).toEqual([0]);

    // alice's next opens; carol's is kept (places free now); alice's after it opens.
    await pushed(server, bob, [await a.say('a4'), await c.say('c4'), await a.say('a5')]);
    expect(texts(bob, roomId)).toEqual(['a1', 'a2', 'a3', 'a4', 'a5']);
    expect(state(bob, roomId)).toEqual({ pending: 1, unkept: 4, cursor: 9 });

    await c.key();
    expect(await settled(bob, roomId, 9, 9)).toEqual(['a1', 'a2', 'a3', 'c1', 'c2', 'c3', 'a4', 'c4', 'a5']);
    expect(state(bob, roomId)).toEqual({ pending: 0, unkept: null, cursor: 9 });
    expect(logReads(server, roomId)).toEqual([0, 3]); // from before carol's first not kept
  });
});

describe('a log read under way when a key puts the cursor back (PENDING.max 2)', () => {
  /** m1..m4 of alice's read (m3, m4 not kept), then m5 stored; the next read of the room
   * (its own, or a batch's) is held when it reaches the server. */
  async function underWay(roomId: string, one: boolean) {
    PENDING.max = 2;
    const found = await teamRoom(roomId);
    const { server, bob, alice } = found;
    const a = await chain(server, roomId, alice);
    for (const t of ['m1', 'm2', 'm3', 'm4']) await a.say(t);
    server.listRooms = !one;
    expect(one ? await bob.readRoomLog(roomId) : await bob.syncRooms()).toBe(4);
    expect(state(bob, roomId)).toEqual({ pending: 2, unkept: 3, cursor: 4 });
    await a.say('m5');
    let entered: () => void = () => undefined;
    let release: () => void = () => undefined;
    const arrived = new Promise<void>((r) => (entered = r));
    const released = new Promise<void>((r) => (release = r));
    server.beforeLog = async (asks, own) => {
      if (own === one && asks.some((ask) => ask.room === roomId && ask.after === 4)) {
        entered();
        await released;
      }
    };
    const reading = one ? bob.readRoomLog(roomId) : bob.syncRooms();
    await arrived;
    // The key comes while that page (after 4, m5) is on its way: the cursor goes back to 2.
    await a.key();
    await until('the key taken', () => server.inbox.items.size === 0 && bob.roomCursor(roomId) === 2);
    expect(texts(bob, roomId)).toEqual(['m1', 'm2']);
    release();
    await reading;
    return { ...found, a };
  }

  it("a room's own read: its page (after 4) does not move the cursor on past m3 and m4; the read after it brings them", async () => {
    const roomId = 'e4'.repeat(12);
    const { server, bob } = await underWay(roomId, true);
    expect(await settled(bob, roomId, 5, 5)).toEqual(['m1', 'm2', 'm3', 'm4', 'm5']);
    expect(state(bob, roomId)).toEqual({ pending: 0, unkept: null, cursor: 5 });
    expect(logReads(server, roomId)).toEqual([0, 4, 2]);
  });

  it('a batch read (POST /delivery/v1/rooms/logs): the same, the room read on alone from the cursor put back', async () => {
    const roomId = 'e5'.repeat(12);
    const { server, bob } = await underWay(roomId, false);
    expect(await settled(bob, roomId, 5, 5)).toEqual(['m1', 'm2', 'm3', 'm4', 'm5']);
    expect(state(bob, roomId)).toEqual({ pending: 0, unkept: null, cursor: 5 });
    expect(logReads(server, roomId)).toEqual([0, 4, 2]); // the batch's 0 and 4, then its own read
  });
});

describe('the marker (room_unkept) in the vault', () => {
  it('a reload between the message not kept and the key keeps it: the key then brings every message', async () => {
    PENDING.max = 2;
    const roomId = 'e6'.repeat(12);
    const { server, bob, alice } = await teamRoom(roomId);
    const a = await chain(server, roomId, alice);
    for (const t of ['m1', 'm2', 'm3', 'm4']) await a.say(t);
    expect(await bob.readRoomLog(roomId)).toBe(4);
    expect(state(bob, roomId)).toEqual({ pending: 2, unkept: 3, cursor: 4 });

    const again = await reopen(bob); // the page reloaded: the passphrase reopens the vault
    expect(state(again, roomId)).toEqual({ pending: 2, unkept: 3, cursor: 4 });
    await connected(again, server);
    await a.key();
    expect(await settled(again, roomId, 4, 4)).toEqual(['m1', 'm2', 'm3', 'm4']);
    expect(state(again, roomId)).toEqual({ pending: 0, unkept: null, cursor: 4 });
    expect(logReads(server, roomId)).toEqual([0, 2]);
    // And so it stays after another reload: no marker left, nothing read again.
    const third = await reopen(again);
    expect(state(third, roomId)).toEqual({ pending: 0, unkept: null, cursor: 4 });
    expect(texts(third, roomId)).toEqual(['m1', 'm2', 'm3', 'm4']);
  });
});

describe('a message not kept by a push, in a page read meanwhile (PENDING.max 2)', () => {
  it('is not marked seen by that page: the read again after its key brings it', async () => {
    // The review's finding: a take added every frame of its page to the ids seen, those
    // at or below the cursor too. A push took m3 (not kept: its number remembered, the
    // cursor past it) while a read's page holding m3 was on its way; that page marked m3
    // seen, so the read again after the key passed over it: lost for good.
    PENDING.max = 2;
    const roomId = 'e7'.repeat(12);
    const { server, bob, alice } = await teamRoom(roomId);
    const a = await chain(server, roomId, alice);
    for (const t of ['m1', 'm2']) await a.say(t);
    expect(await bob.readRoomLog(roomId)).toBe(2);
    expect(state(bob, roomId)).toEqual({ pending: 2, unkept: null, cursor: 2 });
    const m3 = await a.say('m3');
    let entered: () => void = () => undefined;
    let release: () => void = () => undefined;
    const arrived = new Promise<void>((r) => (entered = r));
    const released = new Promise<void>((r) => (release = r));
    server.beforeLog = async (asks, own) => {
      if (own && asks.some((ask) => ask.room === roomId && ask.after === 2)) {
        entered();
        await released;
      }
    };
    const reading = bob.readRoomLog(roomId); // a gap's read, say: its page holds m3
    await arrived;
    for (const socket of server.open) socket.deliver(m3); // m3 pushed meanwhile, not kept
    await until('the push taken', () => bob.roomCursor(roomId) === 3);
    expect(state(bob, roomId)).toEqual({ pending: 2, unkept: 3, cursor: 3 });
    release();
    await reading;
    delete server.beforeLog;

    const shown: string[] = [];
    bob.on((e: ClientEvent) => void (e.type === 'room_message' && shown.push(e.text)));
    await a.key();
    expect(await settled(bob, roomId, 3, 3)).toEqual(['m1', 'm2', 'm3']);
    expect(shown).toEqual(['m1', 'm2', 'm3']);
    expect(state(bob, roomId)).toEqual({ pending: 0, unkept: null, cursor: 3 });
    expect(logReads(server, roomId)).toEqual([0, 2, 2]); // the read held, then again from before m3
  });
});

describe('messages not kept are remembered per sender device (PENDING.max 2)', () => {
  /** Bob in a room with alice and carol: carol's c1..c3 (her key never comes), then 40 of
   * alice's, read: c1, c2 kept; c3 (carol's) and alice's 40 not kept. */
  async function keylessChain(roomId: string) {
    PENDING.max = 2;
    const found = await teamRoom(roomId);
    const { server, bob, alice, carol, A } = found;
    server.rooms.set(roomId, { name: 'team', members: [bob.me, A, carol.user.user_id] });
    const c = await chain(server, roomId, carol);
    for (const t of ['c1', 'c2', 'c3']) await c.say(t);
    const a = await chain(server, roomId, alice);
    const alices = Array.from({ length: 40 }, (_, i) => `a${i + 1}`);
    for (const t of alices) await a.say(t);
    expect(await bob.readRoomLog(roomId)).toBe(43);
    expect(state(bob, roomId)).toEqual({ pending: 2, unkept: 3, cursor: 43 });
    const shown: string[] = [];
    bob.on((e: ClientEvent) => void (e.type === 'room_message' && shown.push(e.text)));
    return { ...found, a, c, alices, shown };
  }

  it("a key reads the log again only for its own device's: keys of devices with nothing left out read nothing", async () => {
    // The review's finding: the marker was the room's, so once one chain's key never
    // came, every later sender key of the room (the same one sent again too) put the
    // cursor back to that chain's first message and read the log to its end again
    // (reads 0, 2, 2, 2, 2...): any member could make every other member's device read
    // up to 30 days of the room's log per pairwise key message.
    const roomId = 'e8'.repeat(12);
    const { server, bob, alice, a, c, alices, shown } = await keylessChain(roomId);
    await a.key();
    expect(await settled(bob, roomId, 40, 43)).toEqual(alices);
    // Read again once, from before alice's first not kept (4); carol's c3 met again there
    // and remembered again at the same number.
    expect(logReads(server, roomId)).toEqual([0, 3]);
    expect(state(bob, roomId)).toEqual({ pending: 2, unkept: 3, cursor: 43 });

    // alice's key again (three times), and a new chain of hers: nothing of hers is left
    // out, so nothing is read again and no cursor moves.
    for (let k = 0; k < 3; k++) await a.key();
    const again = await chain(server, roomId, alice);
    await again.key();
    await until('the keys taken', () => server.inbox.items.size === 0);
    await new Promise((r) => setTimeout(r, 200));
    expect(logReads(server, roomId)).toEqual([0, 3]);
    expect(state(bob, roomId)).toEqual({ pending: 2, unkept: 3, cursor: 43 });

    // carol's key: hers kept open, and the log is read again once, from before c3.
    await c.key();
    const all = ['c1', 'c2', 'c3', ...alices];
    expect(await settled(bob, roomId, 43, 43)).toEqual(all);
    expect(logReads(server, roomId)).toEqual([0, 3, 2]);
    expect(state(bob, roomId)).toEqual({ pending: 0, unkept: null, cursor: 43 });
    // Every message shown exactly once.
    expect([...shown].sort()).toEqual([...all].sort());
  });

  it('an old marker (one number for the room) is taken by the next key of any device', async () => {
    const roomId = 'e9'.repeat(12);
    const { server, bob, a, c, alices } = await keylessChain(roomId);
    // The row as 973953a wrote it: the room's lowest number, for every device.
    const rows = MemoryVault.stores.get(bob.vault.username) as Map<string, string>;
    const [marker] = [...rows.keys()].filter((k) => k.startsWith('room_unkept:'));
    expect(marker).toBeDefined();
    rows.set(marker as string, JSON.stringify(3));
    const again = await reopen(bob);
    expect(state(again, roomId)).toEqual({ pending: 2, unkept: 3, cursor: 43 });
    await connected(again, server);
    await a.key();
    expect(await settled(again, roomId, 40, 43)).toEqual(alices);
    expect(logReads(server, roomId)).toEqual([0, 2]); // from before the old number
    expect(state(again, roomId)).toEqual({ pending: 2, unkept: 3, cursor: 43 }); // c3 remembered again, as carol's
    await c.key();
    expect(await settled(again, roomId, 43, 43)).toEqual(['c1', 'c2', 'c3', ...alices]);
    expect(logReads(server, roomId)).toEqual([0, 2, 2]);
    expect(state(again, roomId)).toEqual({ pending: 0, unkept: null, cursor: 43 });
  });
});
