// A private room's sender key on the wire, as ParleyClient (src/app/client.ts) hands it
// out (client/parley/rooms.py `_distribute`, `redo_room_send`): the devices recorded as
// keyed are those the accepted key send was encrypted for, and a `devices_changed` redo
// reads the room's members fresh. The real client against test/support/fakeServer.ts.
import { afterEach, describe, expect, it, vi } from 'vitest';

import { ParleyError } from '../src/app/client.ts';
import { deviceDigest, keyChangeChoices, skdPayload } from '../src/app/rooms.ts';
import { b64encode, utf8 } from '../src/crypto/index.ts';
import { GroupSession } from '../src/crypto/session.ts';
import type * as W from '../src/generated/contract.ts';
import { cleanUp, connected, people, reopen, until } from './support/clients.ts';
import { MemoryVault } from './support/fakeServer.ts';
import { carolJoinsMidRead, teamRoom } from './support/rooms.ts';

vi.mock('../src/app/vault.ts', async (importOriginal) => {
  const { MemoryVault } = await import('./support/fakeServer.ts');
  return { ...(await importOriginal<typeof import('../src/app/vault.ts')>()), Vault: MemoryVault };
});

afterEach(() => {
  cleanUp();
});

/** The devices of `user` a pairwise send's copies are for. */
const copiesFor = (frame: W.Send | W.RoomSend, user: string): number[] =>
  frame.op === 'send' ? frame.copies.filter((c) => c.user === user).map((c) => c.device).sort() : [];

describe('a room key send records what it was encrypted for', () => {
  it('a device linked between its encryption and its accepted (and learned of meanwhile) is not counted as keyed', async () => {
    // Before: the `accepted` recorded every device the recipient had in the local list
    // at that moment: alice's new device, read by bob meanwhile (adding her as a
    // contact refreshed her list), was recorded as keyed without the key, and no later
    // send gave it the key (nothing lacked it) until the next rotation.
    const { server, bob, alice } = await people();
    const A = alice.user.user_id;
    const roomId = 'b2'.repeat(12);
    server.rooms.set(roomId, { name: 'team', members: [bob.me, A] });
    await connected(bob, server);
    let linked: number | null = null;
    let knownBeforeAccepted = false;
    server.beforeAnswer = async (frame) => {
      if (frame.op !== 'send' || frame.to !== A || linked !== null) return;
      linked = await alice.linkDevice(server);
      await bob.addContact('alice'); // another route: bob reads her list again
      knownBeforeAccepted = bob.peer(A).devices.has(linked);
    };
    await bob.sendRoom(roomId, 'first');
    delete server.beforeAnswer;
    expect(linked).toBe(2);
    expect(knownBeforeAccepted).toBe(true);
    const firstKey = server.sends.filter((s) => s.frame.op === 'send');
    expect(firstKey.map((s) => copiesFor(s.frame, A))).toEqual([[1]]); // encrypted before the link
    // The next send gives the new device the key: it lacks it.
    const before = server.sends.length;
    await bob.sendRoom(roomId, 'second');
    const later = server.sends.slice(before);
    expect(later.filter((s) => s.frame.op === 'send').map((s) => copiesFor(s.frame, A))).toEqual([[1, 2]]);
    const roomSend = later.find((s) => s.frame.op === 'room_send')?.frame as W.RoomSend;
    expect(roomSend.device_digest).toBe(await deviceDigest([[A, 1], [A, 2]]));
  });

  it('a key send encrypted again after devices_changed records the copies of the frame accepted', async () => {
    // The redo's frame went to the new device too: it has the key, and the next send
    // does not hand it out again (the first frame's copies alone would say it lacks it).
    const { server, bob, alice } = await people();
    const A = alice.user.user_id;
    const roomId = 'd4'.repeat(12);
    server.rooms.set(roomId, { name: 'team', members: [bob.me, A] });
    await connected(bob, server);
    server.beforeAnswer = async (frame) => {
      if (frame.op === 'send' && frame.to === A && !server.sends.some((s) => s.frame.id === frame.id)) await alice.linkDevice(server);
    };
    server.answerSend = (frame, _socket, n) =>
      frame.op === 'send' && frame.to === A && n === 1
        ? { op: 'error', code: 'devices_changed', message: 'Devices changed.', devices: [{ user: A, devices: [1, 2] }, { user: bob.me, devices: [] }] }
        : null;
    await bob.sendRoom(roomId, 'first');
    delete server.beforeAnswer;
    delete server.answerSend;
    const keySends = server.sends.filter((s) => s.frame.op === 'send');
    expect(keySends.map((s) => copiesFor(s.frame, A))).toEqual([[1], [1, 2]]); // refused, then encrypted again
    expect(new Set(keySends.map((s) => s.frame.id)).size).toBe(1);
    const before = server.sends.length;
    await bob.sendRoom(roomId, 'second');
    expect(server.sends.slice(before).map((s) => s.frame.op)).toEqual(['room_send']);
  });
});

