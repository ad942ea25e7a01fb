// A mention opened from the list, the pure rules of web/chat/src/app/rooms.ts: a public
// room's post looked for in earlier pages of its timeline (findPost, against a server
// paging as services/rooms/timeline.py `timeline_page` does), and what the room's
// status line says when a post or a private room's message cannot be shown. And the
// public timeline as the room view holds it: the gap after a reconnect filled
// (readGap, one fill at a time: oneAtATime), and the newest posts kept as live ones
// come, "Load earlier messages" reaching the others (Feed).
//
// Vitest, with the rest of web/chat's unit tests (`npm run test:node`).
import { describe, expect, it } from 'vitest';

import { SHOWN } from '../src/app/history.ts';
import {
  cutFeed,
  emptyFeed,
  type Feed,
  feedReading,
  findNote,
  findPost,
  heldNote,
  JUMP_MAX_MESSAGES,
  JUMP_MAX_PAGES,
  JUMP_PAGE,
  oneAtATime,
  readDownTo,
  readGap,
  STALLED_GIVE_UP_MS,
  type TimelinePage,
  withEarlier,
  withPosts,
} from '../src/app/rooms.ts';

interface Post {
  seq: number;
  text: string;
  marker?: string | null;
}

/** A room whose posts are 1..head but the `holes` (a seq with no post), paged as the
 * rooms service does: newest first from `before` − 1, handed back oldest first (as
 * ParleyClient.timeline does), `nextBefore` where the next older page starts. Numbers
 * `inflight` (taken, not written yet) as services/rooms/timeline.py `timeline_page`
 * treats them: a page from the newest leaves out those above its first message; any
 * page ends before one below a message it lists, or (asked `before`) before one it
 * meets first, empty then with `nextBefore === before`. */
function room(head: number, holes: number[] = [], markers: Record<number, string> = {}, inflight: Set<number> = new Set()) {
  const calls: (number | null)[] = [];
  const read = async (before: number | null, limit = JUMP_PAGE): Promise<TimelinePage<Post>> => {
    calls.push(before);
    const fromHead = before === null || before > head;
    let cursor = before === null ? head : Math.min(before - 1, head);
    const found: Post[] = [];
    while (cursor >= 1 && found.length < limit) {
      if (inflight.has(cursor)) {
        if (found.length || !fromHead) break; // the page ends before it
      } else if (!holes.includes(cursor)) found.push({ seq: cursor, text: `post ${cursor}`, marker: markers[cursor] ?? null });
      cursor -= 1;
    }
    return { messages: found.reverse(), nextBefore: cursor >= 1 ? cursor + 1 : null };
  };
  return { read, calls };
}

/** A wait that takes no time: each one recorded; `then(n)` runs after the n-th (a
 * number in flight written, say). */
function waits(then: (n: number) => void = () => undefined) {
  const done: number[] = [];
  const wait = async (ms: number): Promise<void> => {
    done.push(ms);
    then(done.length);
  };
  return { wait, done };
}

/** What the room's view holds after opening: the newest page of 50. */
async function opened(r: ReturnType<typeof room>) {
  const first = await r.read(null, 50);
  r.calls.length = 0;
  return first;
}

/** findPost with the view's merge: the posts the view holds afterwards, and where
 * "Load earlier messages" goes on. */
async function find(
  r: ReturnType<typeof room>,
  seq: number,
  extra: { maxPages?: number; maxMessages?: number; stop?: () => boolean; wait?: (ms: number) => Promise<void> } = {},
) {
  const first = await opened(r);
  const view = new Map(first.messages.map((m) => [m.seq, m]));
  let nextBefore = first.nextBefore;
  const pages: boolean[] = [];
  const result = await findPost({
    seq,
    loaded: first.messages,
    nextBefore,
    read: (before) => r.read(before),
    onPage: (page, older) => {
      pages.push(older);
      for (const m of page.messages) view.set(m.seq, m);
      if (older) nextBefore = page.nextBefore;
    },
    ...extra,
  });
  return { result, view, nextBefore, pages };
}

