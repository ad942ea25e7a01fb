// A private room's messages waiting for their sender key, one vault row each
// (src/app/pending.ts): `room_pending:<ref>:<n>` per message and a small index row,
// `room_pending:<ref>` (per sending chain the row numbers, log numbers and server ids, no
// body). The audit's finding (the Python SDK's, which the page mirrored): the room's
// messages were one row, read, parsed and written whole for each message kept and read
// whole at each sender key, so a member sending 1,000 messages of ~40 KB under a chain no
// one has a key for made every member's page rewrite a row growing to ~40 MB per message.
// The semantics are test/roomPending.test.ts's (unchanged); here: what a message kept, a
// message not kept and a key write and read, a message already kept met again after a
// reload, a room's messages written as one row (the old layout) taken over, and a sender
// key payload longer than a real one. The real client against test/support/fakeServer.ts,
// real sender-key ciphertexts.
import { afterEach, describe, expect, it, vi } from 'vitest';

import type { ParleyClient } from '../src/app/client.ts';
import { distributionChars, migratePending, pendingIndex } from '../src/app/pending.ts';
import { MAX_PENDING, PENDING, skdPayload } from '../src/app/rooms.ts';
import type * as W from '../src/generated/contract.ts';
import { cleanUp, connected, reopen, until } from './support/clients.ts';
import { MemoryVault, Peer } from './support/fakeServer.ts';
import { chain, logReads, state, teamRoom, texts } from './support/rooms.ts';

vi.mock('../src/app/vault.ts', async (importOriginal) => {
  const { MemoryVault } = await import('./support/fakeServer.ts');
  return { ...(await importOriginal<typeof import('../src/app/vault.ts')>()), Vault: MemoryVault };
});

afterEach(() => {
  cleanUp();
  PENDING.max = MAX_PENDING;
});

const vaultOf = (bob: ParleyClient) => bob.vault as unknown as MemoryVault;
const rowsOf = (bob: ParleyClient) => MemoryVault.stores.get(bob.vault.username) as Map<string, string>;

/** The room's pending rows in bob's vault: the index's name, and each message row's. */
function pendingRows(bob: ParleyClient): { index: string | undefined; rows: string[] } {
  const names = [...rowsOf(bob).keys()].filter((k) => k.startsWith('room_pending:'));
  return { index: names.find((k) => k.split(':').length === 2), rows: names.filter((k) => k.split(':').length === 3) };
}

/** What `fn` writes through bob's vault (name, bytes), once `done`. */
async function writesOf(bob: ParleyClient, fn: () => Promise<void>, done: () => boolean): Promise<[string, number][]> {
  const vault = vaultOf(bob);
  const writes: [string, number][] = [];
  vault.writes = writes;
  try {
    await fn();
    await until('the change written', done, 30_000);
    await new Promise((r) => setTimeout(r, 50)); // and whatever it still writes
  } finally {
    vault.writes = null;
  }
  return writes;
}

async function settled(bob: ParleyClient, roomId: string, n: number, cursor: number, ms = 15_000): Promise<string[]> {
  const done = () => bob.roomHistory(roomId).length >= n && bob.roomCursor(roomId) === cursor;
  await until(`${n} shown, the cursor at ${cursor}`, done, ms).catch(() => undefined);
  await new Promise((r) => setTimeout(r, 50));
  return texts(bob, roomId);
}

