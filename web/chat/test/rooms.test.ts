// Rooms' pure rules (src/app/rooms.ts) against client/parley: the control payload that
// carries a room's sender key, byte for byte with vectors made by the Python client
// (fixtures/make_rooms_vectors.py), and the distribution/rotation decision of
// client/parley/rooms.py `_distribute`, and the member devices a room_send names
// (`device_digest`, vectors from parley_contract.frames.device_digest).
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';

import {
  CONTROL_PREFIX,
  type RoomState,
  applyPostChange,
  canDeletePost,
  canEditPost,
  deviceDigest,
  distributionUsers,
  encodeControl,
  isRemovedPost,
  isStale,
  listsBehind,
  lowestUnkept,
  memberDevice,
  memberKey,
  mentionNames,
  parseControl,
  planDistribution,
  pythonJson,
  roomState,
  skdPayload,
  takeUnkept,
  unkeptRow,
} from '../src/app/rooms.ts';
import { reportBody, reportFields, roomMessageMeta } from '../src/app/moderation.ts';
import { b64decode, b64encode, fromUtf8, utf8 } from '../src/crypto/encoding.ts';
import { FrankingMismatch } from '../src/crypto/errors.ts';
import { commitmentFromMessage, verifyReport } from '../src/crypto/franking.ts';
import { GroupSession } from '../src/crypto/session.ts';

interface Vectors {
  room: string;
  member: string;
  skd_payload: string;
  messages: { body: string; text: string }[];
  odd_object: Record<string, unknown>;
  odd_payload: string;
  parse: { plaintext: string; control: unknown }[];
}

const V = JSON.parse(readFileSync(new URL('./fixtures/rooms_vectors.json', import.meta.url), 'utf8')) as Vectors;

describe('control payloads (messenger.encode_control / parse_control)', () => {
  it('starts with the NUL-framed prefix', () => {
    expect(fromUtf8(CONTROL_PREFIX)).toBe('\x00parley-control\x00');
  });

  it("re-encodes Python's sender-key payload byte for byte", () => {
    const control = parseControl(b64decode(V.skd_payload)) as { t: string; room: string; d: string };
    expect(control.t).toBe('skd');
    expect(control.room).toBe(V.room);
    expect(b64encode(skdPayload(control.room, control.d))).toBe(V.skd_payload);
  });

  it('writes JSON as json.dumps(separators=(",", ":")) does, ensure_ascii included', () => {
    expect(b64encode(encodeControl(V.odd_object))).toBe(V.odd_payload);
    expect(pythonJson({ a: 'é' })).toBe('{"a":"\\u00e9"}');
  });

  it('parses as Python does: chat text null, a broken or non-object payload "invalid"', () => {
    for (const c of V.parse) expect(parseControl(b64decode(c.plaintext))).toEqual(c.control);
  });

  it("takes Python's distribution and decrypts Python's group messages of that chain", async () => {
    const control = parseControl(b64decode(V.skd_payload)) as { room: string; d: string };
    const session = await GroupSession.create(V.room);
    await session.processDistribution(V.member, b64decode(control.d));
    for (const m of V.messages) expect(fromUtf8(await session.decrypt(V.member, b64decode(m.body)))).toBe(m.text);
  });

  it('a TypeScript distribution goes the other way through the same payload', async () => {
    const sender = await GroupSession.create(V.room);
    const payload = skdPayload(V.room, b64encode(await sender.distributionMessage()));
    const control = parseControl(payload) as { d: string };
    const receiver = await GroupSession.create(V.room);
    await receiver.processDistribution(memberKey('u1', 3), b64decode(control.d));
    const wire = await sender.encrypt(new TextEncoder().encode('to the room'));
    expect(fromUtf8(await receiver.decrypt('u1:3', wire))).toBe('to the room');
  });
});

