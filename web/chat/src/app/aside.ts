/**
 * 1:1 messages kept aside (web/chat/README.md, "Receiving"; client/parley/messenger.py
 * `_keep_aside`, the same rules): a message from a sending device not seen yet whose
 * device list the key directory cannot give now (no answer, 429, 5xx) is written to the
 * vault, in the transaction that moves `last_seq`, and acknowledged, so the inbox reads
 * on; so are the later ones of a device while some of its are kept, so that a device's
 * messages are read in their order (the first one starts the session).
 *
 * The rows: `aside:<n>` (n: 12 digits, a number this vault counts up), each the
 * `message` frame as the server sent it, sealed as every vault row (the name says
 * nothing of the sender). This class is their index in memory, by sending device and by
 * server id, so that a message asks one look-up whatever the number kept; it follows
 * the rows as their transactions commit (client.ts).
 */

import type * as W from '../generated/contract.ts';

/** Messages kept aside at most; past it a message is not processed (its socket is given
 * up and the next sync reads it again), as before keeping aside. */
export const ASIDE_MAX = 10_000;

/** The wait before reading again what is kept aside, in ms: the first, doubled after
 * each round that left some kept, up to the longest (tests shorten them). */
export const ASIDE_RETRY = { first: 2_000, longest: 60_000 };

/** After a device list could not be read, none is asked for `everyMs`; a read that takes
 * over `timeoutMs` counts as "not now" (tests change them). */
export const ASIDE_ASK = { everyMs: 1_000, timeoutMs: 5_000 };

export const ASIDE_ROW = 'aside:';

/** A sending device: its user and device id. */
export type SendingDevice = readonly [sender: string, device: number];

const deviceKey = (sender: string, device: number): string => `${sender}\u0000${device}`;

export class Aside {
  /** Sending device -> its rows (name -> frame). */
  readonly #devices = new Map<string, Map<string, W.Message>>();
  /** Server id -> row name. */
  readonly #ids = new Map<string, string>();
  #next = 0;

  /** How many messages are kept. */
  get size(): number {
    return this.#ids.size;
  }

  /** The row names, for deleting them all. */
  names(): string[] {
    return [...this.#ids.values()];
  }

  /** A row, read from the vault or just committed. */
  add(name: string, frame: W.Message): void {
    const key = deviceKey(frame.from, frame.from_device);
    let rows = this.#devices.get(key);
    if (rows === undefined) this.#devices.set(key, (rows = new Map()));
    rows.set(name, frame);
    this.#ids.set(frame.server_id, name);
    this.#next = Math.max(this.#next, Number(name.slice(ASIDE_ROW.length)) + 1);
  }

  /** A row deleted (read, or dropped). */
  remove(name: string, frame: W.Message): void {
    const key = deviceKey(frame.from, frame.from_device);
    const rows = this.#devices.get(key);
    rows?.delete(name);
    if (rows?.size === 0) this.#devices.delete(key);
    if (this.#ids.get(frame.server_id) === name) this.#ids.delete(frame.server_id);
  }

  clear(): void {
    this.#devices.clear();
    this.#ids.clear();
  }

  /** The name of the next row to write. */
  nextName(): string {
    return `${ASIDE_ROW}${String(this.#next++).padStart(12, '0')}`;
  }

  /** Whether a message of this server id is kept. */
  has(serverId: string): boolean {
    return this.#ids.has(serverId);
  }

  /** Whether messages of this sending device are kept. */
  holds(sender: string, device: number): boolean {
    return this.#devices.has(deviceKey(sender, device));
  }

  /** The sending devices that have messages kept. */
  devices(): SendingDevice[] {
    return [...this.#devices.values()].map((rows) => {
      const frame = rows.values().next().value as W.Message;
      return [frame.from, frame.from_device] as const;
    });
  }

  /** A sending device's kept messages, oldest first: in the inbox's order (`seq`), then
   * in the order they were kept. */
  of(sender: string, device: number): [string, W.Message][] {
    const rows = [...(this.#devices.get(deviceKey(sender, device)) ?? [])];
    return rows.sort(([a, x], [b, y]) => x.seq - y.seq || (a < b ? -1 : 1));
  }
}

/** The wait before the next round of reading what is kept: the first after a round that
 * read everything, doubled (up to the longest) after one that left some kept. */
export function nextWait(wait: number, left: boolean): number {
  return left ? Math.min(wait * 2, ASIDE_RETRY.longest) : ASIDE_RETRY.first;
}
