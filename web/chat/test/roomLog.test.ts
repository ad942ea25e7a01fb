// A private room's cursor (src/app/rooms.ts RoomLogs; docs/protocol.md "Private rooms",
// the rule of client/parley/rooms.py): a push numbered cursor + 1 is taken, a repeat is
// dropped, a gap reads the log after the cursor (one read per room at a time, once more
// if asked meanwhile), and a removed message is passed over by the page's `next`.
import { describe, expect, it } from 'vitest';

import { type LogPage, RoomLogs, aboveCursor, pushKind } from '../src/app/rooms.ts';

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
 * skips what is at or below the cursor and moves it, together). */
function device(server: FakeLog) {
  const state = { cursor: 0, taken: [] as number[], failures: [] as unknown[] };
  const logs = new RoomLogs<Msg>({
    cursor: () => state.cursor,
    take: async (_room, messages, upto) => {
      await Promise.resolve(); // a transaction: not at once
      for (const m of aboveCursor(state.cursor, messages)) state.taken.push(m.seq);
      state.cursor = Math.max(state.cursor, upto);
    },
    page: (_room, after) => server.page(after),
    failed: (_room, error) => void state.failures.push(error),
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
