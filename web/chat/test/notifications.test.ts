// Mention notifications, the pure rules of src/app/notifications.ts (docs/rooms.md
// "Mentions"; services/rooms/notifications.py numbers them per user, unread = newest
// number − the read mark): a fetched page and live frames merged without duplicates,
// the unread count, and what a read sends.
import { describe, expect, it } from 'vitest';

import {
  emptyNotices,
  isUnread,
  markAllUpTo,
  type Notice,
  type NoticePage,
  noticeTitle,
  openNotice,
  unreadCount,
  withLive,
  withPage,
  withRead,
} from '../src/app/notifications.ts';

const notice = (seq: number, read = false): Notice => ({
  seq,
  kind: 'mention',
  room_id: 'r'.repeat(26),
  room_name: 'general',
  sender: 'u'.repeat(26),
  excerpt: `hello @me ${seq}`,
  at: 1_700_000_000_000 + seq,
  message_seq: 100 + seq,
  server_id: null,
  read,
});
const frame = (seq: number) => {
  const { read: _read, ...rest } = notice(seq);
  return { op: 'notification', ...rest };
};
/** The server's page: `n` issued, read up to `read`, newest first from `before`. */
function page(n: number, read: number, before: number | null = null, limit = 50): NoticePage {
  const top = before === null ? n : Math.min(before - 1, n);
  const seqs = [];
  for (let s = top; s > Math.max(top - limit, 0); s--) seqs.push(s);
  const last = seqs.at(-1) ?? 1;
  return { notifications: seqs.map((s) => notice(s, s <= read)), unread: Math.max(n - read, 0), next_before: last > 1 ? last : null };
}
const seqs = (s: { items: Notice[] }) => s.items.map((n) => n.seq);

describe('merging a page and live frames', () => {
  it('takes the first page: entries newest first, the unread count, the next page', () => {
    const s = withPage(emptyNotices(), page(5, 2, null, 3), true);
    expect(seqs(s)).toEqual([5, 4, 3]);
    expect(unreadCount(s)).toBe(3);
    expect(s.nextBefore).toBe(3);
    expect(s.loaded).toBe(true);
    const older = withPage(s, page(5, 2, 3, 3), false);
    expect(seqs(older)).toEqual([5, 4, 3, 2, 1]);
    expect(older.items.filter((n) => n.read).map((n) => n.seq)).toEqual([2, 1]);
    expect(older.nextBefore).toBeNull();
    expect(unreadCount(older)).toBe(3);
  });

  it('a live frame that the page also holds counts once, whichever comes first', () => {
    const live = withLive(emptyNotices(), frame(6));
    expect(unreadCount(live)).toBe(1);
    const thenPage = withPage(live, page(6, 3), true);
    expect(seqs(thenPage)).toEqual([6, 5, 4, 3, 2, 1]);
    expect(unreadCount(thenPage)).toBe(3);
    const pageFirst = withLive(withPage(emptyNotices(), page(6, 3), true), frame(6));
    expect(seqs(pageFirst)).toEqual(seqs(thenPage));
    expect(unreadCount(pageFirst)).toBe(3);
    const twice = withLive(pageFirst, frame(6));
    expect(twice.items.length).toBe(6);
    expect(unreadCount(twice)).toBe(3);
  });

  it('a new frame bumps the count and goes on top', () => {
    const s = withLive(withPage(emptyNotices(), page(2, 2), true), frame(3));
    expect(seqs(s)).toEqual([3, 2, 1]);
    expect(unreadCount(s)).toBe(1);
    expect(isUnread(s, s.items[0]!)).toBe(true);
    expect(isUnread(s, s.items[1]!)).toBe(false);
  });

  it('reading the first page again keeps the older pages and never moves the mark back', () => {
    let s = withPage(emptyNotices(), page(5, 4, null, 2), true);
    s = withPage(s, page(5, 4, 4, 2), false);
    s = withRead(s, 5);
    s = withPage(s, page(5, 4, null, 2), true); // an older answer, read before the mark moved
    expect(s.read).toBe(5);
    expect(unreadCount(s)).toBe(0);
    expect(seqs(s)).toEqual([5, 4, 3, 2]);
    expect(s.nextBefore).toBe(2);
  });

  it('more mentions than a page while offline: the first page read again leaves every entry reachable', () => {
    // Before: reading the first page again kept the old nextBefore (below the entries
    // held), so 101-150, between the new page and them, could not be reached.
    let s = withPage(emptyNotices(), page(100, 0), true); // 100-51
    expect(s.nextBefore).toBe(51);
    s = withPage(s, page(200, 0), true); // the reconnect: 200-151
    expect(s.nextBefore).toBe(151);
    const asked: number[] = [];
    while (s.nextBefore !== null && asked.length < 10) {
      asked.push(s.nextBefore);
      s = withPage(s, page(200, 0, s.nextBefore), false);
    }
    expect(seqs(s)).toEqual(Array.from({ length: 200 }, (_, i) => 200 - i));
    expect(asked).toEqual([151, 51]); // 150-101 meets the 100-51 held: paging goes on below them
    expect(unreadCount(s)).toBe(200);
  });

  it('a first page that meets what was read keeps paging where it was; gaps after gaps are each read', () => {
    let s = withPage(emptyNotices(), page(60, 0, null, 20), true); // 60-41
    s = withPage(s, page(60, 0, 41, 20), false); // 40-21
    s = withPage(s, page(70, 0, null, 20), true); // 70-51: meets
    expect(s.nextBefore).toBe(21);
    s = withPage(s, page(100, 0, null, 20), true); // 100-81: 80-71 between
    s = withPage(s, page(140, 0, null, 20), true); // 140-121: 120-101 between
    expect(s.nextBefore).toBe(121);
    const asked: number[] = [];
    while (s.nextBefore !== null && asked.length < 20) {
      asked.push(s.nextBefore);
      s = withPage(s, page(140, 0, s.nextBefore, 20), false);
    }
    expect(seqs(s)).toEqual(Array.from({ length: 140 }, (_, i) => 140 - i));
    expect(asked).toEqual([121, 81, 21]);
  });

  it('an empty list has nothing unread', () => {
    const s = withPage(emptyNotices(), page(0, 0), true);
    expect(s.items).toEqual([]);
    expect(unreadCount(s)).toBe(0);
    expect(markAllUpTo(s)).toBeNull();
    expect(s.nextBefore).toBeNull();
  });

  it('a page whose newest entry is not written yet still gives the right count', () => {
    // n was taken (users.n) before its document was inserted: the page says unread 3
    // and its entries are 4 and below; the entries' read flags bound the mark.
    const p: NoticePage = { notifications: [notice(4), notice(3), notice(2, true), notice(1, true)], unread: 3, next_before: null };
    const s = withPage(emptyNotices(), p, true);
    expect(s.read).toBe(2);
    expect(unreadCount(s)).toBe(2);
    expect(unreadCount(withLive(s, frame(5)))).toBe(3);
  });
});

