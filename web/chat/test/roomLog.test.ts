// A private room's cursor (src/app/rooms.ts RoomLogs; docs/protocol.md "Private rooms",
// the rule of client/parley/rooms.py): a push numbered cursor + 1 is taken, a repeat is
// dropped, a gap reads the log after the cursor (one read per room at a time, once more
// if asked meanwhile), and a removed message is passed over by the page's `next`. On
// connect many rooms are read at once (RoomLogs.sync, rooms.py sync_rooms: `POST
// /delivery/v1/rooms/logs`, 100 rooms a call), each page taken the same way.
import { afterEach, describe, expect, it, vi } from 'vitest';

import { Api } from '../src/app/api.ts';
import { LOGS_AT_ONCE, type LogAsk, type LogPage, type LogPages, RoomLogs, aboveCursor, pushKind } from '../src/app/rooms.ts';

interface Msg {
  seq: number;
  text: string;
}

const ROOM = '0123456789abcdef01234567';

/** The server's side: a room's log numbered 1, 2, 3, ... (removed ones kept as numbers,
 * left out of pages), paged as services/delivery/room_log.py pages it. */
class FakeLog {
  readonly log: (Msg & { gone?: boolean })[] = [];
  reads: number[] = []; // the `after` of every page asked for
  limit = 200;
  hold: Promise<void> | null = null; // pages wait for this while set
  fail: Error | null = null;

  add(text: string, gone = false): Msg {
    const m = { seq: this.log.length + 1, text, gone };
    this.log.push(m);
    return { seq: m.seq, text };
  }

  async page(after: number): Promise<LogPage<Msg>> {
    this.reads.push(after);
    if (this.hold) await this.hold;
    if (this.fail) throw this.fail;
    return this.slice(after);
  }

  /** The page after `after` as the log is now. */
  slice(after: number): LogPage<Msg> {
    const got = this.log.slice(after, after + this.limit);
    const last = got.length ? (got[got.length - 1] as Msg).seq : after;
    return {
      messages: got.filter((m) => !m.gone).map(({ seq, text }) => ({ seq, text })),
      next: last,
      more: got.length === this.limit && this.log.length > after + this.limit,
    };
  }
}

/** The client's side: the cursor and what was taken, as ParleyClient keeps them (a take
 * skips what is at or below the cursor and moves it, together, if it is within the take's
 * `start` .. `upto` - 1); every take's `[start, upto]`. */
function device(server: FakeLog) {
  const state = { cursor: 0, taken: [] as number[], failures: [] as unknown[], takes: [] as [number, number][] };
  const logs = new RoomLogs<Msg>({
    cursor: () => state.cursor,
    take: async (_room, messages, start, upto) => {
      state.takes.push([start, upto]);
      await Promise.resolve(); // a transaction: not at once
      for (const m of aboveCursor(state.cursor, messages)) state.taken.push(m.seq);
      if (start <= state.cursor && state.cursor < upto) state.cursor = upto;
    },
    page: (_room, after) => server.page(after),
    pages: () => Promise.reject(new Error('one room: no batch')),
    failed: (_room, error) => void state.failures.push(error),
    batchFailed: (_rooms, error) => void state.failures.push(error),
  });
  return { state, logs };
}

/** Let every read under way finish. */
async function settle(logs: RoomLogs<Msg>): Promise<void> {
  for (let i = 0; i < 100 && logs.reading(ROOM); i++) await new Promise((r) => setTimeout(r, 0));
  expect(logs.reading(ROOM)).toBe(false);
}

describe('what a pushed room_message is to the cursor', () => {
  it('cursor + 1 is the next one; at or below, a repeat; further ahead, a gap', () => {
    expect(pushKind(0, 1)).toBe('next');
    expect(pushKind(7, 8)).toBe('next');
    expect(pushKind(7, 7)).toBe('repeat');
    expect(pushKind(7, 2)).toBe('repeat');
    expect(pushKind(7, 9)).toBe('gap');
    expect(pushKind(0, 5)).toBe('gap');
  });

  it('only the messages above the cursor are taken', () => {
    expect(aboveCursor(3, [{ seq: 2 }, { seq: 3 }, { seq: 4 }, { seq: 6 }]).map((m) => m.seq)).toEqual([4, 6]);
  });
});

