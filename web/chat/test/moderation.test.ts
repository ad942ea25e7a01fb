// Moderation's pure rules (src/app/moderation.ts) against the Python code: tombstone
// signed bytes and signatures, and the report fields/body, byte for byte with vectors
// made by fixtures/make_moderation_vectors.py.
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';

import {
  type ReportFields,
  type TombstoneFrame,
  type RoomItem,
  messageServerId,
  removedText,
  reportBody,
  reportFields,
  roomMessageMeta,
  roomServerId,
  tombstoneSignedBytes,
  unsendPath,
  verifyTombstone,
} from '../src/app/moderation.ts';

interface TombstoneCase {
  kid: string; server_id: string; sender: string; conversation: string | null; by: 'sender' | 'admin'; at: number;
  signed_bytes_hex: string; signature: string;
}
interface ReportCase {
  plaintext_hex: string; text: string; franking_key: string;
  frame: { from: string; from_device: number; sent_at: number; conversation: string; commitment: string; franking_tag: string };
  fields: ReportFields;
}
interface RoomReportCase { plaintext_hex: string; text: string; franking_key: string; item: RoomItem; fields: ReportFields }
interface UnsendCase { me: string; entry: { dir: string; kind: string; peer: string; client_id: string }; path: string }
const V = JSON.parse(readFileSync(new URL('./fixtures/moderation_vectors.json', import.meta.url), 'utf8')) as {
  public_key: string; tombstones: TombstoneCase[]; reports: ReportCase[]; server_ids: [string, string, string][];
  room_reports: RoomReportCase[]; room_server_ids: [string, string, string, string][]; unsends: UnsendCase[];
};
const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');
const unhex = (h: string) => new Uint8Array(Buffer.from(h, 'hex'));
const keys = new Map([['k1', V.public_key]]);
const frameOf = (c: TombstoneCase): TombstoneFrame => ({
  kind: 'tombstone', seq: 1, server_id: c.server_id, from: c.sender, conversation: c.conversation,
  by: c.by, at: c.at, kid: c.kid, signature: c.signature,
});

describe('tombstones', () => {
  it.each(V.tombstones)('signed bytes match the Python client ($server_id)', (c) => {
    expect(hex(tombstoneSignedBytes(c))).toBe(c.signed_bytes_hex);
  });
  it.each(V.tombstones)('a genuine signature verifies ($server_id)', async (c) => {
    expect(await verifyTombstone(frameOf(c), keys)).toBe(true);
  });
  it('a forged tombstone is refused', async () => {
    const c = V.tombstones[0]!;
    expect(await verifyTombstone({ ...frameOf(c), by: 'admin' }, keys)).toBe(false);
    expect(await verifyTombstone({ ...frameOf(c), server_id: 'other' }, keys)).toBe(false);
    expect(await verifyTombstone({ ...frameOf(c), kid: 'unknown' }, keys)).toBe(false);
    expect(await verifyTombstone({ ...frameOf(c), signature: 'AAAA' }, keys)).toBe(false);
  });
  it('removed markers', () => {
    expect(removedText('sender')).toBe('Message removed by its sender');
    expect(removedText('admin')).toBe('Message removed by an admin');
  });
});

describe('reports', () => {
  it.each(V.reports)('fields match report_fields ($text)', (c) => {
    const fk = new Uint8Array(Buffer.from(c.franking_key, 'base64url'));
    expect(reportFields(c.frame, fk, unhex(c.plaintext_hex), c.text)).toEqual(c.fields);
  });
  it('no tag: not reportable', () => {
    const c = V.reports[0]!;
    expect(reportFields({ ...c.frame, franking_tag: null }, new Uint8Array(32), unhex(c.plaintext_hex), c.text)).toBeNull();
  });
  it('the body has exactly the fields the SDK sends', () => {
    const [utf, raw] = V.reports as [ReportCase, ReportCase];
    const body = reportBody('s1', utf.fields, utf.text);
    expect(Object.keys(body).sort()).toEqual([
      'commitment', 'conversation', 'franking_key', 'franking_tag', 'plaintext', 'sender', 'sender_device', 'sent_at', 'server_id',
    ]);
    expect(body.plaintext).toBe(Buffer.from(unhex(utf.plaintext_hex)).toString('base64url'));
    expect(reportBody('s1', raw.fields, raw.text).plaintext).toBe(raw.fields.plaintext);
  });
});

describe('server ids', () => {
  it.each(V.server_ids)('message_server_id(%s, %s)', async (sender, clientId, expected) => {
    expect(await messageServerId(sender, clientId)).toBe(expected);
  });
});

describe('private rooms: reports', () => {
  it.each(V.room_reports)('a room message keeps the fields rooms.py `_open` keeps ($text)', (c) => {
    const fk = new Uint8Array(Buffer.from(c.franking_key, 'base64url'));
    expect(reportFields(roomMessageMeta(c.item), fk, unhex(c.plaintext_hex), c.text)).toEqual(c.fields);
  });
  it('the body of a room report names the room and the sending device', () => {
    const c = V.room_reports[0]!;
    const body = reportBody('r1', c.fields, c.text);
    expect(body).toMatchObject({ conversation: c.item.conversation, sender: 'carol', sender_device: 3, server_id: 'r1' });
    expect(body.plaintext).toBe(Buffer.from(unhex(c.plaintext_hex)).toString('base64url'));
  });
  it('a room message stored before its tag was kept (an old pending item) cannot be reported', () => {
    const c = V.room_reports[0]!;
    const { franking_tag: _, commitment: __, ...old } = c.item;
    expect(reportFields(roomMessageMeta(old), new Uint8Array(32), unhex(c.plaintext_hex), c.text)).toBeNull();
  });
});

describe('unsend', () => {
  it.each(V.room_server_ids)('room_server_id(%s, %s, %s)', async (room, sender, clientId, expected) => {
    expect(await roomServerId(room, sender, clientId)).toBe(expected);
  });
  it.each(V.unsends)('the request is the SDK\'s ($entry.peer)', async (c) => {
    expect(await unsendPath(c.me, c.entry)).toBe(c.path);
  });
  it('a kept server id must be the one the client id gives', async () => {
    const c = V.unsends[2]!;
    const serverId = decodeURIComponent(c.path.split('/')[4]!.split('?')[0]!);
    expect(await unsendPath(c.me, { ...c.entry, server_id: serverId })).toBe(c.path);
    await expect(unsendPath(c.me, { ...c.entry, server_id: '0'.repeat(32) })).rejects.toThrow(/client id/);
    await expect(unsendPath('mallory', { ...c.entry, server_id: serverId })).rejects.toThrow(/client id/);
  });
  it('only a message this device sent', async () => {
    const c = V.unsends[2]!;
    await expect(unsendPath(c.me, { ...c.entry, dir: 'in' })).rejects.toThrow('Only a message you sent can be unsent.');
    await expect(unsendPath(c.me, { ...c.entry, kind: 'removed' })).rejects.toThrow('Only a message you sent can be unsent.');
    const { client_id: _, ...noId } = c.entry;
    await expect(unsendPath(c.me, noId)).rejects.toThrow("This device does not know that message's client id.");
  });
});