describe('keeping a message writes its own row and the index, not the others', () => {
  it('the 1,000th kept: one message row and the index written, none of the 999 before it; the 1,001st: no message row', async () => {
    const roomId = 'f1'.repeat(12);
    const { server, bob, alice } = await teamRoom(roomId);
    const a = await chain(server, roomId, alice);
    const pad = 'x'.repeat(1_000);
    for (let i = 1; i < MAX_PENDING; i++) await a.say(`m${i} ${pad}`);
    expect(await bob.readRoomLog(roomId)).toBe(MAX_PENDING - 1);
    expect(state(bob, roomId)).toEqual({ pending: MAX_PENDING - 1, unkept: null, cursor: MAX_PENDING - 1 });
    const before = pendingRows(bob);
    // What the room's 999 messages kept take in the vault (~1.4 MB here).
    const others = [...rowsOf(bob)].reduce((sum, [name, json]) => sum + (name.startsWith('room_pending:') ? json.length : 0), 0);

    const last = await a.say(`m${MAX_PENDING} ${pad}`);
    const writes = await writesOf(
      bob,
      async () => {
        for (const socket of server.open) socket.deliver(last);
      },
      () => bob.roomCursor(roomId) === MAX_PENDING,
    );
    expect(state(bob, roomId)).toEqual({ pending: MAX_PENDING, unkept: null, cursor: MAX_PENDING });
    // The index (log numbers and ids, no body) and a message's row, not 999 bodies: before,
    // the whole list was written, ~1.4 MB here (and ~40 MB with 40 KB messages).
    const bytes = writes.reduce((sum, [, n]) => sum + n, 0);
    expect(bytes).toBeLessThan(others / 10);
    // Of the room's pending rows, only the new message's and the index were written.
    expect(before.rows).toHaveLength(MAX_PENDING - 1);
    const after = pendingRows(bob);
    const added = after.rows.filter((name) => !before.rows.includes(name));
    expect(added).toHaveLength(1);
    const pendingWritten = writes.map(([name]) => name).filter((name) => name.startsWith('room_pending:'));
    expect(pendingWritten.sort()).toEqual([after.index, added[0]].sort());
    const row = (rowsOf(bob).get(added[0] as string) as string).length;
    expect(bytes).toBeLessThan(row + 80 * MAX_PENDING);

    // The 1,001st is not kept (remembered): no pending row written at all.
    const over = await a.say(`m${MAX_PENDING + 1}`);
    const overWrites = await writesOf(
      bob,
      async () => {
        for (const socket of server.open) socket.deliver(over);
      },
      () => bob.roomCursor(roomId) === MAX_PENDING + 1,
    );
    expect(state(bob, roomId)).toEqual({ pending: MAX_PENDING, unkept: MAX_PENDING + 1, cursor: MAX_PENDING + 1 });
    expect(overWrites.map(([name]) => name).filter((name) => name.startsWith('room_pending:'))).toEqual([]);

    // The key opens all of them, once each, in the room's order, and their rows go.
    await a.key();
    const all = Array.from({ length: MAX_PENDING + 1 }, (_, i) => `m${i + 1}`);
    expect((await settled(bob, roomId, MAX_PENDING + 1, MAX_PENDING + 1, 60_000)).map((t) => t.split(' ')[0])).toEqual(all);
    expect(state(bob, roomId)).toEqual({ pending: 0, unkept: null, cursor: MAX_PENDING + 1 });
    expect(pendingRows(bob)).toEqual({ index: undefined, rows: [] });
  }, 120_000);
});

describe("a sender key reads and writes only its own chain's rows", () => {
  it("carol's key: none of alice's kept messages is read (cloned) or written; alice's then opens hers", async () => {
    const roomId = 'f2'.repeat(12);
    const found = await teamRoom(roomId);
    const { server, bob, alice, carol, A } = found;
    server.rooms.set(roomId, { name: 'team', members: [bob.me, A, carol.user.user_id] });
    const a = await chain(server, roomId, alice);
    const c = await chain(server, roomId, carol);
    const alices = [await a.say('a1'), await c.say('c1'), await a.say('a2'), await c.say('c2'), await a.say('a3')].filter((f) => f.from === A);
    expect(await bob.readRoomLog(roomId)).toBe(5);
    expect(state(bob, roomId)).toEqual({ pending: 5, unkept: null, cursor: 5 });
    // The rows that hold alice's messages (their bodies).
    const aliceRows = [...rowsOf(bob)].filter(([name, json]) => name.startsWith('room_pending:') && alices.some((f) => json.includes(f.body))).map(([name]) => name);

    // Every value the client copies out of its rows (a transaction's reads) while carol's
    // key is taken: none holds one of alice's bodies.
    const clone = globalThis.structuredClone;
    let readAlice = 0;
    globalThis.structuredClone = ((value: unknown, options?: StructuredSerializeOptions) => {
      try {
        const json = JSON.stringify(value) ?? '';
        if (alices.some((f) => json.includes(f.body))) readAlice += 1;
      } catch {
        // not JSON: no row
      }
      return clone(value, options);
    }) as typeof structuredClone;
    let writes: [string, number][];
    try {
      writes = await writesOf(bob, () => c.key(), () => bob.roomHistory(roomId).length === 2);
    } finally {
      globalThis.structuredClone = clone;
    }
    expect(texts(bob, roomId)).toEqual(['c1', 'c2']);
    expect(readAlice).toBe(0);
    expect(writes.map(([name]) => name).filter((name) => aliceRows.includes(name))).toEqual([]);
    expect(aliceRows).toHaveLength(3); // a row each
    expect(state(bob, roomId)).toEqual({ pending: 3, unkept: null, cursor: 5 });
    expect(pendingRows(bob).rows.sort()).toEqual([...aliceRows].sort());

    await a.key();
    expect(await settled(bob, roomId, 5, 5)).toEqual(['a1', 'c1', 'a2', 'c2', 'a3']);
    expect(pendingRows(bob)).toEqual({ index: undefined, rows: [] });
    expect(logReads(server, roomId)).toEqual([0]);
  });
});

