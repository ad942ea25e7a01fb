/**
 * Reports, unsend and tombstones: the pure rules of client/parley/moderation.py
 * (docs/moderation-messages.md, docs/crypto.md "Message franking").
 *
 * - {@link tombstoneSignedBytes}: what a tombstone's Ed25519 signature covers, byte for
 *   byte as `tombstone_signed_bytes` in contract/parley_contract/frames.py;
 * - {@link verifyTombstone}: checks a `tombstone` frame against the keys published at
 *   `GET /delivery/v1/moderation/keys` (a forged one is ignored by the caller);
 * - {@link keepTombstone} / {@link triedAgain}: one signed with a key not published (yet)
 *   is kept and tried again, within {@link TOMBSTONE_RETRY}'s bounds, a try counted at
 *   most once per wait ({@link tombstoneDue});
 * - {@link reportFields} / {@link reportBody}: what is kept per received message (1:1 or
 *   private room, {@link roomMessageMeta}) so it can be reported, and the exact
 *   `POST /delivery/v1/reports` body the SDK sends;
 * - {@link unsendPath}: the `DELETE /delivery/v1/messages/...` of `Moderation.unsend`
 *   (1:1 and private rooms), with {@link messageServerId} / {@link roomServerId}.
 */

import { b64decode, b64encode, concat, fromUtf8, u32, utf8 } from '../crypto/encoding.ts';
import { ed25519Verify, sha256 } from '../crypto/primitives.ts';

export const TOMBSTONE_CONTEXT = utf8('parley-v1/tombstone\x00');

export interface TombstoneFields {
  kid: string;
  server_id: string;
  sender: string;
  conversation: string | null | undefined;
  by: string;
  at: number;
}

/** A context, then each field as a 4-byte big-endian length and its UTF-8 bytes (`at`
 * in decimal, a missing conversation as the empty string). */
export function tombstoneSignedBytes(t: TombstoneFields): Uint8Array {
  if (!Number.isSafeInteger(t.at)) throw new TypeError('tombstone at: not an integer');
  const parts: Uint8Array[] = [TOMBSTONE_CONTEXT];
  for (const value of [t.kid, t.server_id, t.sender, t.conversation ?? '', t.by, String(t.at)]) {
    const raw = utf8(value);
    parts.push(u32(raw.length), raw);
  }
  return concat(...parts);
}

/** A `tombstone` frame as the server sends it (`from` is the removed message's sender). */
export interface TombstoneFrame {
  kind: 'tombstone';
  seq: number;
  server_id: string;
  from: string;
  conversation: string | null;
  by: 'sender' | 'admin';
  at: number;
  kid: string;
  signature: string;
}

/** True if the frame's signature verifies under the published key `kid` (keys: kid →
 * base64url raw Ed25519 public key). Unknown kid, bad encoding or signature: false. */
export async function verifyTombstone(frame: TombstoneFrame, keys: ReadonlyMap<string, string>): Promise<boolean> {
  const key = keys.get(frame.kid);
  if (key === undefined || (frame.by !== 'sender' && frame.by !== 'admin')) return false;
  try {
    const message = tombstoneSignedBytes({
      kid: frame.kid, server_id: frame.server_id, sender: frame.from,
      conversation: frame.conversation, by: frame.by, at: frame.at,
    });
    await ed25519Verify(b64decode(key, { field: 'key', length: 32 }), b64decode(frame.signature, { field: 'signature', length: 64 }), message);
    return true;
  } catch {
    return false;
  }
}

/** Tombstones signed with a key this client does not have, even after reading the keys
 * again (a rolling deploy of delivery: the task that answered `/moderation/keys` did not
 * have the new key yet), are kept (the `tombstones_kept` row), acknowledged, and tried
 * again with the keys read again (client/parley/moderation.py `Moderation.keep`): the
 * first and longest wait between the counted tries of one (ms: its first try is due
 * `first` after it came, each next one twice the wait before, up to `longest`), the
 * tries and the age (ms since it came) after which one is dropped, and how many are kept
 * at most (the oldest go). 12 tries take ~1.4 h of waits (30 s, 1, 2, 4, 8 min, then
 * 10 min), however often the client reconnects: a round before one is due reads the
 * keys but counts it no try. Tests shorten them. */