describe('findPost: a public post not loaded is looked for in earlier pages', () => {
  it('the limits are 50 pages of 200 (the rooms service\'s PAGE_MAX), 10,000 messages', () => {
    expect([JUMP_PAGE, JUMP_MAX_PAGES, JUMP_MAX_MESSAGES]).toEqual([200, 50, 10_000]);
  });

  it('a post already loaded is found without a request', async () => {
    const r = room(120);
    const { result, pages } = await find(r, 100);
    expect(result).toEqual({ outcome: 'found', pages: 0, read: 0 });
    expect(r.calls).toEqual([]);
    expect(pages).toEqual([]);
  });

  it('an older one: pages read back from where "Load earlier messages" goes on until one holds it', async () => {
    const r = room(1000); // loaded: 951..1000
    const { result, view, nextBefore, pages } = await find(r, 5);
    expect(r.calls).toEqual([951, 751, 551, 351, 151]);
    expect(result).toEqual({ outcome: 'found', pages: 5, read: 950 }); // 4 × 200 + the last 150
    expect(pages).toEqual([true, true, true, true, true]);
    expect(view.has(5) && view.has(1) && view.size === 1000).toBe(true); // no gap
    expect(nextBefore).toBeNull(); // that page reached the start: nothing earlier
  });

  it('the page holding it is the last one read, and "Load earlier messages" goes on from there', async () => {
    const r = room(1000);
    const { result, nextBefore, view } = await find(r, 700);
    expect(r.calls).toEqual([951, 751]);
    expect(result.outcome).toBe('found');
    expect(nextBefore).toBe(551);
    expect(Math.min(...view.keys())).toBe(551);
  });

  it('a post deleted or removed by a moderator is still in the timeline (with its marker) and is found', async () => {
    const r = room(300, [], { 10: 'removed_by_moderator', 11: 'deleted_by_author' });
    for (const seq of [10, 11]) {
      const { result, view } = await find(r, seq);
      expect(result.outcome).toBe('found');
      expect(view.get(seq)?.marker).toBe(seq === 10 ? 'removed_by_moderator' : 'deleted_by_author');
    }
  });

  it('no such post (a hole): missing once the loaded part covers its place, nothing more read', async () => {
    const r = room(1000, [600]);
    const { result } = await find(r, 600);
    expect(result.outcome).toBe('missing');
    expect(r.calls).toEqual([951, 751]); // 751 took it down to 551: not read further
  });

  it('a hole inside the first page: missing at once', async () => {
    const r = room(100, [80]);
    const { result } = await find(r, 80);
    expect(result).toEqual({ outcome: 'missing', pages: 0, read: 0 });
    expect(r.calls).toEqual([]);
  });

  it('the start reached without it: missing', async () => {
    const r = room(260, [1, 2, 3]);
    const { result, nextBefore } = await find(r, 2);
    expect(result.outcome).toBe('missing');
    expect(r.calls).toEqual([211, 11]);
    expect(nextBefore).toBeNull();
  });

  it('a room of one page: nothing earlier to read', async () => {
    const r = room(30, [7]);
    const { result } = await find(r, 7);
    expect(result.outcome).toBe('missing');
    expect(r.calls).toEqual([]);
  });

  it('gives up after 50 pages, 10,000 messages read, and says so', async () => {
    const r = room(20_000);
    const { result, nextBefore } = await find(r, 3);
    expect(result).toEqual({ outcome: 'limit', pages: 50, read: 10_000 });
    expect(r.calls.length).toBe(50);
    expect(nextBefore).toBe(19_951 - 10_000); // "Load earlier messages" goes on from there
    expect(findNote(result)).toBe('That message was not found in the 10000 earlier messages read: "Load earlier messages" goes further back.');
  });

  it('gives up at the first of the two limits reached', async () => {
    const byPages = room(5000);
    expect((await find(byPages, 1, { maxPages: 3 })).result).toEqual({ outcome: 'limit', pages: 3, read: 600 });
    expect(byPages.calls.length).toBe(3);
    const byMessages = room(5000);
    expect((await find(byMessages, 1, { maxMessages: 450 })).result).toEqual({ outcome: 'limit', pages: 3, read: 600 });
    const found = room(5000);
    expect((await find(found, 4400, { maxPages: 3 })).result.outcome).toBe('found'); // within the limits
  });

  it('a post newer than every loaded one (its live frame missed): the newest page is read again', async () => {
    const r = room(200);
    const first = await r.read(null, 50); // the view opened at 151..200
    r.calls.length = 0;
    const grown = room(230);
    const pages: boolean[] = [];
    const result = await findPost({
      seq: 220,
      loaded: first.messages,
      nextBefore: first.nextBefore,
      read: (before) => grown.read(before),
      onPage: (_page, older) => pages.push(older),
    });
    expect(result.outcome).toBe('found');
    expect(grown.calls).toEqual([null]);
    expect(pages).toEqual([false]); // not a continuation: "Load earlier messages" stays where it was
  });

  it('an empty room when opened: the newest page is read', async () => {
    const grown = room(3);
    const result = await findPost({ seq: 2, loaded: [], nextBefore: null, read: (b) => grown.read(b), onPage: () => undefined });
    expect(result.outcome).toBe('found');
  });

  it('called off (another room, another mention): stops after the page in flight, which is not merged', async () => {
    const r = room(1000);
    let reads = 0;
    const { result, pages } = await find(r, 5, { stop: () => ++reads >= 2 });
    expect(result.outcome).toBe('stopped');
    expect(r.calls.length).toBe(2);
    expect(pages).toEqual([true]); // the first page only
    expect(findNote(result)).toBe('');
  });

  it('a page that never goes further back is asked again, then given up on after ~15 s (no endless loop, not "missing")', async () => {
    let calls = 0;
    const w = waits();
    const result = await findPost<Post>({
      seq: 5,
      loaded: [{ seq: 100, text: 'x' }],
      nextBefore: 100,
      read: async () => {
        calls += 1;
        return { messages: [], nextBefore: 100 };
      },
      onPage: () => undefined,
      wait: w.wait,
    });
    expect(result).toEqual({ outcome: 'pending', pages: 0, read: 0 });
    expect(w.done).toEqual([250, 500, 1000, 2000, 2000, 2000, 2000, 2000, 2000, 2000]);
    expect(STALLED_GIVE_UP_MS).toBe(15_000);
    expect(calls).toBe(w.done.length + 1);
    expect(findNote(result)).toBe('That message cannot be reached yet: a later message is still being sent. Open it again in a moment.');
  });

  it('an older post below a number still being written: the page held back is asked again until it goes on, and the post is found', async () => {
    // Review finding: the page before 901 came back empty with nextBefore 901 (post 900
    // in flight) and the search said "That message is not in the room's timeline any more."
    const inflight = new Set([900]);
    const r = room(1000, [], {}, inflight);
    const w = waits((n) => n === 2 && inflight.clear()); // written during the second wait
    const { result, view, nextBefore } = await find(r, 5, { wait: w.wait });
    expect(result.outcome).toBe('found');
    expect(w.done).toEqual([250, 500]);
    expect(r.calls).toEqual([951, 901, 901, 901, 701, 501, 301, 101]);
    expect(view.size).toBe(1000); // no gap
    expect(nextBefore).toBeNull();
  });

  it('called off while a page is held back: stopped, nothing more read', async () => {
    const r = room(1000, [], {}, new Set([900]));
    let off = false;
    const w = waits(() => (off = true));
    const { result } = await find(r, 5, { wait: w.wait, stop: () => off });
    expect(result.outcome).toBe('stopped');
    expect(r.calls).toEqual([951, 901, 901]);
  });

  it('a failed read rejects (the view shows the error)', async () => {
    await expect(
      findPost<Post>({
        seq: 5,
        loaded: [{ seq: 100, text: 'x' }],
        nextBefore: 100,
        read: () => Promise.reject(new Error('rate_limited')),
        onPage: () => undefined,
      }),
    ).rejects.toThrow('rate_limited');
  });
});

