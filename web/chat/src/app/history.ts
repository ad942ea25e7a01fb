/**
 * A conversation's history in the vault, in chunks (web/chat/README.md, "History at
 * size").
 *
 * The history of a conversation used to be one vault row, read, sealed and written
 * whole for every message, receipt and removal: at 10,000 messages that is megabytes
 * of JSON and AES-GCM per message, and a sync of a backlog grows quadratically. Now:
 *
 *   history:<ref>       the head, `{ v: 2, chunks: n }`, written only when a chunk starts
 *   history:<ref>:<k>   chunk k (0 ≤ k < n), at most CHUNK entries, oldest first
 *
 * A new entry goes into the last chunk (or starts the next one), so a write seals at
 * most CHUNK entries whatever the conversation's length. Entries are found by client id
 * or server id through hints kept in memory (which chunk of which conversation each was
 * written to), made when the vault is opened and on every append: a receipt or a
 * tombstone reads and writes one chunk. A hint is checked against its chunk before use,
 * so one left by a write that failed finds nothing. A head that is still an array (a
 * vault written before chunks) is split by `migrate` when the vault is opened
 * (client.ts #loadHistory), before this class reads it.
 */

export const CHUNK = 128;

/** How many of a conversation's newest entries a page shows at first, and how many more
 * each "Show earlier messages" adds: the page renders what it shows, not the whole
 * history. */
export const SHOWN = 200;

/** The newest `limit` entries. */
export function newest<E>(all: E[], limit: number): E[] {
  return all.length > limit ? all.slice(all.length - limit) : all;
}

/**
 * A private room's entries in the room's order, as client/parley/store.py places them:
 * an entry with a `seq` (its number in the room's log) at that number, so a message that
 * waited for its sender's key shows where the room had it and every device of every
 * member shows the room in one order; one without (this device's message until the log
 * numbers it, a marker) at its `pos`, the highest place in the room when it was added
 * (`topPlace`; store.py's `messages.pos`), so after the entries added before it, as
 * they were placed then. Entries of one place keep the order they were added in. An
 * entry stored without either (before `pos`) goes after the entries before it. The
 * array itself when it is in order already.
 */
export function inRoomOrder<E extends Placed>(entries: E[]): E[] {
  let last = 0;
  let sorted = true;
  const keys = entries.map((e) => {
    const key = e.seq ?? e.pos ?? last;
    if (key < last) sorted = false;
    last = Math.max(last, key);
    return key;
  });
  if (sorted) return entries;
  return entries
    .map((e, i) => [keys[i] as number, i, e] as const)
    .sort((a, b) => a[0] - b[0] || a[1] - b[1])
    .map(([, , e]) => e);
}

/** An entry's place in a private room: its number in the room's log, or without one
 * the highest place when it was added. */
export interface Placed {
  seq?: number | undefined;
  pos?: number | undefined;
}

/** The highest place of a private room's entries (`entries` as committed, `tail` its
 * last chunk as the transaction sees it: what the transaction added is there): the
 * `pos` of an entry added now without a number. */
export function topPlace(entries: readonly Placed[], tail: readonly Placed[] | undefined): number {
  let top = 0;
  for (const list of [entries, tail ?? []]) for (const e of list) top = Math.max(top, e.seq ?? e.pos ?? 0);
  return top;
}

export interface Head {
  v: 2;
  chunks: number;
}

/** What the history needs of an entry. */
export interface Keyed {
  client_id?: string;
  server_id?: string;
}

/** A transaction's view: reads see its own writes first (client.ts `#transaction`). */
export interface HistoryTx {
  get<V>(name: string): V | undefined;
  put(name: string, value: unknown): void;
}

export const chunkName = (base: string, k: number): string => `${base}:${k}`;

/** The conversation a history row belongs to (its head's name), or null for other rows. */
export function baseOf(name: string): string | null {
  if (!name.startsWith('history:')) return null;
  const parts = name.split(':');
  return parts.length === 3 ? `${parts[0]}:${parts[1]}` : name;
}

/** The rows a pre-chunk history (one array) becomes: its head and its chunks. */
export function migrate<E>(base: string, entries: E[]): [string, unknown][] {
  const rows: [string, unknown][] = [];
  for (let k = 0; k * CHUNK < entries.length; k++) rows.push([chunkName(base, k), entries.slice(k * CHUNK, (k + 1) * CHUNK)]);
  rows.unshift([base, { v: 2, chunks: rows.length } satisfies Head]);
  return rows;
}