export const TOMBSTONE_RETRY = { first: 30_000, longest: 600_000, tries: 12, keepMs: 24 * 3600_000, kept: 500 };

/** A tombstone kept for a key not known yet: the frame, when it came (ms), its tries,
 * and when the last of them was counted (ms). */
export interface KeptTombstone {
  frame: TombstoneFrame;
  first: number;
  tries: number;
  last?: number;
}

/** The kept row with `frame` added (once: the same frame delivered again is not kept
 * twice), the oldest dropped past TOMBSTONE_RETRY.kept. */
export function keepTombstone(row: readonly KeptTombstone[], frame: TombstoneFrame, now: number): KeptTombstone[] {
  const same = JSON.stringify(frame);
  if (row.some((k) => JSON.stringify(k.frame) === same)) return [...row];
  return [...row, { frame, first: now, tries: 0 }].slice(-TOMBSTONE_RETRY.kept);
}

/** When the next try of a kept tombstone counts (ms), and how much earlier a round still
 * counts it (a timer firing a few ms early): as `tombstone_due` in
 * client/parley/moderation.py. */
export function tombstoneDue(kept: KeptTombstone): { at: number; early: number } {
  const wait = Math.min(TOMBSTONE_RETRY.first * 2 ** Math.min(kept.tries, 32), TOMBSTONE_RETRY.longest);
  return { at: (kept.last ?? kept.first) + wait, early: Math.min(Math.floor(wait / 10), 1000) };
}

/** Ms until the first of the kept tombstones is due (0: one is). */
export function tombstonesDueIn(row: readonly KeptTombstone[], now: number): number {
  if (row.length === 0) return 0;
  return Math.max(0, Math.min(...row.map((k) => { const due = tombstoneDue(k); return due.at - due.early; })) - now);
}

/** A kept tombstone whose key is still unknown after a round (`read`: the keys were read,
 * or refused for good): a try is counted if it is due (at most one per wait, however
 * often rounds run); null (dropped) once past TOMBSTONE_RETRY's tries or age (the age
 * is checked even when the keys could not be read). */
export function triedAgain(kept: KeptTombstone, now: number, read = true): KeptTombstone | null {
  const due = tombstoneDue(kept);
  const next = read && now >= due.at - due.early ? { ...kept, tries: kept.tries + 1, last: now } : kept;
  if (next.tries >= TOMBSTONE_RETRY.tries || now - kept.first >= TOMBSTONE_RETRY.keepMs) return null;
  return next;
}

/** The text that replaces a removed message. */
export function removedText(by: 'sender' | 'admin'): string {
  return by === 'admin' ? 'Message removed by an admin' : 'Message removed by its sender';
}

/** What a report of a received message needs, kept (encrypted) with its history entry. */
export interface ReportFields {
  sender: string;
  sender_device: number;
  sent_at: number;
  conversation: string | null;
  commitment: string;
  franking_tag: string;
  franking_key: string;
  /** Only when the plaintext is not valid UTF-8: its exact bytes (base64url). */
  plaintext?: string;
}

/** The metadata of a received `message` frame that a report uses. */
export interface ReceivedMeta {
  from: string;
  from_device: number;
  sent_at?: number | null;
  conversation?: string | null;
  commitment?: string | null;
  franking_tag?: string | null;
}

/** As `report_fields` in client/parley/moderation.py; null: the server gave no tag, the
 * message cannot be reported. */
export function reportFields(
  frame: ReceivedMeta,
  frankingKey: Uint8Array,
  plaintext: Uint8Array,
  text: string,
): ReportFields | null {
  if (!frame.franking_tag || !frame.commitment || frame.sent_at === null || frame.sent_at === undefined) return null;
  const out: ReportFields = {
    sender: frame.from, sender_device: frame.from_device, sent_at: frame.sent_at,
    conversation: frame.conversation ?? null, commitment: frame.commitment,
    franking_tag: frame.franking_tag, franking_key: b64encode(frankingKey),
  };
  if (b64encode(utf8(text)) !== b64encode(plaintext)) out.plaintext = b64encode(plaintext);
  return out;
}