describe('what the status line says', () => {
  it('of a public post', () => {
    expect(findNote({ outcome: 'found', pages: 2, read: 400 })).toBe('');
    expect(findNote({ outcome: 'missing', pages: 1, read: 10 })).toBe("That message is not in the room's timeline any more.");
    expect(findNote({ outcome: 'limit', pages: 50, read: 10_000 })).toContain('not found in the 10000 earlier messages read');
  });

  it("of a private room's message this browser holds, waits for, or never got", () => {
    expect(heldNote('held')).toBe('');
    expect(heldNote('pending')).toBe("That message is on this browser but cannot be read yet: it waits for its sender's key.");
    expect(heldNote('absent')).toMatch(/^That message is not on this browser: .* sent before this browser joined the room\)\.$/);
  });
});

describe('posts written while the view missed their live frames (offline, a resync)', () => {
  // Audit finding: the view never read its timeline again after a reconnect, so posts
  // 101-600 never showed, and a mention of post 150 read only the newest page (401-600)
  // and said the post was gone.
  it('a jump to a post in the gap pages down from the newest until it holds it', async () => {
    const r = room(600);
    const loaded = (await r.read(101)).messages.slice(-50); // 51..100: what was shown
    const view = new Map(loaded.map((m) => [m.seq, m]));
    const result = await findPost<Post>({
      seq: 150,
      loaded,
      nextBefore: 51,
      read: (before) => r.read(before, 200),
      onPage: (page) => {
        for (const m of page.messages) view.set(m.seq, m);
      },
    });
    expect(result.outcome).toBe('found');
    expect(view.has(150)).toBe(true);
    expect(r.calls.slice(-3)).toEqual([null, 401, 201]);
  });

  it('the gap is read down to what is shown, and no further', async () => {
    const r = room(600);
    const got = new Set<number>();
    const down = await readDownTo<Post>({ top: 100, read: (before) => r.read(before, 200), onPage: (page) => page.messages.forEach((m) => got.add(m.seq)) });
    expect(down.outcome).toBe('reached');
    // Three pages of 200 (401-600, 201-400, 1-200): the last one meets post 101.
    expect(r.calls).toEqual([null, 401, 201]);
    expect(got.size).toBe(600);
  });

  it('a post newer than every loaded one but not in the gap is missing', async () => {
    const r = room(600, [150]);
    const loaded = (await r.read(101)).messages.slice(-50);
    const result = await findPost<Post>({ seq: 150, loaded, nextBefore: 51, read: (before) => r.read(before, 200), onPage: () => undefined });
    expect(result.outcome).toBe('missing');
  });
});