describe('distribution and rotation (rooms.py _distribute)', () => {
  const A = 'a'.repeat(32);
  const B = 'b'.repeat(32);
  const C = 'c'.repeat(32);
  const targets = (...keys: string[]) => new Set(keys);
  const state = (s: Partial<RoomState>): RoomState => roomState(s);

  it('first send: nobody has the key, no rotation', () => {
    const plan = planDistribution(state({}), 42, [A, B], 1, targets(`${B}:1`, `${A}:2`));
    expect(plan).toEqual({ rotate: false, state: { members_seen: [A, B], version_seen: 1, has_key: [], chain_id: null, devices_read_at: 0 } });
  });

  it('unchanged members: the devices that have the key keep it', () => {
    const plan = planDistribution(state({ members_seen: [A, B], version_seen: 1, has_key: [`${B}:1`], chain_id: 42 }), 42, [A, B], 1, targets(`${B}:1`));
    expect(plan.rotate).toBe(false);
    expect(plan.state.has_key).toEqual([`${B}:1`]);
  });

  it('someone joined: no rotation (they get the current chain)', () => {
    const plan = planDistribution(state({ members_seen: [A, B], version_seen: 1, has_key: [`${B}:1`], chain_id: 42 }), 42, [A, B, C], 2, targets(`${B}:1`, `${C}:1`));
    expect(plan.rotate).toBe(false);
    expect(plan.state.has_key).toEqual([`${B}:1`]);
  });

  it('someone left or was removed: rotate, nobody has the new chain', () => {
    const plan = planDistribution(state({ members_seen: [A, B, C], version_seen: 2, has_key: [`${B}:1`, `${C}:1`], chain_id: 42 }), 42, [A, C], 3, targets(`${C}:1`));
    expect(plan.rotate).toBe(true);
    expect(plan.state.has_key).toEqual([]);
    expect(plan.state.members_seen).toEqual([A, C]);
  });

  it('a device that had the key is gone: rotate', () => {
    const plan = planDistribution(state({ members_seen: [A, B], version_seen: 1, has_key: [`${B}:1`, `${B}:2`], chain_id: 42 }), 42, [A, B], 1, targets(`${B}:1`));
    expect(plan.rotate).toBe(true);
  });

  it('the chain changed elsewhere (another state): the record is reset, no second rotation', () => {
    const plan = planDistribution(state({ members_seen: [A, B, C], has_key: [`${B}:1`], chain_id: 7 }), 42, [A, B], 1, targets(`${B}:1`));
    expect(plan.rotate).toBe(false);
    expect(plan.state.has_key).toEqual([]);
  });

  it('sends to every other user that lacks it, sorted (their sends cover our other devices)', () => {
    expect(distributionUsers(new Set([`${C}:1`, `${B}:4`, `${B}:5`, `${A}:2`]), A)).toEqual([B, C]);
    expect(distributionUsers(new Set([`${B}:4`]), A)).toEqual([B]);
  });

  it('only our own other devices lack it (alone in the room, or a device just linked): one note to self', () => {
    // rooms.py: `sorted({lacking users} - {me}) or [me]`; not a send to another member,
    // which did nothing while alone in the room.
    expect(distributionUsers(new Set([`${A}:2`]), A)).toEqual([A]);
    expect(distributionUsers(new Set([`${A}:2`, `${A}:3`]), A)).toEqual([A]);
  });

  it('device lists are read again when the version changed or after 30 s', () => {
    const s = state({ version_seen: 4, devices_read_at: 1000 });
    expect(isStale(s, 4, 1_010_000)).toBe(false);
    expect(isStale(s, 5, 1_010_000)).toBe(true);
    expect(isStale(s, 4, 1_031_000)).toBe(true);
  });

  it('@mentions as rooms.py finds them', () => {
    expect(mentionNames('hi @bob, @carol. and @bob again; mail a@b.c @x_-')).toEqual(['bob', 'carol', 'x']);
  });
});