/** The `POST /delivery/v1/reports` body, as `Moderation.report` in the SDK builds it. */
export function reportBody(serverId: string, fields: ReportFields, text: string): Record<string, unknown> {
  const { plaintext, ...rest } = fields;
  return { ...rest, server_id: serverId, plaintext: plaintext || b64encode(utf8(text)) };
}

/** Decode the text of a received plaintext as the SDK shows it (invalid bytes replaced). */
export function displayText(plaintext: Uint8Array): string {
  try {
    return fromUtf8(plaintext);
  } catch {
    return new TextDecoder().decode(plaintext);
  }
}

/** A private room's message as the client keeps it until it is decrypted (the fields
 * of its `message` frame that `_open` in client/parley/rooms.py reads). */
export interface RoomItem {
  from: string;
  device: number;
  sent_at: number | null;
  conversation?: string | null | undefined;
  commitment?: string | null | undefined;
  franking_tag?: string | null | undefined;
}

/** The report metadata of a private room's message: what rooms.py `_open` rebuilds as a
 * `Message` frame before `report_fields`. */
export function roomMessageMeta(item: RoomItem): ReceivedMeta {
  return {
    from: item.from, from_device: item.device, sent_at: item.sent_at,
    conversation: item.conversation ?? null, commitment: item.commitment ?? null,
    franking_tag: item.franking_tag ?? null,
  };
}

/** A sent message as the history keeps it: what unsending it needs. */
export interface SentEntry {
  dir: string;
  kind: string;
  peer: string; // a user id, or a room's conversation (`room:<id>`)
  client_id?: string | undefined;
  server_id?: string | undefined;
}

/** The path of `DELETE /delivery/v1/messages/{server_id}?client_id=&conversation=` that
 * unsends `entry`, as `Moderation.unsend` in the SDK builds it: the client id proves
 * the sender (the server id is derived from it: {@link messageServerId} for 1:1,
 * {@link roomServerId} for a room), the conversation says whose devices get the
 * tombstones. Throws (with the SDK's messages) for what cannot be unsent. */
export async function unsendPath(me: string, entry: SentEntry): Promise<string> {
  if (entry.dir !== 'out' || entry.kind !== 'message') throw new Error('Only a message you sent can be unsent.');
  const clientId = entry.client_id;
  if (!clientId) throw new Error("This device does not know that message's client id.");
  const room = entry.peer.startsWith('room:') ? entry.peer.slice(5) : null;
  const derived = room === null ? await messageServerId(me, clientId) : await roomServerId(room, me, clientId);
  if (entry.server_id && entry.server_id !== derived) throw new Error("This device does not know that message's client id.");
  const conversation = room === null ? `dm:${[me, entry.peer].sort().join(':')}` : entry.peer;
  const query = new URLSearchParams({ client_id: clientId, conversation });
  return `/delivery/v1/messages/${encodeURIComponent(derived)}?${query}`;
}

/** A 1:1 message's server id, as `message_server_id` in contract/parley_contract/envelopes.py:
 * the first 32 hex digits of SHA-256("<sender>|<client id>"). */
export async function messageServerId(sender: string, clientId: string): Promise<string> {
  const digest = await sha256(utf8(`${sender}|${clientId}`));
  return Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join('').slice(0, 32);
}

/** A private room's message server id, as `room_server_id` in
 * contract/parley_contract/envelopes.py: the first 32 hex digits of
 * SHA-256("room|<room>|<sender>|<client id>"). */
export async function roomServerId(room: string, sender: string, clientId: string): Promise<string> {
  const digest = await sha256(utf8(`room|${room}|${sender}|${clientId}`));
  return Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join('').slice(0, 32);
}