export class History<E extends Keyed> {
  /** Committed rows (the client's cache). */
  readonly #read: <V>(name: string) => V | undefined;
  readonly #byClient = new Map<string, number>(); // `${base} ${client id}` -> chunk
  readonly #byServer = new Map<string, Map<string, number>>(); // server id -> base -> chunk
  readonly #all = new Map<string, E[]>(); // every entry of a conversation, until one of its rows changes

  constructor(read: <V>(name: string) => V | undefined) {
    this.#read = read;
  }

  /** Every entry of the conversation, oldest first (the same array until it changes). */
  entries(base: string): E[] {
    let all = this.#all.get(base);
    if (all === undefined) {
      all = [];
      for (let k = 0; k < (this.#read<Head>(base)?.chunks ?? 0); k++) all.push(...(this.#read<E[]>(chunkName(base, k)) ?? []));
      this.#all.set(base, all);
    }
    return all;
  }

  /** Make the hints of a conversation's committed entries (once its rows are read). */
  learn(base: string): void {
    for (let k = 0; k < (this.#read<Head>(base)?.chunks ?? 0); k++) for (const e of this.#read<E[]>(chunkName(base, k)) ?? []) this.#hint(base, k, e);
  }

  /** Rows of these names were committed: what was read of their conversations is stale. */
  changed(names: Iterable<string>): void {
    for (const name of names) {
      const base = baseOf(name);
      if (base !== null) this.#all.delete(base);
    }
  }

  /** The conversation's last chunk as the transaction sees it. */
  tail(tx: HistoryTx, base: string): E[] | undefined {
    const chunks = tx.get<Head>(base)?.chunks ?? 0;
    return chunks > 0 ? tx.get<E[]>(chunkName(base, chunks - 1)) : undefined;
  }

  /** Add an entry at the end of the conversation: writes its last chunk (and the head
   * when a chunk starts). */
  append(tx: HistoryTx, base: string, entry: E): void {
    const chunks = tx.get<Head>(base)?.chunks ?? 0;
    let k = chunks - 1;
    let chunk = k >= 0 ? (tx.get<E[]>(chunkName(base, k)) ?? []) : null;
    if (chunk === null || chunk.length >= CHUNK) {
      k = chunks;
      chunk = [];
      tx.put(base, { v: 2, chunks: chunks + 1 } satisfies Head);
    }
    chunk.push(entry);
    tx.put(chunkName(base, k), chunk);
    this.#hint(base, k, entry);
  }

  /** Whether the conversation holds an entry of this client id (committed). */
  hasClient(base: string, clientId: string): boolean {
    return this.#find(base, this.#byClient.get(`${base} ${clientId}`), (e) => e.client_id === clientId);
  }

  /** Whether the conversation holds an entry of this server id (committed). */
  hasServer(base: string, serverId: string): boolean {
    return this.#find(base, this.#byServer.get(serverId)?.get(base), (e) => e.server_id === serverId);
  }

  /** The conversations holding an entry of this server id. */
  withServer(serverId: string): string[] {
    return [...(this.#byServer.get(serverId)?.keys() ?? [])];
  }

  /** Change the entry of this client id in place, in the transaction; false if the
   * conversation has none (nothing is written). */
  updateClient(tx: HistoryTx, base: string, clientId: string, change: (e: E) => void): boolean {
    return this.#update(tx, base, this.#byClient.get(`${base} ${clientId}`), (e) => e.client_id === clientId, change);
  }

  /** Change the first entry of this server id that `match` takes, in place. */
  updateServer(tx: HistoryTx, base: string, serverId: string, change: (e: E) => void, match: (e: E) => boolean = () => true): boolean {
    return this.#update(tx, base, this.#byServer.get(serverId)?.get(base), (e) => e.server_id === serverId && match(e), change);
  }

  #update(tx: HistoryTx, base: string, k: number | undefined, match: (e: E) => boolean, change: (e: E) => void): boolean {
    if (k === undefined) return false;
    const name = chunkName(base, k);
    const rows = tx.get<E[]>(name);
    const entry = rows?.find(match);
    if (!rows || !entry) return false;
    change(entry);
    tx.put(name, rows);
    return true;
  }

  /** Whether chunk `k` (a hint) of the conversation holds an entry `match` takes. */
  #find(base: string, k: number | undefined, match: (e: E) => boolean): boolean {
    return k !== undefined && (this.#read<E[]>(chunkName(base, k))?.some(match) ?? false);
  }

  #hint(base: string, k: number, e: E): void {
    if (e.client_id) this.#byClient.set(`${base} ${e.client_id}`, k);
    if (e.server_id) {
      let at = this.#byServer.get(e.server_id);
      if (at === undefined) this.#byServer.set(e.server_id, (at = new Map()));
      if (!at.has(base)) at.set(base, k);
    }
  }
}