describe('the member devices a room_send names (device_digest, rooms.py redo_room_send)', () => {
  const A = 'a'.repeat(32);
  const B = 'b'.repeat(32);

  it("is parley_contract's device_digest: the protocol's vectors", async () => {
    expect(await deviceDigest([['bob', 2], ['alice', 1]])).toBe('lst1BTtiSu2mW1grUJGc0g');
    expect(await deviceDigest([])).toBe('47DEQpj8HBSa-_TImW-5JA');
    expect((await deviceDigest([['bob', 2]])).length).toBe(22);
  });

  it('does not depend on the order given; lines sort as strings, as Python sorts them', async () => {
    const devices: [string, number][] = [[A, 2], [A, 10], [B, 1]];
    const want = 'M_AbR7lrj_fOVQzCCHeMMw'; // device_digest([(A, 2), (A, 10), (B, 1)]): "A:10" before "A:2"
    expect(await deviceDigest(devices)).toBe(want);
    expect(await deviceDigest([...devices].reverse())).toBe(want);
    expect(await deviceDigest([devices[1]!, devices[2]!, devices[0]!])).toBe(want);
    expect(await deviceDigest(new Map(devices.map(([u, d]) => [`${u}.${d}`, [u, d] as [string, number]])).values())).toBe(want);
    expect(await deviceDigest([...devices, [B, 3]])).not.toBe(want); // a device linked: another digest
    // From the member names #distribute works with.
    expect(await deviceDigest(devices.map(([u, d]) => memberDevice(memberKey(u, d))))).toBe(want);
    expect(memberDevice(memberKey(A, 2147483646))).toEqual([A, 2147483646]);
  });

  it('reads again the lists that differ from ours: a device more or less, a member we never read', () => {
    const known: Record<string, number[]> = { [A]: [1, 2], [B]: [1] };
    const ours = (user: string) => known[user] ?? [];
    // Ours: A's devices but the sending one (1), as the gateway lists them.
    expect(listsBehind([{ user: A, devices: [2] }, { user: B, devices: [1] }], ours, A, 1)).toEqual([]);
    expect(listsBehind([{ user: A, devices: [2] }, { user: B, devices: [1, 4] }], ours, A, 1)).toEqual([B]);
    expect(listsBehind([{ user: A, devices: [2] }, { user: B, devices: [] }], ours, A, 1)).toEqual([B]);
    expect(listsBehind([{ user: A, devices: [2] }, { user: B, devices: [4] }], ours, A, 1)).toEqual([B]);
    expect(listsBehind([{ user: 'carol', devices: [1] }, { user: A, devices: [2] }], ours, A, 1)).toEqual(['carol']);
    // Our own other device linked (3), or one removed (2).
    expect(listsBehind([{ user: A, devices: [2, 3] }, { user: B, devices: [1] }], ours, A, 1)).toEqual([A]);
    expect(listsBehind([{ user: A, devices: [] }], ours, A, 1)).toEqual([A]);
    // Sorted, each once; the order of the devices does not matter.
    expect(listsBehind([{ user: B, devices: [9] }, { user: A, devices: [3] }, { user: B, devices: [8] }], ours, A, 1)).toEqual([A, B]);
    expect(listsBehind([{ user: A, devices: [2] }, { user: B, devices: [1] }], (u) => [...ours(u)].reverse(), A, 1)).toEqual([]);
  });

  it('a device given the key after a refusal reads only the message encrypted again', async () => {
    // A sends from device 1; B's device 1 has A's chain; B links device 2, A has not read it.
    const sender = await GroupSession.create(V.room);
    const b1 = await GroupSession.create(V.room);
    await b1.processDistribution(memberKey(A, 1), await sender.distributionMessage());
    const first = await sender.encrypt(utf8('hello'));
    const sent = await deviceDigest([[B, 1]]);
    const gateway = [{ user: A, devices: [] as number[] }, { user: B, devices: [1, 2] }];
    expect(sent).not.toBe(await deviceDigest([[B, 1], [B, 2]])); // devices_changed, nothing stored
    expect(listsBehind(gateway, () => [1], A, 1)).toEqual([B]); // A knows A:1 (itself) and B:1
    // B's list read again: device 2 gets the current chain, the text is encrypted again.
    const b2 = await GroupSession.create(V.room);
    await b2.processDistribution(memberKey(A, 1), await sender.distributionMessage());
    const again = await sender.encrypt(utf8('hello'));
    expect(await deviceDigest([[B, 2], [B, 1]])).toBe(await deviceDigest([[B, 1], [B, 2]]));
    await expect(b2.decrypt(memberKey(A, 1), first)).rejects.toThrow(); // the old ciphertext: an earlier step
    expect(fromUtf8(await b2.decrypt(memberKey(A, 1), again))).toBe('hello');
    expect(fromUtf8(await b1.decrypt(memberKey(A, 1), again))).toBe('hello');
  });
});

