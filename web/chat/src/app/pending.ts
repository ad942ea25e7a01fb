/**
 * A private room's messages kept until their sender's key arrives (client.ts
 * `#openRoomMessage`, `#onControl`): how they are laid out in the vault.
 *
 * One sealed row per message, `room_pending:<ref>:<n>` (`<ref>` the room's keyed name, as
 * its other rows; `<n>` a number the room's index gives out, never twice), holding the
 * message as it came (its ciphertext body too), and one small **index** row per room,
 * `room_pending:<ref>`: per sending chain (`<user id>:<device id>`) the row numbers, log
 * numbers and server ids of its messages kept, oldest first, and no body. Keeping a
 * message writes its own row and the index, never the others' rows; a sender key takes
 * its chain's rows alone. Before, the room's messages were one row (an array of up to
 * `MAX_PENDING` messages, bodies and all), read, parsed and written whole for each
 * message kept and read whole at each sender key: a member sending 1,000 messages of
 * ~40 KB under a chain nobody has a key for made every member's page rewrite a row
 * growing to ~40 MB per message. Such a row is split into this layout when the vault is
 * opened ({@link migratePending}).
 */

import { utf8 } from '../crypto/index.ts';
import { SKDM_FIXED_LEN } from '../crypto/wire.ts';
import { memberKey } from './rooms.ts';

/** A private room's message kept until its sender's key arrives (rooms.py pending; its
 * row), with what a report of it needs (sealed in the vault, as the rest). */
export interface PendingRoomMessage {
  server_id: string;
  seq: number;
  from: string;
  device: number;
  body: string;
  sent_at: number | null;
  conversation?: string | null;
  commitment?: string | null;
  franking_tag?: string | null;
}

/** A kept message in the index: its row number, its log number and its server id. */
export type PendingEntry = [n: number, seq: number, serverId: string];

/** A room's index row (`room_pending:<ref>`). */
export interface PendingIndex {
  /** The next row number to give out. */
  next: number;
  /** Per sending chain ({@link memberKey}), its messages kept, oldest first. */
  chains: Record<string, PendingEntry[]>;
}

/** The row of the kept message numbered `n`, under the room's index row `base`. */
export function pendingRow(base: string, n: number): string {
  return `${base}:${n}`;
}

function isEntry(value: unknown): value is PendingEntry {
  return (
    Array.isArray(value) &&
    value.length === 3 &&
    Number.isSafeInteger(value[0]) &&
    typeof value[1] === 'number' &&
    Number.isFinite(value[1]) &&
    typeof value[2] === 'string'
  );
}

/** An index row as stored (undefined: none) read as a {@link PendingIndex}; what is not
 * one reads as an empty index. */
export function pendingIndex(value: unknown): PendingIndex {
  const out: PendingIndex = { next: 0, chains: {} };
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return out;
  const { next, chains } = value as Partial<PendingIndex>;
  if (chains !== null && typeof chains === 'object') {
    for (const [chain, entries] of Object.entries(chains)) {
      if (!chain.includes(':')) continue; // no member's (and never `__proto__`)
      const kept = Array.isArray(entries) ? entries.filter(isEntry) : [];
      if (kept.length) out.chains[chain] = kept;
    }
  }
  const highest = Math.max(-1, ...Object.values(out.chains).flatMap((entries) => entries.map(([n]) => n)));
  out.next = Math.max(Number.isSafeInteger(next) ? (next as number) : 0, highest + 1);
  return out;
}

/** How many messages the room keeps. */
export function pendingCount(index: PendingIndex): number {
  let count = 0;
  for (const entries of Object.values(index.chains)) count += entries.length;
  return count;
}

/** Does the room keep the message `serverId` already? */
export function pendingHolds(index: PendingIndex, serverId: string): boolean {
  for (const entries of Object.values(index.chains)) if (entries.some((e) => e[2] === serverId)) return true;
  return false;
}

/** Every row number the index names. */
export function pendingNumbers(index: PendingIndex): number[] {
  return Object.values(index.chains).flatMap((entries) => entries.map(([n]) => n));
}

/** Add `item` to `index` (changed in place), last of its chain; its row number. */
export function addPending(index: PendingIndex, item: PendingRoomMessage): number {
  const n = index.next++;
  const chain = memberKey(item.from, item.device);
  (index.chains[chain] ??= []).push([n, item.seq, item.server_id]);
  return n;
}

/** `index` with `chain`'s entries now `entries` (changed in place); the value to store
 * (undefined: nothing kept, the row deleted). */
export function setChain(index: PendingIndex, chain: string, entries: PendingEntry[]): PendingIndex | undefined {
  if (entries.length) index.chains[chain] = entries;
  else delete index.chains[chain];
  return Object.keys(index.chains).length === 0 ? undefined : index;
}

function isItem(value: unknown): value is PendingRoomMessage {
  const v = value as Partial<PendingRoomMessage> | null;
  return (
    v !== null &&
    typeof v === 'object' &&
    typeof v.server_id === 'string' &&
    typeof v.seq === 'number' &&
    typeof v.from === 'string' &&
    typeof v.device === 'number' &&
    typeof v.body === 'string'
  );
}

/** The rows that replace a room's pending messages written as one row (`old`, an array,
 * as before a row per message) under `base`: a row per message, in the old order, and
 * the index (at `base`, where the array was: written together, the array is gone). A
 * message met twice is kept once. */
export function migratePending(base: string, old: unknown[]): [string, unknown][] {
  const index: PendingIndex = { next: 0, chains: {} };
  const rows: [string, unknown][] = [];
  for (const item of old) {
    if (!isItem(item) || pendingHolds(index, item.server_id)) continue;
    rows.push([pendingRow(base, addPending(index, item)), item]);
  }
  rows.push([base, rows.length === 0 ? undefined : index]);
  return rows;
}

/** The longest a room's sender-key distribution (`d` of an `skd` control payload) can be,
 * in base64url characters: a SenderKeyDistribution message is `SKDM_FIXED_LEN` bytes and
 * the group id, the room's id (crypto/wire.ts `SenderKeyDistribution`); a longer one
 * cannot be the room's, and is dropped before anything is asked or read for it. */
export function distributionChars(roomId: string): number {
  return Math.ceil(((SKDM_FIXED_LEN + utf8(roomId).length) * 4) / 3);
}