describe("a public room's gap filled after a reconnect or a resync (readGap, oneAtATime)", () => {
  it('a room that showed no post reads its newest page: posts written while offline show, and the earlier ones are reachable', async () => {
    // Before: the fill returned at once on an empty timeline (nextBefore null): posts
    // written while offline in a room that had none never showed.
    const r = room(600);
    let feed: Feed<Post> = emptyFeed();
    const cut = await readGap<Post>({ loaded: feed.posts, read: (before) => r.read(before, JUMP_PAGE), onPage: (page) => (feed = withPosts(feed, page.messages, 'fill')) });
    expect(r.calls).toEqual([null]); // its newest page alone
    expect(cut).toEqual({ from: 401, nextBefore: 401 });
    feed = cutFeed(feed, cut as NonNullable<typeof cut>);
    expect(feed.posts.map((m) => m.seq)).toEqual(range(401, 600));
    while (feed.nextBefore !== null) {
      const before = feed.nextBefore;
      feed = withEarlier(feed, before, await r.read(before, 50));
    }
    expect(feed.posts.map((m) => m.seq)).toEqual(range(1, 600));
  });

  it('a room with few posts, none shown: one page, nothing more to do', async () => {
    const r = room(30);
    const got: number[] = [];
    expect(await readGap<Post>({ loaded: [], read: (before) => r.read(before), onPage: (page) => got.push(...page.messages.map((m) => m.seq)) })).toBeNull();
    expect(got).toEqual(range(1, 30));
  });

  it('a post still being written in the gap holds the fill back until it is written: every post below it is read', async () => {
    // Review finding (/tmp/review-b/gap.ts): the page before 26 came back empty with
    // nextBefore 26 (post 25 in flight), the fill took it for the end, and 11-24 never showed.
    const inflight = new Set([25]);
    const r = room(40, [], {}, inflight);
    const w = waits((n) => n === 3 && inflight.clear()); // written during the third wait
    const loaded = range(1, 10).map((seq) => ({ seq, text: `post ${seq}` })); // shown before going offline
    const got = new Set<number>();
    const cut = await readGap<Post>({ loaded, read: (before) => r.read(before, 10), onPage: (page) => page.messages.forEach((m) => got.add(m.seq)), wait: w.wait });
    expect(cut).toBeNull();
    expect(range(11, 40).filter((seq) => !got.has(seq))).toEqual([]);
    expect(r.calls).toEqual([null, 31, 26, 26, 26, 26, 16]);
    expect(w.done).toEqual([250, 500, 1000]);
  });

  it('a page sequence from the server: empty pages that do not go on are asked again, an empty one that does goes on at once', async () => {
    const script: [number | null, TimelinePage<Post>][] = [
      [null, { messages: range(31, 40).map((seq) => ({ seq, text: '' })), nextBefore: 31 }],
      [31, { messages: [], nextBefore: 28 }], // holes 28-30: further back, no wait
      [28, { messages: [], nextBefore: 28 }], // 27 in flight
      [28, { messages: [], nextBefore: 28 }],
      [28, { messages: range(18, 27).map((seq) => ({ seq, text: '' })), nextBefore: 18 }],
      [18, { messages: range(8, 17).map((seq) => ({ seq, text: '' })), nextBefore: 8 }],
    ];
    const asked: (number | null)[] = [];
    const got = new Set<number>();
    const w = waits();
    const down = await readDownTo<Post>({
      top: 10,
      read: async (before) => {
        asked.push(before);
        const [expected, page] = script[asked.length - 1] as [number | null, TimelinePage<Post>];
        expect(before).toBe(expected);
        return page;
      },
      onPage: (page) => page.messages.forEach((m) => got.add(m.seq)),
      wait: w.wait,
    });
    expect(down).toEqual({ outcome: 'reached', found: false, pages: 4, read: 30 });
    expect(asked.length).toBe(script.length);
    expect(w.done).toEqual([250, 500]);
    expect([...got].sort((a, b) => a - b)).toEqual([...range(8, 27), ...range(31, 40)]); // 28-30: holes
  });

  it('a number that stays in flight past ~15 s: the fill stops there, and "Load earlier messages" goes on from it (no gap)', async () => {
    const r = room(40, [], {}, new Set([25]));
    const w = waits();
    const loaded = range(1, 10).map((seq) => ({ seq, text: `post ${seq}` }));
    const cut = await readGap<Post>({ loaded, read: (before) => r.read(before, 10), onPage: () => undefined, wait: w.wait });
    expect(cut).toEqual({ from: 26, nextBefore: 26 });
    expect(w.done.reduce((a, b) => a + b, 0)).toBeGreaterThanOrEqual(STALLED_GIVE_UP_MS);
  });

  it('a room with posts shown reads down to them, as before', async () => {
    const r = room(600);
    const loaded = (await r.read(101)).messages.slice(-50); // 51..100
    r.calls.length = 0;
    expect(await readGap<Post>({ loaded, read: (before) => r.read(before, 200), onPage: () => undefined })).toBeNull();
    expect(r.calls).toEqual([null, 401, 201]);
  });

  it('a resync during a fill runs one more fill after it (not one per call); none is dropped', async () => {
    // Before: a resync that came while a fill ran was dropped (`filling`): posts written
    // after that fill read its pages waited for the next reconnect.
    const runs: number[] = [];
    let release: () => void = () => undefined;
    let n = 0;
    const fill = oneAtATime(async () => {
      const run = ++n;
      runs.push(run);
      if (run === 1) await new Promise<void>((r) => (release = r));
    });
    const first = fill();
    const second = fill(); // during the first: after it
    const third = fill(); // the same one more
    expect(runs).toEqual([1]);
    release();
    await Promise.all([first, second, third]);
    expect(runs).toEqual([1, 2]);
    await fill(); // none running: at once
    expect(runs).toEqual([1, 2, 3]);
  });

  it('a fill that fails does not stop the one asked for meanwhile', async () => {
    const runs: number[] = [];
    let fail: (e: Error) => void = () => undefined;
    const fill = oneAtATime(async () => {
      runs.push(runs.length + 1);
      if (runs.length === 1) await new Promise<void>((_, reject) => (fail = reject));
    });
    const first = fill();
    void fill();
    fail(new Error('502'));
    await first;
    expect(runs).toEqual([1, 2]);
  });
});