/** PENDING.max 2: dave's d1 and carol's c1 kept, carol's c2 not (remembered, 3); dave's key
 * opens d1, and alice's a1 (pushed) takes its place: c1 and a1 kept, a1 above carol's
 * number. The log read again after carol's key meets a1 again. */
async function keptAbove(roomId: string) {
  PENDING.max = 2;
  const found = await teamRoom(roomId);
  const { server, bob, alice, carol, A } = found;
  const dave = await Peer.create(server, 'dave');
  server.rooms.set(roomId, { name: 'team', members: [bob.me, A, carol.user.user_id, dave.user.user_id] });
  const a = await chain(server, roomId, alice);
  const c = await chain(server, roomId, carol);
  const d = await chain(server, roomId, dave);
  const frames = [await d.say('d1'), await c.say('c1'), await c.say('c2')];
  expect(await bob.readRoomLog(roomId)).toBe(3);
  expect(state(bob, roomId)).toEqual({ pending: 2, unkept: 3, cursor: 3 });
  await d.key();
  await until('d1 opened, its key acknowledged', () => bob.roomPending(roomId) === 1 && server.inbox.items.size === 0);
  const a1 = await a.say('a1');
  frames.push(a1);
  for (const socket of server.open) socket.deliver(a1);
  await until('a1 kept', () => bob.roomCursor(roomId) === 4);
  expect(state(bob, roomId)).toEqual({ pending: 2, unkept: 3, cursor: 4 });
  expect(texts(bob, roomId)).toEqual(['d1']);
  return { ...found, a, c, frames, conv: `room:${roomId}` };
}

describe('a message kept, met again by the log read again after a reload, is not kept twice', () => {
  it('after a reload (the ids seen forgotten): carol\'s key reads again from 2, a1 is passed over as kept, and shown once at its key', async () => {
    const roomId = 'f3'.repeat(12);
    const { server, bob, a, c, frames } = await keptAbove(roomId);
    const again = await reopen(bob);
    expect(state(again, roomId)).toEqual({ pending: 2, unkept: 3, cursor: 4 });
    await connected(again, server);
    await c.key();
    expect(await settled(again, roomId, 3, 4)).toEqual(['d1', 'c1', 'c2']);
    expect(logReads(server, roomId)).toEqual([0, 2]);
    expect(state(again, roomId)).toEqual({ pending: 1, unkept: null, cursor: 4 });
    expect(again.roomMessageState(roomId, (frames[3] as W.RoomMessage).server_id)).toBe('pending');
    await a.key();
    expect(await settled(again, roomId, 4, 4)).toEqual(['d1', 'c1', 'c2', 'a1']);
    expect(state(again, roomId)).toEqual({ pending: 0, unkept: null, cursor: 4 });
  });
});

