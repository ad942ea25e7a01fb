// A conversation's history in chunks (src/app/history.ts), over a store that behaves as
// the client's (client.ts `#transaction`: a transaction reads its own writes first,
// copies of what is committed, and commits all its writes or none). What is checked is
// what a write costs, not a time: at 10,000 entries a new message, a receipt and a
// removal each write one chunk of at most CHUNK entries (and the small head when a
// chunk starts), where the one-row layout wrote all 10,000 every time.
import { describe, expect, it } from 'vitest';
import { baseOf, CHUNK, chunkName, type Head, History, inRoomOrder, migrate, newest, topPlace } from '../src/app/history.ts';

interface Entry {
  text: string;
  client_id?: string;
  server_id?: string;
  status?: string;
  kind?: string;
}

class Store {
  readonly committed = new Map<string, unknown>();
  readonly history = new History<Entry>((name) => this.committed.get(name) as never);
  writes: [string, unknown][] = [];

  /** One transaction; `fail` drops its writes, as a failed IndexedDB write does. */
  run(fn: (tx: { get<V>(n: string): V | undefined; put(n: string, v: unknown): void }) => void, fail = false): void {
    const staged = new Map<string, unknown>();
    fn({
      get: <V>(n: string) => structuredClone(staged.has(n) ? staged.get(n) : this.committed.get(n)) as V | undefined,
      put: (n, v) => void staged.set(n, v),
    });
    this.writes = [...staged];
    if (fail) return;
    for (const [n, v] of staged) this.committed.set(n, structuredClone(v));
    this.history.changed(staged.keys());
  }
}

const BASE = 'history:abc';
const entry = (i: number): Entry => ({ text: `message ${i}`, client_id: `c${i}`, server_id: `s${i}`, status: 'queued' });

function filled(n: number): Store {
  const store = new Store();
  for (let i = 0; i < n; i++) store.run((tx) => store.history.append(tx, BASE, entry(i)));
  return store;
}

const entriesWritten = (store: Store) => store.writes.reduce((n, [, v]) => n + (Array.isArray(v) ? v.length : 0), 0);

describe('History', () => {
  it('keeps every entry in order, in chunks of at most CHUNK', () => {
    const store = filled(CHUNK * 3 + 5);
    const all = store.history.entries(BASE);
    expect(all.map((e) => e.text)).toEqual(Array.from({ length: CHUNK * 3 + 5 }, (_, i) => `message ${i}`));
    expect(store.committed.get(BASE)).toEqual({ v: 2, chunks: 4 });
    for (let k = 0; k < 4; k++) expect((store.committed.get(chunkName(BASE, k)) as Entry[]).length).toBe(k < 3 ? CHUNK : 5);
  });

  it('writes one chunk per message at 10,000 entries, and the head only when a chunk starts', () => {
    const store = filled(10_000);
    store.run((tx) => store.history.append(tx, BASE, entry(10_000)));
    expect(store.writes.map(([n]) => n)).toEqual([chunkName(BASE, Math.floor(10_000 / CHUNK))]);
    expect(entriesWritten(store)).toBeLessThanOrEqual(CHUNK);
    // The entry that fills a chunk, then the first of the next.
    let n = 10_001;
    while (n % CHUNK !== 0) store.run((tx) => store.history.append(tx, BASE, entry(n++)));
    store.run((tx) => store.history.append(tx, BASE, entry(n)));
    expect(store.writes).toEqual([
      [BASE, { v: 2, chunks: n / CHUNK + 1 } satisfies Head],
      [chunkName(BASE, n / CHUNK), [entry(n)]],
    ]);
    expect(store.history.entries(BASE)).toHaveLength(n + 1);
  });

  it('changes a receipt and a removal in one chunk, found by client id and server id', () => {
    const store = filled(10_000);
    store.run((tx) => expect(store.history.updateClient(tx, BASE, 'c17', (e) => (e.status = 'delivered'))).toBe(true));
    expect(store.writes.map(([n]) => n)).toEqual([chunkName(BASE, 0)]);
    store.run((tx) => expect(store.history.updateServer(tx, BASE, 's9999', (e) => (e.kind = 'removed'))).toBe(true));
    expect(store.writes.map(([n]) => n)).toEqual([chunkName(BASE, Math.floor(9_999 / CHUNK))]);
    const all = store.history.entries(BASE);
    expect(all[17]?.status).toBe('delivered');
    expect(all[9_999]?.kind).toBe('removed');
    expect(store.history.hasClient(BASE, 'c5000')).toBe(true);
    expect(store.history.hasServer(BASE, 's5000')).toBe(true);
    expect(store.history.withServer('s5000')).toEqual([BASE]);
  });

  it('writes nothing for an id it does not hold', () => {
    const store = filled(300);
    store.run((tx) => expect(store.history.updateClient(tx, BASE, 'nope', () => undefined)).toBe(false));
    expect(store.writes).toEqual([]);
    expect(store.history.hasClient(BASE, 'nope')).toBe(false);
    expect(store.history.hasServer('history:other', 's1')).toBe(false);
  });

  it('a hint left by a failed write finds nothing, and the entry written again is found', () => {
    const store = filled(CHUNK); // the next entry starts chunk 1
    store.run((tx) => store.history.append(tx, BASE, entry(999)), true);
    expect(store.history.hasClient(BASE, 'c999')).toBe(false);
    expect(store.history.entries(BASE)).toHaveLength(CHUNK);
    store.run((tx) => store.history.append(tx, BASE, entry(999)));
    expect(store.history.hasClient(BASE, 'c999')).toBe(true);
    store.run((tx) => expect(store.history.updateClient(tx, BASE, 'c999', (e) => (e.status = 'stored'))).toBe(true));
    expect(store.history.entries(BASE).at(-1)?.status).toBe('stored');
  });

  it('reads back its own writes inside a transaction', () => {
    const store = filled(CHUNK - 1);
    store.run((tx) => {
      store.history.append(tx, BASE, entry(1000)); // fills chunk 0
      store.history.append(tx, BASE, entry(1001)); // starts chunk 1
      store.history.updateClient(tx, BASE, 'c1001', (e) => (e.status = 'accepted'));
    });
    const all = store.history.entries(BASE);
    expect(all).toHaveLength(CHUNK + 1);
    expect(all.at(-1)).toEqual({ ...entry(1001), status: 'accepted' });
  });

  it('splits a history written as one array (before chunks) and finds its entries', () => {
    const old = Array.from({ length: 1000 }, (_, i) => entry(i));
    const rows = migrate(BASE, old);
    expect(rows[0]).toEqual([BASE, { v: 2, chunks: Math.ceil(1000 / CHUNK) }]);
    expect(rows.slice(1).flatMap(([, v]) => v as Entry[])).toEqual(old);
    const store = new Store();
    for (const [n, v] of rows) store.committed.set(n, v);
    store.history.learn(BASE);
    expect(store.history.entries(BASE)).toEqual(old);
    store.run((tx) => expect(store.history.updateServer(tx, BASE, 's3', (e) => (e.kind = 'removed'))).toBe(true));
    expect(store.history.entries(BASE)[3]?.kind).toBe('removed');
    expect(migrate(BASE, [])).toEqual([[BASE, { v: 2, chunks: 0 }]]);
  });

  it('names rows of a conversation and shows the newest entries', () => {
    expect(baseOf('history:abc')).toBe('history:abc');
    expect(baseOf('history:abc:12')).toBe('history:abc');
    expect(baseOf('peer:abc')).toBeNull();
    expect(newest([1, 2, 3, 4], 2)).toEqual([3, 4]);
    expect(newest([1, 2], 5)).toEqual([1, 2]);
  });
});