describe('a private room cursor (RoomLogs)', () => {
  it('contiguous pushes are taken in order and move the cursor, without reading the log', async () => {
    const server = new FakeLog();
    const { state, logs } = device(server);
    for (const text of ['a', 'b', 'c']) expect(await logs.push(ROOM, server.add(text))).toBe('next');
    expect(state.taken).toEqual([1, 2, 3]);
    expect(state.cursor).toBe(3);
    expect(server.reads).toEqual([]);
  });

  it('a repeat (a push at or below the cursor) is dropped', async () => {
    const server = new FakeLog();
    const { state, logs } = device(server);
    const [one, two] = [server.add('a'), server.add('b')];
    await logs.push(ROOM, one);
    await logs.push(ROOM, two);
    expect(await logs.push(ROOM, two)).toBe('repeat');
    expect(await logs.push(ROOM, one)).toBe('repeat');
    expect(state.taken).toEqual([1, 2]);
    expect(server.reads).toEqual([]);
  });

  it('a gap reads the log after the cursor: the missing ones and the push come in the log order, once', async () => {
    const server = new FakeLog();
    const { state, logs } = device(server);
    await logs.push(ROOM, server.add('a'));
    server.add('lost push 2');
    server.add('lost push 3');
    const four = server.add('d');
    expect(await logs.push(ROOM, four)).toBe('gap');
    await settle(logs);
    expect(server.reads).toEqual([1]);
    expect(state.taken).toEqual([1, 2, 3, 4]);
    expect(state.cursor).toBe(4);
    // The push itself comes again (a resend): a repeat now.
    expect(await logs.push(ROOM, four)).toBe('repeat');
    expect(await logs.push(ROOM, server.add('e'))).toBe('next');
    expect(state.taken).toEqual([1, 2, 3, 4, 5]);
  });

  it("a removed message is never pushed: the gap it leaves is read, and the page's next passes over it", async () => {
    const server = new FakeLog();
    const { state, logs } = device(server);
    await logs.push(ROOM, server.add('a'));
    server.add('removed by its sender', true);
    expect(await logs.push(ROOM, server.add('c'))).toBe('gap');
    await settle(logs);
    expect(state.taken).toEqual([1, 3]);
    expect(state.cursor).toBe(3);
    // The log ends with a removed one: the cursor still goes past it.
    server.add('removed too', true);
    await logs.read(ROOM);
    expect(state.taken).toEqual([1, 3]);
    expect(state.cursor).toBe(4);
    expect(await logs.push(ROOM, server.add('e'))).toBe('next');
    expect(state.taken).toEqual([1, 3, 5]);
  });

  it('reads every page while the log says more, each page taken and the cursor moved to its next', async () => {
    const server = new FakeLog();
    server.limit = 3;
    const { state, logs } = device(server);
    for (let i = 0; i < 8; i++) server.add(`m${i}`, i === 5);
    expect(await logs.read(ROOM)).toBe(7);
    expect(server.reads).toEqual([0, 3, 6]);
    expect(state.taken).toEqual([1, 2, 3, 4, 5, 7, 8]);
    expect(state.cursor).toBe(8);
    expect(await logs.read(ROOM)).toBe(0); // at the end: one empty page
    expect(state.cursor).toBe(8);
  });

  it('one read per room at a time; a gap pushed during it makes it read once more when it ends', async () => {
    const server = new FakeLog();
    const { state, logs } = device(server);
    server.add('a');
    server.add('b');
    let release: () => void = () => undefined;
    server.hold = new Promise<void>((r) => (release = r));
    expect(await logs.push(ROOM, server.add('c'))).toBe('gap'); // read 1 starts, waits
    server.add('d');
    expect(await logs.push(ROOM, server.add('e'))).toBe('gap'); // read 1 under way: no second read now
    const sync = logs.read(ROOM); // a sync meanwhile: the same read, once more after it
    expect(server.reads).toEqual([0]);
    server.hold = null;
    release();
    await sync;
    await settle(logs);
    expect(state.taken).toEqual([1, 2, 3, 4, 5]);
    expect(state.cursor).toBe(5);
    expect(server.reads.length).toBe(2); // the read, and one more
  });

  it('a push of the next one while a page is read is taken once (the page skips it)', async () => {
    const server = new FakeLog();
    const { state, logs } = device(server);
    const one = server.add('a');
    const two = server.add('b');
    let release: () => void = () => undefined;
    server.hold = new Promise<void>((r) => (release = r));
    const reading = logs.read(ROOM);
    await logs.push(ROOM, one); // taken while the page is on its way
    await logs.push(ROOM, two);
    server.hold = null;
    release();
    await reading;
    expect(state.taken).toEqual([1, 2]);
    expect(state.cursor).toBe(2);
  });

  it('a failed read leaves the cursor where it was and says so; the next one reads from there', async () => {
    const server = new FakeLog();
    const { state, logs } = device(server);
    await logs.push(ROOM, server.add('a'));
    server.add('b');
    server.fail = new Error('service unavailable');
    expect(await logs.push(ROOM, server.add('c'))).toBe('gap');
    await settle(logs);
    expect(state.failures).toHaveLength(1);
    expect(state.cursor).toBe(1);
    server.fail = null;
    expect(await logs.read(ROOM)).toBe(2);
    expect(state.taken).toEqual([1, 2, 3]);
    expect(server.reads).toEqual([1, 1]);
  });
});