describe('reading', () => {
  it('"Mark all read" sends the newest number known and clears the count', () => {
    const s = withLive(withPage(emptyNotices(), page(3, 1), true), frame(4));
    expect(markAllUpTo(s)).toBe(4);
    const read = withRead(s, 4);
    expect(unreadCount(read)).toBe(0);
    expect(read.items.every((n) => n.read)).toBe(true);
    expect(markAllUpTo(read)).toBeNull();
  });

  it('opening the oldest unread entry moves the mark to it', () => {
    const s = withPage(emptyNotices(), page(4, 2), true);
    const { state, upTo } = openNotice(s, 3);
    expect(upTo).toBe(3);
    expect(unreadCount(state)).toBe(1);
  });

  it('opening a newer one cannot move the mark over an older unread one; it counts as read here', () => {
    const s = withPage(emptyNotices(), page(5, 2), true);
    const five = openNotice(s, 5);
    expect(five.upTo).toBeNull();
    expect(unreadCount(five.state)).toBe(2);
    expect(isUnread(five.state, five.state.items[0]!)).toBe(false);
    // Then 3: the mark moves to 3 only (4 is unread); then 4: over 4 and the opened 5.
    const three = openNotice(five.state, 3);
    expect(three.upTo).toBe(3);
    const afterThree = withRead(three.state, 3);
    expect(unreadCount(afterThree)).toBe(1);
    const four = openNotice(afterThree, 4);
    expect(four.upTo).toBe(5);
    const done = withRead(four.state, 5);
    expect(unreadCount(done)).toBe(0);
    expect(done.opened).toEqual([]);
  });

  it('opening a read entry sends nothing', () => {
    const s = withPage(emptyNotices(), page(3, 3), true);
    expect(openNotice(s, 2).upTo).toBeNull();
    expect(openNotice(s, 2).state).toBe(s);
  });

  it('says who mentioned you where', () => {
    expect(noticeTitle(notice(1), 'alice')).toBe('alice mentioned you in #general');
  });
});