describe('inRoomOrder', () => {
  const e = (text: string, seq?: number) => (seq === undefined ? { text } : { text, seq });
  it('places a late message at its number, and one without a number after those added before it', () => {
    // 1 and 4 came; "mine" was sent (not numbered yet); 2 came late (it waited for its
    // key); 5 came; then "mine" got its number, 6.
    const before = [e('1', 1), e('4', 4), e('mine'), e('2', 2), e('5', 5)];
    expect(inRoomOrder(before).map((x) => x.text)).toEqual(['1', '2', '4', 'mine', '5']);
    const placed = [e('1', 1), e('4', 4), e('mine', 6), e('2', 2), e('5', 5), e('marker')];
    expect(inRoomOrder(placed).map((x) => x.text)).toEqual(['1', '2', '4', '5', 'mine', 'marker']);
  });

  it('returns the same array when it is in order, and keeps the order of entries of one place', () => {
    const inOrder = [e('a'), e('1', 1), e('b'), e('2', 2), e('3', 3)];
    expect(inRoomOrder(inOrder)).toBe(inOrder);
    const ties = [e('x', 2), e('y', 1), e('z', 2)];
    expect(inRoomOrder(ties).map((x) => x.text)).toEqual(['y', 'x', 'z']);
  });

  it('places an entry without a number where the room was when it was added, as store.py does', () => {
    // 5 came; "mine" was sent, then a marker added (both at place 5: topPlace); 6, 7
    // and 8 came; "mine" was numbered 9. The marker stays before 6 (store.py: pos 5),
    // not after "mine" (the room's top once "mine" had its number).
    const mine: { text: string; seq?: number; pos?: number } = { text: 'mine' };
    const room: { text: string; seq?: number; pos?: number }[] = [e('5', 5)];
    mine.pos = topPlace(room, undefined);
    room.push(mine);
    const marker = { text: 'marker', pos: topPlace(room, [mine]) };
    room.push(marker, e('6', 6), e('7', 7), e('8', 8));
    expect([mine.pos, marker.pos]).toEqual([5, 5]);
    mine.seq = 9;
    expect(inRoomOrder(room).map((x) => x.text)).toEqual(['5', 'marker', '6', '7', '8', 'mine']);
    // What the transaction added (in its last chunk) counts too.
    expect(topPlace([e('1', 1)], [e('2', 2), { pos: 4 }])).toBe(4);
  });

  it('orders a room of 10,000 entries received out of order', () => {
    const n = 10_000;
    const shuffled = Array.from({ length: n }, (_, i) => e(`m${i}`, ((i * 7919) % n) + 1));
    const seqs = inRoomOrder(shuffled).map((x) => x.seq);
    expect(seqs).toEqual(Array.from({ length: n }, (_, i) => i + 1));
  });
});