// -- many rooms at once ----------------------------------------------------------------

/** Room ids: 24 hex digits, `n` in the last ones. */
const room = (n: number) => n.toString(16).padStart(24, '0');

/** The server's side for many rooms: each room's log, the batch route (`POST
 * /delivery/v1/rooms/logs`, services/delivery/routes.py room_logs: pages in the order
 * asked, unknown or refused rooms listed apart, a room asked twice a 422) and the
 * one-room route. It checks that no room is read by two calls at the same time. */
class FakeRooms {
  readonly logs = new Map<string, FakeLog>();
  readonly refuse = new Set<string>();
  calls: LogAsk[][] = [];
  hold: Promise<void> | null = null; // batch answers wait for this while set
  fail: Error | null = null; // batch calls fail while set
  readonly unreached = new Set<string>(); // rooms the answer's byte budget does not reach
  readonly #open = new Map<string, number>(); // room -> calls reading it now
  overlaps: string[] = []; // rooms read by two calls at once

  log(id: string): FakeLog {
    let log = this.logs.get(id);
    if (log === undefined) this.logs.set(id, (log = new FakeLog()));
    return log;
  }

  #enter(ids: string[]): () => void {
    for (const id of ids) {
      const n = (this.#open.get(id) ?? 0) + 1;
      if (n > 1) this.overlaps.push(id);
      this.#open.set(id, n);
    }
    return () => {
      for (const id of ids) this.#open.set(id, (this.#open.get(id) as number) - 1);
    };
  }

  async page(id: string, after: number): Promise<LogPage<Msg>> {
    const leave = this.#enter([id]);
    try {
      return await this.log(id).page(after);
    } finally {
      leave();
    }
  }

  async pages(asks: LogAsk[]): Promise<LogPages<Msg>> {
    this.calls.push(asks.map((a) => ({ ...a })));
    const ids = asks.map((a) => a.room);
    if (ids.length < 1 || ids.length > LOGS_AT_ONCE) throw new Error('validation_failed: 1 to 100 rooms');
    if (new Set(ids).size !== ids.length) throw new Error('validation_failed: a room asked for twice');
    const leave = this.#enter(ids);
    try {
      // The pages as the logs are when the call comes; the answer may come later.
      const pages = asks
        .filter((a) => this.logs.has(a.room) && !this.refuse.has(a.room))
        .map((a) =>
          // Past the answer's byte budget (PARLEY_SYNC_PAGE_BYTES): nothing, `more`, where it was.
          this.unreached.has(a.room)
            ? { room: a.room, messages: [], next: a.after, more: true }
            : { room: a.room, ...(this.logs.get(a.room) as FakeLog).slice(a.after) },
        );
      const refused = ids.filter((id) => !this.logs.has(id) || this.refuse.has(id));
      if (this.hold) await this.hold;
      if (this.fail) throw this.fail;
      return { pages, refused };
    } finally {
      leave();
    }
  }
}

/** The client's side for many rooms: each room's cursor, what was taken (in the order
 * taken), every cursor it had, failures. */