describe('a devices_changed redo of a room message', () => {
  it('reads the members fresh: a list read mid-join and kept for the new version does not stick', async () => {
    // Before: the redo took the members kept for the room's version. The rooms service
    // raises the version before it writes the membership, so a list read in between
    // (carol not in it yet) was kept under the new version; every redo named the same
    // devices, the gateway refused each (`devices_changed`), and the message failed.
    const { server, bob, alice, carol } = await people();
    const roomId = 'c3'.repeat(12);
    // After 'before carol', carol joins: the version is raised first, and a read then
    // misses her (once).
    const { C, want, devicesChanged } = await carolJoinsMidRead(server, bob, alice, carol, roomId);
    let refused = 0;
    server.answerSend = (frame) => {
      if (frame.op !== 'room_send' || frame.device_digest === want) return null;
      refused++;
      return devicesChanged;
    };
    const before = server.sends.length;
    const id = await bob.sendRoom(roomId, 'carol reads this', 10_000);
    expect(refused).toBe(1); // the stale read, once
    const later = server.sends.slice(before);
    expect(later.filter((s) => s.frame.op === 'send').map((s) => [s.frame.op === 'send' && s.frame.to, copiesFor(s.frame, C)])).toEqual([[C, [1]]]);
    expect(server.accepted.has(id)).toBe(true);
    expect(bob.roomHistory(roomId).map((e) => [e.text, e.status])).toEqual([
      ['before carol', 'accepted'],
      ['carol reads this', 'accepted'],
    ]);
  });
});

describe("a room message from before this device had the sender's key", () => {
  it('read at the cursor (a push, a page of the log), it is said in the history, not dropped', async () => {
    // Before: the log's message raised ReplayedMessage and went by with no trace (taken
    // as a repeat, which the cursor and the ids seen had already ruled out).
    const roomId = 'c4'.repeat(12);
    const { server, bob, alice, A } = await teamRoom(roomId);
    const group = await GroupSession.create(roomId); // alice's chain in the room
    const early = await group.encrypt(utf8('before your key'));
    const distribution = await group.distributionMessage(); // from the next step on
    const later = await group.encrypt(utf8('after your key'));
    server.push(await alice.message(server, skdPayload(roomId, b64encode(distribution))));
    await until('the key taken', () => server.inbox.items.size === 0);
    const frame = (seq: number, body: Uint8Array): W.RoomMessage => ({
      op: 'room_message', room: roomId, seq, server_id: `room-${seq}`, from: A, from_device: 1, body: b64encode(body), sent_at: Date.now(),
    });
    for (const socket of server.open) {
      socket.deliver(frame(1, early));
      socket.deliver(frame(2, later));
    }
    await until('both taken', () => bob.roomCursor(roomId) === 2);
    expect(bob.roomHistory(roomId).map((e) => [e.kind, e.text])).toEqual([
      ['error', "[sent before this device had the sender's key]"],
      ['message', 'after your key'],
    ]);
  });
});