describe('reporting a private room message (what the server checks of it)', () => {
  it('the kept fields open the commitment the sender sent with its room_send', async () => {
    const sender = await GroupSession.create(V.room);
    const receiver = await GroupSession.create(V.room);
    await receiver.processDistribution(memberKey('s1', 2), await sender.distributionMessage());
    const wire = await sender.encrypt(utf8('report me, room'));
    const sent = b64encode(commitmentFromMessage(wire)); // the room_send frame's commitment
    const got = await receiver.decryptMessage('s1:2', wire);
    const item = { from: 's1', device: 2, sent_at: 1764700000000, conversation: `room:${V.room}`, commitment: sent, franking_tag: 'dGFn' };
    const fields = reportFields(roomMessageMeta(item), got.frankingKey, got.plaintext, 'report me, room');
    expect(fields).not.toBeNull();
    const body = reportBody('sid', fields!, 'report me, room');
    const [pt, fk, cm] = [body.plaintext, body.franking_key, body.commitment].map((v) => b64decode(String(v)));
    await expect(verifyReport(pt!, fk!, cm!)).resolves.toBeUndefined();
    // A changed text does not open it: the server answers franking_mismatch.
    await expect(verifyReport(utf8('something else'), fk!, cm!)).rejects.toBeInstanceOf(FrankingMismatch);
  });
});

describe('editing your own public-room post (services/rooms/moderation.py by_member)', () => {
  it('the author, as sent or after their own edit', () => {
    expect(canEditPost({ sender: 'me' }, 'me')).toBe(true);
    expect(canEditPost({ sender: 'me', marker: null }, 'me')).toBe(true);
    expect(canEditPost({ sender: 'me', marker: 'edited' }, 'me')).toBe(true);
  });
  it('not somebody else\'s, nor the room moderator\'s', () => {
    expect(canEditPost({ sender: 'other' }, 'me')).toBe(false);
    expect(canEditPost({ sender: 'moderator' }, 'me')).toBe(false);
  });
  it('not once removed, deleted, or changed by a moderator', () => {
    for (const marker of ['removed_by_moderator', 'deleted_by_author', 'edited_by_moderator']) {
      expect(canEditPost({ sender: 'me', marker }, 'me')).toBe(false);
    }
  });
});

describe('deleting your own public-room post (services/rooms/moderation.py by_member)', () => {
  it('the author, as sent, after their own edit, and after a moderator\'s edit', () => {
    expect(canDeletePost({ sender: 'me' }, 'me')).toBe(true);
    expect(canDeletePost({ sender: 'me', marker: null }, 'me')).toBe(true);
    expect(canDeletePost({ sender: 'me', marker: 'edited' }, 'me')).toBe(true);
    // The server refuses the author's edit then, not the deletion.
    expect(canDeletePost({ sender: 'me', marker: 'edited_by_moderator' }, 'me')).toBe(true);
    expect(canEditPost({ sender: 'me', marker: 'edited_by_moderator' }, 'me')).toBe(false);
  });
  it('not somebody else\'s, nor the room moderator\'s', () => {
    expect(canDeletePost({ sender: 'other' }, 'me')).toBe(false);
    expect(canDeletePost({ sender: 'other', marker: 'edited' }, 'me')).toBe(false);
    expect(canDeletePost({ sender: 'moderator' }, 'me')).toBe(false);
  });
  it('not once removed or deleted (the server answers message_removed)', () => {
    for (const marker of ['removed_by_moderator', 'deleted_by_author']) {
      expect(canDeletePost({ sender: 'me', marker }, 'me')).toBe(false);
      expect(isRemovedPost({ marker })).toBe(true);
    }
    for (const marker of [null, undefined, 'edited', 'edited_by_moderator']) expect(isRemovedPost({ marker })).toBe(false);
  });
});