function client(server: FakeRooms) {
  const state = {
    cursors: new Map<string, number>(),
    taken: new Map<string, number[]>(),
    takes: [] as string[], // the room of every take, in order
    moves: new Map<string, number[]>(), // every cursor each room had
    failures: [] as [string, unknown][],
    batchFailures: [] as [string[], unknown][],
    failTake: new Set<string>(), // rooms whose takes fail (the vault refuses)
  };
  const cursor = (id: string) => state.cursors.get(id) ?? 0;
  const logs = new RoomLogs<Msg>({
    cursor,
    take: async (id, messages, start, upto) => {
      state.takes.push(id);
      await Promise.resolve(); // a transaction: not at once
      if (state.failTake.has(id)) throw new Error('quota exceeded');
      // As ParleyClient's #takeRoomMessages: what is above the cursor, and the cursor
      // moved to `upto` if it is within `start` .. `upto` - 1, together.
      const at = cursor(id);
      const taken = state.taken.get(id) ?? [];
      for (const m of aboveCursor(at, messages)) taken.push(m.seq);
      state.taken.set(id, taken);
      if (start <= at && at < upto) state.cursors.set(id, upto);
      state.moves.set(id, [...(state.moves.get(id) ?? []), cursor(id)]);
    },
    page: (id, after) => server.page(id, after),
    pages: (asks) => server.pages(asks),
    failed: (id, error) => void state.failures.push([id, error]),
    batchFailed: (ids, error) => void state.batchFailures.push([ids, error]),
  });
  const taken = (id: string) => state.taken.get(id) ?? [];
  return { state, logs, cursor, taken };
}

/** Rooms 1..n, room k holding k messages. */
function rooms(server: FakeRooms, n: number): string[] {
  const ids: string[] = [];
  for (let k = 1; k <= n; k++) {
    const id = room(k);
    for (let i = 0; i < k; i++) server.log(id).add(`m${i}`);
    ids.push(id);
  }
  return ids;
}

const tick = () => new Promise((r) => setTimeout(r, 0));

/** Let every read of these rooms finish. */
async function settleAll(logs: RoomLogs<Msg>, ids: string[]): Promise<void> {
  for (let i = 0; i < 200 && ids.some((id) => logs.reading(id)); i++) await tick();
  expect(ids.filter((id) => logs.reading(id))).toEqual([]);
}