describe('a member whose safety number changed', () => {
  /** Bob and alice's room, alice's first key trusted (and `verified` by bob), then her
   * new identity: bob's send to the room, refused. */
  async function keyChanged(roomId: string, verified: boolean) {
    const room = await teamRoom(roomId);
    const { server, bob, alice, A } = room;
    await bob.send(A, 'hello'); // alice's first key trusted
    await until('hello accepted', () => bob.outbox().length === 0);
    if (verified) await bob.verify(A, (await bob.safetyNumber(A)) as string);
    await alice.resetIdentity(server);
    const refused = (await bob.sendRoom(roomId, 'paused').catch((e: unknown) => e)) as { verified: boolean; newSafetyNumber: string };
    expect(refused).toBeInstanceOf(ParleyError);
    expect(refused).toMatchObject({ name: 'SafetyNumberChanged', userId: A, verified });
    return { ...room, refused };
  }

  it('stops the room send with SafetyNumberChanged, naming the member; accepted (unverified), the send goes', async () => {
    const roomId = 'c5'.repeat(12);
    const { server, bob, A, refused } = await keyChanged(roomId, false);
    expect(keyChangeChoices(refused)).toEqual(['verify', 'accept']);
    await bob.acceptIdentity(A);
    expect(server.accepted.has(await bob.sendRoom(roomId, 'paused'))).toBe(true);
  });

  it('a verified member: verifying the new number again lets the send go', async () => {
    const roomId = 'c6'.repeat(12);
    const { server, bob, A, refused } = await keyChanged(roomId, true);
    expect(keyChangeChoices(refused)).toEqual(['verify']); // no accepting without comparing
    await bob.verify(A, refused.newSafetyNumber);
    expect(server.accepted.has(await bob.sendRoom(roomId, 'paused'))).toBe(true);
    expect(bob.identityStatus(A).verified).toBe(true);
  });
});