describe("a public room's timeline kept to its newest posts as live ones come (Feed)", () => {
  const post = (seq: number): Post & { rev: number } => ({ seq, text: `post ${seq}`, rev: 1 });

  it(`a room left open: ${SHOWN} posts held whatever comes live, and "Load earlier messages" reaches every other`, async () => {
    // Before: every live post stayed in the view's state and was rendered.
    const r = room(2050);
    const first = await r.read(null, 50); // opening: 2001..2050 of a room whose newest, from here, come live
    let feed: Feed<Post> = { ...withPosts(emptyFeed<Post>(), first.messages, 'live'), nextBefore: first.nextBefore };
    for (let seq = 2051; seq <= 3050; seq++) feed = withPosts(feed, [post(seq)], 'live');
    expect(feed.posts.length).toBe(SHOWN);
    expect(feed.posts.map((m) => m.seq)).toEqual(range(3050 - SHOWN + 1, 3050));
    expect(feed.nextBefore).toBe(3050 - SHOWN + 1);
    // "Load earlier messages" goes on from the oldest held, down to the start.
    const live = room(3050);
    while (feed.nextBefore !== null) {
      const before = feed.nextBefore;
      feed = withEarlier(feed, before, await live.read(before, 50));
    }
    expect(feed.posts.map((m) => m.seq)).toEqual(range(1, 3050));
    // What the user asked for stays until live posts push it out: the same count kept.
    feed = withPosts(feed, [post(3051)], 'live');
    expect(feed.posts.length).toBe(3050);
    expect(feed.posts[0]?.seq).toBe(2);
    expect(feed.nextBefore).toBe(2);
  });

  it('nothing is let go while pages are read (their nextBefore must meet what is held); the next live post does it', async () => {
    const r = room(SHOWN);
    const all = await r.read(null, SHOWN);
    let feed: Feed<Post> = { ...withPosts(emptyFeed<Post>(), all.messages, 'live'), nextBefore: all.nextBefore };
    expect(feed.nextBefore).toBeNull();
    feed = feedReading(feed, 1); // "Load earlier messages" asked: nothing earlier, as it happens
    feed = withPosts(feed, [post(SHOWN + 1)], 'live');
    expect(feed.posts.length).toBe(SHOWN + 1);
    expect(feed.nextBefore).toBeNull();
    feed = feedReading(feed, -1);
    feed = withPosts(feed, [post(SHOWN + 2)], 'live');
    expect(feed.posts.map((m) => m.seq)).toEqual(range(3, SHOWN + 2));
    expect(feed.nextBefore).toBe(3);
  });

  it('an earlier page that no longer continues the feed (another came first) changes nothing', async () => {
    const r = room(300);
    const first = await r.read(null, 50);
    let feed: Feed<Post> = { ...withPosts(emptyFeed<Post>(), first.messages, 'live'), nextBefore: first.nextBefore };
    const before = feed.nextBefore as number;
    const page = await r.read(before, 50);
    feed = withEarlier(feed, before, page);
    const again = withEarlier(feed, before, page); // a second click's answer
    expect(again).toBe(feed);
    expect(feed.posts.map((m) => m.seq)).toEqual(range(201, 300));
  });

  it('a higher revision of a post replaces it, a lower one does not', () => {
    let feed = withPosts(emptyFeed<Post & { rev: number }>(), [post(1)], 'live');
    feed = withPosts(feed, [{ ...post(1), text: 'edited', rev: 2 }], 'live');
    feed = withPosts(feed, [{ ...post(1), text: 'late', rev: 1 }], 'live');
    expect(feed.posts.map((m) => m.text)).toEqual(['edited']);
  });
});

function range(from: number, to: number): number[] {
  return Array.from({ length: to - from + 1 }, (_, i) => from + i);
}