describe('reading many rooms at once (RoomLogs.sync, POST /delivery/v1/rooms/logs)', () => {
  it('asks 100 rooms a call, each once, with its cursor', async () => {
    const server = new FakeRooms();
    const ids = rooms(server, 250);
    const { state, logs } = client(server);
    state.cursors.set(ids[0] as string, 1);
    state.cursors.set(ids[150] as string, 40);
    const got = await logs.sync([...ids, ids[3] as string, ids[120] as string]); // twice: asked once
    expect(server.calls.map((c) => c.length)).toEqual([100, 100, 50]);
    expect(server.calls.flat().map((a) => a.room)).toEqual(ids);
    expect(server.calls[0]?.[0]).toEqual({ room: ids[0], after: 1 });
    expect(server.calls[1]?.[50]).toEqual({ room: ids[150], after: 40 });
    expect(server.calls[2]?.[0]).toEqual({ room: ids[200], after: 0 });
    expect(got).toBe((250 * 251) / 2 - 1 - 40);
    expect(state.failures).toEqual([]);
    // Alone only the rooms with more than a page (200): from the page's next.
    expect(ids.filter((id) => server.log(id).reads.length > 0)).toEqual(ids.slice(200));
    expect(ids.slice(200).every((id) => JSON.stringify(server.log(id).reads) === '[200]')).toBe(true);
    expect(server.overlaps).toEqual([]);
    expect(ids.every((id) => !logs.reading(id))).toBe(true);
  });

  it('no call for no rooms, and 100 rooms are one call', async () => {
    const server = new FakeRooms();
    const { logs } = client(server);
    expect(await logs.sync([])).toBe(0);
    expect(server.calls).toEqual([]);
    await logs.sync(rooms(server, LOGS_AT_ONCE));
    expect(server.calls.map((c) => c.length)).toEqual([100]);
  });

  it('takes the pages in the order of the answer and moves each cursor to its next', async () => {
    const server = new FakeRooms();
    const [a, b, c] = rooms(server, 3) as [string, string, string];
    server.log(b).add('removed by its sender', true); // b's log: 1, 2, (3 removed)
    const { state, logs, cursor, taken } = client(server);
    state.cursors.set(c, 3); // c: nothing new
    expect(await logs.sync([c, a, b])).toBe(3);
    expect(server.calls).toEqual([[{ room: c, after: 3 }, { room: a, after: 0 }, { room: b, after: 0 }]]);
    expect(state.takes).toEqual([c, a, b]);
    expect([taken(a), taken(b), taken(c)]).toEqual([[1], [1, 2], []]);
    expect([cursor(a), cursor(b), cursor(c)]).toEqual([1, 3, 3]); // b's next passes over the removed one
    // Then a push of the next one of each is taken as usual.
    expect(await logs.push(b, server.log(b).add('b4'))).toBe('next');
    expect(taken(b)).toEqual([1, 2, 4]);
  });

  it('a page that says more is read on alone from its next, to the end of the log', async () => {
    const server = new FakeRooms();
    const [a, b] = rooms(server, 2) as [string, string];
    const big = room(99);
    server.log(big).limit = 3;
    for (let i = 0; i < 8; i++) server.log(big).add(`m${i}`, i === 4);
    const { logs, cursor, taken } = client(server);
    expect(await logs.sync([a, big, b])).toBe(1 + 7 + 2);
    expect(server.log(big).reads).toEqual([3, 6]); // the batch page covered 1..3
    expect(server.log(a).reads).toEqual([]);
    expect(server.log(b).reads).toEqual([]);
    expect(taken(big)).toEqual([1, 2, 3, 4, 6, 7, 8]);
    expect(cursor(big)).toBe(8);
    expect(logs.reading(big)).toBe(false);
  });

  it('a room the answer did not reach (more, nothing, next where it was) is read on alone', async () => {
    const server = new FakeRooms();
    const [a, b] = rooms(server, 2) as [string, string];
    server.unreached.add(b);
    const { state, logs, cursor, taken } = client(server);
    state.cursors.set(b, 1);
    expect(await logs.sync([a, b])).toBe(1 + 1);
    expect(server.log(b).reads).toEqual([1]); // alone, from its cursor
    expect(taken(b)).toEqual([2]);
    expect(cursor(b)).toBe(2);
    expect(logs.reading(b)).toBe(false);
  });

  it('a refused room is left as it is: no take, no read of its own, no failure', async () => {
    const server = new FakeRooms();
    const [a, gone] = rooms(server, 2) as [string, string];
    server.refuse.add(gone);
    const stranger = room(77); // no such room
    const { state, logs, cursor, taken } = client(server);
    state.cursors.set(gone, 1);
    expect(await logs.sync([gone, a, stranger])).toBe(1);
    expect(state.takes).toEqual([a]);
    expect([cursor(gone), cursor(stranger)]).toEqual([1, 0]);
    expect([taken(gone), taken(stranger)]).toEqual([[], []]);
    expect(server.log(gone).reads).toEqual([]);
    expect(state.failures).toEqual([]);
    expect(state.batchFailures).toEqual([]);
    expect(logs.reading(gone) || logs.reading(stranger)).toBe(false);
  });

  it('a failed call leaves its rooms as they were, says so once, and the next chunk is still read', async () => {
    const server = new FakeRooms();
    const ids = rooms(server, 150);
    const { state, logs, cursor } = client(server);
    state.cursors.set(ids[10] as string, 4);
    const pages = server.pages.bind(server);
    let calls = 0;
    server.pages = (asks) => (++calls === 1 ? Promise.reject(new Error('service unavailable')) : pages(asks));
    expect(await logs.sync(ids)).toBe(((101 + 150) * 50) / 2);
    expect(state.batchFailures.map(([r, e]) => [r, (e as Error).message])).toEqual([[ids.slice(0, 100), 'service unavailable']]);
    expect(state.failures).toEqual([]); // not once per room
    expect(ids.slice(0, 100).every((id) => cursor(id) === (id === ids[10] ? 4 : 0))).toBe(true);
    expect(ids.slice(100).every((id, i) => cursor(id) === 101 + i)).toBe(true);
    expect(ids.every((id) => !logs.reading(id))).toBe(true);
    // The next sync reads them from where they were.
    server.pages = pages;
    await logs.sync(ids);
    expect(server.calls.at(-2)?.[10]).toEqual({ room: ids[10], after: 4 });
    expect(ids.every((id, i) => cursor(id) === i + 1)).toBe(true);
  });

  it('a failed take fails that room alone', async () => {
    const server = new FakeRooms();
    const [a, b] = rooms(server, 2) as [string, string];
    const { state, logs, cursor } = client(server);
    state.failTake.add(a);
    expect(await logs.sync([a, b])).toBe(2);
    expect(state.failures.map(([r]) => r)).toEqual([a]);
    expect([cursor(a), cursor(b)]).toEqual([0, 2]);
    expect(logs.reading(a)).toBe(false);
  });

  it('a room being read is left out of the call; one read meanwhile is left out of the next chunk', async () => {
    const server = new FakeRooms();
    const ids = rooms(server, 150);
    const [busy, later] = [ids[5] as string, ids[120] as string];
    const { logs, cursor, taken } = client(server);
    let release: () => void = () => undefined;
    server.log(busy).hold = new Promise<void>((r) => (release = r));
    const reading = logs.read(busy); // its own read, waiting for its page
    let answer: () => void = () => undefined;
    server.hold = new Promise<void>((r) => (answer = r));
    const sync = logs.sync(ids);
    await tick();
    expect(server.calls[0]?.map((a) => a.room)).toEqual(ids.slice(0, 100).filter((id) => id !== busy));
    // While the first call runs, a gap in a room of the second chunk starts its own read.
    let releaseLater: () => void = () => undefined;
    server.log(later).hold = new Promise<void>((r) => (releaseLater = r));
    expect(await logs.push(later, { seq: 50, text: 'pushed past a gap' })).toBe('gap');
    server.hold = null;
    answer();
    await sync;
    expect(server.calls[1]?.map((a) => a.room)).toEqual(ids.slice(100).filter((id) => id !== later));
    expect(server.log(later).reads).toEqual([0]);
    release();
    releaseLater();
    await reading;
    await settleAll(logs, ids);
    // Each read once more after the sync that left it out, from where it ended.
    expect(server.log(busy).reads).toEqual([0, 6]);
    expect(server.log(later).reads).toEqual([0, 121]);
    expect(ids.every((id, i) => cursor(id) === i + 1 && taken(id).length === i + 1)).toBe(true);
    expect(server.overlaps).toEqual([]);
  });
});