describe('a room_message_changed frame in the timeline (the highest rev wins)', () => {
  const post = (seq: number, text: string, rev?: number) => ({ seq, text, mentions: [] as string[], sender: 'me', ...(rev ? { rev } : {}), marker: null as string | null });
  const timeline = [post(1, 'first'), post(2, 'second, edited', 2)];
  const deleted = { seq: 2, rev: 3, text: '', mentions: [], marker: 'deleted_by_author' };
  it('a deletion empties the text and marks the post removed; the others stay as they are', () => {
    const after = applyPostChange(timeline, deleted);
    expect(after[1]).toEqual({ ...timeline[1], text: '', rev: 3, marker: 'deleted_by_author' });
    expect(isRemovedPost(after[1]!)).toBe(true);
    expect(canDeletePost(after[1]!, 'me')).toBe(false);
    expect(after[0]).toBe(timeline[0]);
  });
  it('an older or the same revision changes nothing (a frame after the answer, or twice)', () => {
    const after = applyPostChange(timeline, deleted);
    expect(applyPostChange(after, { seq: 2, rev: 2, text: 'second, edited', mentions: [], marker: 'edited' })).toEqual(after);
    expect(applyPostChange(after, deleted)).toEqual(after);
  });
  it('a post never changed has rev 1: its first change is rev 2', () => {
    const after = applyPostChange(timeline, { seq: 1, rev: 2, text: '', mentions: [], marker: 'removed_by_moderator' });
    expect(after[0]).toMatchObject({ text: '', rev: 2, marker: 'removed_by_moderator' });
  });
  it('a restore (marker null) shows the text again, unmarked; a late frame of the removal changes nothing', () => {
    const removal = { seq: 1, rev: 2, text: '', mentions: [], marker: 'removed_by_moderator' };
    const restore = { seq: 1, rev: 3, text: 'first', mentions: ['u1'], marker: null };
    const removedFirst = applyPostChange(timeline, removal);
    const after = applyPostChange(removedFirst, restore);
    expect(after[0]).toEqual({ ...timeline[0], text: 'first', mentions: ['u1'], rev: 3, marker: null });
    expect(isRemovedPost(after[0]!)).toBe(false);
    expect(canEditPost(after[0]!, 'me')).toBe(true);
    expect(applyPostChange(after, removal)).toEqual(after); // the removal's frame after the restore's answer
    // The restore's frame for a page that never saw the removal (a reload between them).
    expect(applyPostChange(timeline, restore)[0]).toMatchObject({ text: 'first', rev: 3, marker: null });
  });
  it('a restore gives back the marker the post had before the removal (edited)', () => {
    const after = applyPostChange(applyPostChange(timeline, { seq: 2, rev: 3, text: '', mentions: [], marker: 'removed_by_moderator' }), {
      seq: 2, rev: 4, text: 'second, edited', mentions: [], marker: 'edited',
    });
    expect(after[1]).toMatchObject({ text: 'second, edited', rev: 4, marker: 'edited' });
    expect(isRemovedPost(after[1]!)).toBe(false);
  });
});

describe("a room's messages not kept (room_unkept, rooms.py `_unkept_map`, `_reread_unkept`)", () => {
  const [A, C] = [memberKey('a1', 1), memberKey('c3', 2)];

  it('is read per sender device; an old plain number stands for every device', () => {
    expect(unkeptRow(undefined)).toEqual({});
    expect(unkeptRow(null)).toEqual({});
    expect(unkeptRow(7)).toEqual({ '*': 7 });
    expect(unkeptRow({ [A]: 4, [C]: 3, bad: 'x' })).toEqual({ [A]: 4, [C]: 3 });
    expect(lowestUnkept({})).toBeNull();
    expect(lowestUnkept({ [A]: 4, [C]: 3 })).toBe(3);
  });

  it("a device's key reads again from before its own first only, the others' stay", () => {
    expect(takeUnkept({ [A]: 4, [C]: 3 }, A)).toEqual({ from: 3, rest: { [C]: 3 } });
    expect(takeUnkept({ [C]: 3 }, A)).toEqual({ from: null, rest: { [C]: 3 } }); // nothing of A's: nothing read
    expect(takeUnkept({ [C]: 3 }, memberKey('c3', 1))).toEqual({ from: null, rest: { [C]: 3 } }); // another device of the user
    expect(takeUnkept({}, A)).toEqual({ from: null, rest: {} });
    // The old row: taken by the first key of any device, from the lower of the two.
    expect(takeUnkept({ '*': 5, [A]: 9, [C]: 3 }, A)).toEqual({ from: 4, rest: { [C]: 3 } });
    expect(takeUnkept({ '*': 5 }, C)).toEqual({ from: 4, rest: {} });
  });
});