describe('a sender key for a room this browser does not know', () => {
  /** The client's vault rows (MemoryVault keeps them as JSON). */
  const rowsOf = (bob: { vault: { username: string } }) => MemoryVault.stores.get(bob.vault.username) as Map<string, string>;
  const known = (bob: { vault: { username: string } }): string[] => JSON.parse(rowsOf(bob).get('rooms_known') ?? '[]');
  const groups = (bob: { vault: { username: string } }): number => [...rowsOf(bob).keys()].filter((k) => k.startsWith('group:')).length;
  const randomRoom = () => [...crypto.getRandomValues(new Uint8Array(12))].map((b) => b.toString(16).padStart(2, '0')).join('');
  const roomFrame = (roomId: string, from: string, seq: number, body: Uint8Array): W.RoomMessage => ({
    op: 'room_message', room: roomId, seq, server_id: `room-${seq}`, from, from_device: 1, body: b64encode(body), sent_at: Date.now(),
  });

  it('is taken only for a room we are a member of: a thousand for other rooms leave no trace', async () => {
    // Before: any user's distribution naming any room id added it to `rooms_known` and
    // wrote its `group:` row, for good, and every log-in read four rows per such room.
    const { server, bob, alice } = await people();
    const A = alice.user.user_id;
    for (let i = 0; i < 1000; i++) {
      const room = randomRoom();
      const distribution = b64encode(await (await GroupSession.create(room)).distributionMessage());
      server.inbox.add(await alice.message(server, skdPayload(room, distribution)));
    }
    await connected(bob, server);
    expect(known(bob)).toEqual([]);
    expect(groups(bob)).toBe(0);
    expect(server.inbox.lost).toEqual([]);
    // A room bob is a member of (joined on another device, say): its key is taken.
    const roomId = 'e1'.repeat(12);
    server.rooms.set(roomId, { name: 'team', members: [bob.me, A] });
    const group = await GroupSession.create(roomId);
    server.push(await alice.message(server, skdPayload(roomId, b64encode(await group.distributionMessage()))));
    await until('the key taken', () => server.inbox.items.size === 0 && known(bob).includes(roomId));
    expect(known(bob)).toEqual([roomId]);
    expect(groups(bob)).toBe(1);
    for (const socket of server.open) socket.deliver(roomFrame(roomId, A, 1, await group.encrypt(utf8('in the room'))));
    await until('read', () => bob.roomHistory(roomId).length === 1);
    expect(bob.roomHistory(roomId).map((e) => [e.kind, e.text])).toEqual([['message', 'in the room']]);
    // The log-in reads the rows of that room only.
    const again = await reopen(bob);
    expect(again.roomHistory(roomId).map((e) => e.text)).toEqual(['in the room']);
  }, 120_000);

  it('whose room cannot be checked now is not acknowledged: read again, it is taken', async () => {
    const { server, bob, alice } = await people();
    const A = alice.user.user_id;
    await connected(bob, server);
    const roomId = 'e2'.repeat(12);
    server.rooms.set(roomId, { name: 'team', members: [bob.me, A] });
    server.roomsDown = true;
    const first = server.open[0];
    const group = await GroupSession.create(roomId);
    const key = server.push(await alice.message(server, skdPayload(roomId, b64encode(await group.distributionMessage()))));
    await until('the socket given up', () => first?.closedWith === 4000);
    expect(Math.max(0, ...server.inbox.acks)).toBeLessThan(key.seq);
    expect(known(bob)).toEqual([]);
    server.roomsDown = false;
    await until('read again and taken', () => server.inbox.items.size === 0 && known(bob).includes(roomId));
    for (const socket of server.open) socket.deliver(roomFrame(roomId, A, 1, await group.encrypt(utf8('after the outage'))));
    await until('read', () => bob.roomHistory(roomId).length === 1);
    expect(bob.roomHistory(roomId).map((e) => e.text)).toEqual(['after the outage']);
    expect(server.inbox.lost).toEqual([]);
  });

  // The review's finding: any refusal that was not "later" (429, 5xx) was taken as "not a
  // member", so a 401 (a revoked or invalid token) or a 403 dropped a real sender key and
  // settled its frame: the room's messages could never be read. Only 404 room_not_found
  // (or an answer without a role) says we are not in the room.
  for (const [status, code] of [[401, 'token_revoked'], [401, 'invalid_token'], [403, 'forbidden']] as const) {
    it(`whose check is refused ${status} ${code} is not dropped: read again once the check answers, it is taken`, async () => {
      const { server, bob, alice } = await people();
      const A = alice.user.user_id;
      await connected(bob, server);
      const roomId = 'e3'.repeat(12);
      server.rooms.set(roomId, { name: 'team', members: [bob.me, A] });
      server.roomsRefuse = { status, code };
      const first = server.open[0];
      const group = await GroupSession.create(roomId);
      const key = server.push(await alice.message(server, skdPayload(roomId, b64encode(await group.distributionMessage()))));
      await until('the socket given up', () => first?.closedWith === 4000);
      expect(Math.max(0, ...server.inbox.acks)).toBeLessThan(key.seq);
      expect(known(bob)).toEqual([]);
      server.roomsRefuse = null;
      await until('read again and taken', () => server.inbox.items.size === 0 && known(bob).includes(roomId));
      for (const socket of server.open) socket.deliver(roomFrame(roomId, A, 1, await group.encrypt(utf8('after the refusal'))));
      await until('read', () => bob.roomHistory(roomId).length === 1);
      expect(bob.roomHistory(roomId).map((e) => e.text)).toEqual(['after the refusal']);
      expect(server.inbox.lost).toEqual([]);
    });
  }

  it('whose room the rooms service does not know for us (404 room_not_found) is dropped, its frame settled', async () => {
    const { server, bob, alice } = await people();
    await connected(bob, server);
    const roomId = 'e4'.repeat(12); // not in server.rooms: 404 room_not_found
    const first = server.open[0];
    const key = server.push(await alice.message(server, skdPayload(roomId, b64encode(await (await GroupSession.create(roomId)).distributionMessage()))));
    await until('settled', () => server.inbox.items.size === 0 && Math.max(0, ...server.inbox.acks) >= key.seq);
    expect(first?.closedWith).toBeNull();
    expect(known(bob)).toEqual([]);
    expect(groups(bob)).toBe(0);
  });
});