describe('a room whose pending messages are one row (the layout before a row per message)', () => {
  it('is split into a row per message and the index when the vault is opened, and keeps working: the same states, keys open them, nothing kept twice', async () => {
    const roomId = 'f4'.repeat(12);
    const { server, bob, a, c, frames, conv } = await keptAbove(roomId);
    // The vault as the code before wrote it: `room_pending:<ref>`, an array of the kept
    // messages (c1 and a1, in the order they were kept), no index, no message rows.
    const { index, rows } = pendingRows(bob);
    expect(index).toBeDefined();
    expect(rows).toHaveLength(2);
    const store = rowsOf(bob);
    for (const name of rows) store.delete(name);
    const item = (f: W.RoomMessage) => ({
      server_id: f.server_id,
      seq: f.seq,
      from: f.from,
      device: f.from_device,
      body: f.body,
      sent_at: f.sent_at ?? null,
      conversation: conv,
      commitment: f.commitment ?? null,
      franking_tag: f.franking_tag ?? null,
    });
    const [, c1, , a1] = frames as [W.RoomMessage, W.RoomMessage, W.RoomMessage, W.RoomMessage];
    store.set(index as string, JSON.stringify([item(c1), item(a1)]));

    const again = await reopen(bob);
    // Split once, in place: an index (no bodies) and a row per message.
    expect(state(again, roomId)).toEqual({ pending: 2, unkept: 3, cursor: 4 });
    const migrated = pendingRows(again);
    expect(migrated.index).toBe(index);
    expect(migrated.rows).toHaveLength(2);
    const indexRow = store.get(index as string) as string;
    expect(Array.isArray(JSON.parse(indexRow))).toBe(false);
    expect(indexRow.includes(c1.body) || indexRow.includes(a1.body)).toBe(false);
    expect(migrated.rows.map((name) => JSON.parse(store.get(name) as string)).sort((x, y) => x.seq - y.seq)).toEqual([item(c1), item(a1)]);
    expect(again.roomMessageState(roomId, c1.server_id)).toBe('pending');
    expect(again.roomMessageState(roomId, a1.server_id)).toBe('pending');

    // A reload now reads the new layout as it is (nothing split again).
    const third = await reopen(again);
    expect(state(third, roomId)).toEqual({ pending: 2, unkept: 3, cursor: 4 });
    expect(store.get(index as string)).toBe(indexRow);

    await connected(third, server);
    await c.key(); // c1 from its row, c2 from the log read again; a1 met again, kept already
    expect(await settled(third, roomId, 3, 4)).toEqual(['d1', 'c1', 'c2']);
    expect(state(third, roomId)).toEqual({ pending: 1, unkept: null, cursor: 4 });
    expect(logReads(server, roomId)).toEqual([0, 2]);
    await a.key();
    expect(await settled(third, roomId, 4, 4)).toEqual(['d1', 'c1', 'c2', 'a1']);
    expect(state(third, roomId)).toEqual({ pending: 0, unkept: null, cursor: 4 });
    expect(pendingRows(third)).toEqual({ index: undefined, rows: [] });
  });

  it('migratePending: the old order, a message met twice kept once, what is no message left out, an empty list deleted', () => {
    const m = (seq: number, from: string, device = 1) => ({ server_id: `s${seq}`, seq, from, device, body: `b${seq}`, sent_at: null });
    const rows = migratePending('room_pending:r', [m(5, 'u'), m(2, 'v', 2), m(5, 'u'), { seq: 9 }, m(7, 'u')]);
    expect(rows).toEqual([
      ['room_pending:r:0', m(5, 'u')],
      ['room_pending:r:1', m(2, 'v', 2)],
      ['room_pending:r:2', m(7, 'u')],
      [
        'room_pending:r',
        {
          next: 3,
          chains: {
            'u:1': [
              [0, 5, 's5'],
              [2, 7, 's7'],
            ],
            'v:2': [[1, 2, 's2']],
          },
        },
      ],
    ]);
    expect(migratePending('room_pending:r', [])).toEqual([['room_pending:r', undefined]]);
    // An index row read back: junk entries dropped, `next` past every row number.
    expect(pendingIndex({ next: 1, chains: { 'u:1': [[4, 5, 's5'], 'junk'], 'v:2': [] } })).toEqual({ next: 5, chains: { 'u:1': [[4, 5, 's5']] } });
    expect(pendingIndex([m(1, 'u')])).toEqual({ next: 0, chains: {} });
  });
});

describe("a sender key's payload is no longer than a real distribution message", () => {
  it('the bound is the room\'s SenderKeyDistribution length; a longer `d` is dropped, a real one taken', async () => {
    const roomId = 'f5'.repeat(12);
    const { server, bob, alice } = await teamRoom(roomId);
    const a = await chain(server, roomId, alice);
    expect(a.distribution.length).toBe(distributionChars(roomId));
    await a.say('m1');
    expect(await bob.readRoomLog(roomId)).toBe(1);
    expect(state(bob, roomId)).toEqual({ pending: 1, unkept: null, cursor: 1 });
    // The real key with 40 KB after it (or of another room's length): dropped, nothing opened.
    server.push(await alice.message(server, skdPayload(roomId, a.distribution + 'A'.repeat(40_000))));
    await until('the key message handled', () => server.inbox.items.size === 0);
    await new Promise((r) => setTimeout(r, 50));
    expect(texts(bob, roomId)).toEqual([]);
    expect(bob.roomPending(roomId)).toBe(1);
    await a.key();
    expect(await settled(bob, roomId, 1, 1)).toEqual(['m1']);
  });
});