describe('a sync that meets a read under way (rooms.py _read_soon)', () => {
  it("a room whose own read is under way is read once more after it: what was stored after the read's page was made comes", async () => {
    // Before: the room was left out of the sync and never read again; a message stored
    // after its read had passed the log's end (its push lost: the reason of the sync)
    // waited for the next push or reconnect.
    const server = new FakeRooms();
    const [a] = rooms(server, 1) as [string];
    const log = server.log(a);
    let deliver: () => void = () => undefined;
    const answered = new Promise<void>((r) => (deliver = r));
    const page = log.page.bind(log);
    log.page = async (after) => {
      log.page = page; // the first page alone is late
      log.reads.push(after);
      const made = log.slice(after); // made now, on its way until `deliver`
      await answered;
      return made;
    };
    const { logs, cursor, taken } = client(server);
    const reading = logs.read(a); // a gap's read: its page is made
    await tick();
    log.add('stored meanwhile'); // its push lost (offline, a resync)
    expect(await logs.sync([a])).toBe(0); // the sync for it: a is being read, left out
    expect(server.calls).toEqual([]);
    deliver();
    await reading;
    await settleAll(logs, [a]);
    expect(log.reads).toEqual([0, 1]);
    expect(taken(a)).toEqual([1, 2]);
    expect(cursor(a)).toBe(2);
    expect(server.overlaps).toEqual([]);
  });

  it('a failed call does not drop a read asked for while it ran (a gap pushed): that room is read alone after it', async () => {
    // Before: the failed call's rooms were let go with their asked reads cleared: the
    // gap's messages waited for the next push or reconnect.
    const server = new FakeRooms();
    const [a, b] = rooms(server, 2) as [string, string];
    const { state, logs, cursor, taken } = client(server);
    let answer: () => void = () => undefined;
    server.hold = new Promise<void>((r) => (answer = r));
    server.fail = new Error('service unavailable');
    const sync = logs.sync([a, b]);
    await tick();
    server.log(b).add('b3');
    expect(await logs.push(b, server.log(b).add('b4'))).toBe('gap'); // waits for the call
    server.hold = null;
    answer();
    expect(await sync).toBe(0);
    await settleAll(logs, [a, b]);
    expect(state.batchFailures).toHaveLength(1);
    expect(server.log(b).reads).toEqual([0]);
    expect(taken(b)).toEqual([1, 2, 3, 4]);
    expect([cursor(a), cursor(b)]).toEqual([0, 4]); // a, not asked for, as it was
    expect(server.log(a).reads).toEqual([]);
  });
});

describe('a batch page and a read of the same room (one read per room, each message once)', () => {
  it('a gap pushed while the call runs waits for the batch page, then reads once from the cursor', async () => {
    const server = new FakeRooms();
    const [a, b] = rooms(server, 2) as [string, string];
    const { state, logs, cursor, taken } = client(server);
    let answer: () => void = () => undefined;
    server.hold = new Promise<void>((r) => (answer = r));
    const sync = logs.sync([a, b]);
    await tick();
    expect(logs.reading(b)).toBe(true); // held by the call
    // Stored after the batch page was made: 3 and 4 (the push of 3 lost), 4 pushed.
    server.log(b).add('b3');
    expect(await logs.push(b, server.log(b).add('b4'))).toBe('gap');
    const asked = logs.read(b); // a read asked for meanwhile: the same one
    await tick();
    expect(server.log(b).reads).toEqual([]); // no read of its own beside the call
    server.hold = null;
    answer();
    await sync;
    expect(await asked).toBe(4); // the batch page's 2, and the read on's 2
    expect(server.log(b).reads).toEqual([2]); // once more, from the cursor the page left
    expect(taken(b)).toEqual([1, 2, 3, 4]);
    expect(state.moves.get(b)).toEqual([2, 4]);
    expect(cursor(b)).toBe(4);
    expect(server.overlaps).toEqual([]);
    expect(logs.reading(b)).toBe(false);
  });

  it('pushes taken while the call runs: the late page neither takes them again nor moves the cursor back', async () => {
    const server = new FakeRooms();
    const [a, b] = rooms(server, 2) as [string, string];
    const { state, logs, cursor, taken } = client(server);
    state.cursors.set(b, 1);
    let answer: () => void = () => undefined;
    server.hold = new Promise<void>((r) => (answer = r));
    const sync = logs.sync([a, b]); // b's page: 2, next 2
    await tick();
    // The next ones are pushed and taken while the answer is on its way.
    expect(await logs.push(b, { seq: 2, text: 'm1' })).toBe('next');
    expect(await logs.push(b, server.log(b).add('b3'))).toBe('next');
    expect(await logs.push(b, server.log(b).add('b4'))).toBe('next');
    expect(cursor(b)).toBe(4);
    server.hold = null;
    answer();
    expect(await sync).toBe(1 + 1); // a's 1, b's page held 2 (already taken: skipped)
    expect(taken(b)).toEqual([2, 3, 4]);
    expect(cursor(b)).toBe(4); // not back to the page's next, 2
    expect(state.moves.get(b)).toEqual([2, 3, 4, 4]);
    expect(server.log(b).reads).toEqual([]);
  });

  it('a room read on after more, with pushes and a gap meanwhile: every message once, the cursor only forward', async () => {
    const server = new FakeRooms();
    const big = room(1);
    const log = server.log(big);
    log.limit = 2;
    for (let i = 1; i <= 5; i++) log.add(`m${i}`);
    const { state, logs, cursor, taken } = client(server);
    let answer: () => void = () => undefined;
    server.hold = new Promise<void>((r) => (answer = r));
    const sync = logs.sync([big]); // its page: 1, 2 and more
    await tick();
    expect(await logs.push(big, log.add('m6'))).toBe('gap'); // wait for the call
    let release: () => void = () => undefined;
    log.hold = new Promise<void>((r) => (release = r));
    server.hold = null;
    answer();
    for (let i = 0; i < 20 && log.reads.length === 0; i++) await tick();
    expect(log.reads).toEqual([2]); // read on alone, from the page's next
    // While that page is on its way: a push of the next one, and one past a gap.
    expect(await logs.push(big, { seq: 3, text: 'm3' })).toBe('next');
    expect(await logs.push(big, log.add('m7'))).toBe('gap');
    log.hold = null;
    release();
    await sync;
    await settleAll(logs, [big]);
    expect(taken(big)).toEqual([1, 2, 3, 4, 5, 6, 7]);
    expect(cursor(big)).toBe(7);
    const moves = state.moves.get(big) ?? [];
    expect(moves).toEqual([...moves].sort((x, y) => x - y));
    expect(server.overlaps).toEqual([]);
  });

  it('two syncs at once (connect and resync) read each room once', async () => {
    const server = new FakeRooms();
    const ids = rooms(server, 3);
    const { logs, taken } = client(server);
    let answer: () => void = () => undefined;
    server.hold = new Promise<void>((r) => (answer = r));
    const first = logs.sync(ids);
    const second = logs.sync(ids); // every room held by the first: no call
    server.hold = null;
    answer();
    await Promise.all([first, second]);
    expect(server.calls).toHaveLength(1);
    expect(ids.map((id) => taken(id).length)).toEqual([1, 2, 3]);
  });
});

describe('a cursor put back (a sender key for messages not kept past MAX_PENDING: client.ts #rereadUnkept)', () => {
  // The client puts the cursor back before the first message it could not keep and asks
  // for a read; a take of a read, batch or push under way then (its messages from further
  // on: `start` above the cursor) must leave it there, or those messages are skipped for
  // good (rooms.py `_take`'s `start`).
  it("a room's own read under way: its page's take leaves the cursor put back, and the read reads once more from it", async () => {
    const server = new FakeLog();
    const { state, logs } = device(server);
    for (let i = 1; i <= 4; i++) await logs.push(ROOM, server.add(`m${i}`));
    server.add('m5');
    let release: () => void = () => undefined;
    server.hold = new Promise<void>((r) => (release = r));
    const reading = logs.read(ROOM); // after 4
    await Promise.resolve();
    state.cursor = 2; // put back (in the key's transaction), then a read asked for
    expect(logs.read(ROOM)).toBe(reading); // the one under way, once more after it
    server.hold = null;
    release();
    expect(await reading).toBe(1 + 3);
    expect(server.reads).toEqual([4, 2]);
    expect(state.takes.slice(-2)).toEqual([
      [4, 5],
      [2, 5],
    ]);
    expect(state.taken.slice(4)).toEqual([5, 3, 4, 5]); // (what is held already the client passes over by its server_id)
    expect(state.cursor).toBe(5);
  });

  it('a push taken as the next one while the cursor goes back does not move it on', async () => {
    const server = new FakeLog();
    const { state, logs } = device(server);
    for (let i = 1; i <= 4; i++) await logs.push(ROOM, server.add(`m${i}`));
    const push = logs.push(ROOM, server.add('m5')); // the next one: its take's transaction waits
    state.cursor = 2;
    expect(await push).toBe('next');
    expect(state.takes.at(-1)).toEqual([4, 5]);
    expect(state.cursor).toBe(2);
    expect(await logs.read(ROOM)).toBe(3);
    expect(server.reads).toEqual([2]);
    expect(state.cursor).toBe(5);
  });

  it('a batch read under way: its page leaves the cursor put back, and the room is read on alone from it', async () => {
    const server = new FakeRooms();
    const [a, b] = rooms(server, 2) as [string, string];
    for (let i = 3; i <= 5; i++) server.log(b).add(`b${i}`);
    const { state, logs, cursor, taken } = client(server);
    state.cursors.set(b, 4);
    let answer: () => void = () => undefined;
    server.hold = new Promise<void>((r) => (answer = r));
    const sync = logs.sync([a, b]); // b's page: 5, next 5
    await tick();
    state.cursors.set(b, 2); // put back, then a read asked for: held by the call
    const asked = logs.read(b);
    server.hold = null;
    answer();
    await sync;
    expect(await asked).toBe(1 + 3);
    expect(server.calls).toEqual([[{ room: a, after: 0 }, { room: b, after: 4 }]]);
    expect(server.log(b).reads).toEqual([2]); // alone, from the cursor put back
    expect(taken(b)).toEqual([5, 3, 4, 5]);
    expect(state.moves.get(b)).toEqual([2, 5]); // the page's take left it at 2
    expect(cursor(b)).toBe(5);
    expect(server.overlaps).toEqual([]);
    expect(logs.reading(b)).toBe(false);
  });
});

describe('Api.roomLogs (POST /delivery/v1/rooms/logs)', () => {
  afterEach(() => void vi.unstubAllGlobals());

  it('posts each room with its cursor, since and limit, and gives the answer as it is', async () => {
    const answer = { pages: [{ room: room(1), messages: [], next: 4, more: false }], refused: [room(2)] };
    const calls: [string, RequestInit][] = [];
    vi.stubGlobal('fetch', async (url: string, init: RequestInit) => {
      calls.push([url, init]);
      return new Response(JSON.stringify(answer), { status: 200, headers: { 'Content-Type': 'application/json' } });
    });
    const api = new Api();
    api.token = 'token';
    const got = await api.roomLogs([{ room: room(1), after: 4 }, { room: room(2), after: 0 }], 1700000000000, 200);
    expect(got).toEqual(answer);
    const [url, init] = calls[0] as [string, RequestInit];
    expect([url, init.method]).toEqual(['/delivery/v1/rooms/logs', 'POST']);
    expect((init.headers as Record<string, string>)['Authorization']).toBe('Bearer token');
    expect(JSON.parse(init.body as string)).toEqual({
      rooms: [{ room: room(1), after: 4 }, { room: room(2), after: 0 }],
      since: 1700000000000,
      limit: 200,
    });
  });
});
